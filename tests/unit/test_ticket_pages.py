"""The pages a digest's links open (/ticket/{action}) and the administrators' digest resource,
through falcon.testing on a real store: GET changes nothing, the button's POST acts once, and
a ticket works for its own address and message only."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

from mailwarden.store.lists import UserLists
from mailwarden.store.tickets import Tickets

from .api_env import PASSWORD, STATE, ApiEnv, api_env

Env = ApiEnv


@pytest.fixture(scope="module")
def env() -> Iterator[ApiEnv]:
    with api_env(STATE + "quarantine:\n  digest: {enabled: true}\n") as made:
        yield made


def _status(env: Env, entry_id: str, recipient: str) -> str:
    return env.quarantine.get(entry_id).recipients[recipient]


def test_fetching_a_link_changes_nothing(env: Env) -> None:
    entry = env.hold("fetched only", ["bob@example.test"])
    ticket = env.tickets.make("bob@example.test", entry, 3600)
    for action in ("release", "delete", "allow", "block"):
        page = env.get(action, ticket)
        assert page.status_code == 200, page.text
        assert page.headers["content-type"].startswith("text/html")
        assert 'method="post"' in page.text and "fetched only" in page.text
        assert page.headers["cache-control"] == "no-store"
    assert _status(env, entry, "bob@example.test") == "new"
    assert all(b"fetched only" not in d[0] for d in env.delivered)
    assert UserLists(env.db).lookup("bob@example.test", "spam@bad.example") is None
    shown = env.hold("<script>alert(1)</script>", ["bob@example.test"])
    page = env.get("release", env.tickets.make("bob@example.test", shown, 60)).text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>" not in page


def test_the_button_releases_once(env: Env) -> None:
    entry = env.hold("release me", ["bob@example.test", "ann@example.test"])
    ticket = env.tickets.make("bob@example.test", entry, 3600)
    done = env.post("release", ticket)
    assert done.status_code == 200, done.text
    assert "Delivered to bob@example.test" in done.text
    mine = [d for d in env.delivered if b"release me" in d[0]]
    assert [d[2] for d in mine] == [["bob@example.test"]]  # Bob only, not Ann
    again = env.post("release", ticket)
    assert again.status_code == 410 and "delivered already" in again.text
    assert len([d for d in env.delivered if b"release me" in d[0]]) == 1
    assert _status(env, entry, "ann@example.test") == "new"


def test_delete_allow_and_block(env: Env) -> None:
    gone = env.hold("delete me", ["bob@example.test"])
    assert env.post("delete", env.tickets.make("bob@example.test", gone, 60)).status_code == 200
    assert _status(env, gone, "bob@example.test") == "deleted"
    friend = env.hold("from a friend", ["bob@example.test"], sender="friend@good.example")
    assert env.post("allow", env.tickets.make("bob@example.test", friend, 60)).status_code == 200
    assert UserLists(env.db).lookup("bob@example.test", "friend@good.example") == "allow"
    assert _status(env, friend, "bob@example.test") == "released"
    pest = env.hold("from a pest", ["bob@example.test"], sender="pest@bad.example")
    assert env.post("block", env.tickets.make("bob@example.test", pest, 60)).status_code == 200
    assert UserLists(env.db).lookup("bob@example.test", "pest@bad.example") == "block"
    assert _status(env, pest, "bob@example.test") == "deleted"


def test_tickets_that_must_not_work(env: Env, tmp_path: Path) -> None:
    entry = env.hold("guarded", ["bob@example.test"])
    good = env.tickets.make("bob@example.test", entry, 3600)
    prefix, payload, signature = good.split(".")
    tampered = f"{prefix}.{payload}.{signature[::-1]}"
    expired = env.tickets.make("bob@example.test", entry, -1)
    for_ann = env.tickets.make("ann@example.test", entry, 3600)  # not a recipient
    foreign = Tickets(tmp_path / "other.key").make("bob@example.test", entry, 3600)
    for ticket, status in ((tampered, 403), (expired, 410), (for_ann, 403), (foreign, 403),
                           ("", 403), ("v1.x.y", 403)):
        for result in (env.get("release", ticket), env.post("release", ticket)):
            assert result.status_code == status, (ticket, result.text)
            assert "cannot be used" in result.text
    assert _status(env, entry, "bob@example.test") == "new"
    # A message's ticket does not log in, and an address's does not act on a message.
    assert env.post("login", good).status_code == 403
    assert env.post("release", env.tickets.make("bob@example.test", None, 60)).status_code == 403
    assert env.get("frobnicate", good).status_code == 404


def test_viruses_stay_for_the_administrators(env: Env) -> None:
    entry = env.hold("virus", ["bob@example.test"], kind="virus")
    ticket = env.tickets.make("bob@example.test", entry, 3600)
    for action in ("release", "allow"):
        assert env.get(action, ticket).status_code == 403
        refused = env.post(action, ticket)
        assert refused.status_code == 403 and "ask your administrator" in refused.text
    assert env.post("delete", ticket).status_code == 200


def test_a_ticket_logs_its_address_into_the_portal_alone(env: Env) -> None:
    mine = env.hold("for carol", ["carol@example.test"])
    env.hold("for dave", ["dave@example.test"])
    ticket = env.tickets.make("carol@example.test", None, 3600)
    page = env.get("login", ticket)
    assert page.status_code == 200 and "carol@example.test" in page.text
    assert "mw_session" not in page.cookies  # a GET logs nobody in
    login = env.post("login", ticket)
    assert login.status_code == 303 and login.headers["location"] == "/#/quarantine"
    cookie = {"Cookie": f"mw_session={login.cookies['mw_session'].value}"}
    me = env.client.simulate_get("/api/session", headers=cookie)
    assert (me.json["username"], me.json["role"]) == ("carol@example.test", "quser")
    listed = env.client.simulate_get("/api/quarantine", headers=cookie).json["items"]
    assert [item["id"] for item in listed] == [mine]
    # The account made for her has no password anyone knows.
    assert env.client.simulate_post("/api/session", json={
        "username": "carol@example.test", "password": ""}).status_code in (400, 401)


def test_a_ticket_never_opens_a_staff_account(env: Env) -> None:
    env.users.add("boss@example.test", PASSWORD, "admin")
    refused = env.post("login", env.tickets.make("boss@example.test", None, 3600))
    assert refused.status_code == 403 and "mw_session" not in refused.cookies


def test_a_session_cookie_is_not_looked_at(env: Env) -> None:
    """A browser logged in as someone else (no CSRF header on a form post) still uses the
    ticket, and only the ticket."""
    login = env.client.simulate_post("/api/session", json={"username": "admin",
                                                           "password": PASSWORD})
    cookie = f"mw_session={login.cookies['mw_session'].value}"
    entry = env.hold("with a cookie", ["bob@example.test"])
    done = env.post("delete", env.tickets.make("bob@example.test", entry, 60), Cookie=cookie)
    assert done.status_code == 200
    audit = env.client.simulate_get("/api/audit", headers={
        "Cookie": cookie}).json["items"]
    assert any(a["actor"] == "ticket:bob@example.test" and a["target"] == entry for a in audit)


def test_admins_preview_and_send_a_digest(env: Env) -> None:
    headers = env.login("admin")
    env.hold("digest one", ["erin@example.test"])
    env.hold("digest two", ["erin@example.test"])
    preview = env.client.simulate_get("/api/quarantine/digest",
                                      params={"address": "erin@example.test"}, headers=headers)
    assert preview.status_code == 200, preview.text
    body: dict[str, Any] = preview.json
    assert body["messages"] == 2 and "digest one" in body["text"] and "digest two" in body["html"]
    links = re.findall(r"https://mx\.example\.test:8006/ticket/(\w+)\?t=(\S+)", body["text"])
    assert sorted({a for a, _ in links}) == ["allow", "block", "delete", "login", "release"]
    assert all(env.tickets.check(unquote(t)).address == "erin@example.test" for _, t in links)
    before = len(env.delivered)
    sent = env.client.simulate_post("/api/quarantine/digest",
                                    json={"address": "erin@example.test"}, headers=headers)
    assert sent.status_code == 200, sent.text
    assert [d[2] for d in env.delivered[before:]] == [["erin@example.test"]]
    nothing = env.client.simulate_post("/api/quarantine/digest",
                                       json={"address": "erin@example.test"}, headers=headers)
    assert nothing.status_code == 404  # nothing new since
    bad = env.client.simulate_get("/api/quarantine/digest", params={"address": "nobody"},
                                  headers=headers)
    assert bad.status_code == 400


def test_a_strange_form_is_refused_not_a_server_error(env: Env) -> None:
    entry = env.hold("odd form", ["bob@example.test"])
    ticket = env.tickets.make("bob@example.test", entry, 60)
    crowded = env.client.simulate_post(
        "/ticket/delete", body="&".join(f"x{i}=1" for i in range(10)) + f"&t={ticket}",
        headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert crowded.status_code == 403 and "cannot be used" in crowded.text
    assert _status(env, entry, "bob@example.test") == "new"


def test_a_digest_postfix_refuses_is_the_callers_mistake(env: Env) -> None:
    env.hold("for a strange address", ["0@000.example"])
    env.refuse = "5.1.3 Bad recipient address syntax"
    try:
        refused = env.client.simulate_post("/api/quarantine/digest", headers=env.login("admin"),
                                           json={"address": "0@000.example"})
    finally:
        env.refuse = None
    assert refused.status_code == 400 and refused.json["error"]["field"] == "address"
    assert "5.1.3" in refused.json["error"]["message"]
