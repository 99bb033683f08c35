"""The Rspamd client (mail/scanners.py, its own HTTP/1.1 reader) against a small
HTTP server on loopback that answers as Rspamd's normal worker can: fixed length or
chunked, keep-alive or close, an error status, a kept connection dropped while idle."""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from mailwarden.errors import ScannerError
from mailwarden.mail import scanners
from mailwarden.mail.types import Envelope

ANSWER = json.dumps({"score": 5.5, "action": "add header",
                     "symbols": {"BAYES_SPAM": {"score": 5.5}}}).encode()


async def _rspamd(modes: list[str], seen: list[dict[str, bytes]],
                  connections: list[int]) -> asyncio.Server:
    """Each request takes the next mode: "length", "chunked", "close", "error", "drop"
    (answer, then close the connection as an idle timeout would)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(0)
        while modes:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                break
            fields = {}
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name:
                    fields[name.strip().decode().lower()] = value.strip()
            fields["body"] = await reader.readexactly(int(fields["content-length"]))
            seen.append(fields)
            connections[-1] += 1
            mode = modes.pop(0)
            if mode == "chunked":
                half = len(ANSWER) // 2
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                             + b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (
                                 half, ANSWER[:half], len(ANSWER) - half, ANSWER[half:]))
            elif mode == "error":
                writer.write(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n")
            else:
                close = b"Connection: close\r\n" if mode == "close" else b""
                writer.write(b"HTTP/1.1 200 OK\r\n" + close + b"Content-Length: %d\r\n\r\n"
                             % len(ANSWER) + ANSWER)
            await writer.drain()
            if mode in ("close", "drop"):
                break
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


ENVELOPE = Envelope(sender="s\u00e9@x.test", recipients=("a@y.test", "b@y.test"),
                    direction="in", client_ip="192.0.2.1", client_name="mx.x.test",
                    helo="mx.x.test\r\nX-Injected: 1", queue_id="4AbC")


def test_answers_in_every_shape_and_a_dropped_connection_is_replaced() -> None:
    async def run() -> tuple[list[float], list[dict[str, bytes]], list[int]]:
        seen: list[dict[str, bytes]] = []
        connections: list[int] = []
        modes = ["length", "chunked", "drop", "close", "length"]
        server = await _rspamd(modes, seen, connections)
        port = server.sockets[0].getsockname()[1]
        scores = []
        # One worker thread, so the kept connection is the same one each time.
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=1))
        for _ in range(5):
            result = await scanners.rspamd_check(b"Subject: x\r\n\r\nbody\r\n", ENVELOPE,
                                                 port=port, timeout=5, hostname="gw.test")
            scores.append(result.score)
        server.close()
        return scores, seen, connections

    scores, seen, connections = asyncio.run(run())
    assert scores == [5.5] * 5
    # length and chunked kept one connection; the drop is noticed on the next request,
    # answered on a new one; after "close" a third.
    assert connections == [3, 1, 1]
    first = seen[0]
    assert first["from"] == "s\u00e9@x.test".encode()
    assert first["rcpt"] in (b"a@y.test", b"b@y.test")
    assert first["helo"] == b"mx.x.test  X-Injected: 1" and "x-injected" not in first
    assert first["ip"] == b"192.0.2.1" and first["queue-id"] == b"4AbC"
    assert first["body"] == b"Subject: x\r\n\r\nbody\r\n"


def test_an_error_status_is_a_scanner_error() -> None:
    async def run() -> None:
        server = await _rspamd(["error"], [], [])
        port = server.sockets[0].getsockname()[1]
        try:
            with pytest.raises(ScannerError, match="500"):
                await scanners.rspamd_check(b"x\r\n", ENVELOPE, port=port, timeout=5,
                                            hostname="gw.test")
        finally:
            server.close()

    asyncio.run(run())


def test_nobody_listening_is_a_scanner_error() -> None:
    async def run() -> None:
        server = await _rspamd([], [], [])
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        with pytest.raises(ScannerError, match="cannot reach"):
            await scanners.rspamd_check(b"x\r\n", ENVELOPE, port=port, timeout=5,
                                        hostname="gw.test")

    asyncio.run(run())
