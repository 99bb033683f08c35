"""Notifications to the administrators: who gets them, what they say, and that each alert
condition is mailed once (the store remembers it), with the real store and real files."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import os
import time
from email.message import EmailMessage
from pathlib import Path

import pytest

from mailwarden.mail.notify import (
    NoRecipients,
    Notifier,
    ServiceStatus,
    Sources,
    signatures,
    virus_notice,
)
from mailwarden.mail.reinject import ReinjectError
from mailwarden.state.load import load_state_text
from mailwarden.state.schema import State
from mailwarden.store.db import Database
from mailwarden.store.quarantine import Quarantine
from mailwarden.store.tracking import Delivery, MessageRecord, Tracking

STATE = """\
version: 4
system: {hostname: mx.example.org, admin_email: boss@example.org}
domains:
  - name: example.org
    transport: {host: 10.0.0.5}
notifications:
  sender: gateway@example.org
  virus_to_admin: true
  daily_report: {enabled: true, time: "07:00"}
  service_alerts: {enabled: true, signature_max_age_hours: 24, disk_used_percent: 100}
"""
HOUR = 3600


def state_with(*changes: tuple[str, str]) -> State:
    """The state above with some of its text replaced."""
    text = STATE
    for old, new in changes:
        assert old in text
        text = text.replace(old, new)
    return load_state_text(text)


class Outbox:
    """Collects what would be handed to Postfix, as Postfix would receive it."""

    def __init__(self) -> None:
        self.sent: list[tuple[EmailMessage, str, list[str]]] = []
        self.refuse = False

    def __call__(self, raw: bytes, sender: str, recipients: list[str]) -> None:
        if self.refuse:
            raise ReinjectError("reinjection failed: 451 try later")
        message = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.sent.append((message, sender, recipients))


@pytest.fixture
def clamav(tmp_path: Path) -> Path:
    folder = tmp_path / "clamav"
    folder.mkdir()
    (folder / "own.hdb").write_text("44d88612fea8a8f36de82e1278abb02f:68:Test\n")
    return folder


@pytest.fixture
def notifier(tmp_path: Path, clamav: Path) -> Notifier:
    return Notifier(Database(tmp_path / "mw.db"), Sources(clamav, (tmp_path,)))


def _cvd(path: Path, built: float) -> None:
    header = f"ClamAV-VDB:07 Dec 2026 08-00 +0000:27000:8700000:90:md5:dsig:builder:{built:.0f}"
    path.write_bytes(header.encode().ljust(512, b" ") + b"\x1f\x8b rest of the archive")


# --- who and from whom ------------------------------------------------------------------


def test_recipients_and_sender() -> None:
    state = state_with()
    notice = virus_notice(state, quarantine_id="q1", virus="Eicar-Signature", sender="a@b.example",
                          recipients=["x@example.org"], subject="hi", queue_id="4ABC",
                          client_ip="192.0.2.7", now=0)
    assert notice.recipients == ["boss@example.org"]
    assert str(notice.message["From"]) == "Mailwarden <gateway@example.org>"
    assert notice.message["Auto-Submitted"] == "auto-generated"
    other = load_state_text(STATE.replace("  sender: gateway@example.org\n",
                                          "  recipients: [a@example.org, b@example.org]\n"))
    notice = virus_notice(other, quarantine_id="q1", virus="V", sender="", recipients=[],
                          subject=None, queue_id=None, client_ip=None, now=0)
    assert notice.recipients == ["a@example.org", "b@example.org"]
    assert str(notice.message["From"]) == "Mailwarden <postmaster@mx.example.org>"


def test_nobody_to_send_to_is_an_error_not_a_guess() -> None:
    quiet = load_state_text(STATE.split("notifications:")[0].replace(
        ", admin_email: boss@example.org", ""))
    with pytest.raises(NoRecipients):
        virus_notice(quiet, quarantine_id="q", virus="V", sender="", recipients=[],
                     subject=None, queue_id=None, client_ip=None)


def test_a_virus_notice_says_what_was_held() -> None:
    notice = virus_notice(state_with(), quarantine_id="20261207-abc", virus="Win.Test.EICAR",
                          sender="evil@bad.example", recipients=["x@example.org", "y@example.org"],
                          subject="invoice <script>", queue_id="4ABC", client_ip="192.0.2.7")
    text = notice.message.get_content()
    for expected in ("Win.Test.EICAR", "20261207-abc", "evil@bad.example",
                     "x@example.org, y@example.org", "invoice <script>", "4ABC", "192.0.2.7"):
        assert expected in text
    assert notice.message["Subject"] == "[mx.example.org] Virus Win.Test.EICAR quarantined"


# --- signatures -------------------------------------------------------------------------


def test_signature_age_from_the_cvd_header_not_the_file_time(clamav: Path) -> None:
    os.utime(clamav / "own.hdb", (1000, 1000))
    _cvd(clamav / "daily.cvd", built=1_700_000_000)  # its mtime is now: not what counts
    _cvd(clamav / "main.cld", built=1_600_000_000)
    (clamav / "freshclam.dat").write_bytes(b"not a database")
    found = signatures(clamav)
    assert found is not None and (found.newest, found.built) == ("daily.cvd", 1_700_000_000)
    assert found.age_hours(1_700_000_000 + 5 * HOUR) == 5


def test_a_broken_header_falls_back_to_the_others(clamav: Path) -> None:
    os.utime(clamav / "own.hdb", (5000, 5000))
    (clamav / "daily.cvd").write_bytes(b"garbage" * 100)
    found = signatures(clamav)
    assert found is not None and found.newest == "own.hdb" and found.built == 5000
    (clamav / "own.hdb").unlink()
    (clamav / "daily.cvd").unlink()
    assert signatures(clamav) is None
    assert signatures(clamav / "missing") is None


# --- service alerts ---------------------------------------------------------------------

def alerts_only() -> State:
    return state_with(("{enabled: true, time", "{enabled: false, time"))


UP = [ServiceStatus("postfix", True, "active/running", 0),
      ServiceStatus("filter", True, "active/running", 2)]


def test_each_condition_is_mailed_once_and_again_after_it_cleared(notifier: Notifier) -> None:
    state, out, now = alerts_only(), Outbox(), time.time()
    assert notifier.run(state, out, lambda: UP, now)["service alerts"] == "nothing new"
    down = [UP[0], ServiceStatus("filter", False, "failed/failed", 2)]
    assert notifier.run(state, out, lambda: down, now)["service alerts"] == "sent"
    (message, sender, recipients), = out.sent
    assert (sender, recipients) == ("gateway@example.org", ["boss@example.org"])
    assert "filter is not running (failed/failed)" in message.get_content()
    assert message["X-Mailwarden-Notification"] == "alert"
    # Still down: nothing new.
    assert notifier.run(state, out, lambda: down, now)["service alerts"] == "nothing new"
    # Back up, then down again: mailed again.
    notifier.run(state, out, lambda: UP, now)
    notifier.run(state, out, lambda: down, now)
    assert len(out.sent) == 2


def test_a_restart_counted_by_systemd_is_mailed(notifier: Notifier) -> None:
    state, out, now = alerts_only(), Outbox(), time.time()
    notifier.run(state, out, lambda: UP, now)  # the first counts seen are the baseline
    assert out.sent == []
    restarted = [UP[0], ServiceStatus("filter", True, "active/running", 3)]
    notifier.run(state, out, lambda: restarted, now)
    (message, _, _), = out.sent
    assert "filter was restarted by systemd (1 time(s) since the last check, 3 since boot)" \
        in message.get_content()
    notifier.run(state, out, lambda: restarted, now)
    assert len(out.sent) == 1
    # A reboot sets the count back: a new baseline, no alert; the next restart alerts.
    notifier.run(state, out, lambda: [UP[0], ServiceStatus("filter", True, "x", 0)], now)
    notifier.run(state, out, lambda: [UP[0], ServiceStatus("filter", True, "x", 1)], now)
    assert len(out.sent) == 2


def test_a_failed_hand_over_is_retried(notifier: Notifier) -> None:
    state, out, now = alerts_only(), Outbox(), time.time()
    down = [ServiceStatus("policy", False, "stopped")]
    out.refuse = True
    result = notifier.run(state, out, lambda: down, now)
    assert result["service alerts"] == "[reinject_failed] reinjection failed: 451 try later"
    assert out.sent == []
    out.refuse = False
    assert notifier.run(state, out, lambda: down, now)["service alerts"] == "sent"


def test_old_missing_signatures_and_a_full_disk(notifier: Notifier, clamav: Path) -> None:
    now = time.time()
    os.utime(clamav / "own.hdb", (now - 30 * HOUR, now - 30 * HOUR))
    check = notifier.alerts(state_with(), UP, now)
    assert list(check.new) == ["alert:signatures:old"]
    assert "built 30 hours ago, more than the limit of 24" in check.new["alert:signatures:old"]
    (clamav / "own.hdb").unlink()
    full = state_with(("disk_used_percent: 100", "disk_used_percent: 1"))
    check = notifier.alerts(full, UP, now)
    assert "alert:signatures:missing" in check.new
    assert any(k.startswith("alert:disk:") for k in check.new)


def test_alerts_and_report_off_send_nothing(notifier: Notifier) -> None:
    state = state_with(("{enabled: true, time", "{enabled: false, time"),
                       ("{enabled: true, signature", "{enabled: false, signature"))
    out = Outbox()
    assert notifier.run(state, out, lambda: [ServiceStatus("x", False, "failed")]) == {}
    assert out.sent == []


# --- the daily report -------------------------------------------------------------------


def local(year: int, month: int, day: int, hour: int, minute: int) -> float:
    return dt.datetime(year, month, day, hour, minute).astimezone().timestamp()


def test_the_report_is_due_once_a_day_at_its_time(notifier: Notifier) -> None:
    state, out = state_with(), Outbox()
    assert notifier.report_due(state, local(2026, 12, 7, 6, 0))  # never sent: due
    notifier.send_report(state, out, local(2026, 12, 7, 7, 5))
    assert not notifier.report_due(state, local(2026, 12, 7, 23, 0))
    assert not notifier.report_due(state, local(2026, 12, 8, 6, 59))
    assert notifier.report_due(state, local(2026, 12, 8, 7, 0))


def test_the_report_counts(notifier: Notifier, tmp_path: Path) -> None:
    now = time.time()
    tracking = Tracking(notifier.db)
    for _ in range(3):
        tracking.record(MessageRecord("in", "alice@sender.example", 1000, [
            Delivery("bob@example.org", "accept", "Default")]), now - HOUR)
    tracking.record(MessageRecord("in", "eve@bad.example", 2000, [
        Delivery("bob@example.org", "quarantine", "Block viruses", "q1"),
        Delivery("carol@example.org", "quarantine", "Block viruses", "q1")],
        virus="Eicar-Test"), now - HOUR)
    tracking.record(MessageRecord("in", "old@sender.example", 10, [
        Delivery("bob@example.org", "accept", "Default")]), now - 3 * 86400)
    Quarantine(notifier.db, tmp_path / "q").put(
        b"Subject: x\r\n\r\nvirus\r\n", kind="virus", sender="eve@bad.example",
        recipients=["bob@example.org"], lifetime_days=14, virus="Eicar-Test",
        now=now - HOUR)
    text = notifier.report(state_with(), now).message.get_content()
    assert "in        4 message(s), 0 spam, 1 virus" in text
    assert "accept 3, quarantine 2" in text
    assert "virus       1" in text
    assert "example.org (in): 4 message(s)" in text
    assert "    3  alice@sender.example" in text and "old@sender.example" not in text
    assert "    4  bob@example.org" in text and "    1  carol@example.org" in text
    assert "    1  Eicar-Test" in text
    assert "Quarantine now: 1 message(s)" in text and "1 waiting for a decision" in text
    assert "ClamAV signatures: own.hdb, built 0 hour(s) ago." in text
