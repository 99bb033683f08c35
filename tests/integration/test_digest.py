"""Quarantine digests through the real mail path: GTUBE quarantined by real Postfix, the filter
and Rspamd; the digest handed to Postfix and received at the sink; its links, parsed from the
received mail, used against the API's pages."""

from __future__ import annotations

import email
import email.policy
import re
import time
import uuid
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from falcon import testing

from mailwarden.api.app import Services, create_app
from mailwarden.cli import main
from mailwarden.control.service import NoController
from mailwarden.mail.digest import Digests
from mailwarden.mail.reinject import reinject
from mailwarden.state.load import load_state_file
from mailwarden.store.db import Database
from mailwarden.store.lists import UserLists
from mailwarden.store.quarantine import Quarantine
from mailwarden.store.tickets import Tickets
from mailwarden_dev.instance import Sandbox

from .conftest import state_for
from .test_mail_path import GTUBE, build, send, wait_quarantined

pytestmark = pytest.mark.integration

EXTRA = """\
mail:
  reject_unknown_sender_domain: false
greylisting:
  enabled: false
quarantine:
  digest: {enabled: true, time: "00:00"}
"""


@pytest.fixture(scope="module")
def gw(sandbox_root: Path) -> Iterator[Sandbox]:
    sandbox = Sandbox(sandbox_root / "digest", agent_services=True)
    # Version 3: a version 1 file's quarantine.digest is dropped when it is migrated.
    sandbox.start(state_for(sandbox, EXTRA).replace("version: 1\n", "version: 3\n", 1))
    yield sandbox
    sandbox.stop()


@pytest.fixture(scope="module")
def pages(gw: Sandbox) -> testing.TestClient:
    # The API's own delivery (reinjection into the sandbox's Postfix), as on the appliance.
    return testing.TestClient(create_app(Services(gw.layout, Database(gw.layout.database),
                                                  NoController())))


def _spam(gw: Sandbox, recipient: str, sender: str = "alice@sender.test") -> tuple[str, str]:
    subject = f"spam-{uuid.uuid4().hex[:10]}"
    send(gw, build(subject, body=f"{GTUBE}\n", sender=sender, to=recipient), sender=sender,
         to=(recipient,))
    return subject, wait_quarantined(gw, subject).id


def _digest_at_sink(gw: Sandbox, recipient: str, count: int = 1) -> EmailMessage:
    found = gw.sink.wait_for_marker(f"held for {recipient}", count=count, timeout=60)
    message = email.message_from_bytes(found[-1], policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def _links(message: EmailMessage) -> dict[tuple[str, str | None], str]:
    """(action, message id) -> the link's path and query, from the received text part."""
    text = message.get_body(("plain",))
    assert text is not None
    links: dict[tuple[str, str | None], str] = {}
    for url in re.findall(r"https://\S+/ticket/\S+", text.get_content()):
        parts = urlsplit(url)
        action = parts.path.rsplit("/", 1)[1]
        payload = unquote(parts.query.removeprefix("t="))
        links[(action, _message_of(payload))] = f"{parts.path}?{parts.query}"
    return links


def _message_of(ticket: str) -> str | None:
    """The message a ticket names, read from its payload (not trusted: just for the test's
    bookkeeping; the pages check the signature)."""
    import base64
    import json

    payload = ticket.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["m"]


def _delivered(gw: Sandbox, subject: str) -> list[bytes]:
    """The message itself at the sink, not the digests that name it."""
    return [m for m in gw.sink.containing(subject) if b"X-Mailwarden-Digest:" not in m]


def _wait_delivered(gw: Sandbox, subject: str) -> None:
    deadline = time.monotonic() + 60
    while not _delivered(gw, subject):
        assert time.monotonic() < deadline, f"{subject} not delivered after 60 s"
        time.sleep(0.5)


def _get(pages: testing.TestClient, link: str) -> testing.Result:
    path, _, query = link.partition("?")
    return pages.simulate_get(path, query_string=query)


def _post(pages: testing.TestClient, link: str) -> testing.Result:
    path, _, query = link.partition("?")
    return pages.simulate_post(path, body=query,
                               headers={"Content-Type": "application/x-www-form-urlencoded"})


def test_a_digest_and_its_links(gw: Sandbox, pages: testing.TestClient) -> None:
    recipient = f"digest-{uuid.uuid4().hex[:8]}@example.test"
    first_subject, first = _spam(gw, recipient)
    second_subject, second = _spam(gw, recipient, sender="bob@sender.test")
    q = Quarantine(Database(gw.layout.database), gw.layout.quarantine_dir)

    # Sent by the timer's command: due (digests at 00:00), two new messages.
    assert main(["digest", "run", "--root", str(gw.root)]) == 0
    digest = _digest_at_sink(gw, recipient)
    assert digest["Subject"] == f"Quarantine: 2 new messages held for {recipient}"
    assert first_subject in digest.as_string() and second_subject in digest.as_string()
    links = _links(digest)
    assert set(links) == {(a, m) for a in ("release", "delete", "allow", "block")
                          for m in (first, second)} | {("login", None)}

    # Every link fetched with a plain GET, as a link scanner would: nothing changes.
    for link in links.values():
        assert _get(pages, link).status_code == 200
    time.sleep(3)  # a delivery would have reached the sink by now
    assert _delivered(gw, first_subject) == [] and _delivered(gw, second_subject) == []
    assert {q.get(first).recipients[recipient], q.get(second).recipients[recipient]} == {"new"}

    # Release by the button: delivered once; a second click delivers nothing.
    released = _post(pages, links[("release", first)])
    assert released.status_code == 200, released.text
    _wait_delivered(gw, first_subject)
    again = _post(pages, links[("release", first)])
    assert again.status_code == 410 and "delivered already" in again.text
    time.sleep(3)
    assert len(_delivered(gw, first_subject)) == 1

    # Delete removes it.
    assert _post(pages, links[("delete", second)]).status_code == 200
    assert q.get(second).recipients[recipient] == "deleted"

    # A changed ticket, an expired one and one for another address are refused.
    path, _, query = links[("release", second)].partition("?")
    changed = f"{path}?{query[:-3]}{'AAA' if not query.endswith('AAA') else 'BBB'}"
    assert _post(pages, changed).status_code == 403
    tickets = Tickets(gw.layout.ticket_key)
    expired = tickets.make(recipient, second, -60)
    assert _post(pages, f"/ticket/delete?t={expired}").status_code == 410
    stranger = tickets.make(f"other-{recipient}", second, 3600)
    assert _post(pages, f"/ticket/delete?t={stranger}").status_code == 403

    # Nothing new: no digest again, by the timer or on demand.
    assert main(["digest", "run", "--root", str(gw.root)]) == 0
    assert main(["digest", "send", recipient, "--root", str(gw.root)]) == 0
    time.sleep(3)
    assert len(gw.sink.containing(f"held for {recipient}")) == 1


def test_allow_from_a_digest_lets_the_next_message_through(
        gw: Sandbox, pages: testing.TestClient) -> None:
    recipient = f"allow-{uuid.uuid4().hex[:8]}@example.test"
    sender = f"friend-{uuid.uuid4().hex[:6]}@sender.test"
    subject, held = _spam(gw, recipient, sender=sender)
    state = load_state_file(gw.layout.state_file)
    db = Database(gw.layout.database)
    digests = Digests(db, Quarantine(db, gw.layout.quarantine_dir),
                      Tickets(gw.layout.ticket_key))

    def hand_over(raw: bytes, envelope_sender: str, recipients: list[str]) -> None:
        reinject(raw, envelope_sender, recipients, port=gw.layout.ports.reinject,
                 hostname=state.system.hostname)

    assert digests.send(state, recipient, hand_over) is not None
    links = _links(_digest_at_sink(gw, recipient))
    allowed = _post(pages, links[("allow", held)])
    assert allowed.status_code == 200, allowed.text
    assert UserLists(db).lookup(recipient, sender) == "allow"
    _wait_delivered(gw, subject)  # the held one, delivered
    # The next GTUBE from that sender is delivered, not held.
    following = f"after-allow-{uuid.uuid4().hex[:8]}"
    send(gw, build(following, body=f"{GTUBE}\n", sender=sender, to=recipient),
         sender=sender, to=(recipient,))
    gw.sink.wait_for_marker(following)
    # The digests went out through the reinjection path: none was filtered into the
    # quarantine itself (GTUBE's subject lines are in them).
    held_now = Quarantine(db, gw.layout.quarantine_dir).list(recipient=recipient, status=None)
    assert [e.id for e in held_now] == [held]
