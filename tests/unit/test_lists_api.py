"""Sender allow and block lists through the API: a quarantine user's own, the staff's view of
everyone's with search, and the rule engine's lookup seeing what the API wrote."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from mailwarden.store.lists import UserLists

from .api_env import ApiEnv, api_env


@pytest.fixture(scope="module")
def env() -> Iterator[ApiEnv]:
    users = {"admin": "admin", "helper": "helpdesk", "auditor": "audit",
             "bob@example.test": "quser", "ann@example.test": "quser"}
    with api_env(users=users) as made:
        yield made


def test_a_user_keeps_their_own_list(env: ApiEnv) -> None:
    client, lists = env.client, UserLists(env.db)
    bob = env.login("bob@example.test")
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
    ann = env.login("ann@example.test")
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


def test_staff_see_and_search_everyones(env: ApiEnv) -> None:
    client, lists = env.client, UserLists(env.db)
    lists.set("carol@example.test", "news@shop.example", "block")
    lists.set("dave@example.test", "boss@work.example", "allow")
    helper = env.login("helper")
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
    auditor = env.login("auditor")
    assert client.simulate_get("/api/lists", headers=auditor).status_code == 200
    assert client.simulate_post("/api/lists", headers=auditor, json={
        "sender": "a@b.example", "kind": "allow",
        "recipient": "carol@example.test"}).status_code == 403


@pytest.mark.parametrize("sender", ["nobody", "two@@signs.example", "a@b", "a b@c.example",
                                    "@", "x" * 400 + "@long.example"])
def test_bad_senders_are_refused(env: ApiEnv, sender: str) -> None:
    client = env.client
    result = client.simulate_post("/api/lists", headers=env.login("bob@example.test"),
                                  json={"sender": sender, "kind": "block"})
    assert result.status_code == 400 and result.json["error"]["field"] == "sender", result.text
