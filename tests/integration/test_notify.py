"""Notifications through the real mail path: each setting switched on produces its mail at
the sink, switched off none. Virus notices come from the real filter (EICAR found by real
clamd); the daily report and the service alerts from `mailwarden notify run`, the timer's
command, handing over to the sandbox's Postfix on the reinjection port.

"None arrived" is asserted once nothing can still be on its way: what would have produced
the mail has finished (the filter's tracking record is written after its notices were handed
over; `notify run` returns after Postfix took them) and Postfix's queue is empty."""

from __future__ import annotations

import email
import email.policy
import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from email.message import EmailMessage
from pathlib import Path

import pytest

from mailwarden.cli import main
from mailwarden.control import health
from mailwarden.process import run
from mailwarden.store.db import Database
from mailwarden.store.tracking import Tracking
from mailwarden_dev.instance import EICAR, Sandbox
from mailwarden_dev.process import wait_until

from .conftest import state_for
from .test_mail_path import build, send, wait_quarantined

pytestmark = pytest.mark.integration

BASE = """\
mail:
  reject_unknown_sender_domain: false
greylisting:
  enabled: false
"""


def _state(gw: Sandbox, notifications: str) -> str:
    text = state_for(gw, BASE + "notifications:\n" + notifications)
    return text.replace("version: 1\n", "version: 4\n", 1)


@pytest.fixture(scope="module")
def gw(sandbox_root: Path) -> Iterator[Sandbox]:
    sandbox = Sandbox(sandbox_root / "notify", agent_services=True)
    sandbox.start(_state(sandbox, "  virus_to_admin: false\n"))
    yield sandbox
    sandbox.stop()


def _admin() -> str:
    return f"admin-{uuid.uuid4().hex[:8]}@example.test"


def _apply(gw: Sandbox, admin: str, settings: str) -> None:
    text = _state(gw, f"  recipients: [{admin}]\n  sender: alerts@mx.example.test\n"
                  + settings)
    gw.apply(text)


def _settled(gw: Sandbox) -> None:
    """Postfix holds nothing: whatever was handed over has reached the sink."""
    config = gw.layout.path("/etc/postfix")
    wait_until("an empty Postfix queue", lambda: "Mail queue is empty" in run(
        ["postqueue", "-c", config, "-p"], check=False).stdout, 60)


def _notices(gw: Sandbox, admin: str, kind: str) -> list[EmailMessage]:
    found = []
    for raw in gw.sink.messages():
        message = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        if message["X-Mailwarden-Notification"] == kind and admin in str(message["To"]):
            found.append(message)
    return found


def _wait_notice(gw: Sandbox, admin: str, kind: str, count: int = 1) -> list[EmailMessage]:
    wait_until(f"{count} {kind} notification(s) for {admin}",
               lambda: len(_notices(gw, admin, kind)) >= count, 60)
    return _notices(gw, admin, kind)


def _notify_run(gw: Sandbox) -> None:
    assert main(["notify", "run", "--root", str(gw.root)]) == 0


def _eicar(gw: Sandbox) -> tuple[str, str]:
    """Send EICAR; (subject, quarantine id) once the filter has finished with it."""
    subject = f"virus-{uuid.uuid4().hex[:10]}"
    send(gw, build(subject, attachment=("eicar.com", EICAR)), to=("victim@example.test",))
    entry = wait_quarantined(gw, subject)
    tracking = Tracking(Database(gw.layout.database))
    wait_until("the tracking record", lambda: any(
        r["subject"] == subject for r in tracking.search(limit=200)), 30)
    return subject, entry.id


def test_virus_notice_on_and_off(gw: Sandbox) -> None:
    admin = _admin()
    _apply(gw, admin, "  virus_to_admin: true\n")
    subject, qid = _eicar(gw)
    (notice,) = _wait_notice(gw, admin, "virus")
    text = notice.get_content()
    assert qid in text and subject in text and "Eicar" in text
    assert "alice@sender.test" in text and "victim@example.test" in text
    assert "alerts@mx.example.test" in str(notice["From"])
    # The notice was not filtered back into the quarantine (it names a virus).
    assert notice["X-Mailwarden"] is None

    _apply(gw, admin, "  virus_to_admin: false\n")
    _eicar(gw)
    _settled(gw)
    assert len(_notices(gw, admin, "virus")) == 1


def test_daily_report_on_and_off(gw: Sandbox) -> None:
    admin = _admin()
    # Mail for the report to count: one clean message, one virus.
    clean = f"clean-{uuid.uuid4().hex[:8]}"
    send(gw, build(clean, sender="carol@sender.test"), sender="carol@sender.test",
         to=("reader@example.test",))
    gw.sink.wait_for_marker(clean)
    _eicar(gw)

    _apply(gw, admin, "  daily_report: {enabled: false, time: '00:00'}\n")
    _notify_run(gw)
    _settled(gw)
    assert _notices(gw, admin, "report") == []

    _apply(gw, admin, "  daily_report: {enabled: true, time: '00:00'}\n")
    _notify_run(gw)
    (report,) = _wait_notice(gw, admin, "report")
    text = report.get_content()
    assert "example.test (in)" in text  # by domain
    assert "carol@sender.test" in text and "reader@example.test" in text  # top lists
    assert "virus " in text and "Eicar" in text  # by kind, and the viruses seen
    assert "Quarantine now:" in text and "mailwarden-test.hdb" in text  # signature age
    # Due once a day: the next run sends nothing.
    _notify_run(gw)
    _settled(gw)
    assert len(_notices(gw, admin, "report")) == 1


def test_service_alert_for_a_full_disk_on_and_off(gw: Sandbox) -> None:
    admin = _admin()
    # Any disk in use is fuller than 1%.
    _apply(gw, admin, "  service_alerts: {enabled: false, disk_used_percent: 1}\n")
    _notify_run(gw)
    _settled(gw)
    assert _notices(gw, admin, "alert") == []

    _apply(gw, admin, "  service_alerts: {enabled: true, disk_used_percent: 1}\n")
    _notify_run(gw)
    (alert,) = _wait_notice(gw, admin, "alert")
    assert "% full (threshold 1%)" in alert.get_content()
    # Once per condition: it lasts, and the next run mails nothing.
    _notify_run(gw)
    _settled(gw)
    assert len(_notices(gw, admin, "alert")) == 1
    # Cleared, then back: mailed again.
    _apply(gw, admin, "  service_alerts: {enabled: true}\n")
    _notify_run(gw)
    _apply(gw, admin, "  service_alerts: {enabled: true, disk_used_percent: 1}\n")
    _notify_run(gw)
    _wait_notice(gw, admin, "alert", count=2)


def test_service_alert_for_old_signatures(gw: Sandbox) -> None:
    admin = _admin()
    database = gw.layout.path("/var/lib/clamav") / "mailwarden-test.hdb"
    kept = database.stat().st_mtime
    old = time.time() - 5 * 3600
    os.utime(database, (old, old))
    try:
        _apply(gw, admin, "  service_alerts: {enabled: false, signature_max_age_hours: 2}\n")
        _notify_run(gw)
        _settled(gw)
        assert _notices(gw, admin, "alert") == []
        _apply(gw, admin, "  service_alerts: {enabled: true, signature_max_age_hours: 2}\n")
        _notify_run(gw)
        (alert,) = _wait_notice(gw, admin, "alert")
        assert "mailwarden-test.hdb) were built 5 hours ago, more than the limit of 2" \
            in alert.get_content()
    finally:
        os.utime(database, (kept, kept))


def _stopped(gw: Sandbox, service: str) -> Iterator[None]:
    gw.daemons[service].stop()
    try:
        yield
    finally:
        gw.launch(service)
        health.wait_healthy(service, gw.layout)


def test_service_alert_for_a_stopped_daemon(gw: Sandbox) -> None:
    """The sandbox's supervisor counts no restarts (systemd's NRestarts does on the
    appliance): here a daemon that stopped stands for a failed unit. No state is applied
    while it is stopped (the apply would find it unhealthy and roll back)."""
    admin = _admin()
    _apply(gw, admin, "  service_alerts: {enabled: false}\n")
    with contextmanager(_stopped)(gw, "policy"):
        _notify_run(gw)
        _settled(gw)
    assert _notices(gw, admin, "alert") == []

    _apply(gw, admin, "  service_alerts: {enabled: true}\n")
    _notify_run(gw)  # whatever holds already is mailed before the daemon stops
    _settled(gw)
    before = len(_notices(gw, admin, "alert"))
    with contextmanager(_stopped)(gw, "policy"):
        _notify_run(gw)
        alerts = _wait_notice(gw, admin, "alert", count=before + 1)
    assert "policy is not running (stopped)" in alerts[-1].get_content()


def test_on_demand_commands(gw: Sandbox, capsys: pytest.CaptureFixture[str]) -> None:
    """The CLI's test notification and report now, whatever the schedule says; the previews
    send nothing."""
    admin = _admin()
    _apply(gw, admin, "  daily_report: {enabled: false}\n")
    root = ["--root", str(gw.root)]
    assert main(["notify", "preview", "report", *root]) == 0
    assert main(["notify", "preview", "alerts", *root]) == 0
    out = capsys.readouterr().out
    assert f"To: {admin}" in out and "Daily report of mx.example.test" in out
    _settled(gw)
    assert _notices(gw, admin, "report") == []

    assert main(["notify", "test", *root]) == 0
    (test,) = _wait_notice(gw, admin, "test")
    assert "No notification is turned on yet" in test.get_content()
    assert main(["notify", "send-report", *root]) == 0
    _wait_notice(gw, admin, "report")
    assert f"sent the daily report to {admin}" in capsys.readouterr().out
