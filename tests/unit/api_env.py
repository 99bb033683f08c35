"""One API over a real sandbox store for the quarantine users' tests (digest pages, lists,
login links, aliases): the app through falcon.testing, what it hands to Postfix captured."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from falcon import testing

from mailwarden.api.app import Services, create_app
from mailwarden.control.service import NoController
from mailwarden.mail.reinject import RecipientsRefused
from mailwarden.store.credentials import CredentialStore
from mailwarden.store.db import Database
from mailwarden.store.quarantine import Quarantine
from mailwarden.store.tickets import Tickets
from mailwarden.store.users import Users
from mailwarden_dev.instance import Sandbox

STATE = """\
version: 4
system: {hostname: mx.example.test}
domains:
  - name: example.test
    transport: {host: 192.0.2.10, port: 25}
"""
PASSWORD = "correct horse battery"


class ApiEnv:
    def __init__(self, root: Path, state: str, users: dict[str, str]) -> None:
        self.root = root
        self.sandbox = Sandbox(root)
        self.sandbox.prepare(state)
        self.layout = self.sandbox.layout
        self.db = Database(self.layout.database)
        self.quarantine = Quarantine(self.db, self.layout.quarantine_dir)
        self.users = Users(CredentialStore.for_layout(self.layout))
        for name, role in users.items():
            self.users.add(name, PASSWORD, role)
        self.tickets = Tickets(self.layout.ticket_key)
        self.delivered: list[tuple[bytes, str, list[str]]] = []
        # Set: Postfix refuses every recipient with this 5xx, as it does a malformed address.
        self.refuse: str | None = None
        self.client = testing.TestClient(create_app(Services(
            self.layout, self.db, NoController(), deliver=self._deliver)))

    def _deliver(self, raw: bytes, sender: str, recipients: list[str]) -> None:
        if self.refuse is not None:
            refused = {r: (501, self.refuse.encode()) for r in recipients}
            raise RecipientsRefused(f"reinjection refused every recipient: {refused}", refused)
        self.delivered.append((raw, sender, recipients))

    def hold(self, subject: str, recipients: list[str], *, kind: str = "spam",
             sender: str = "spam@bad.example") -> str:
        """A message in the quarantine, as the filter would put it there."""
        raw = f"From: {sender}\r\nSubject: {subject}\r\n\r\nbuy now\r\n".encode()
        return self.quarantine.put(raw, kind=kind, sender=sender, recipients=recipients,
                                   lifetime_days=7, subject=subject, spam_score=15.0,
                                   virus="Eicar-Signature" if kind == "virus" else None)

    def get(self, action: str, ticket: str, **headers: str) -> testing.Result:
        """A digest link's page, as a browser or a link scanner fetches it."""
        return self.client.simulate_get(f"/ticket/{action}", params={"t": ticket},
                                        headers=headers)

    def post(self, action: str, ticket: str, **headers: str) -> testing.Result:
        """That page's button: its form posted back."""
        return self.client.simulate_post(
            f"/ticket/{action}", body=f"t={ticket}",
            headers={"Content-Type": "application/x-www-form-urlencoded", **headers})

    def login(self, username: str) -> dict[str, str]:
        """The headers of a logged-in browser (cookie and CSRF token)."""
        result = self.client.simulate_post("/api/session", json={"username": username,
                                                                 "password": PASSWORD})
        assert result.status_code == 200, result.text
        return {"X-CSRF-Token": result.json["csrf_token"],
                "Cookie": f"mw_session={result.cookies['mw_session'].value}"}


@contextmanager
def api_env(state: str = STATE, users: dict[str, str] | None = None) -> Iterator[ApiEnv]:
    # Not pytest's tmp_path: a sandbox's folder must be traversable by other users.
    root = Path(tempfile.mkdtemp(prefix="mw-api-", dir="/tmp"))
    root.chmod(0o755)
    try:
        yield ApiEnv(root / "sb", state, users or {"admin": "admin"})
    finally:
        shutil.rmtree(root, ignore_errors=True)
