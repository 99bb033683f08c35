"""A quarantine user with several addresses (aliases): one account sees, and acts on, the mail
of each; an address belongs to one account; a digest's link or a login link for an alias
opens that account."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from mailwarden.cli import main
from mailwarden.errors import StoreError
from mailwarden.store.tickets import Tickets

from .api_env import PASSWORD, ApiEnv, api_env


@pytest.fixture(scope="module")
def env() -> Iterator[ApiEnv]:
    with api_env(users={"admin": "admin", "bob@example.test": "quser"}) as made:
        yield made


def hold(env: ApiEnv, subject: str, recipient: str) -> str:
    return env.hold(subject, [recipient])


def test_an_admin_attaches_an_alias_and_the_user_sees_its_mail(env: ApiEnv) -> None:
    admin = env.login("admin")
    added = env.client.simulate_post("/api/users/bob@example.test/addresses", headers=admin,
                                     json={"address": "Robert@Example.test"})
    assert added.status_code == 200, added.text
    assert added.json["addresses"] == ["bob@example.test", "robert@example.test"]
    own, alias = hold(env, "to bob", "bob@example.test"), hold(env, "to robert",
                                                                  "robert@example.test")
    other = hold(env, "to ann", "ann@example.test")
    bob = env.login("bob@example.test")
    listed = env.client.simulate_get("/api/quarantine", headers=bob).json["items"]
    assert {i["id"] for i in listed} == {own, alias}
    only = env.client.simulate_get("/api/quarantine", headers=bob,
                                   params={"recipient": "robert@example.test"}).json["items"]
    assert [i["id"] for i in only] == [alias]
    assert env.client.simulate_get(f"/api/quarantine/{other}", headers=bob).status_code == 404
    assert env.client.simulate_post(f"/api/quarantine/{alias}/delete", headers=bob,
                                    json={}).status_code == 200
    me = env.client.simulate_get("/api/session", headers=bob).json
    assert me["addresses"] == ["bob@example.test", "robert@example.test"]
    # Lists: each of their addresses, nobody else's.
    assert env.client.simulate_post("/api/lists", headers=bob, json={
        "sender": "@x.example", "kind": "block",
        "recipient": "robert@example.test"}).status_code == 201
    assert env.client.simulate_post("/api/lists", headers=bob, json={
        "sender": "@x.example", "kind": "block",
        "recipient": "ann@example.test"}).status_code == 403


def test_an_address_belongs_to_one_quarantine_user(env: ApiEnv) -> None:
    env.users.add("carl@example.test", PASSWORD, "quser")
    env.users.attach("bob@example.test", "bobby@example.test")
    with pytest.raises(StoreError, match=re.escape("belongs to 'bob@example.test'")):
        env.users.attach("carl@example.test", "bobby@example.test")
    with pytest.raises(StoreError, match=re.escape("belongs to 'bob@example.test'")):
        env.users.attach("carl@example.test", "BOB@example.test")  # another's user name
    with pytest.raises(StoreError, match="quarantine users"):
        env.users.attach("admin", "boss@example.test")
    admin = env.login("admin")
    gone = env.client.simulate_delete("/api/users/bob@example.test/addresses", headers=admin,
                                      json={"address": "bobby@example.test"})
    assert gone.status_code == 200 and "bobby@example.test" not in gone.json["addresses"]
    again = env.client.simulate_delete("/api/users/bob@example.test/addresses",
                                       headers=admin, json={"address": "bobby@example.test"})
    assert again.status_code == 404


def test_links_for_an_alias_open_its_account(env: ApiEnv) -> None:
    env.users.attach("bob@example.test", "bob.alias@example.test")
    ticket = Tickets(env.layout.ticket_key).make("bob.alias@example.test", None, 600)
    login = env.client.simulate_post("/ticket/login", body=f"t={ticket}", headers={
        "Content-Type": "application/x-www-form-urlencoded"})
    assert login.status_code == 303
    me = env.client.simulate_get("/api/session", headers={
        "Cookie": f"mw_session={login.cookies['mw_session'].value}"}).json
    assert me["username"] == "bob@example.test"  # not a new account for the alias
    sent = env.client.simulate_post("/api/portal/link", json={
        "address": "bob.alias@example.test"}, remote_addr="192.0.2.77")
    assert sent.status_code == 202
    audit = env.client.simulate_get("/api/audit", headers=env.login("admin")).json["items"]
    assert any(a["action"] == "portal.link" and a["detail"] == {"sent": True} for a in audit)


def test_the_console_attaches_and_lists_aliases(env: ApiEnv,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    at = ["--root", str(env.root)]
    assert main(["user", "address-add", "bob@example.test", "b@example.test", *at]) == 0
    capsys.readouterr()
    assert main(["user", "list", *at]) == 0
    line = next(li for li in capsys.readouterr().out.splitlines()
                if li.startswith("bob@example.test"))
    assert "b@example.test" in line.split()
    assert main(["user", "address-remove", "bob@example.test", "b@example.test", *at]) == 0
    assert main(["user", "address-remove", "bob@example.test", "b@example.test", *at]) == 1
