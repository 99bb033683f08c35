"""The mail path's authentication and hostile input, through real Postfix and our daemons:
SPF at RCPT, greylisting, DMARC, outbound DKIM checked against the DNS record the harness
serves, the tag level, and bad input that must get a defined outcome and lose nothing."""

from __future__ import annotations

import io
import smtplib
import socket
import time
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailwarden.mail import dkim
from mailwarden.mail.resolver import make_resolver
from mailwarden.store.db import Database
from mailwarden.store.quarantine import Quarantine
from mailwarden_dev.instance import Sandbox
from mailwarden_dev.process import wait_until
from mailwarden_dev.testdns import Zone

from .conftest import state_for
from .test_mail_path import build, send

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def gw(sandbox_root: Path) -> Iterator[Sandbox]:
    sandbox = Sandbox(sandbox_root / "auth", agent_services=True)
    key = dkim.generate_key(sandbox.layout, "example.test", "mw")
    sandbox.dns.zones["example.test"].add("mw._domainkey", "TXT", key.txt)
    sandbox.dns.zones["plain.test"] = Zone("plain.test").add("@", "MX", "10 mx.plain.test.") \
        .add("mx", "A", "198.51.100.9")
    extra = f"""\
mail:
  reject_unknown_sender_domain: false
  smarthost: {{host: 127.0.0.1, port: {sandbox.sink.port}}}
spam:
  fuzzy_check: false
  levels: {{tag: 4.0, quarantine: 30.0, reject: 40.0}}
  subject_tag: "[Probably spam]"
  symbol_scores: [{{symbol: SUBJ_ALL_CAPS, score: 12.0}}]  # one reliable way above "tag"
greylisting:
  enabled: true
  delay_seconds: 2
  exempt_networks: [192.0.2.0/24]
dkim:
  sign:
    - {{domain: example.test, selector: mw, key: {key.key_name}}}
"""
    sandbox.start(state_for(sandbox, extra).replace("spam:\n  fuzzy_check: false\n", "", 1))
    yield sandbox
    sandbox.stop()


def marker() -> str:
    return f"mw-{uuid.uuid4().hex[:12]}"


def quarantined(gw: Sandbox, subject: str, timeout: float = 60) -> object:
    q = Quarantine(Database(gw.layout.database),
                   gw.layout.quarantine_dir)
    found: list[object] = []

    def ready() -> bool:
        found[:] = [e for e in q.list(status=None, limit=1000) if e.subject == subject]
        return bool(found)

    wait_until(f"{subject} quarantined", ready, timeout)
    return found[0]


# --- authentication ---------------------------------------------------------------------


def test_outbound_mail_is_dkim_signed_and_verifies(gw: Sandbox) -> None:
    subject = marker()
    raw = build(subject, sender="alice@example.test", to="bob@sender.test")
    send(gw, raw, sender="alice@example.test", to=("bob@sender.test",),
         port=gw.layout.ports.submission)
    [arrived] = gw.sink.wait_for_marker(subject)
    assert b"DKIM-Signature:" in arrived and b"d=example.test" in arrived
    # smtp-sink puts its own lines in front of the message; they are not signed.
    message = arrived[arrived.index(b"DKIM-Signature:"):]
    result, domains = dkim.verify(message, make_resolver(gw.layout))
    assert (result, domains) == ("pass", ["example.test"])


def test_spf_fail_is_rejected_at_rcpt(gw: Sandbox) -> None:
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        send(gw, build(marker()), client="203.0.113.5")  # not in sender.test's SPF record
    code, text = refused.value.recipients["user@example.test"]
    assert code == 550 and b"5.7.23" in text and b"SPF" in text


def test_dmarc_reject_is_honoured(gw: Sandbox) -> None:
    subject = marker()
    # Envelope from a domain without SPF; the From header forges sender.test (p=reject).
    send(gw, build(subject, sender="ceo@sender.test"), sender="bounce@plain.test",
         client="192.0.2.77")
    entry = quarantined(gw, subject)
    assert entry.rule == "dmarc"  # type: ignore[attr-defined]
    time.sleep(1)
    assert gw.sink.containing(subject) == []


def test_greylisting_defers_then_accepts_the_retry(gw: Sandbox) -> None:
    subject = marker()
    raw = build(subject, sender="news@plain.test")
    with pytest.raises(smtplib.SMTPRecipientsRefused) as deferred:
        send(gw, raw, sender="news@plain.test", client="198.51.100.9")
    code, text = deferred.value.recipients["user@example.test"]
    assert code == 450 and b"Greylisted" in text
    time.sleep(3)
    send(gw, raw, sender="news@plain.test", client="198.51.100.9")
    gw.sink.wait_for_marker(subject)


def test_mail_above_the_tag_level_is_delivered_tagged(gw: Sandbox) -> None:
    # An all-capitals subject scores SUBJ_ALL_CAPS (weight 12 here, scaled by Rspamd): over
    # tag (4), far below quarantine (30).
    subject = f"BUY CHEAP PILLS NOW {marker().upper()}"
    send(gw, build(subject))
    [arrived] = gw.sink.wait_for_marker(subject)
    assert f"Subject: [Probably spam] {subject}".encode() in arrived  # spam.subject_tag
    assert b"X-Spam-Flag: YES" in arrived
    plain = marker()
    send(gw, build(plain))
    [untagged] = gw.sink.wait_for_marker(plain)
    assert f"Subject: {plain}".encode() in untagged and b"X-Spam-Flag" not in untagged


# --- bad input: a defined outcome each, nothing lost ----------------------------------------


def test_broken_mime_and_headers_are_delivered(gw: Sandbox) -> None:
    subject = marker()
    broken = (
        f"Subject: {subject}\r\nFrom: =?utf-8?B?broken?= <\xe4@sender.test>\r\n"
        "Content-Type: multipart/mixed; boundary=zzz\r\n\r\n"
        "--zzz\r\nContent-Type: text/plain; charset=no-such-charset\r\n"
        "Content-Transfer-Encoding: base64\r\n\r\n@@@not base64@@@\r\n"
        "--zzz\r\nContent-Type: application/octet-stream; name=\"x.bin\"\r\n\r\n"
        "\x00\x01\x02 truncated, no closing boundary\r\n"
    ).encode("latin-1")
    send(gw, broken)
    gw.sink.wait_for_marker(subject)


def test_deeply_nested_multiparts_are_quarantined_not_lost(gw: Sandbox) -> None:
    subject = marker()
    parts = "".join(f"Content-Type: multipart/mixed; boundary=b{n}\r\n\r\n--b{n}\r\n"
                    for n in range(200))
    raw = f"From: alice@sender.test\r\nSubject: {subject}\r\n{parts}deep\r\n".encode()
    send(gw, raw)
    # Deeper than ClamAV unpacks (virus.max_recursion): it cannot be called clean.
    entry = quarantined(gw, subject)
    assert entry.kind == "virus" and "MaxRecursion" in (entry.virus or "")  # type: ignore[attr-defined]


def test_null_sender_bounces_pass(gw: Sandbox) -> None:
    subject = marker()
    send(gw, build(subject, sender="MAILER-DAEMON@plain.test"), sender="")
    gw.sink.wait_for_marker(subject)


def test_message_over_the_size_limit_gets_552(gw: Sandbox) -> None:
    big = build(marker(), body="x" * (40 * 1024 * 1024))
    with pytest.raises(smtplib.SMTPSenderRefused) as refused:
        send(gw, big)
    assert refused.value.smtp_code == 552


def test_thousand_recipients_in_one_message(gw: Sandbox) -> None:
    subject = marker()
    recipients = tuple(f"user{n}@example.test" for n in range(1000))
    send(gw, build(subject), to=recipients)
    # Postfix relays in batches (default_destination_recipient_limit): count them all.
    def all_there() -> bool:
        return sum(m.count(b"X-Rcpt-Args:") for m in gw.sink.containing(subject)) >= 1000

    wait_until("1000 recipients at the sink", all_there, 180)
    assert sum(m.count(b"X-Rcpt-Args:") for m in gw.sink.containing(subject)) == 1000


def test_nested_zip_bomb_is_stopped_by_the_scanner_limits(gw: Sandbox) -> None:
    data = b"\0" * 1024 * 1024
    for level in range(20):  # deeper than virus.max_recursion (16)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(f"layer{level}.zip" if level else "zeros.bin", data)
        data = buffer.getvalue()
    subject = marker()
    send(gw, build(subject, attachment=("bomb.zip", data)))
    entry = quarantined(gw, subject)
    assert entry.kind == "virus"  # type: ignore[attr-defined]
    assert "Limits" in (entry.virus or "")  # type: ignore[attr-defined]


def test_highly_compressed_attachment_passes_without_harm(gw: Sandbox) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("zeros.bin", b"\0" * (30 * 1024 * 1024))  # 30 MB in about 30 kB
    subject = marker()
    send(gw, build(subject, attachment=("zeros.zip", buffer.getvalue())))
    gw.sink.wait_for_marker(subject)  # the filter only lists names; nothing is unpacked


def test_smtp_smuggling_attempt_stays_one_message(gw: Sandbox) -> None:
    subject, smuggled = marker(), marker()
    payload = (f"From: alice@sender.test\r\nSubject: {subject}\r\n\r\nhello\n.\n"
               "MAIL FROM:<evil@sender.test>\r\nRCPT TO:<user@example.test>\r\nDATA\r\n"
               f"Subject: {smuggled}\r\n\r\nsmuggled\r\n.\r\n").encode()
    with socket.create_connection(("127.0.0.1", gw.layout.ports.smtp), timeout=30) as sock:
        reader = sock.makefile("rb")

        def command(line: bytes) -> bytes:
            sock.sendall(line)
            reply = reader.readline()
            while reply[3:4] == b"-":
                reply = reader.readline()
            return reply

        assert reader.readline().startswith(b"220")
        command(b"EHLO mail.sender.test\r\n")
        # An outside client: Postfix's bare-LF rules exempt the trusted networks.
        assert command(b"XCLIENT ADDR=192.0.2.25 NAME=mail.sender.test\r\n").startswith(
            b"220")
        command(b"EHLO mail.sender.test\r\n")
        assert command(b"MAIL FROM:<alice@sender.test>\r\n").startswith(b"250")
        assert command(b"RCPT TO:<user@example.test>\r\n").startswith(b"250")
        assert command(b"DATA\r\n").startswith(b"354")
        final = command(payload)
        command(b"QUIT\r\n")
    assert final.startswith(b"250")
    [arrived] = gw.sink.wait_for_marker(subject)
    assert smuggled.encode() in arrived  # still inside the first message's body
    time.sleep(2)
    assert not [m for m in gw.sink.messages()
                if f"Subject: {smuggled}".encode() in m.split(b"\r\n\r\n", 1)[0]
                and subject.encode() not in m]

