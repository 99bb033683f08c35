"""Notifications to the administrators: virus notices, the daily report, service alerts.

All of them go to `notifications.recipients` (default: system.admin_email) from
`notifications.sender` (default: postmaster@<hostname>), handed to Postfix on the
reinjection port like the quarantine digests, which applies no filter: a notice naming a
virus is never itself quarantined.

- Virus notices are sent by the filter itself (mail/filter.py), right after the message is
  safe in the quarantine: the filter already holds the reinjection connection, and the notice
  arrives while the administrator can still act on it. A notice that cannot be handed over is
  logged with the quarantine id; it never turns into a 4xx (Postfix would deliver the message
  again) and never delays the answer beyond one local SMTP exchange.
- The daily report and the service alerts are sent by `run` (mailwarden-notify.timer every
  5 minutes on the appliance, `mailwarden notify run` on demand). The store's `notices` table
  remembers the report's last sending and every alert condition while it lasts: a condition is
  mailed once, and again only after it cleared and came back. A notice is recorded only once
  Postfix took it, so a failed hand-over is tried again at the next run.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Any

import jinja2

from ..errors import MailwardenError
from ..state.schema import State
from ..store.db import Database
from ..store.statistics import Statistics
from .digest import Schedule, last_slot

Send = Callable[[bytes, str, list[str]], None]
DAY = 86400.0
# ClamAV's official databases: a 512-byte header whose ninth field is the build time.
CVD_SUFFIXES = (".cvd", ".cld")
# Signature files an administrator (or a test) adds by hand: their age is their mtime.
OWN_SUFFIXES = (".hdb", ".hsb", ".ndb", ".ldb", ".cdb", ".mdb", ".msb", ".ign2", ".fp")


class NoRecipients(MailwardenError):
    code = "no_notification_recipients"


@dataclass(frozen=True)
class ServiceStatus:
    """One watched service as its supervisor sees it. restarts: systemd's NRestarts (None
    where the supervisor does not count them, as in a development sandbox)."""

    name: str
    running: bool
    state: str
    restarts: int | None = None


@dataclass(frozen=True)
class Signatures:
    newest: str  # the file
    built: float  # Unix time

    def age_hours(self, now: float) -> float:
        return max(0.0, (now - self.built) / 3600)


@dataclass(frozen=True)
class Notice:
    kind: str  # virus, report, alert, test
    message: EmailMessage
    recipients: list[str]


_templates = jinja2.Environment(
    loader=jinja2.PackageLoader("mailwarden.mail", "templates"),
    autoescape=jinja2.select_autoescape(["html.j2"]), undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)


def _when(stamp: float) -> str:
    return dt.datetime.fromtimestamp(stamp).astimezone().strftime("%Y-%m-%d %H:%M")


def _size(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} GiB"


def recipients_of(state: State) -> list[str]:
    found = state.notification_recipients
    if not found:
        raise NoRecipients("no notification recipients: set notifications.recipients or "
                           "system.admin_email")
    return found


def compose(state: State, kind: str, subject: str, template: str, context: dict[str, Any],
            now: float) -> Notice:
    message = EmailMessage()
    message["From"] = f"Mailwarden <{state.notification_sender}>"
    recipients = recipients_of(state)
    message["To"] = ", ".join(recipients)
    message["Subject"] = f"[{state.system.hostname}] {subject}"
    message["Date"] = format_datetime(dt.datetime.fromtimestamp(now).astimezone())
    message["Message-ID"] = make_msgid(domain=state.system.hostname)
    # Mail from the appliance about itself: no vacation replies, and filters can tell it.
    message["Auto-Submitted"] = "auto-generated"
    message["X-Mailwarden-Notification"] = kind
    message.set_content(_templates.get_template(template).render(
        context, hostname=state.system.hostname, when=_when, size=_size))
    return Notice(kind, message, recipients)


def hand_over(notice: Notice, state: State, send: Send) -> None:
    send(notice.message.as_bytes(), state.notification_sender, list(notice.recipients))


# --- virus notices ----------------------------------------------------------------------


def virus_notice(state: State, *, quarantine_id: str, virus: str, sender: str,
                 recipients: Sequence[str], subject: str | None, queue_id: str | None,
                 client_ip: str | None, now: float | None = None) -> Notice:
    now = time.time() if now is None else now
    return compose(state, "virus", f"Virus {virus} quarantined", "notify-virus.txt.j2", {
        "quarantine_id": quarantine_id, "virus": virus, "sender": sender or "<>",
        "recipients": list(recipients), "subject": subject, "queue_id": queue_id,
        "client_ip": client_ip, "time": now,
    }, now)


# --- what the reports and alerts look at ------------------------------------------------


def _cvd_built(path: Path) -> float | None:
    try:
        with path.open("rb") as handle:
            header = handle.read(512)
    except OSError:
        return None
    fields = header.decode("ascii", "replace").split(":")
    if len(fields) < 9 or fields[0] != "ClamAV-VDB":
        return None
    try:
        return float(fields[8].strip("\0 "))
    except ValueError:
        return None


def signatures(folder: Path) -> Signatures | None:
    """The newest signature database in ClamAV's folder and when it was built: an official
    database's own header (its build time, not when freshclam copied it), a hand-made one's
    modification time. None: no signatures at all."""
    newest: Signatures | None = None
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return None
    for path in entries:
        if path.suffix in CVD_SUFFIXES:
            built = _cvd_built(path)
        elif path.suffix in OWN_SUFFIXES:
            try:
                built = path.stat().st_mtime
            except OSError:
                built = None
        else:
            continue
        if built is not None and (newest is None or built > newest.built):
            newest = Signatures(path.name, built)
    return newest


def disk_usage(paths: Iterable[Path]) -> list[tuple[str, float]]:
    """(path, percent used) for each file system, once per device."""
    seen: set[int] = set()
    found = []
    for path in paths:
        try:
            device = os.stat(path).st_dev
            usage = shutil.disk_usage(path)
        except OSError:
            continue
        if device in seen or usage.total == 0:
            continue
        seen.add(device)
        found.append((str(path), 100.0 * usage.used / usage.total))
    return found


@dataclass(frozen=True)
class AlertCheck:
    notice: Notice | None
    current: dict[str, str]  # every condition now
    new: dict[str, str]  # not mailed yet
    cleared: list[str]  # mailed, and gone now
    baselines: dict[str, str]  # restart counts to remember


@dataclass(frozen=True)
class Sources:
    """Where the notifier looks: ClamAV's folder and the folders whose disks it watches."""

    clamav_dir: Path
    disks: tuple[Path, ...]


# --- the notifier -----------------------------------------------------------------------


class Notifier:
    def __init__(self, db: Database, sources: Sources) -> None:
        self.db = db
        self.sources = sources
        self.statistics = Statistics(db)

    # --- the store's memory -------------------------------------------------------------

    def _get(self, key: str) -> tuple[float, str] | None:
        row = self.db.connection().execute(
            "SELECT sent, detail FROM notices WHERE key = ?", (key,)).fetchone()
        return (row["sent"], row["detail"]) if row else None

    def _put(self, key: str, sent: float, detail: str) -> None:
        with self.db.transaction() as conn:
            conn.execute("INSERT INTO notices (key, sent, detail) VALUES (?, ?, ?)"
                         " ON CONFLICT (key) DO UPDATE SET sent = excluded.sent,"
                         " detail = excluded.detail", (key, sent, detail))

    def _keys(self, prefix: str) -> dict[str, str]:
        rows = self.db.connection().execute(
            "SELECT key, detail FROM notices WHERE key >= ? AND key < ?",
            (prefix, prefix + "\uffff"))
        return {r["key"]: r["detail"] for r in rows}

    def _forget(self, keys: Iterable[str]) -> None:
        with self.db.transaction() as conn:
            conn.executemany("DELETE FROM notices WHERE key = ?", [(k,) for k in keys])

    # --- the daily report ---------------------------------------------------------------

    def report(self, state: State, now: float | None = None) -> Notice:
        now = time.time() if now is None else now
        since = now - DAY
        summary = self.statistics.summary(since, now)
        found = signatures(self.sources.clamav_dir)
        context = {
            "since": since, "until": now, "totals": summary["totals"],
            "outcomes": self.statistics.outcomes(since, now),
            "quarantined": self.statistics.quarantined(since, now),
            "domains": summary["domains"], "top_senders": summary["top_senders"],
            "top_recipients": summary["top_recipients"],
            "top_viruses": summary["top_viruses"],
            "quarantine": self.statistics.quarantine_size(),
            "signatures": found,
            "signature_age": found.age_hours(now) if found else None,
        }
        return compose(state, "report", f"Daily report, {_when(now)[:10]}",
                       "notify-report.txt.j2", context, now)

    def report_due(self, state: State, now: float) -> bool:
        settings = state.notifications.daily_report
        if not settings.enabled:
            return False
        slot = last_slot(Schedule(True, "daily", settings.time, "monday"), now)
        last = self._get("report")
        return last is None or last[0] < slot

    def send_report(self, state: State, send: Send, now: float | None = None) -> Notice:
        """Compose and hand over the report now, due or not, and record it."""
        now = time.time() if now is None else now
        notice = self.report(state, now)
        hand_over(notice, state, send)
        self._put("report", now, "sent")
        return notice

    # --- service alerts -----------------------------------------------------------------

    def conditions(self, state: State, services: Sequence[ServiceStatus],
                   now: float) -> tuple[dict[str, str], dict[str, str]]:
        """(every alert condition now as {key: what a person reads}, the restart counts to
        remember). Nothing is written: a preview and a run see the same."""
        settings = state.notifications.service_alerts
        found: dict[str, str] = {}
        seen_restarts = self._keys("restarts:")
        baselines: dict[str, str] = {}
        for service in services:
            if not service.running:
                found[f"alert:service:{service.name}"] = (
                    f"{service.name} is not running ({service.state})")
            if service.restarts is None:
                continue
            key = f"restarts:{service.name}"
            before = int(seen_restarts[key]) if key in seen_restarts else None
            # The first count seen is the baseline; a lower one means the host rebooted.
            if before is not None and service.restarts > before:
                found[f"alert:restarted:{service.name}:{service.restarts}"] = (
                    f"{service.name} was restarted by systemd "
                    f"({service.restarts - before} time(s) since the last check, "
                    f"{service.restarts} since boot)")
            if before != service.restarts:
                baselines[key] = str(service.restarts)
        sigs = signatures(self.sources.clamav_dir)
        limit = settings.signature_max_age_hours
        if sigs is None:
            found["alert:signatures:missing"] = (
                f"no ClamAV signatures in {self.sources.clamav_dir}: clamd cannot scan")
        elif sigs.age_hours(now) > limit:
            found["alert:signatures:old"] = (
                f"the newest ClamAV signatures ({sigs.newest}) were built "
                f"{sigs.age_hours(now):.0f} hours ago, more than the limit of {limit}: is "
                "freshclam getting updates?")
        threshold = settings.disk_used_percent
        for path, used in disk_usage(self.sources.disks):
            if used > threshold:
                found[f"alert:disk:{path}"] = (
                    f"the disk holding {path} is {used:.0f}% full (threshold {threshold}%)")
        return found, baselines

    def alerts(self, state: State, services: Sequence[ServiceStatus],
               now: float | None = None) -> AlertCheck:
        """The alert mail for conditions not mailed yet (None: nothing new), and what a run
        records once it is sent. Nothing is written here."""
        now = time.time() if now is None else now
        current, baselines = self.conditions(state, services, now)
        mailed = self._keys("alert:")
        new = {k: v for k, v in current.items() if k not in mailed}
        cleared = [k for k in mailed if k not in current]
        notice = None
        if new:
            count = len(new)
            notice = compose(
                state, "alert", f"Alert: {count} problem{'s' if count > 1 else ''} "
                "need attention", "notify-alert.txt.j2",
                {"new": list(new.values()),
                 "ongoing": [v for k, v in current.items() if k not in new], "time": now},
                now)
        return AlertCheck(notice, current, new, cleared, baselines)

    def _record_alerts(self, check: AlertCheck, now: float) -> None:
        for key, detail in {**check.new, **check.baselines}.items():
            self._put(key, now, detail)
        # A cleared condition is forgotten: should it come back, it is mailed again.
        self._forget(check.cleared)

    # --- the timer's run ----------------------------------------------------------------

    def run(self, state: State, send: Send, services: Callable[[], Sequence[ServiceStatus]],
            now: float | None = None) -> dict[str, str]:
        """Send what is due: {notification: "sent", "nothing new", or the error}. A failed
        one is retried at the next run; one failing does not stop the other."""
        now = time.time() if now is None else now
        results: dict[str, str] = {}
        if self.report_due(state, now):
            results["daily report"] = self._attempt(
                lambda: bool(self.send_report(state, send, now)))
        if state.notifications.service_alerts.enabled:
            def alert() -> bool:
                check = self.alerts(state, services(), now)
                if check.notice is not None:
                    hand_over(check.notice, state, send)
                self._record_alerts(check, now)
                return check.notice is not None
            results["service alerts"] = self._attempt(alert)
        return results

    @staticmethod
    def _attempt(action: Callable[[], bool]) -> str:
        try:
            sent = action()
        except MailwardenError as exc:  # Postfix refused it: reported, retried later
            return f"[{exc.code}] {exc.message}"
        except OSError as exc:  # Postfix not answering: the same
            return f"[unreachable] {exc}"
        return "sent" if sent else "nothing new"

    def test_notice(self, state: State, now: float | None = None) -> Notice:
        now = time.time() if now is None else now
        return compose(state, "test", "Test notification", "notify-test.txt.j2",
                       {"on": state.notifications.enabled()}, now)


__all__ = ["AlertCheck", "NoRecipients", "Notice", "Notifier", "ServiceStatus", "Signatures",
           "Sources", "disk_usage", "hand_over", "recipients_of", "signatures", "virus_notice"]
