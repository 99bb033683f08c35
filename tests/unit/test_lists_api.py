"""Sender allow and block lists through the API: a quarantine user's own, the staff's view of
everyone's with search, and the rule engine's lookup seeing what the API wrote."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from falcon import testing

from mailwarden.api.app import Services, create_app
from mailwarden.control.service import NoController
from mailwarden.store.credentials import CredentialStore
from mailwarden.store.db import Database
from mailwarden.store.lists import UserLists
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


@pytest.fixture(scope="module")
def env() -> Iterator[tuple[testing.TestClient, UserLists]]:
    root = Path(tempfile.mkdtemp(prefix="mw-lists-", dir="/tmp"))
    root.chmod(0o755)
    sandbox = Sandbox(root / "sb")
    sandbox.prepare(STATE)
    db = Database(sandbox.layout.database)
    users = Users(CredentialStore.for_layout(sandbox.layout))
    for name, role in (("admin", "admin"), ("helper", "helpdesk"), ("auditor", "audit"),
                       ("bob@example.test", "quser"), ("ann@example.test", "quser")):
        users.add(name, PASSWORD, role)
    yield testing.TestClient(create_app(Services(sandbox.layout, db, NoController()))), \
        UserLists(db)
    shutil.rmtree(root, ignore_errors=True)


def _as(client: testing.TestClient, username: str) -> dict[str, str]:
    result = client.simulate_post("/api/session", json={"username": username,
                                                        "password": PASSWORD})
    assert result.status_code == 200, result.text
    return {"X-CSRF-Token": result.json["csrf_token"],
            "Cookie": f"mw_session={result.cookies['mw_session'].value}"}


def test_a_user_keeps_their_own_list(env: tuple[testing.TestClient, UserLists]) -> None:
    client, lists = env
    bob = _as(client, "bob@example.test")
    added = client.simulate_post("/api/lists", headers=bob,
                                 json={"sender": "Friend@Good.example", "kind": "allow"})
    assert added.status_code == 201, added.text
    assert added.json == {"recipient": "bob@example.test", "sender": "friend@good.example",
                          "kind": "allow"}
    assert client.simulate_post("/api/lists", headers=bob, json={
        "sender": "@spam.example", "kind": "block"}).status_code == 201
    assert lists.lookup("bob@example.test", "friend@good.example") == "allow"
    assert lists.lookup("bob@example.test", "anyone@spam.example") == "block"  # the domain
    mine = client.simulate_get("/api/lists", headers=bob).json["items"]
    assert [(e["sender"], e["kind"]) for e in mine] == [("@spam.example", "block"),
                                                         ("friend@good.example", "allow")]
    # Another's list: neither to read (the parameter is ignored) nor to change.
    ann = _as(client, "ann@example.test")
    assert client.simulate_get("/api/lists", headers=ann,
                               params={"recipient": "bob@example.test"}).json["items"] == []
    refused = client.simulate_post("/api/lists", headers=ann, json={
        "sender": "x@y.example", "kind": "allow", "recipient": "bob@example.test"})
    assert refused.status_code == 403
    assert client.simulate_delete("/api/lists", headers=ann, json={
        "sender": "@spam.example", "recipient": "bob@example.test"}).status_code == 403
    removed = client.simulate_delete("/api/lists", headers=bob, json={"sender": "@spam.example"})
    assert removed.status_code == 204
    assert lists.lookup("bob@example.test", "anyone@spam.example") is None
    again = client.simulate_delete("/api/lists", headers=bob, json={"sender": "@spam.example"})
    assert again.status_code == 404


def test_staff_see_and_search_everyones(env: tuple[testing.TestClient, UserLists]) -> None:
    client, lists = env
    lists.set("carol@example.test", "news@shop.example", "block")
    lists.set("dave@example.test", "boss@work.example", "allow")
    helper = _as(client, "helper")
    found = client.simulate_get("/api/lists", headers=helper, params={"q": "shop"}).json
    assert [(e["recipient"], e["sender"]) for e in found["items"]] == [
        ("carol@example.test", "news@shop.example")]
    by_kind = client.simulate_get("/api/lists", headers=helper,
                                  params={"kind": "allow", "recipient": "dave@example.test"})
    assert [e["sender"] for e in by_kind.json["items"]] == ["boss@work.example"]
    assert client.simulate_post("/api/lists", headers=helper, json={
        "sender": "news@shop.example", "kind": "allow",
        "recipient": "carol@example.test"}).status_code == 201
    assert lists.lookup("carol@example.test", "news@shop.example") == "allow"  # changed
    no_recipient = client.simulate_post("/api/lists", headers=helper, json={
        "sender": "a@b.example", "kind": "allow"})
    assert no_recipient.status_code == 400 and no_recipient.json["error"]["field"] == "recipient"
    auditor = _as(client, "auditor")
    assert client.simulate_get("/api/lists", headers=auditor).status_code == 200
    assert client.simulate_post("/api/lists", headers=auditor, json={
        "sender": "a@b.example", "kind": "allow",
        "recipient": "carol@example.test"}).status_code == 403


@pytest.mark.parametrize("sender", ["nobody", "two@@signs.example", "a@b", "a b@c.example",
                                    "@", "x" * 400 + "@long.example"])
def test_bad_senders_are_refused(env: tuple[testing.TestClient, UserLists], sender: str) -> None:
    client, _ = env
    result = client.simulate_post("/api/lists", headers=_as(client, "bob@example.test"),
                                  json={"sender": sender, "kind": "block"})
    assert result.status_code == 400 and result.json["error"]["field"] == "sender", result.text
