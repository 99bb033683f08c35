"""The portal's login link by mail: the same answer for every address, a link only to people
whose mail is here, never to a staff account, throttled, and off with the portal."""

from __future__ import annotations

import email
import email.policy
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

import pytest
from falcon import testing

from mailwarden.api.app import Services, create_app
from mailwarden.control.service import NoController
from mailwarden.store.credentials import CredentialStore
from mailwarden.store.db import Database
from mailwarden.store.quarantine import Quarantine
from mailwarden.store.tickets import Tickets
from mailwarden.store.users import Users
from mailwarden_dev.instance import Sandbox

STATE = """\
version: 3
system: {hostname: mx.example.test}
domains:
  - name: example.test
    transport: {host: 192.0.2.10}
"""
PASSWORD = "correct horse battery"


class Env:
    def __init__(self, root: Path, state: str = STATE) -> None:
        self.sandbox = Sandbox(root / "sb")
        self.sandbox.prepare(state)
        layout = self.sandbox.layout
        self.layout = layout
        self.db = Database(layout.database)
        self.users = Users(CredentialStore.for_layout(layout))
        self.users.add("admin@example.test", PASSWORD, "admin")
        self.users.add("known@example.test", PASSWORD, "quser")
        self.quarantine = Quarantine(self.db, layout.quarantine_dir)
        self.quarantine.put(b"Subject: x\r\n\r\nspam\r\n", kind="spam", sender="s@bad.example",
                            recipients=["held@example.test"], lifetime_days=7, subject="x")
        self.sent: list[tuple[bytes, str, list[str]]] = []
        self.client = testing.TestClient(create_app(Services(
            layout, self.db, NoController(),
            deliver=lambda raw, s, r: self.sent.append((raw, s, r)))))

    def ask(self, address: str, source: str) -> testing.Result:
        return self.client.simulate_post("/api/portal/link", json={"address": address},
                                         remote_addr=source)


@pytest.fixture
def env() -> Iterator[Env]:
    root = Path(tempfile.mkdtemp(prefix="mw-portal-", dir="/tmp"))
    root.chmod(0o755)
    yield Env(root)
    shutil.rmtree(root, ignore_errors=True)


def test_the_answer_is_the_same_and_only_people_with_mail_here_get_a_link(env: Env) -> None:
    answers = set()
    for n, address in enumerate(("held@example.test", "Known@Example.test",
                                 "nobody@example.test", "admin@example.test")):
        result = env.ask(address, f"192.0.2.{n + 1}")
        assert result.status_code == 202, result.text
        answers.add(result.text)
    assert len(answers) == 1
    assert [r for _, _, r in env.sent] == [["held@example.test"], ["known@example.test"]]
    message = email.message_from_bytes(env.sent[0][0], policy=email.policy.default)
    body = message.get_body(("plain",))
    assert body is not None
    [link] = re.findall(r"https://mx\.example\.test:8006/ticket/login\?t=(\S+)", body.get_content())
    ticket = Tickets(env.layout.ticket_key).check(unquote(link))
    assert (ticket.address, ticket.message) == ("held@example.test", None)
    audit = [a for a in env.client.simulate_get("/api/audit", headers=_admin(env)).json["items"]
             if a["action"] == "portal.link"]
    assert {(a["actor"], a["detail"]["sent"]) for a in audit} == {
        ("held@example.test", True), ("known@example.test", True),
        ("nobody@example.test", False), ("admin@example.test", False)}


def _admin(env: Env) -> dict[str, str]:
    result = env.client.simulate_post("/api/session", json={"username": "admin@example.test",
                                                            "password": PASSWORD})
    return {"Cookie": f"mw_session={result.cookies['mw_session'].value}"}


def test_asking_is_throttled_per_address_and_per_source(env: Env) -> None:
    for n in range(3):
        assert env.ask("held@example.test", f"198.51.100.{n}").status_code == 202
    limited = env.ask("held@example.test", "198.51.100.9")
    assert limited.status_code == 429 and len(env.sent) == 3
    for n in range(5):
        assert env.ask(f"guess{n}@example.test", "203.0.113.7").status_code == 202
    assert env.ask("known@example.test", "203.0.113.7").status_code == 429


def test_no_links_while_the_portal_is_off(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    env = Env(tmp_path, STATE + "quarantine: {user_portal: false}\n")
    refused = env.ask("held@example.test", "192.0.2.50")
    assert refused.status_code == 403 and refused.json["error"]["code"] == "portal_disabled"
    assert env.sent == []
