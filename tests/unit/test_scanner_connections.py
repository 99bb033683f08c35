"""Kept scanner connections (mail/scanners.py): reused, replaced when the server dropped them,
never shared between event loops. A small clamd-speaking server on loopback stands in."""

from __future__ import annotations

import asyncio

from mailwarden.mail import scanners


async def _clamd(max_per_connection: int, connections: list[int]) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(0)
        assert await reader.readexactly(11) == b"zIDSESSION\0"
        for number in range(1, max_per_connection + 1):
            try:
                assert await reader.readexactly(10) == b"zINSTREAM\0"
            except asyncio.IncompleteReadError:
                break
            data = b""
            while size := int.from_bytes(await reader.readexactly(4), "big"):
                data += await reader.readexactly(size)
            verdict = b"Eicar-Test FOUND" if b"EICAR" in data else b"OK"
            writer.write(b"%d: stream: %s\0" % (number, verdict))
            await writer.drain()
            connections[-1] += 1
        writer.close()  # as clamd after IdleTimeout or its command limit

    return await asyncio.start_server(handle, "127.0.0.1", 0)


def test_clamd_session_is_kept_and_replaced_when_dropped() -> None:
    async def run() -> tuple[list[str | None], list[int]]:
        connections: list[int] = []
        server = await _clamd(2, connections)
        port = server.sockets[0].getsockname()[1]
        found = []
        for body in (b"clean", b"EICAR", b"clean", b"clean"):
            result = await scanners.clamd_scan([body], port=port, timeout=5)
            found.append(result.virus)
            await asyncio.sleep(0.01)  # the server's close arrives between messages
        scanners.close_pools()
        server.close()
        return found, connections

    found, connections = asyncio.run(run())
    assert found == [None, "Eicar-Test", None, None]
    assert connections == [2, 2]  # two scans per connection, then a new one


def test_pools_belong_to_their_event_loop() -> None:
    async def once() -> str | None:
        connections: list[int] = []
        server = await _clamd(10, connections)
        port = server.sockets[0].getsockname()[1]
        result = await scanners.clamd_scan([b"clean"], port=port, timeout=5)
        server.close()
        return result.virus

    # A second loop in the same process (the CLI, the tests) opens its own connections.
    assert asyncio.run(once()) is None
    assert asyncio.run(once()) is None


def test_parts_share_a_session_and_stop_at_the_first_finding() -> None:
    async def run() -> tuple[list[str | None], list[int]]:
        connections: list[int] = []
        server = await _clamd(10, connections)
        port = server.sockets[0].getsockname()[1]
        found = []
        for parts in ([b"clean", b"clean"], [b"clean", b"EICAR", b"clean"], [b"clean"]):
            found.append((await scanners.clamd_scan(parts, port=port, timeout=5)).virus)
        scanners.close_pools()
        server.close()
        return found, connections

    found, connections = asyncio.run(run())
    assert found == [None, "Eicar-Test", None]
    assert connections == [5]  # one connection; the part after the finding was not sent
