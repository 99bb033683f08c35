"""Clients of the two scanners: Rspamd's /checkv2 and clamd's INSTREAM.

Both are plain asyncio protocol clients on loopback, with one deadline each. Any failure is
a ScannerError; what happens then (tempfail or accept with a header) is the filter's
decision, taken from the state.
"""

from __future__ import annotations

import asyncio
import json

from ..errors import ScannerError
from .types import Envelope, SpamResult, VirusResult

CHUNK = 64 * 1024


async def rspamd_check(
    raw: bytes, envelope: Envelope, *, port: int, timeout: float, hostname: str,
) -> SpamResult:
    """POST the message to Rspamd's normal worker with the envelope as headers."""
    headers = [
        "POST /checkv2 HTTP/1.1",
        "Host: localhost",
        "Connection: close",
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
        body = await asyncio.wait_for(_http(port, request), timeout)
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


def _clean(header: str) -> str:
    # Envelope values come from the network: no header injection into our request.
    return header.replace("\r", " ").replace("\n", " ")


async def _http(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        response = await reader.read()
    finally:
        writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0]
    if b" 200 " not in status + b" ":
        raise OSError(f"HTTP status {status.decode(errors='replace')}")
    if b"transfer-encoding: chunked" in head.lower():
        body = _dechunk(body)
    return body


def _dechunk(data: bytes) -> bytes:
    out = bytearray()
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2:]
    return bytes(out)


async def clamd_scan(raw: bytes, *, port: int, timeout: float) -> VirusResult:
    """INSTREAM the message to clamd; its answer names the signature or says OK."""
    try:
        answer = await asyncio.wait_for(_instream(port, raw), timeout)
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


async def _instream(port: int, raw: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"zINSTREAM\0")
        for start in range(0, len(raw), CHUNK):
            chunk = raw[start:start + CHUNK]
            writer.write(len(chunk).to_bytes(4, "big") + chunk)
            await writer.drain()
        writer.write(b"\0\0\0\0")
        await writer.drain()
        return await reader.read()
    finally:
        writer.close()
