"""The bulk DATA reader (mail/compat.py, mail/smtpdata.py) against aiosmtpd's rules."""

from __future__ import annotations

import asyncio
import random
import smtplib
import socket
import threading
from collections.abc import Iterator

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session

from mailwarden.mail import compat, smtpdata
from mailwarden.mail.filter import FilterSMTP


def _read(wire: bytes, limit: int | None = None, chunk: int | None = None) -> tuple[bytes, bytes]:
    """What read_data returns for `wire`, and what stays in the reader after it."""

    async def run() -> tuple[bytes, bytes]:
        reader = asyncio.StreamReader(limit=1001)  # aiosmtpd's limit
        step = chunk or len(wire) or 1
        for start in range(0, len(wire), step):
            reader.feed_data(wire[start:start + step])
        reader.feed_eof()
        data = await compat.read_data(reader, limit)
        assert reader._limit == 1001  # restored
        return data, await reader.read()

    return asyncio.run(run())


def _aiosmtpd_rule(wire: bytes) -> tuple[bytes, bytes]:
    """aiosmtpd 1.4.6's reading: CRLF lines up to a lone ".", a leading dot removed;
    (data, what follows the end)."""
    out, pos = [], 0
    while True:
        end = wire.index(b"\r\n", pos) + 2
        line = wire[pos:end]
        pos = end
        if line == b".\r\n":
            return b"".join(out), wire[pos:]
        out.append(line[1:] if line.startswith(b".") else line)


@pytest.mark.parametrize("wire, expected", [
    (b".\r\n", b""),
    (b"\r\n.\r\n", b"\r\n"),
    (b"a\r\n.\r\n", b"a\r\n"),
    (b"ab\r\n.\r\n", b"ab\r\n"),
    (b"abc\r\n.\r\n", b"abc\r\n"),
    (b"..\r\n.\r\n", b".\r\n"),
    (b"a\r\n..\r\n.\r\n", b"a\r\n.\r\n"),
    (b"..x\r\n..y\r\n.\r\n", b".x\r\n.y\r\n"),
    (b"x\r\n\r\n.\r\n", b"x\r\n\r\n"),
    (b"end.\r\n.\r\n", b"end.\r\n"),
])
def test_short_and_stuffed_messages(wire: bytes, expected: bytes) -> None:
    for chunk in (1, 2, 3, None):
        assert _read(wire + b"QUIT\r\n", chunk=chunk) == (expected, b"QUIT\r\n")


def test_bare_lf_never_ends_data() -> None:
    # The SMTP smuggling forms: "\n.\n", "\n.\r\n", "\r\n.\n" are data, not the end.
    wire = (b"hello\n.\nMAIL FROM:<evil@x>\r\n\n.\r\nmore\r\n.\nstill\r\n"
            b"real end\r\n.\r\nRSET\r\n")
    data, rest = _read(wire, chunk=7)
    assert (data, rest) == _aiosmtpd_rule(wire)
    assert data.endswith(b"real end\r\n") and b"MAIL FROM:<evil@x>" in data
    assert rest == b"RSET\r\n"


def test_random_streams_match_aiosmtpd() -> None:
    rng = random.Random(7)  # noqa: S311 - reproducible test input, not a secret
    alphabet = [b"\r\n", b".", b"\r", b"\n", b"x", b"\r\n.", b".\r\n", b"\r\n.\r"]
    for _ in range(3000):
        noise = b"".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 12)))
        wire = noise + b"\r\n.\r\nNOOP\r\n"  # an end somewhere, maybe earlier
        assert _read(wire, chunk=rng.choice([1, 2, 3, 5, 64])) == _aiosmtpd_rule(wire), wire


def test_large_message_in_one_piece() -> None:
    lines = [b"line %d with some words" % i for i in range(30_000)] + [b".dot", b""]
    body = b"\r\n".join(lines)
    wire = smtpdata.stuff(body) + b".\r\n"
    data, rest = _read(wire, chunk=65536)
    assert data == body and rest == b""


def test_over_the_limit_is_read_to_its_end_and_refused() -> None:
    big = b"x" * 70 + b"\r\n"
    wire = big * 40_000 + b".\r\nNOOP\r\n"

    async def run() -> bytes:
        reader = asyncio.StreamReader(limit=1001)
        reader.feed_data(wire)
        reader.feed_eof()
        with pytest.raises(smtpdata.TooMuchData):
            await compat.read_data(reader, 100_000)
        return await reader.read()

    assert asyncio.run(run()) == b"NOOP\r\n"


def test_stuff_is_the_inverse_of_unstuff_for_crlf_text() -> None:
    body = b".a\r\nb\r\n..c\r\n.\r\nd\r\n"
    assert smtpdata.unstuff(smtpdata.stuff(body)) == body
    assert smtpdata.stuff(b"x\n.y") == b"x\n..y\r\n"  # bare LF lines too, as smtplib


# --- the filter's SMTP server, over a real socket ------------------------------------------


class _Keep:
    def __init__(self) -> None:
        self.messages: list[bytes] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.messages.append(envelope.original_content or b"")
        return "250 2.0.0 Ok: kept"


@pytest.fixture
def server() -> Iterator[tuple[int, _Keep]]:
    handler = _Keep()
    loop = asyncio.new_event_loop()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    srv = loop.run_until_complete(loop.create_server(
        lambda: FilterSMTP(handler, hostname="filter.test", data_size_limit=1_000_000,
                           decode_data=False, loop=loop), sock=sock))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield port, handler
    loop.call_soon_threadsafe(srv.close)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


def test_filter_server_receives_messages_as_sent(server: tuple[int, _Keep]) -> None:
    port, handler = server
    body = b"Subject: t\r\n\r\n.leading dot\r\n" + b"y" * 500_000 + b"\r\nend\r\n"
    with smtplib.SMTP("127.0.0.1", port) as smtp:
        smtp.ehlo("client.test")
        assert smtp.sendmail("a@x.test", ["b@y.test"], body) == {}
        assert smtp.sendmail("a@x.test", ["b@y.test"], b"Subject: 2\r\n\r\nsecond\r\n") == {}
        # Past the limit without announcing SIZE: the data is read to its end, then 552.
        assert smtp.mail("a@x.test")[0] == 250 and smtp.rcpt("b@y.test")[0] == 250
        assert smtp.data(b"z" * 1_100_000)[0] == 552
        assert smtp.noop()[0] == 250  # the session goes on after a refused message
    assert handler.messages == [body, b"Subject: 2\r\n\r\nsecond\r\n"]


def test_plain_addresses_are_split_as_aiosmtpd_splits_them() -> None:
    server = FilterSMTP.__new__(FilterSMTP)
    server.local_part_limit = 0
    rng = random.Random(3)  # noqa: S311 - reproducible test input, not a secret
    alphabet = [*"ab.@<> =-+_\t\"[]()x1Z,;:\\", "\u00e9", "SIZE=100", "BODY=8BITMIME",
                "a@b.test", "<a@b.test>"]
    fast = 0
    for _ in range(30_000):
        arg = "".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 10)))
        if rng.random() < 0.5:
            arg = "<" + arg
        plain = bool(compat._PLAIN_ADDRESS.fullmatch(arg))
        fast += plain
        try:
            expected = SMTP._getaddr(server, arg)
        except Exception:  # aiosmtpd 1.4.6 itself fails on some junk, never on plain ones
            assert not plain, arg
            continue
        assert server._getaddr(arg) == expected, arg
    assert fast > 150
    assert server._getaddr("<bench@sender.test> SIZE=2048 BODY=8BITMIME") == \
        ("bench@sender.test", "SIZE=2048 BODY=8BITMIME")


def test_the_per_class_inspection_gives_aiosmtpd_the_same_answers(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import inspect

    import aiosmtpd.smtp as aiosmtpd_smtp

    from mailwarden.mail.filter import ContentFilter

    handler = ContentFilter.__new__(ContentFilter)

    def describe() -> tuple[object, ...]:
        loop = asyncio.new_event_loop()
        try:
            server = FilterSMTP(handler, hostname="filter.test", loop=loop)
            return (sorted((k, v.is_builtin) for k, v in server._auth_methods.items()),
                    sorted(server._handle_hooks), server._ehlo_hook_ver)
        finally:
            loop.close()

    cached = [describe(), describe()]  # the second one from the cache
    monkeypatch.setattr(aiosmtpd_smtp, "inspect", inspect)
    assert cached == [describe(), describe()]
    assert cached[0][2] == "new" and "DATA" in cached[0][1]
