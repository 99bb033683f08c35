"""Quarantine digests: one message to each recipient listing what was held for them since
their last digest, with links to act on each message and into the portal.

The schedule is the state's (quarantine.digest, a domain's own `digest` keys replacing
single keys): daily or weekly at a local time. `run` is called often (a timer every 15
minutes on the appliance, the development harness on demand) and sends what is due: a
recipient gets a digest once per scheduled time, and only when something new was quarantined
for them since the last one. What was sent is recorded per recipient in the store, so a
second run at the same time sends nothing.

Every link carries a ticket (store/tickets.py) for that recipient and, for a message's
actions, that message. The links open a page that says what will happen; only its button (a
POST) acts, so a mail provider's link scanner fetching every URL in the mail changes
nothing. Digests are handed to Postfix on the reinjection port, which applies no filter: a
digest listing spam is never itself quarantined.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from urllib.parse import quote

import jinja2

from ..errors import MailwardenError
from ..state.schema import Digest as DigestSettings
from ..state.schema import State
from ..store.db import Database
from ..store.quarantine import Quarantine, QuarantineEntry
from ..store.tickets import Tickets

# The actions a digest offers for each message, in the order shown.
ACTIONS = ("release", "delete", "allow", "block")
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
# The most messages one digest lists; the rest are counted and reached through the portal.
MAX_LISTED = 200
DAY = 86400.0

Send = Callable[[bytes, str, list[str]], None]


@dataclass(frozen=True)
class Schedule:
    enabled: bool
    frequency: str
    time: str
    weekday: str


@dataclass(frozen=True)
class Link:
    action: str
    url: str


@dataclass(frozen=True)
class Item:
    entry: QuarantineEntry
    links: list[Link]


@dataclass(frozen=True)
class DigestMail:
    recipient: str
    items: list[Item]
    more: int  # new messages beyond MAX_LISTED
    portal: str | None
    message: EmailMessage


def _domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower()


def schedule_for(state: State, address: str) -> Schedule:
    """The digest settings for this address: quarantine.digest, each key the address's relay
    domain sets replacing that one (the domain itself first, then a parent that takes
    subdomains)."""
    base: DigestSettings = state.quarantine.digest
    values = {"enabled": base.enabled, "frequency": base.frequency, "time": base.time,
              "weekday": base.weekday}
    domain = _domain_of(address)
    match = next((d for d in state.domains if d.name == domain), None) or next(
        (d for d in state.domains if d.subdomains and domain.endswith("." + d.name)), None)
    if match is not None and match.digest is not None:
        for key in values:
            value = getattr(match.digest, key)
            if value is not None:
                values[key] = value
    return Schedule(**values)  # type: ignore[arg-type]


def last_slot(schedule: Schedule, now: float) -> float:
    """The latest scheduled time at or before now (local time), as a Unix time."""
    local = dt.datetime.fromtimestamp(now).astimezone()
    hour, minute = (int(p) for p in schedule.time.split(":"))
    slot = local.replace(hour=hour, minute=minute, second=0, microsecond=0)
    if schedule.frequency == "weekly":
        slot -= dt.timedelta(days=(slot.weekday() - WEEKDAYS.index(schedule.weekday)) % 7)
        if slot > local:
            slot -= dt.timedelta(days=7)
    elif slot > local:
        slot -= dt.timedelta(days=1)
    return slot.timestamp()


def portal_url(state: State) -> str:
    return (state.quarantine.digest.portal_url
            or f"https://{state.system.hostname}:8006").rstrip("/")


def sender_of(state: State) -> str:
    return state.quarantine.digest.sender or state.admin_email


_templates = jinja2.Environment(
    loader=jinja2.PackageLoader("mailwarden.mail", "templates"),
    autoescape=jinja2.select_autoescape(["html.j2"]), undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True)


def _when(stamp: float) -> str:
    return dt.datetime.fromtimestamp(stamp).astimezone().strftime("%Y-%m-%d %H:%M")


def login_link_mail(state: State, tickets: Tickets, address: str, lifetime: float,
                    now: float | None = None) -> EmailMessage:
    """The message with a portal login link for address (what the portal's front page sends
    when asked): the digests' login ticket, alone, with a shorter life."""
    now = time.time() if now is None else now
    link = f"{portal_url(state)}/ticket/login?t=" + quote(
        tickets.make(address, None, lifetime, now), safe="")
    message = EmailMessage()
    message["From"] = f"Mailwarden quarantine <{sender_of(state)}>"
    message["To"] = address
    message["Subject"] = f"Your quarantine login link for {address}"
    message["Date"] = format_datetime(dt.datetime.fromtimestamp(now).astimezone())
    message["Message-ID"] = make_msgid(domain=state.system.hostname)
    message["Auto-Submitted"] = "auto-generated"
    message["X-Mailwarden-Digest"] = "login-link"
    message.set_content(_templates.get_template("login-link.txt.j2").render(
        address=address, hostname=state.system.hostname, link=link,
        minutes=int(lifetime // 60)))
    return message


class Digests:
    def __init__(self, db: Database, quarantine: Quarantine, tickets: Tickets) -> None:
        self.db = db
        self.quarantine = quarantine
        self.tickets = tickets

    # --- what is new ------------------------------------------------------------------------

    def last(self, recipient: str) -> tuple[float, float] | None:
        """(sent, cutoff) of the recipient's last digest: when it went out, and up to when
        quarantined mail was in it."""
        row = self.db.connection().execute(
            "SELECT sent, cutoff FROM digests WHERE recipient = ?",
            (recipient.lower(),)).fetchone()
        return (row["sent"], row["cutoff"]) if row else None

    def recipients(self) -> list[str]:
        """Everyone with quarantined mail still waiting, as the quarantine spells them (its
        lookups by recipient are exact); their digest records are kept in lower case."""
        rows = self.db.connection().execute(
            "SELECT DISTINCT recipient FROM quarantine_recipients WHERE status = 'new'"
            " ORDER BY 1")
        return [r[0] for r in rows]

    def new_for(self, recipient: str, until: float) -> list[QuarantineEntry]:
        """Still waiting for this recipient, quarantined after their last digest."""
        last = self.last(recipient)
        since = last[1] if last else 0.0
        return [e for e in self._waiting(recipient, until) if e.time > since]

    def _waiting(self, recipient: str, until: float) -> Iterator[QuarantineEntry]:
        offset = 0
        while True:
            page = self.quarantine.list(recipient=recipient, status="new", until=until,
                                        limit=500, offset=offset, sort="time")
            yield from page
            if len(page) < 500:
                return
            offset += 500

    # --- the message --------------------------------------------------------------------

    def compose(self, state: State, recipient: str, entries: list[QuarantineEntry],
                now: float) -> DigestMail:
        lifetime = state.quarantine.digest.ticket_lifetime_days * DAY
        base = portal_url(state)
        listed = sorted(entries, key=lambda e: e.time, reverse=True)[:MAX_LISTED]
        items = []
        for entry in listed:
            ticket = quote(self.tickets.make(recipient, entry.id, lifetime, now), safe="")
            items.append(Item(entry, [Link(a, f"{base}/ticket/{a}?t={ticket}")
                                      for a in ACTIONS]))
        # With the portal off (quarantine.user_portal) a digest offers its actions only.
        portal = f"{base}/ticket/login?t=" + quote(
            self.tickets.make(recipient, None, lifetime, now), safe="") \
            if state.quarantine.user_portal else None
        context = {
            "recipient": recipient, "items": items, "more": len(entries) - len(listed),
            "portal": portal, "hostname": state.system.hostname, "when": _when,
            "days": state.quarantine.digest.ticket_lifetime_days, "total": len(entries),
        }
        message = EmailMessage()
        message["From"] = f"Mailwarden quarantine <{sender_of(state)}>"
        message["To"] = recipient
        count = len(entries)
        message["Subject"] = (f"Quarantine: {count} new message{'s' if count != 1 else ''} "
                              f"held for {recipient}")
        message["Date"] = format_datetime(dt.datetime.fromtimestamp(now).astimezone())
        message["Message-ID"] = make_msgid(domain=state.system.hostname)
        # What this is, for people and filters: mail from the appliance about the quarantine.
        message["Auto-Submitted"] = "auto-generated"
        message["X-Mailwarden-Digest"] = "1"
        message.set_content(_templates.get_template("digest.txt.j2").render(context))
        message.add_alternative(_templates.get_template("digest.html.j2").render(context),
                                subtype="html")
        return DigestMail(recipient, items, len(entries) - len(listed), portal, message)

    def preview(self, state: State, recipient: str, now: float | None = None,
                ) -> DigestMail | None:
        """The digest this recipient would get now (None: nothing new), not recorded."""
        now = time.time() if now is None else now
        entries = self.new_for(recipient, now)
        return self.compose(state, recipient, entries, now) if entries else None

    # --- sending --------------------------------------------------------------------------

    def send(self, state: State, recipient: str, send: Send, now: float | None = None,
             ) -> DigestMail | None:
        """Compose, hand to Postfix and record; None when nothing is new. Recorded only once
        Postfix took it: a failed hand-over is tried again at the next run."""
        now = time.time() if now is None else now
        mail = self.preview(state, recipient, now)
        if mail is None:
            return None
        send(mail.message.as_bytes(), sender_of(state), [recipient])
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT INTO digests (recipient, sent, cutoff) VALUES (?, ?, ?)"
                " ON CONFLICT (recipient) DO UPDATE SET sent = excluded.sent,"
                " cutoff = excluded.cutoff", (recipient.lower(), now, now))
        return mail

    def scheduled(self, state: State, now: float) -> list[str]:
        """Recipients with waiting mail whose digest time has come: enabled for them, and a
        scheduled time passed since their last one. Whether anything is new, send says."""
        due = []
        for recipient in self.recipients():
            schedule = schedule_for(state, recipient)
            if not schedule.enabled:
                continue
            last = self.last(recipient)
            if last is None or last[0] < last_slot(schedule, now):
                due.append(recipient)
        return due

    def run(self, state: State, send: Send, now: float | None = None,
            ) -> dict[str, str]:
        """Send every digest that is due: {recipient: "sent" or the error}. One recipient's
        failure does not stop the others; it is retried at the next run."""
        now = time.time() if now is None else now
        results: dict[str, str] = {}
        for recipient in self.scheduled(state, now):
            try:
                # One query for what is new: nothing new, nothing sent and nothing reported.
                if self.send(state, recipient, send, now) is not None:
                    results[recipient] = "sent"
            except MailwardenError as exc:  # Postfix refused it: reported, retried later
                results[recipient] = f"[{exc.code}] {exc.message}"
            except OSError as exc:  # Postfix not answering: the same
                results[recipient] = f"[unreachable] {exc}"
        return results


__all__ = ["ACTIONS", "DigestMail", "Digests", "Schedule", "last_slot", "login_link_mail",
           "portal_url", "schedule_for", "sender_of"]
