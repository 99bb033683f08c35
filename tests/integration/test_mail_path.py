"""The mail path end to end: real Postfix -> our filter -> real Rspamd/clamd -> sink/store."""

from __future__ import annotations

import base64
import binascii
import email.policy
import email.utils
import io
import smtplib
import time
import uuid
import zipfile
from email.message import EmailMessage
from pathlib import Path

import pytest

from mailwarden.control import health
from mailwarden.process import run
from mailwarden.store.db import Database
from mailwarden.store.quarantine import Quarantine, QuarantineEntry
from mailwarden.store.tracking import Tracking
from mailwarden_dev.instance import EICAR, Sandbox
from mailwarden_dev.process import wait_until

from .conftest import state_for

pytestmark = pytest.mark.integration

GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
OUTSIDE = "192.0.2.25"  # inside sender.test's SPF record
EXTRA = """\
mail:
  reject_unknown_sender_domain: false   # Postfix resolves with the host's resolver here
greylisting:
  enabled: false
quarantine:
  lifetimes: {spam: 3, virus: 11, attachment: 5}
"""


@pytest.fixture(scope="module")
def gw(sandbox_root: Path) -> Sandbox:
    sandbox = Sandbox(sandbox_root / "mail", agent_services=True)
    sandbox.start(state_for(sandbox, EXTRA))
    yield sandbox
    sandbox.stop()


def _quarantine(gw: Sandbox) -> Quarantine:
    db = Database(gw.layout.database)
    return Quarantine(db, gw.layout.quarantine_dir)


def _tracking(gw: Sandbox) -> Tracking:
    return Tracking(Database(gw.layout.database))


def build(subject: str, body: str = "hello\n", sender: str = "alice@sender.test",
          to: str = "user@example.test", attachment: tuple[str, bytes] | None = None) -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{uuid.uuid4().hex}@sender.test>"
    msg["Date"] = email.utils.formatdate()
    msg.set_content(body)
    if attachment:
        name, data = attachment
        msg.add_attachment(data, maintype="application", subtype="octet-stream", filename=name)
    return msg.as_bytes()


def send(gw: Sandbox, raw: bytes, *, sender: str = "alice@sender.test",
         to: tuple[str, ...] = ("user@example.test",), port: int | None = None,
         client: str | None = OUTSIDE) -> None:
    """Send as an outside client (XCLIENT) to port 25, or from loopback to another port."""
    with smtplib.SMTP("127.0.0.1", port or gw.layout.ports.smtp, timeout=60) as smtp:
        smtp.ehlo("mail.sender.test")
        if client and port is None:
            code, reply = smtp.docmd("XCLIENT", f"ADDR={client} NAME=mail.sender.test "
                                                f"HELO=mail.sender.test")
            assert code == 220, reply
            smtp.ehlo("mail.sender.test")
        smtp.sendmail(sender, list(to), raw)


def wait_quarantined(gw: Sandbox, subject: str, timeout: float = 60) -> QuarantineEntry:
    q = _quarantine(gw)
    found: list[QuarantineEntry] = []

    def ready() -> bool:
        found[:] = [e for e in q.list(status=None, limit=1000) if e.subject == subject]
        return bool(found)

    wait_until(f"'{subject}' in the quarantine", ready, timeout)
    return found[0]


def marker() -> str:
    return f"mw-{uuid.uuid4().hex[:12]}"


def test_clean_mail_is_delivered_with_our_result_header(gw: Sandbox) -> None:
    subject = marker()
    send(gw, build(subject))
    [delivered] = gw.sink.wait_for_marker(subject)
    assert b"X-Mailwarden: score=" in delivered
    assert b"rule=" in delivered
    # Tracking rows are written in batches after the 250 (within a second: store/batch.py).
    def tracked() -> list[dict[str, object]]:
        return [r for r in _tracking(gw).search(sender="alice@sender.test", limit=50)
                if r["subject"] == subject]

    wait_until("the tracking record", lambda: bool(tracked()), 10)
    [record] = tracked()
    assert record["deliveries"][0]["action"] == "accept"  # type: ignore[index]
    # Plain text: clamd was not asked (virus.skip_plain_text), and both records say so.
    assert record["virus_scan"] == "skipped: plain text"
    assert b"virus=none (plain text, not sent to clamd)" in delivered


def test_gtube_is_quarantined_and_released_exactly_once(gw: Sandbox) -> None:
    subject = marker()
    send(gw, build(subject, body=f"{GTUBE}\n"))
    entry = wait_quarantined(gw, subject)
    assert entry.kind == "spam" and (entry.spam_score or 0) >= 15
    assert round(entry.expires - entry.time) == 3 * 86400  # quarantine.lifetimes.spam
    assert gw.sink.containing(subject) == []
    out = run([".venv/bin/mailwarden", "quarantine", "release", entry.id, "--root",
               str(gw.root)])
    assert "released to user@example.test" in out.stdout
    gw.sink.wait_for_marker(subject)
    again = run([".venv/bin/mailwarden", "quarantine", "release", entry.id, "--root",
                 str(gw.root)])
    assert "nothing to release" in again.stdout
    time.sleep(2)  # give a wrong second delivery the time to show up
    assert len(gw.sink.containing(subject)) == 1


def _virus_scan_of(gw: Sandbox, subject: str) -> object:
    def tracked() -> list[dict[str, object]]:
        return [r for r in _tracking(gw).search(limit=200) if r["subject"] == subject]

    wait_until("the tracking record", lambda: bool(tracked()), 10)
    return tracked()[0]["virus_scan"]


def test_eicar_is_quarantined_as_virus_and_never_delivered(gw: Sandbox) -> None:
    subject = marker()
    send(gw, build(subject, attachment=("eicar.com", EICAR)))
    entry = wait_quarantined(gw, subject)
    assert entry.kind == "virus" and entry.virus and "Eicar" in entry.virus
    assert round(entry.expires - entry.time) == 11 * 86400  # quarantine.lifetimes.virus
    # virus.scan = parts: clamd got the decoded attachment, not the inline text.
    assert _virus_scan_of(gw, subject) == "clamd: 1 part"
    time.sleep(2)
    assert gw.sink.containing(subject) == []


def _tools_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("readme.txt", b"nothing here\n")
        archive.writestr("tools/eicar.com", EICAR)
    return buffer.getvalue()


def _editable(subject: str) -> EmailMessage:
    return email.message_from_bytes(build(subject, body="see the archive\n"),
                                    _class=EmailMessage, policy=email.policy.default)


def _eicar_found_in(gw: Sandbox, msg: EmailMessage) -> object:
    """Send msg, check EICAR was found; what clamd was sent (the tracking record)."""
    subject = str(msg["Subject"])
    send(gw, msg.as_bytes())
    entry = wait_quarantined(gw, subject)
    assert entry.kind == "virus" and entry.virus and "Eicar" in entry.virus
    return _virus_scan_of(gw, subject)


def test_eicar_in_a_zip_is_found_in_the_decoded_part(gw: Sandbox) -> None:
    msg = _editable(marker())
    msg.add_attachment(_tools_zip(), maintype="application", subtype="zip",
                       filename="tools.zip")
    msg.add_attachment(b"%PDF-1.4 clean\n", maintype="application", subtype="pdf",
                       filename="notes.pdf")
    # Both attachments, decoded; the inline text was not clamd's.
    assert _eicar_found_in(gw, msg) == "clamd: 2 parts"


def test_html_mail_goes_whole_for_the_phishing_checks(gw: Sandbox) -> None:
    # clamd checks links only in mail it parses itself (virus.heuristic_phishing, on).
    msg = _editable(marker())
    msg.add_alternative("<p>see the archive</p>", subtype="html")
    msg.add_attachment(_tools_zip(), maintype="application", subtype="zip",
                       filename="tools.zip")
    assert _eicar_found_in(gw, msg) == "clamd: whole message"


def test_a_message_our_parser_doubts_goes_to_clamd_whole(gw: Sandbox) -> None:
    # The closing boundary is missing: a parser defect. clamd parses the message itself.
    subject = marker()
    boundary = "b-" + uuid.uuid4().hex
    raw = (f"From: alice@sender.test\r\nTo: user@example.test\r\nSubject: {subject}\r\n"
           f"Message-ID: <{uuid.uuid4().hex}@sender.test>\r\nMIME-Version: 1.0\r\n"
           f"Content-Type: multipart/mixed; boundary={boundary}\r\n\r\n"
           f"--{boundary}\r\n\r\nhello\r\n--{boundary}\r\n"
           f"Content-Type: application/octet-stream; name=e.com\r\n"
           f"Content-Transfer-Encoding: base64\r\n\r\n").encode()
    raw += base64.encodebytes(EICAR).replace(b"\n", b"\r\n")
    send(gw, raw)
    entry = wait_quarantined(gw, subject)
    assert entry.kind == "virus" and entry.virus and "Eicar" in entry.virus
    assert _virus_scan_of(gw, subject) == "clamd: whole message"


def test_uuencoded_eicar_in_a_plain_text_body_is_still_found(gw: Sandbox) -> None:
    # Plain text is not sent to clamd (virus.skip_plain_text) unless it may hide a file:
    # a uuencoded one makes the body something clamd must see.
    subject = marker()
    encoded = binascii.b2a_uu(EICAR[:45]).decode() + binascii.b2a_uu(EICAR[45:]).decode()
    send(gw, build(subject, body=f"the file:\nbegin 644 eicar.com\n{encoded}`\nend\n"))
    entry = wait_quarantined(gw, subject)
    assert entry.kind == "virus" and entry.virus and "Eicar" in entry.virus
    time.sleep(2)
    assert gw.sink.containing(subject) == []


def test_zip_holding_an_exe_loses_the_attachment(gw: Sandbox) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("invoice.exe", b"MZ" + b"\0" * 200)
    subject = marker()
    send(gw, build(subject, attachment=("invoice.zip", buffer.getvalue())))
    [delivered] = gw.sink.wait_for_marker(subject)
    assert b"invoice.zip" in delivered  # named in the notice
    assert b"was removed" in delivered
    assert b"UEsDB" not in delivered  # base64 of the zip's magic: the archive is gone
    original = wait_quarantined(gw, subject)  # the untouched original, for release
    assert original.kind == "attachment"
    assert round(original.expires - original.time) == 5 * 86400  # quarantine.lifetimes.attachment


def test_before_queue_rejects_gtube_during_data(gw: Sandbox) -> None:
    live = gw.layout.state_file.read_text()
    gw.apply(live.replace("mail:\n", "mail:\n  filter_mode: before_queue\n", 1),
             comment="before-queue")
    try:
        subject = marker()
        with pytest.raises(smtplib.SMTPDataError) as refused:
            send(gw, build(subject, body=f"{GTUBE}\n"))
        assert refused.value.smtp_code == 550
        clean = marker()
        send(gw, build(clean))
        gw.sink.wait_for_marker(clean)
    finally:
        gw.apply(live, comment="back to after-queue")


def test_clamd_down_defers_and_nothing_is_lost(gw: Sandbox) -> None:
    clamd = gw.daemons["clamav"]
    clamd.stop()
    try:
        # With an attachment: plain text is not sent to clamd (virus.skip_plain_text), so
        # it flows while clamd is down; anything clamd must see waits in the queue.
        subject = marker()
        send(gw, build(subject, attachment=("report.pdf", b"%PDF-1.4 not really\n")))
        time.sleep(3)
        assert gw.sink.containing(subject) == []
        queue = run(["postqueue", "-c", gw.layout.path("/etc/postfix"), "-p"]).stdout
        assert "Mail queue is empty" not in queue
    finally:
        clamd.start()
        health.wait_healthy("clamav", gw.layout, timeout=60)
    run(["postqueue", "-c", gw.layout.path("/etc/postfix"), "-f"])
    gw.sink.wait_for_marker(subject, timeout=90)


def test_filter_killed_mid_run_loses_nothing(gw: Sandbox) -> None:
    """SIGKILL the filter while 200 messages flow; after a restart every one arrives."""
    import signal
    import threading

    batch = marker()
    ids = [f"<{batch}-{n}@sender.test>" for n in range(200)]
    filter_daemon = gw.daemons["filter"]

    def killer() -> None:
        # Kill once mail is flowing: when the first few reached the sink.
        wait_until("first deliveries", lambda: len(gw.sink.containing(batch)) >= 10, 120)
        assert filter_daemon.process is not None
        filter_daemon.process.send_signal(signal.SIGKILL)

    thread = threading.Thread(target=killer)
    thread.start()
    with smtplib.SMTP("127.0.0.1", gw.layout.ports.smtp, timeout=60) as smtp:
        for n, message_id in enumerate(ids):
            raw = _with_id(build(f"{batch} {n}"), message_id)
            smtp.sendmail("alice@sender.test", ["user@example.test"], raw)
    thread.join()
    filter_daemon.stop()
    filter_daemon.start()
    health.wait_healthy("filter", gw.layout, timeout=60)
    postfix_dir = gw.layout.path("/etc/postfix")

    def all_arrived() -> bool:
        run(["postqueue", "-c", postfix_dir, "-f"])
        return len(_ids_at_sink(gw, batch)) == 200

    wait_until("all 200 messages at the sink", all_arrived, 300)
    arrived = _ids_at_sink(gw, batch, unique=False)
    duplicates = len(arrived) - 200
    print(f"\nSIGKILL during 200 messages: 200 arrived, {duplicates} duplicate(s)")
    assert set(arrived) == set(ids)
    assert duplicates <= 20  # only those in flight at the kill


def _with_id(raw: bytes, message_id: str) -> bytes:
    head, sep, body = raw.partition(b"\n\n")
    lines = [line for line in head.split(b"\n") if not line.lower().startswith(b"message-id:")]
    return b"\n".join([f"Message-ID: {message_id}".encode(), *lines]) + sep + body


def _ids_at_sink(gw: Sandbox, batch: str, unique: bool = True) -> list[str]:
    import re

    found = []
    for message in gw.sink.containing(batch):
        match = re.search(rb"Message-ID: (<" + batch.encode() + rb"-\d+@sender\.test>)",
                          message, re.I)
        if match:
            found.append(match.group(1).decode())
    return sorted(set(found)) if unique else found


def test_gtube_through_the_api_release_and_audit(gw: Sandbox) -> None:
    from falcon import testing

    from mailwarden.api.app import Services, create_app
    from mailwarden.control.service import NoController
    from mailwarden.store.credentials import CredentialStore
    from mailwarden.store.users import Users

    db = Database(gw.layout.database)
    users = Users(CredentialStore.for_layout(gw.layout))
    users.add("qm-alice", "correct horse battery", "qmanager")
    api = testing.TestClient(create_app(Services(gw.layout, db, NoController())))
    session = api.simulate_post("/api/session", json={"username": "qm-alice",
                                                      "password": "correct horse battery"})
    headers = {"X-CSRF-Token": session.json["csrf_token"],
               "Cookie": f"mw_session={session.cookies['mw_session'].value}"}
    subject = marker()
    send(gw, build(subject, body=f"{GTUBE}\n"))

    def listed() -> list[dict[str, object]]:
        items = api.simulate_get("/api/quarantine", headers=headers,
                                 params={"q": subject}).json["items"]
        return [i for i in items if i["subject"] == subject]

    wait_until("GTUBE listed by the API", lambda: bool(listed()), 60)
    [entry] = listed()
    assert entry["kind"] == "spam"
    released = api.simulate_post(f"/api/quarantine/{entry['id']}/release", headers=headers)
    assert released.json == {"released": ["user@example.test"]}
    gw.sink.wait_for_marker(subject)
    admin = users.add("audit-admin", "correct horse battery", "admin")
    admin_token = users.create_token("audit-reader", "audit", admin)[1]
    audit = api.simulate_get("/api/audit", headers={"Authorization": f"Bearer {admin_token}"})
    assert any(item["action"] == "quarantine.release" and item["actor"] == "qm-alice"
               and item["target"] == entry["id"] for item in audit.json["items"])
