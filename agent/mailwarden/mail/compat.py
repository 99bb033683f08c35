"""Every shortcut the mail path takes into a library's internals, in one place.

A shortcut here exists because a profile showed the public way to be slow on the mail path;
each one is tied to the library version it was written and tested against
(tests/unit/test_mail_compat.py compares it with the public behaviour on generated input,
and fails when the installed version is no longer the fenced one). At import, each fence
checks the installed version; outside it the shortcut is not used, the public (slower) path
is, and one warning says so. Mail is never lost or altered by a fence: the fallback is the
library's own behaviour, which the shortcut was proven equal to.

The rule for adding one (docs/development.md): only with a measurement showing the public
way costs throughput, a fence with the tested version, a docstring saying what it replaces
and why, and a property test against the public behaviour. Nothing else in mail/ touches a
library's private names.
"""

from __future__ import annotations

import asyncio
import email.parser
import importlib.metadata
import inspect
import logging
import re
import smtplib
import sys
from collections.abc import Awaitable, Coroutine, Sequence
from email import policy as email_policy
from email.message import Message
from typing import Any

import aiosmtpd.smtp as aiosmtpd_smtp
from aiosmtpd.smtp import SMTP

from . import smtpdata

log = logging.getLogger("mailwarden.compat")

# The versions every shortcut below was tested with.
AIOSMTPD_TESTED = "1.4.6"
PYTHON_TESTED = (3, 11)  # asyncio, email and smtplib are the stdlib's: its minor version


def installed_versions() -> dict[str, str]:
    """What is installed now, by the same names as the fences."""
    return {"aiosmtpd": importlib.metadata.version("aiosmtpd"),
            "python": "{}.{}".format(*sys.version_info[:2])}


def fenced_versions() -> dict[str, str]:
    return {"aiosmtpd": AIOSMTPD_TESTED, "python": "{}.{}".format(*PYTHON_TESTED)}


def _fence(library: str, shortcuts: str) -> bool:
    installed, tested = installed_versions()[library], fenced_versions()[library]
    if installed == tested:
        return True
    log.warning("%s %s is installed, the shortcuts (%s) were tested with %s: using the "
                "public, slower path", library, installed, shortcuts, tested)
    return False


AIOSMTPD_OK = _fence("aiosmtpd", "connection set-up, bulk DATA, plain addresses")
STDLIB_OK = _fence("python", "StreamReader limit, MIME structure, pipelined reinjection")


# --- aiosmtpd: connection set-up ---------------------------------------------------------


class ClassInspect:
    """What aiosmtpd 1.4.6 asks the `inspect` module on every new connection, answered once
    per class: `getmembers` of the server and the handler (it keeps only the auth_*
    methods) and the signature of handle_EHLO.

    Replaces: aiosmtpd's module-level `inspect` (a global patch of aiosmtpd.smtp.inspect).
    Why: aiosmtpd's constructor was 15 % of the event loop's CPU in before-queue mode,
    where Postfix opens a connection per message, half of it in getmembers. Everything
    else is the real module."""

    def __init__(self) -> None:
        self._names: dict[type, list[str]] = {}
        self._signatures: dict[object, inspect.Signature] = {}

    def getmembers(self, obj: object) -> list[tuple[str, Any]]:
        names = self._names.get(type(obj))
        if names is None:
            names = self._names[type(obj)] = [n for n, _ in inspect.getmembers(obj)
                                              if n.startswith("auth_")]
        return [(name, getattr(obj, name)) for name in names]

    def signature(self, fn: Any) -> inspect.Signature:
        key = getattr(fn, "__func__", fn)  # a bound method: its function, the same per class
        found = self._signatures.get(key)
        if found is None:
            found = self._signatures[key] = inspect.signature(fn)
        return found

    def __getattr__(self, name: str) -> Any:
        return getattr(inspect, name)


def install_inspect_cache() -> bool:
    """Put ClassInspect in aiosmtpd's module (idempotent); False outside the fence."""
    if not AIOSMTPD_OK:
        return False
    if not isinstance(getattr(aiosmtpd_smtp, "inspect", None), ClassInspect):
        setattr(aiosmtpd_smtp, "inspect", ClassInspect())  # noqa: B010 - a module global
    return True


# --- aiosmtpd: DATA and addresses --------------------------------------------------------

_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PLAIN_ADDRESS = re.compile(
    rf"<({_ATOM}(?:\.{_ATOM})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>[ \t]*"
    r"([\x21-\x27\x2a-\x5b\x5d-\x7e][\x20-\x21\x23-\x27\x2a-\x5b\x5d-\x7e]*)?")


class FastSMTP(SMTP):
    """aiosmtpd's server with its hot private hooks replaced, inside the fence only.

    Replaces, in aiosmtpd 1.4.6: smtp_DATA's line-by-line read (bulk read, read_data below),
    _getaddr's RFC 5322 parse for plain <dot-atom@domain> addresses, and wraps
    _handle_client (the connection's task) in `run_session()`, which a subclass may override
    (the filter meters the session's CPU there). Outside the fence every one of them is
    aiosmtpd's own, and `run_session()` is not called."""

    def run_session(self, coro: Coroutine[Any, Any, None]) -> Awaitable[None]:
        return coro

    async def _handle_client(self) -> None:
        if not AIOSMTPD_OK:
            await super()._handle_client()
            return
        await self.run_session(super()._handle_client())

    async def smtp_DATA(self, arg: str) -> None:
        """aiosmtpd's DATA command with the message read in bulk: the same checks and
        replies, the same handler hook. The content stays bytes (decode_data=False)."""
        if not (AIOSMTPD_OK and STDLIB_OK and hasattr(self._reader, "_limit")) \
                or self._decode_data:
            await super().smtp_DATA(arg)
            return
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        try:
            content = await read_data(self._reader, self.data_size_limit)
        except smtpdata.TooMuchData:
            await self.push("552 Error: Too much mail data")
            self._set_post_data_state()  # type: ignore[no-untyped-call]
            return
        except asyncio.IncompleteReadError:
            # The client went away during DATA: nothing was accepted, nothing to answer.
            self._writer.close()
            return
        except asyncio.CancelledError:  # the connection was reset (aiosmtpd does the same)
            self._writer.close()
            raise
        self.envelope.content = content
        self.envelope.original_content = content
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()  # type: ignore[no-untyped-call]
        await self.push(status)

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        # aiosmtpd parses every MAIL/RCPT address with the email package's RFC 5322 parser
        # (a tenth of the filter's time for small mail, in a profile). Postfix sends
        # plain <dot-atom@domain> addresses with plain parameters: those are split here with
        # the same result; anything else, aiosmtpd.
        if not AIOSMTPD_OK:
            return super()._getaddr(arg)
        match = _PLAIN_ADDRESS.fullmatch(arg)
        if match is None or (self.local_part_limit and
                             len(match.group(1).rpartition("@")[0]) > self.local_part_limit):
            return super()._getaddr(arg)
        return match.group(1), match.group(2) or ""


# --- asyncio: the StreamReader's limit ---------------------------------------------------

_DRAIN_LIMIT = 1024 * 1024  # while dropping an oversized message: buffer this much at most


def _set_limit(reader: asyncio.StreamReader, limit: int) -> int:
    """Set the reader's line limit, return the old one.

    Replaces: nothing public (the limit is fixed when the reader is made, by aiosmtpd, at
    1001 bytes). Why: with that limit readuntil cannot find the end of a 2 MB message, and
    the socket pauses every 2 kB."""
    old: int = reader._limit  # type: ignore[attr-defined]
    reader._limit = limit  # type: ignore[attr-defined]
    return old


def _pending_prefix(tail: bytes) -> int:
    """Length of the longest end of `tail` that starts the end-of-data marker."""
    end = smtpdata.END
    for size in range(min(len(end) - 1, len(tail)), 0, -1):
        if end.startswith(tail[-size:]):
            return size
    return 0


async def read_data(reader: asyncio.StreamReader, limit: int | None) -> bytes:
    """The message after the 354, unstuffed, ending with its last CRLF ("" when empty).

    Replaces: aiosmtpd 1.4.6's DATA loop, one `readuntil(b"\\r\\n")` per line (27,000 Python
    steps for a 2 MB attachment). The result is the same as aiosmtpd's for every input it
    accepts (docs in mail/smtpdata.py). `limit` caps the bytes on the wire (dot-stuffed,
    without the final "." line). Raises TooMuchData past it, IncompleteReadError when the
    client goes away.
    """
    end = smtpdata.END
    # StreamReader.readuntil finds the marker only in bytes not yet consumed, so what has
    # been consumed must never end with the start of a marker: the first three bytes are
    # read alone (".\r\n" is an empty message, and a message is otherwise at least one
    # line and the marker, five bytes), then while the bytes read so far end with a
    # partial marker, exactly the bytes that would complete it are read (a well-formed
    # stream always has that many left, so this never waits for bytes that will not come).
    saved = _set_limit(reader, (limit or 2**31) + len(end))
    try:
        head = await reader.readexactly(3)
        if head == b".\r\n":
            return b""
        pieces = [head]
        tail = head
        while True:
            pending = _pending_prefix(tail)
            if not pending:
                pieces.append(await reader.readuntil(end))
                break
            more = await reader.readexactly(len(end) - pending)
            pieces.append(more)
            if tail[-pending:] + more == end:
                break
            tail = (tail + more)[-(len(end) - 1):]
    except asyncio.LimitOverrunError:
        await _drain(reader)
        raise smtpdata.TooMuchData from None
    finally:
        _set_limit(reader, saved)
    wire = b"".join(pieces)
    if limit is not None and len(wire) - 3 > limit:
        raise smtpdata.TooMuchData
    return smtpdata.unstuff(wire[:-3])  # the final ".\r\n"; the last line keeps its CRLF


async def _drain(reader: asyncio.StreamReader) -> None:
    """Read and drop up to the end of data, buffering little (the message is refused)."""
    saved = _set_limit(reader, _DRAIN_LIMIT)
    try:
        while True:
            try:
                await reader.readuntil(smtpdata.END)
                return
            except asyncio.LimitOverrunError as exc:
                # Not found yet: what is consumed here leaves the last four bytes buffered,
                # so a marker split across two reads is still found.
                await reader.readexactly(exc.consumed)
    finally:
        _set_limit(reader, saved)


# --- email: the MIME structure without the FeedParser's line-by-line walk ---------------
#
# The stdlib's FeedParser handles every line of the message in Python: about 45 ms for a 2 MB
# attachment. For the common, well-formed shape (CRLF lines only, every header block ending
# in a blank line, multiparts whose boundaries open and close, no message/* parts), the same
# tree is built here with bytes searches and public Message calls: each header block is
# parsed by the stdlib itself, each leaf's payload is the text the FeedParser would keep.
# Anything else returns None and the stdlib parses the whole message. It mirrors the
# FeedParser's boundary rules, which is why it is fenced to the Python it was tested with.

_HEADER_LINE = re.compile(rb"[\x21-\x39\x3b-\x7e]*:|[\t ]")
_FAST_NESTING = 20  # deeper than this: the stdlib's parser, which records its own defects


def mime_tree(raw: bytes) -> Message | None:
    """The tree email.message_from_bytes(raw, policy=compat32) builds (headers, payloads,
    structure; not preamble and epilogue), or None: not this shape, or outside the fence.

    Replaces: the FeedParser for well-formed CRLF mail. Why: its per-line Python loop was
    the largest cost of parsing mail with attachments."""
    if not STDLIB_OK:
        return None
    # Bare CR or LF: the FeedParser splits lines on those too. One-byte counts first (memchr
    # fast); the pair count only when they agree.
    lf = raw.count(b"\n")
    if raw.count(b"\r") != lf or raw.count(b"\r\n") != lf:
        return None
    return _node(raw, None, 0)


def _node(data: bytes, parent: Message | None, depth: int) -> Message | None:
    if data.startswith(b"\r\n"):
        block, body = b"\r\n", data[2:]
    else:
        end = data.find(b"\r\n\r\n")
        if end < 0:
            return None
        block, body = data[:end + 4], data[end + 4:]
        for line in block[:-4].split(b"\r\n"):
            if not _HEADER_LINE.match(line):
                return None  # the FeedParser would end the headers here, with a defect
    node = email.parser.BytesParser(policy=email_policy.compat32).parsebytes(
        block, headersonly=True)
    if node.get_unixfrom() is not None:
        return None
    if parent is not None and parent.get_content_type() == "multipart/digest":
        return None  # its parts default to message/rfc822
    maintype = node.get_content_maintype()
    if maintype == "message":
        return None  # nested messages: the stdlib parses them
    if maintype != "multipart":
        text = body.decode("ascii", "surrogateescape")
        if parent is not None and text.endswith("\r\n"):
            # The line end before a boundary belongs to the boundary (RFC 2046).
            text = text[:-2]
        node.set_payload(text)
        return node
    boundary = node.get_boundary()
    cte = str(node.get("content-transfer-encoding", "8bit")).lower()
    if boundary is None or cte not in ("7bit", "8bit", "binary") or depth >= _FAST_NESTING:
        return None
    segments = _segments(body, boundary.encode("ascii", "surrogateescape"))
    if segments is None:
        return None
    children: list[Message | str] = []
    for segment in segments:
        child = _node(segment, node, depth + 1)
        if child is None:
            return None
        children.append(child)
    node.set_payload(children)
    return node


def _segments(body: bytes, boundary: bytes) -> list[bytes] | None:
    """The parts between the boundary lines, or None unless there is a first boundary,
    a closing one, and something between every two of them."""
    pattern = re.compile(b"--" + re.escape(boundary) + rb"(--)?[ \t]*\r\n")
    segments: list[bytes] = []
    start: int | None = None
    for found in pattern.finditer(body):
        at = found.start()
        if at and body[at - 1:at] != b"\n":
            continue  # not at the start of a line
        if start is not None:
            if at == start:
                return None  # two boundary lines in a row: the FeedParser merges them
            segments.append(body[start:at])
        elif found.group(1):
            return None  # closed before it opened
        if found.group(1):
            return segments or None
        start = found.end()
    return None  # no closing boundary


# --- smtplib: one pipelined transaction --------------------------------------------------


def pipelining(smtp: smtplib.SMTP) -> bool:
    """Whether the reinjector may write its commands itself (send_commands, read_reply):
    the server offers PIPELINING and smtplib is the fenced one. Otherwise the caller uses
    smtplib's public docmd and sendmail."""
    return STDLIB_OK and smtp.has_extn("pipelining")


def send_commands(smtp: smtplib.SMTP, commands: Sequence[str], *, utf8: bool) -> None:
    """Write SMTP commands in one send (RFC 2920).

    Replaces: smtplib's putcmd/getreply pairs inside sendmail(), one round trip per
    command. Why: the envelope and DATA of a reinjection take two round trips instead of
    four or more. `utf8` is what sendmail's SMTPUTF8 option does to the command encoding."""
    for command in commands:
        if "\r" in command or "\n" in command:  # as smtplib's putcmd: no injection
            raise ValueError(f"command contains a line break: {command!r}")
    if utf8:
        smtp.command_encoding = "utf-8"
    smtp.send("".join(f"{c}\r\n" for c in commands))


def read_reply(smtp: smtplib.SMTP) -> tuple[int, bytes]:
    """One reply to a command written by send_commands, or to the data after it."""
    return smtp.getreply()


def send_data(smtp: smtplib.SMTP, stuffed: bytes) -> None:
    """The message, already dot-stuffed and ending with ".\\r\\n" (smtplib's data() does
    the same stuffing, tests/unit/test_smtp_data.py)."""
    smtp.send(stuffed)
