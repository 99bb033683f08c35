"""Clients of the two scanners: Rspamd's /checkv2 and clamd's INSTREAM.

Both are plain asyncio protocol clients on loopback, with one deadline each. Rspamd's is a
small HTTP/1.1 client of our own rather than the standard library's http.client: that one
blocks, so it would run in a worker thread, and measured against this client (the same
loopback server, 10 requests in flight) it cost 0.65 ms of CPU per request against 0.44.
It reads what Rspamd sends (Content-Length, chunked, or up to the close) and nothing else;
tests/unit/test_rspamd_client.py holds it to that. Any failure is
a ScannerError; what happens then (tempfail or accept with a header) is the filter's
decision, taken from the state.

Connections are kept open between messages (connect and close were a round trip and
a server-side accept per message and scanner): a clamd IDSESSION, and HTTP/1.1 keep-alive to
Rspamd, whose normal worker (3.4) still answers "Connection: close", so that one is opened per
message until Rspamd keeps it. A kept connection that fails before any answer arrived is
dropped and the request made once more on a new one (a scan has no side effect that doubling
would harm); any other failure is the scanner's failure, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from ..errors import LearnError, ScannerError
from .types import BayesCounts, Envelope, Learned, SpamResult, VirusResult

CHUNK = 256 * 1024  # clamd INSTREAM chunks: fewer event-loop turns per large message
T = TypeVar("T")


class _Stale(Exception):
    """A kept connection was closed by the server before it answered anything."""


class _Connection:
    __slots__ = ("last_used", "reader", "requests", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.last_used = time.monotonic()
        self.requests = 0

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class _Pool:
    """Idle connections to one loopback port, used by one request at a time each.

    `idle` stays under the servers' own idle limits (clamd's IdleTimeout is 30 s by default,
    Rspamd's keep-alive timeout longer), so a kept connection is rarely stale when taken.
    """

    def __init__(self, port: int, *, idle: float, keep: int = 64,
                 opened: Callable[[_Connection], Awaitable[None]] | None = None) -> None:
        self.port, self.idle, self.keep = port, idle, keep
        self._opened = opened
        self._free: list[_Connection] = []

    async def run(self, exchange: Callable[[_Connection], Awaitable[T]]) -> T:
        now = time.monotonic()
        while self._free:
            conn = self._free.pop()
            if now - conn.last_used < self.idle and not conn.reader.at_eof():
                try:
                    return await self._use(conn, exchange)
                except _Stale:
                    break  # the server closed it meanwhile: once more, on a new one
            conn.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        conn = _Connection(reader, writer)
        try:
            if self._opened is not None:
                await self._opened(conn)
            return await self._use(conn, exchange)
        except _Stale:
            raise OSError("connection closed before the answer") from None

    async def _use(self, conn: _Connection,
                   exchange: Callable[[_Connection], Awaitable[T]]) -> T:
        try:
            result = await exchange(conn)
        except BaseException:
            conn.close()  # half a conversation: never reused
            raise
        conn.requests += 1
        conn.last_used = time.monotonic()
        if len(self._free) < self.keep and not conn.reader.at_eof():
            self._free.append(conn)
        else:
            conn.close()
        return result

    def close(self) -> None:
        while self._free:
            self._free.pop().close()


# Per event loop: a connection belongs to the loop that opened it (the CLI and the tests run
# one loop after another in the same process).
_POOLS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, int], _Pool]] = \
    weakref.WeakKeyDictionary()


def _pool(kind: str, port: int) -> _Pool:
    pools = _POOLS.setdefault(asyncio.get_running_loop(), {})
    pool = pools.get((kind, port))
    if pool is None:
        if kind == "clamd":
            pool = _Pool(port, idle=20.0, opened=_clamd_session)
        else:
            pool = _Pool(port, idle=30.0)
        pools[(kind, port)] = pool
    return pool


def close_pools() -> None:
    """Close this loop's kept scanner connections (the filter's shutdown)."""
    for pool in _POOLS.pop(asyncio.get_running_loop(), {}).values():
        pool.close()


async def rspamd_check(
    raw: bytes, envelope: Envelope, *, port: int, timeout: float, hostname: str,
) -> SpamResult:
    """POST the message to Rspamd's normal worker with the envelope as headers."""
    headers = [
        "POST /checkv2 HTTP/1.1",
        "Host: localhost",
        "Connection: keep-alive",
        f"Content-Length: {len(raw)}",
        f"From: {envelope.sender}",
        f"MTA-Name: {hostname}",
    ]
    headers += [f"Rcpt: {r}" for r in envelope.recipients]
    if envelope.client_ip:
        headers.append(f"IP: {envelope.client_ip}")
    if envelope.helo:
        headers.append(f"Helo: {envelope.helo}")
    if envelope.client_name and envelope.client_name != "unknown":
        headers.append(f"Hostname: {envelope.client_name}")
    if envelope.queue_id:
        headers.append(f"Queue-Id: {envelope.queue_id}")
    request = ("\r\n".join(_clean(h) for h in headers) + "\r\n\r\n").encode() + raw
    try:
        body = await asyncio.wait_for(
            _pool("rspamd", port).run(lambda conn: _http(conn, request)), timeout)
    except TimeoutError:
        raise ScannerError("rspamd", f"no answer within {timeout:.0f} s") from None
    except OSError as exc:
        raise ScannerError("rspamd", f"cannot reach it: {exc}") from None
    try:
        result = json.loads(body)
        symbols = {name: float(s.get("score", 0.0)) for name, s in result["symbols"].items()}
        return SpamResult(score=float(result["score"]), symbols=symbols,
                          action=str(result.get("action", "")))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ScannerError("rspamd", f"unexpected answer: {body[:200]!r} ({exc})") from None


# --- the controller worker: learning -------------------------------------------------------
# Rspamd's controller answers 208 for a message it has already learned as that class (its
# Bayes keeps a digest of each learned message) and 204, with no body, for one with fewer
# words than its classifier needs; every other status but 200 is a failure with
# {"error": "..."}.
ALREADY_LEARNED = 208
TOO_FEW_TOKENS = 204


async def rspamd_learn(raw: bytes, kind: str, *, port: int, timeout: float) -> Learned:
    """POST the message to the controller's /learnspam or /learnham."""
    if kind not in ("spam", "ham"):
        raise ValueError(f"learn spam or ham, not {kind!r}")
    request = (f"POST /learn{kind} HTTP/1.1\r\nHost: localhost\r\nConnection: keep-alive"
               f"\r\nContent-Length: {len(raw)}\r\n\r\n").encode() + raw
    status, body = await _controller(port, timeout, request)
    if status == 200:
        return Learned(kind=kind)
    message = _error_text(body) or f"HTTP status {status}"
    if status == ALREADY_LEARNED:
        return Learned(kind=kind, already=True, message=message)
    if status == TOO_FEW_TOKENS or "less tokens" in message:
        raise LearnError("Rspamd will not learn this message: it has too few words to learn "
                         "from", "learn_too_few_tokens")
    raise ScannerError("rspamd", f"learning as {kind} failed: {message}")


async def _controller(port: int, timeout: float, request: bytes) -> tuple[int, bytes]:
    try:
        return await asyncio.wait_for(
            _pool("rspamd-controller", port).run(lambda conn: _exchange(conn, request)),
            timeout)
    except TimeoutError:
        raise ScannerError("rspamd", f"the controller gave no answer within {timeout:.0f} s") \
            from None
    except OSError as exc:
        raise ScannerError("rspamd", f"cannot reach the controller: {exc}") from None


def _error_text(body: bytes) -> str:
    try:
        answer = json.loads(body)
    except ValueError:
        return body[:200].decode(errors="replace").strip()
    if isinstance(answer, dict):
        return str(answer.get("error", "")).strip()
    return ""


# --- Bayes' counts, from Redis ---------------------------------------------------------------
# The controller's /stat shows each statfile's count only after its own periodic refresh
# (about a minute after a learn, measured with 3.4); Rspamd's classifier reads the counts
# from Redis, so the agent does too: the "RS" hash (its default statfile prefix, no per-user
# statistics) has learns_spam and learns_ham.
BAYES_KEY = b"RS"


async def bayes_counts(*, port: int, timeout: float) -> BayesCounts:
    request = b"*4\r\n" + b"".join(b"$%d\r\n%s\r\n" % (len(part), part) for part in (
        b"HMGET", BAYES_KEY, b"learns_spam", b"learns_ham"))
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port), timeout)
        try:
            writer.write(request)
            values = await asyncio.wait_for(_resp_array(reader), timeout)
        finally:
            writer.close()
    except TimeoutError:
        raise ScannerError("redis", f"no answer within {timeout:.0f} s") from None
    except (OSError, asyncio.IncompleteReadError) as exc:
        raise ScannerError("redis", f"cannot read Bayes' counts: {exc}") from None
    try:
        spam, ham = (int(v) if v is not None else 0 for v in values)
    except ValueError as exc:
        raise ScannerError("redis", f"unexpected Bayes counts {values!r} ({exc})") from None
    return BayesCounts(spam=spam, ham=ham)


async def _resp_array(reader: asyncio.StreamReader) -> list[bytes | None]:
    """A RESP array of bulk strings (nil for a missing field); an error reply is an OSError."""
    head = (await reader.readuntil(b"\r\n")).rstrip(b"\r\n")
    if not head.startswith(b"*"):
        raise OSError(head.decode(errors="replace")[:200])
    values: list[bytes | None] = []
    for _ in range(int(head[1:])):
        size = int((await reader.readuntil(b"\r\n")).rstrip(b"\r\n").removeprefix(b"$"))
        values.append(None if size < 0 else (await reader.readexactly(size + 2))[:-2])
    return values


def _clean(header: str) -> str:
    # Envelope values come from the network: no header injection into our request.
    return header.replace("\r", " ").replace("\n", " ")


async def _answer(conn: _Connection, end: bytes, closed: str) -> bytes:
    """Read an answer up to `end`. A kept connection the server closed before answering
    anything is stale (the caller retries on a new one, nothing was processed twice); a
    close in mid-answer is an error."""
    try:
        return await conn.reader.readuntil(end)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial and conn.requests:
            raise _Stale from None
        raise OSError(closed) from None


async def _http(conn: _Connection, request: bytes) -> bytes:
    status, body = await _exchange(conn, request)
    if status != 200:
        raise OSError(f"HTTP status {status}")
    return body


async def _exchange(conn: _Connection, request: bytes) -> tuple[int, bytes]:
    """One request and its answer: the status code and the body, whatever the status."""
    conn.writer.write(request)
    await conn.writer.drain()
    head = await _answer(conn, b"\r\n\r\n", "connection closed during the answer")
    lines = head.decode("latin-1").split("\r\n")
    status = lines[0]
    fields = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            fields[name.strip().lower()] = value.strip()
    code = status.split(" ", 2)[1] if status.count(" ") >= 1 else ""
    if not code.isdigit():
        raise OSError(f"not an HTTP answer: {status[:80]!r}")
    if code in ("204", "304"):
        body = b""  # never a body, whatever the fields say (the controller's "too few words")
    elif "chunked" in fields.get("transfer-encoding", "").lower():
        body = await _read_chunked(conn.reader)
    elif "content-length" in fields:
        body = await conn.reader.readexactly(int(fields["content-length"]))
    else:
        body = await conn.reader.read()  # ends with the connection
    if fields.get("connection", "").lower() == "close" or status.startswith("HTTP/1.0"):
        conn.writer.close()  # the server says so: not kept
        conn.reader.feed_eof()
    return int(code), body


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    out = bytearray()
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            # Trailer fields, if any, up to the blank line.
            while await reader.readuntil(b"\r\n") != b"\r\n":
                pass
            return bytes(out)
        out += await reader.readexactly(size)
        await reader.readexactly(2)


async def clamd_scan(items: Sequence[bytes], *, port: int, timeout: float) -> VirusResult:
    """INSTREAM each item (the whole message, or its decoded parts) to clamd on one kept
    connection, stopping at the first that is not clean; the answer names the signature or
    says OK. `timeout` covers all of them."""
    try:
        answer = await asyncio.wait_for(
            _pool("clamd", port).run(lambda conn: _instream_each(conn, items)), timeout)
    except TimeoutError:
        raise ScannerError("clamd", f"no answer within {timeout:.0f} s") from None
    except OSError as exc:
        raise ScannerError("clamd", f"cannot reach it: {exc}") from None
    text = answer.rstrip(b"\0").decode(errors="replace").strip()
    if text.endswith(" FOUND"):
        return VirusResult(virus=text.removeprefix("stream: ").removesuffix(" FOUND"))
    if text == "stream: OK":
        return VirusResult(virus=None)
    # "INSTREAM size limit exceeded. ERROR" and friends: not scanned is not clean.
    raise ScannerError("clamd", f"scan failed: {text}")


async def _clamd_session(conn: _Connection) -> None:
    # IDSESSION: commands on one connection, each answer prefixed by its request number.
    conn.writer.write(b"zIDSESSION\0")
    await conn.writer.drain()


async def _instream_each(conn: _Connection, items: Sequence[bytes]) -> bytes:
    answer = b"stream: OK"
    for item in items:
        answer = await _instream(conn, item)
        if not answer.rstrip(b"\0").endswith(b" OK"):
            break
    return answer


async def _instream(conn: _Connection, raw: bytes) -> bytes:
    writer = conn.writer
    writer.write(b"zINSTREAM\0")
    for start in range(0, len(raw), CHUNK):
        chunk = raw[start:start + CHUNK]
        writer.write(len(chunk).to_bytes(4, "big"))
        writer.write(chunk)
        await writer.drain()
    writer.write(b"\0\0\0\0")
    await writer.drain()
    answer = await _answer(conn, b"\0", "clamd closed the connection without an answer")
    number, sep, rest = answer.partition(b": ")
    if not sep or not number.isdigit():
        conn.reader.feed_eof()  # not a session's answer: do not keep the connection
        return answer
    if not rest.rstrip(b"\0").endswith((b" OK", b" FOUND")):
        conn.reader.feed_eof()  # clamd ends the session after an error
    return rest
