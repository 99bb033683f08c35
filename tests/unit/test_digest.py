"""Quarantine digests: their tickets, their schedule, what they list and when they go out."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import re
from email.message import EmailMessage
from pathlib import Path
from urllib.parse import unquote

import pytest

from mailwarden.mail.digest import Digests, last_slot, schedule_for
from mailwarden.mail.reinject import ReinjectError
from mailwarden.state.load import load_state_text
from mailwarden.state.schema import State
from mailwarden.store.credentials import CredentialsKeyError
from mailwarden.store.db import Database
from mailwarden.store.quarantine import Quarantine
from mailwarden.store.tickets import TicketError, TicketExpired, Tickets

STATE = """\
version: 4
system: {hostname: mx.example.org}
domains:
  - name: example.org
    transport: {host: 10.0.0.5}
  - name: weekly.example
    subdomains: true
    transport: {host: 10.0.0.6}
    digest: {frequency: weekly, weekday: wednesday}
  - name: quiet.example
    transport: {host: 10.0.0.7}
    digest: {enabled: false}
quarantine:
  digest: {enabled: true, time: "07:30", ticket_lifetime_days: 3}
"""
DAY = 86400


@pytest.fixture
def state() -> State:
    return load_state_text(STATE)


@pytest.fixture
def tickets(tmp_path: Path) -> Tickets:
    return Tickets(tmp_path / "tickets.key")


@pytest.fixture
def store(tmp_path: Path) -> tuple[Database, Quarantine]:
    db = Database(tmp_path / "mw.db")
    return db, Quarantine(db, tmp_path / "quarantine")


def local(*args: int) -> float:
    return dt.datetime(*args).astimezone().timestamp()  # type: ignore[misc]


# --- tickets ----------------------------------------------------------------------------------

def test_a_ticket_names_its_address_and_message(tickets: Tickets) -> None:
    text = tickets.make("Bob@Example.org", "abc123", 3600, now=1000)
    ticket = tickets.check(text, now=2000)
    assert (ticket.address, ticket.message, ticket.expires) == ("bob@example.org", "abc123",
                                                                4600)
    assert tickets.check(tickets.make("bob@example.org", None, 60, now=0), now=30).message is None


def test_a_changed_ticket_is_refused(tickets: Tickets) -> None:
    text = tickets.make("bob@example.org", "abc123", 3600)
    prefix, payload, signature = text.split(".")
    other = tickets.make("eve@example.org", "abc123", 3600).split(".")[1]
    for changed in (f"{prefix}.{other}.{signature}",  # another address under this signature
                    f"{prefix}.{payload}.{signature[:-2]}",  # cut short
                    f"{prefix}.{payload}.{signature[:-1]}{'A' if signature[-1] != 'A' else 'B'}",
                    f"v2.{payload}.{signature}", payload, "", "é" * 10, "x." * 600):
        with pytest.raises(TicketError):
            tickets.check(changed)


def test_another_appliances_ticket_is_refused(tickets: Tickets, tmp_path: Path) -> None:
    theirs = Tickets(tmp_path / "other.key").make("bob@example.org", None, 3600)
    with pytest.raises(TicketError) as caught:
        tickets.check(theirs)
    assert caught.value.code == "ticket_invalid"


def test_an_expired_ticket_is_refused(tickets: Tickets) -> None:
    text = tickets.make("bob@example.org", "abc", 60, now=1000)
    assert tickets.check(text, now=1060).address == "bob@example.org"
    with pytest.raises(TicketExpired) as caught:
        tickets.check(text, now=1061)
    assert caught.value.code == "ticket_expired"


def test_the_key_is_made_once_and_kept_private(tickets: Tickets, tmp_path: Path) -> None:
    text = tickets.make("bob@example.org", None, 60)
    key = tmp_path / "tickets.key"
    assert key.stat().st_mode & 0o777 == 0o600 and len(key.read_bytes()) == 32
    assert Tickets(key).check(text).address == "bob@example.org"  # read, not made again
    key.chmod(0o640)
    with pytest.raises(CredentialsKeyError):
        Tickets(key).check(text)


# --- schedule ---------------------------------------------------------------------------------

def test_each_domain_may_replace_single_keys_of_the_schedule(state: State) -> None:
    plain = schedule_for(state, "bob@example.org")
    assert (plain.enabled, plain.frequency, plain.time) == (True, "daily", "07:30")
    weekly = schedule_for(state, "ann@Sales.Weekly.example")  # a subdomain, any case
    assert (weekly.frequency, weekly.weekday, weekly.time) == ("weekly", "wednesday", "07:30")
    assert not schedule_for(state, "joe@quiet.example").enabled


def test_the_last_slot_is_the_latest_scheduled_time_passed(state: State) -> None:
    daily = schedule_for(state, "bob@example.org")
    assert last_slot(daily, local(2026, 12, 9, 7, 30)) == local(2026, 12, 9, 7, 30)
    assert last_slot(daily, local(2026, 12, 9, 7, 29)) == local(2026, 12, 8, 7, 30)
    weekly = schedule_for(state, "ann@weekly.example")  # Wednesdays; 2026-12-09 is one
    assert last_slot(weekly, local(2026, 12, 9, 8, 0)) == local(2026, 12, 9, 7, 30)
    assert last_slot(weekly, local(2026, 12, 9, 7, 0)) == local(2026, 12, 2, 7, 30)
    assert last_slot(weekly, local(2026, 12, 14, 12, 0)) == local(2026, 12, 9, 7, 30)


# --- composing and sending --------------------------------------------------------------------

def _hold(q: Quarantine, recipient: str, subject: str, when: float, *,
          sender: str = "spam@bad.example") -> str:
    raw = f"From: {sender}\r\nSubject: {subject}\r\n\r\nbuy\r\n".encode()
    return q.put(raw, kind="spam", sender=sender, recipients=[recipient], lifetime_days=7,
                 subject=subject, spam_score=12.5, now=when)


def _links(message: EmailMessage, part: str) -> list[str]:
    body = message.get_body((part,))
    assert body is not None
    text = body.get_content()
    return re.findall(r"https://[^\s\"<>]+", text) if part == "plain" else \
        [unquote(u).replace("&amp;", "&") for u in re.findall(r'href="([^"]+)"', text)]


def test_a_digest_lists_each_new_message_with_its_links(
        state: State, store: tuple[Database, Quarantine], tickets: Tickets) -> None:
    db, q = store
    now = local(2026, 12, 9, 7, 30)
    first = _hold(q, "bob@example.org", "Cheap <b>watches</b>", now - 3600)
    second = _hold(q, "bob@example.org", "Prize", now - 60, sender="prize@bad.example")
    _hold(q, "ann@example.org", "Not Bob's", now - 60)
    mail = Digests(db, q, tickets).preview(state, "bob@example.org", now)
    assert mail is not None
    assert [i.entry.id for i in mail.items] == [second, first]  # newest first
    message = email.message_from_bytes(mail.message.as_bytes(), policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    assert message["To"] == "bob@example.org"
    assert message["Subject"] == "Quarantine: 2 new messages held for bob@example.org"
    assert message["Auto-Submitted"] == "auto-generated"
    html = message.get_body(("html",))
    assert html is not None
    assert "Cheap &lt;b&gt;watches&lt;/b&gt;" in html.get_content()  # escaped
    assert "Not Bob's" not in message.as_string()
    for part in ("plain", "html"):
        links = _links(message, part)
        assert len(links) == 2 * 4 + 1, links
        assert all(u.startswith("https://mx.example.org:8006/ticket/") for u in links)
    for url in _links(message, "plain"):
        action, _, ticket = url.removeprefix("https://mx.example.org:8006/ticket/").partition(
            "?t=")
        held = tickets.check(unquote(ticket))
        assert held.address == "bob@example.org"
        assert held.message in ({first, second} if action != "login" else {None})
        assert held.expires == int(now + 3 * 86400)
    off = load_state_text(STATE + "  user_portal: false\n")
    closed = Digests(db, q, tickets).preview(off, "bob@example.org", now)
    assert closed is not None and closed.portal is None
    assert "/ticket/login" not in closed.message.as_string()
    assert "/ticket/release" in closed.message.as_string()


def test_a_digest_goes_out_once_per_slot_and_only_with_something_new(
        state: State, store: tuple[Database, Quarantine], tickets: Tickets) -> None:
    db, q = store
    digests = Digests(db, q, tickets)
    sent: list[tuple[bytes, str, list[str]]] = []

    def send(raw: bytes, sender: str, recipients: list[str]) -> None:
        sent.append((raw, sender, recipients))

    monday = local(2026, 12, 7, 9, 0)
    _hold(q, "bob@example.org", "one", monday - 7200)
    _hold(q, "ann@weekly.example", "weekly one", monday - 7200)
    _hold(q, "joe@quiet.example", "never told", monday - 7200)
    assert digests.run(state, send, monday) == {"ann@weekly.example": "sent",
                                                "bob@example.org": "sent"}
    assert [(s, r) for _, s, r in sent] == [("postmaster@example.org", ["ann@weekly.example"]),
                                            ("postmaster@example.org", ["bob@example.org"])]
    assert digests.run(state, send, monday + 3600) == {}  # the same slot
    assert digests.run(state, send, monday + DAY) == {}  # nothing new for Bob
    _hold(q, "bob@example.org", "two", monday + DAY)
    _hold(q, "ann@weekly.example", "weekly two", monday + DAY)
    tuesday = monday + DAY + 3600
    assert digests.run(state, send, tuesday) == {"bob@example.org": "sent"}  # Ann: Wednesdays
    raw = sent[-1][0].decode()
    assert "two" in raw and "Subject: one" not in raw and "1 new message held" in raw
    assert digests.run(state, send, monday + 2 * DAY + 60) == {"ann@weekly.example": "sent"}


def test_a_failed_hand_over_is_reported_and_tried_again(
        state: State, store: tuple[Database, Quarantine], tickets: Tickets) -> None:
    db, q = store
    digests = Digests(db, q, tickets)
    now = local(2026, 12, 9, 8, 0)
    _hold(q, "bob@example.org", "one", now - 60)

    def refuse(raw: bytes, sender: str, recipients: list[str]) -> None:
        raise ReinjectError("451 4.3.0 try again later")

    results = digests.run(state, refuse, now)
    assert results["bob@example.org"] == "[reinject_failed] 451 4.3.0 try again later"
    assert digests.last("bob@example.org") is None
    assert digests.run(state, lambda *a: None, now + 60) == {"bob@example.org": "sent"}


def test_nothing_is_sent_while_digests_are_off(
        store: tuple[Database, Quarantine], tickets: Tickets) -> None:
    db, q = store
    off = load_state_text(STATE.replace("enabled: true, ", ""))
    _hold(q, "bob@example.org", "one", local(2026, 12, 9, 6, 0))
    assert Digests(db, q, tickets).run(off, lambda *a: None, local(2026, 12, 9, 8, 0)) == {}


def test_the_sender_and_the_portal_address_come_from_the_state(
        store: tuple[Database, Quarantine], tickets: Tickets) -> None:
    db, q = store
    state = load_state_text(STATE.replace(
        'ticket_lifetime_days: 3}',
        'ticket_lifetime_days: 3, sender: quarantine@example.org, '
        'portal_url: "https://mail.example.org/gateway/"}'))
    now = local(2026, 12, 9, 8, 0)
    _hold(q, "bob@example.org", "one", now - 60)
    sent: list[tuple[bytes, str, list[str]]] = []
    assert Digests(db, q, tickets).run(state, lambda *a: sent.append(a), now) == {
        "bob@example.org": "sent"}
    [(raw, envelope, _)] = sent
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert envelope == "quarantine@example.org"
    assert message["From"].addresses[0].addr_spec == "quarantine@example.org"
    assert isinstance(message, EmailMessage)
    links = _links(message, "plain")
    assert links and all(u.startswith("https://mail.example.org/gateway/ticket/")
                         for u in links), links
