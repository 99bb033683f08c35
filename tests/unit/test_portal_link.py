"""The portal's login link by mail: the same answer for every address, a link only to people
whose mail is here, never to a staff account, throttled, and off with the portal."""

from __future__ import annotations

import email
import email.policy
import re
from collections.abc import Iterator
from urllib.parse import unquote

import pytest
from falcon import testing

from mailwarden.store.tickets import Tickets

from .api_env import STATE, ApiEnv, api_env

USERS = {"admin@example.test": "admin", "known@example.test": "quser"}


@pytest.fixture
def env() -> Iterator[ApiEnv]:
    with api_env(STATE, USERS) as made:
        made.hold("x", ["held@example.test"])
        yield made


def ask(env: ApiEnv, address: str, source: str) -> testing.Result:
    return env.client.simulate_post("/api/portal/link", json={"address": address},
                                    remote_addr=source)


def test_the_answer_is_the_same_and_only_people_with_mail_here_get_a_link(env: ApiEnv) -> None:
    answers = set()
    for n, address in enumerate(("held@example.test", "Known@Example.test",
                                 "nobody@example.test", "admin@example.test")):
        result = ask(env, address, f"192.0.2.{n + 1}")
        assert result.status_code == 202, result.text
        answers.add(result.text)
    assert len(answers) == 1
    assert [r for _, _, r in env.delivered] == [["held@example.test"], ["known@example.test"]]
    message = email.message_from_bytes(env.delivered[0][0], policy=email.policy.default)
    body = message.get_body(("plain",))
    assert body is not None
    [link] = re.findall(r"https://mx\.example\.test:8006/ticket/login\?t=(\S+)", body.get_content())
    ticket = Tickets(env.layout.ticket_key).check(unquote(link))
    assert (ticket.address, ticket.message) == ("held@example.test", None)
    admin = env.login("admin@example.test")
    audit = [a for a in env.client.simulate_get("/api/audit", headers=admin).json["items"]
             if a["action"] == "portal.link"]
    assert {(a["actor"], a["detail"]["sent"]) for a in audit} == {
        ("held@example.test", True), ("known@example.test", True),
        ("nobody@example.test", False), ("admin@example.test", False)}


def test_asking_is_throttled_per_address_and_per_source(env: ApiEnv) -> None:
    for n in range(3):
        assert ask(env, "held@example.test", f"198.51.100.{n}").status_code == 202
    limited = ask(env, "held@example.test", "198.51.100.9")
    assert limited.status_code == 429 and len(env.delivered) == 3
    for n in range(5):
        assert ask(env, f"guess{n}@example.test", "203.0.113.7").status_code == 202
    assert ask(env, "known@example.test", "203.0.113.7").status_code == 429


def test_no_links_while_the_portal_is_off() -> None:
    with api_env(STATE + "quarantine: {user_portal: false}\n", USERS) as env:
        env.hold("x", ["held@example.test"])
        refused = ask(env, "held@example.test", "192.0.2.50")
        assert refused.status_code == 403
        assert refused.json["error"]["code"] == "portal_disabled"
        assert env.delivered == []


def test_an_address_postfix_refuses_gets_the_same_answer(env: ApiEnv) -> None:
    """An account whose name Postfix will not take as an address (found by schemathesis:
    a 500 before): the same 202, and the audit log says what happened."""
    env.refuse = "5.1.3 Bad recipient address syntax"
    answer = ask(env, "known@example.test", "192.0.2.99")
    assert answer.status_code == 202, answer.text
    admin = env.login("admin@example.test")
    [entry] = [a for a in env.client.simulate_get("/api/audit", headers=admin).json["items"]
               if a["action"] == "portal.link"]
    assert entry["detail"]["sent"] is False and "5.1.3" in entry["detail"]["error"]
