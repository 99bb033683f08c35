"""The fenced shortcuts of mail/compat.py against the library behaviour they replace, on
generated input: the same parse tree, the same bytes, the same SMTP dialogue."""

from __future__ import annotations

import asyncio
import email
import smtplib
import socket
import threading
from collections.abc import Iterator
from email import policy as email_policy
from email.message import Message
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from mailwarden.mail import compat
from mailwarden.mail import message as mail_message
from mailwarden.mail.reinject import Reinjector

PROPERTY = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# --- the fence ---------------------------------------------------------------------------


def test_installed_libraries_are_the_fenced_versions() -> None:
    """Fails on an upgrade: re-run these properties against the new version, then move the
    fence (compat.AIOSMTPD_TESTED, compat.PYTHON_TESTED)."""
    assert compat.installed_versions() == compat.fenced_versions()
    assert compat.AIOSMTPD_OK and compat.STDLIB_OK


# --- MIME structure: compat.mime_tree against the FeedParser -------------------------------

_BCHARS = "abcXYZ0123456789'()+_,-./:=?"  # RFC 2046 bchars, a few of each kind
_TEXT = st.binary(max_size=60).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))


@st.composite
def _header(draw: st.DrawFn) -> bytes:
    name = draw(st.sampled_from([b"Subject", b"From", b"X-Test", b"Content-Description",
                                 b"Received"]))
    value = draw(_TEXT)  # 8-bit bytes included
    folded = draw(st.booleans())
    return name + b": " + value + (b"\r\n\tcontinued" if folded else b"") + b"\r\n"


@st.composite
def _entity(draw: st.DrawFn, depth: int = 0, well_formed: bool = False) -> bytes:
    headers = b"".join(draw(st.lists(_header(), max_size=3)))
    if depth < 3 and draw(st.booleans()):
        boundary = draw(st.text(_BCHARS, min_size=1, max_size=12)).encode()
        if well_formed:  # nested multiparts sharing a boundary are ambiguous: not that shape
            boundary = b"=_%d_" % depth + boundary
        subtype = draw(st.sampled_from([b"mixed", b"alternative", b"related", b"digest"]))
        children = draw(st.lists(_entity(depth + 1, well_formed), min_size=int(well_formed),
                                 max_size=3))
        preamble = draw(st.sampled_from([b"", b"preamble\r\n"]))
        epilogue = draw(st.sampled_from([b"", b"epilogue\r\n"]))
        padding = draw(st.sampled_from([b"", b" ", b"\t "]))
        body = preamble + b"".join(b"--" + boundary + padding + b"\r\n" + child + b"\r\n"
                                   for child in children)
        body += b"--" + boundary + b"--" + padding + b"\r\n" + epilogue
        quoted = well_formed or draw(st.booleans())
        param = b'"' + boundary + b'"' if quoted else boundary
        return (headers + b"Content-Type: multipart/" + subtype + b"; boundary=" + param
                + b"\r\n\r\n" + body)
    ctype = draw(st.sampled_from([b"", b"Content-Type: text/plain; charset=utf-8\r\n",
                                  b"Content-Type: application/octet-stream\r\n",
                                  b"Content-Type: text/html; charset=latin-1\r\n",
                                  b"Content-Type: message/rfc822\r\n"]))
    cte = draw(st.sampled_from([b"", b"Content-Transfer-Encoding: base64\r\n",
                                b"Content-Transfer-Encoding: quoted-printable\r\n"]))
    lines = draw(st.lists(_TEXT, max_size=4))
    return headers + ctype + cte + b"\r\n" + b"".join(line + b"\r\n" for line in lines)


@st.composite
def _mail(draw: st.DrawFn) -> bytes:
    """A message, well-formed or broken in the ways a gateway must survive."""
    raw = draw(_entity())
    for mutation in draw(st.lists(st.sampled_from(
            ["bare-lf", "bare-cr", "drop-close", "bad-boundary", "huge-line", "8bit-header",
             "no-blank-line", "truncate", "double-boundary"]), max_size=2)):
        at = draw(st.integers(0, max(len(raw) - 1, 0)))
        if mutation == "bare-lf":
            raw = raw[:at] + raw[at:].replace(b"\r\n", b"\n", 1)
        elif mutation == "bare-cr":
            raw = raw[:at] + raw[at:].replace(b"\r\n", b"\r", 1)
        elif mutation == "drop-close":
            cut = raw.rfind(b"--\r\n")
            raw = raw[:cut] + raw[cut + 2:] if cut >= 0 else raw
        elif mutation == "bad-boundary":
            raw = raw[:at] + raw[at:].replace(b"\r\n--", b"\r\n-- ", 1)
        elif mutation == "huge-line":
            raw = raw[:at] + b"x" * draw(st.sampled_from([999, 1001, 70_000])) + raw[at:]
        elif mutation == "8bit-header":
            raw = b"X-Eight: caf\xe9 \xff\xfe\r\n" + raw
        elif mutation == "no-blank-line":
            raw = raw.replace(b"\r\n\r\n", b"\r\n", 1)
        elif mutation == "truncate":
            raw = raw[:at]
        elif mutation == "double-boundary":
            start = raw.find(b"\r\n--")
            end = raw.find(b"\r\n", start + 2)
            if start >= 0 and end > 0:
                raw = raw[:end + 2] + raw[start + 2:end + 2] + raw[end + 2:]
    return raw


def _tree(msg: Message) -> Any:
    """What a reader of the parse tree can see, preamble and epilogue aside."""
    payload = msg.get_payload()
    if isinstance(payload, list):
        body: Any = [_tree(child) for child in payload]
    else:
        body = (payload, msg.get_payload(decode=True))
    return (list(msg.raw_items()), msg.get_content_type(), msg.get_unixfrom(),
            [type(d).__name__ for d in msg.defects], body)


def _compare(raw: bytes) -> bool:
    """Assert the shortcut and the stdlib agree on `raw`; whether the shortcut applied."""
    fast = compat.mime_tree(raw)
    if fast is None:
        return False
    stdlib = email.message_from_bytes(raw, policy=email_policy.compat32)
    assert _tree(fast) == _tree(stdlib)
    return True


@PROPERTY
@given(_mail())
def test_mime_tree_is_the_feedparser_tree(raw: bytes) -> None:
    _compare(raw)


@PROPERTY
@given(_entity(well_formed=True))
def test_well_formed_mime_takes_the_shortcut_with_the_same_tree(raw: bytes) -> None:
    # Without message/* parts and digests the generated mail is the shortcut's shape: this
    # is where it must both apply and agree (a shortcut that always stepped aside would
    # pass the property above and save nothing).
    assume(b"message/rfc822" not in raw and b"multipart/digest" not in raw)
    assert _compare(raw)


@PROPERTY
@given(_mail())
def test_parsed_message_is_the_same_either_way(raw: bytes) -> None:
    fast = mail_message.parse_message(raw)
    saved = mail_message._fast_tree
    mail_message._fast_tree = lambda _raw: None
    try:
        slow = mail_message.parse_message(raw)
    finally:
        mail_message._fast_tree = saved
    assert fast == slow
    assert [p.payload for p in fast.parts] == [p.payload for p in slow.parts]


# --- SMTP: compat.FastSMTP against aiosmtpd's own server -----------------------------------


class _Record:
    """A handler keeping what each message arrived as."""

    def __init__(self) -> None:
        self.envelopes: list[tuple[str | None, list[str], list[str], bytes]] = []

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope,
                          hostname: str, responses: list[str]) -> list[str]:
        session.host_name = hostname
        return [*responses[:-1], "250-PIPELINING", responses[-1]]

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content
        self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos),
                               list(envelope.mail_options),
                               content if isinstance(content, bytes) else b""))
        return "250 2.0.0 Ok: kept"


def _local_part_limited(server: SMTP) -> SMTP:
    # A class attribute in aiosmtpd, not a constructor argument: set so that the long local
    # part in _ADDRESS goes through FastSMTP._getaddr's limit check, not past it.
    server.local_part_limit = 64
    return server


class _Servers:
    """aiosmtpd's SMTP and compat.FastSMTP side by side, on one event loop thread."""

    def __init__(self, data_size_limit: int) -> None:
        self.loop = asyncio.new_event_loop()
        self.handlers = {"aiosmtpd": _Record(), "compat": _Record()}
        self.ports: dict[str, int] = {}
        self._servers = []
        for name, cls in (("aiosmtpd", SMTP), ("compat", compat.FastSMTP)):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            self.ports[name] = sock.getsockname()[1]
            handler = self.handlers[name]
            self._servers.append(self.loop.run_until_complete(self.loop.create_server(
                lambda c=cls, h=handler: _local_part_limited(c(
                    h, hostname="mx.test", decode_data=False, enable_SMTPUTF8=True,
                    loop=self.loop, data_size_limit=data_size_limit)),
                sock=sock)))
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        for server in self._servers:
            self.loop.call_soon_threadsafe(server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture(scope="module")
def servers() -> Iterator[_Servers]:
    both = _Servers(data_size_limit=4096)
    yield both
    both.close()


def _dialogue(port: int, script: bytes) -> bytes:
    """Everything the server says to a client that writes `script` and then waits."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(script)
        sock.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
    return out


_LINE = st.lists(st.sampled_from([b"x", b".", b"\r", b"\n", b"\r\n", b"\r\n.", b".\r\n",
                                  b"\xe9", b"QUIT", b" "]), max_size=40).map(b"".join)
_ADDRESS = st.one_of(
    st.sampled_from(["<a@x.test>", "<b.c+d@mail.y.test>", "<>", "<\"q u\"@x.test>",
                     "<a@[192.0.2.1]>", "a@x.test", "<@r.test:a@x.test>", "<a@x.test> SIZE=10",
                     "<a@x.test>  BODY=8BITMIME", "<very.long." + "l" * 70 + "@x.test>"]),
    st.text("abcXY.+-_@<>\"[] =", max_size=30))


@PROPERTY
@given(st.lists(_LINE, max_size=30), _ADDRESS, st.lists(_ADDRESS, min_size=1, max_size=3))
def test_smtp_dialogue_is_aiosmtpds(servers: _Servers, lines: list[bytes], sender: str,
                                    recipients: list[str]) -> None:
    # DATA of every shape (dot lines, bare CR and LF, the smuggling forms, over the size
    # limit), then a command after the end: replies and received bytes must be the same.
    # Lines over 1001 bytes are the one documented difference (smtpdata.py): not generated.
    data = b"\r\n".join(lines)
    assume(all(len(line) < 1000 for line in data.split(b"\r\n")))
    script = (b"EHLO client.test\r\nMAIL FROM:" + sender.encode() + b"\r\n"
              + b"".join(b"RCPT TO:" + r.encode() + b"\r\n" for r in recipients)
              + b"DATA\r\n" + data + b"\r\n.\r\nNOOP\r\nQUIT\r\n")
    before = {name: len(h.envelopes) for name, h in servers.handlers.items()}
    replies = {name: _dialogue(port, script) for name, port in servers.ports.items()}
    assert replies["compat"] == replies["aiosmtpd"]
    received = {name: h.envelopes[before[name]:] for name, h in servers.handlers.items()}
    assert received["compat"] == received["aiosmtpd"]


# --- reinjection: the pipelined transaction against smtplib's sendmail ---------------------


@PROPERTY
@given(st.binary(max_size=3000), st.lists(st.sampled_from(
    ["r1@y.test", "r2@y.test", "b\u00fc@y.test"]), min_size=1, max_size=3, unique=True),
    st.sampled_from(["s@x.test", "", "s\u00e9@x.test"]))
def test_pipelined_reinjection_delivers_what_sendmail_delivers(
        servers: _Servers, body: bytes, recipients: list[str], sender: str) -> None:
    # The same message through both paths into one server: the same envelope and bytes
    # (sendmail adds SIZE=, the one difference in the dialogue).
    port = servers.ports["aiosmtpd"]
    handler = servers.handlers["aiosmtpd"]
    start = len(handler.envelopes)
    for path in ("pipelined", "sendmail"):
        with smtplib.SMTP("127.0.0.1", port, local_hostname="gw.test", timeout=10) as smtp:
            smtp.ehlo()
            assert compat.pipelining(smtp)
            options = [] if sender.isascii() and all(r.isascii() for r in recipients) \
                else ["SMTPUTF8"]
            if path == "pipelined":
                Reinjector._pipelined(smtp, body, "", sender, recipients, options)
            else:
                assert smtp.sendmail(sender, recipients, body, mail_options=options) == {}
    (f1, r1, o1, c1), (f2, r2, o2, c2) = handler.envelopes[start:]
    assert (f1, r1, c1) == (f2, r2, c2)
    assert o1 == [o for o in o2 if not o.lower().startswith("size=")]


# --- aiosmtpd's connection set-up --------------------------------------------------------


class _WithAuth:
    async def auth_PLAIN(self, server: SMTP, args: list[str]) -> None:
        return None

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope,
                          hostname: str, responses: list[str]) -> list[str]:
        return responses


@pytest.mark.parametrize("handler", [_Record(), _WithAuth(), object()])
def test_inspect_cache_answers_as_inspect(handler: object) -> None:
    import inspect

    cache = compat.ClassInspect()
    loop = asyncio.new_event_loop()
    try:
        servers = [SMTP(handler, loop=loop), compat.FastSMTP(handler, loop=loop)]
    finally:
        loop.close()
    for obj in (handler, *servers):
        for _ in range(2):  # the second from the cache
            assert cache.getmembers(obj) == [
                (n, v) for n, v in inspect.getmembers(obj) if n.startswith("auth_")]
        hook = getattr(obj, "handle_EHLO", None)
        if hook is not None:
            assert cache.signature(hook) == inspect.signature(hook)
