"""Global sender allow and block lists: the store's lookup (an indexed key, however long the
list), the rule engine's precedence (a recipient's own entry first), the API's roles, bad
input and audit entries, and the command line."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mailwarden import cli
from mailwarden.store.credentials import CredentialStore
from mailwarden.store.db import SCHEMA, Database
from mailwarden.store.lists import GlobalLists, UserLists
from mailwarden.store.users import Audit

from .api_env import ApiEnv, api_env
from .test_rule_engine import default_state, env, run, scan

SPAM = 12.0  # over the default quarantine level, under the reject level


@pytest.fixture
def lists(tmp_path: Path) -> GlobalLists:
    return GlobalLists(Database(tmp_path / "mw.db"))


# --- store ------------------------------------------------------------------------------------


def test_an_address_comes_before_its_domain(lists: GlobalLists) -> None:
    assert lists.set("@Spam.example", "block", "admin") is None
    assert lists.set("friend@spam.example", "allow", "admin") is None
    assert lists.lookup("Friend@SPAM.example") == "allow"
    assert lists.lookup("other@spam.example") == "block"
    assert lists.lookup("other@sub.spam.example") is None  # a domain is that domain only
    assert lists.lookup("") is None  # the null sender
    assert lists.set("@spam.example", "allow", "ann") == "block"  # changed, says what it was
    assert lists.search(kind="allow", text="SPAM")[0]["added_by"] == "ann"
    assert [e["sender"] for e in lists.search(text="friend")] == ["friend@spam.example"]
    assert lists.search(text="%") == []  # LIKE's wildcards are plain characters
    assert lists.remove("@spam.example") == "allow"
    assert lists.remove("@spam.example") is None
    assert lists.lookup("other@spam.example") is None


def test_the_lookup_uses_the_primary_key_not_a_scan(lists: GlobalLists) -> None:
    """The mail path asks once per message: a list of 100,000 entries must not be read."""
    with lists.db.transaction() as conn:
        conn.executemany("INSERT INTO global_lists VALUES (?, 'block', 0, 'admin')",
                         ((f"@spam{i}.example",) for i in range(100_000)))
    assert lists.lookup("x@spam99999.example") == "block"
    plan = " ".join(r[3] for r in lists.db.connection().execute(
        "EXPLAIN QUERY PLAN SELECT sender, kind FROM global_lists WHERE sender IN (?, ?)",
        ("a@b.example", "@b.example")))
    assert "USING INDEX sqlite_autoindex_global_lists_1" in plan and "SCAN" not in plan, plan


def test_a_store_of_the_previous_version_gains_the_table(tmp_path: Path) -> None:
    old = sqlite3.connect(tmp_path / "mw.db", isolation_level=None)
    for script in SCHEMA[:7]:
        old.executescript(script)
    old.execute("PRAGMA user_version = 7")
    old.execute("INSERT INTO user_lists VALUES ('bob@example.test', 'a@b.example', 'allow', 0)")
    old.close()
    db = Database(tmp_path / "mw.db")
    assert db.connection().execute("PRAGMA user_version").fetchone()[0] == len(SCHEMA) == 8
    assert UserLists(db).lookup("bob@example.test", "a@b.example") == "allow"  # kept
    GlobalLists(db).set("@b.example", "block", "admin")
    assert GlobalLists(db).lookup("c@b.example") == "block"


# --- rule engine: which list decides -----------------------------------------------------------


def global_list(entries: dict[str, str]) -> Any:
    def lookup(sender: str) -> Any:
        asked.append(sender)
        return entries.get(sender.lower()) or entries.get("@" + sender.rpartition("@")[2])
    asked: list[str] = []
    lookup.asked = asked  # type: ignore[attr-defined]
    return lookup


def test_a_global_block_holds_every_recipients_copy_asked_once() -> None:
    blocked = global_list({"@sender.test": "block"})
    decisions = run(default_state(), envelope=env("bob@example.test", "carol@example.test",
                                                  "dave@example.test"), global_list=blocked)
    assert [(d.final, d.quarantine_kind, d.rule) for d in decisions] == [
        ("quarantine", "blocked", "global-blocklist")] * 3
    assert decisions[0].matches[0].reasons == ["the global block list holds alice@sender.test"]
    # Envelope sender, then the From address: two questions for the message, not per copy.
    assert blocked.asked == ["alice@sender.test"]
    assert run(default_state(), result=scan(virus="Eicar"),
               global_list=blocked)[0].quarantine_kind == "virus"


def test_a_global_allow_lets_spam_through_but_never_a_virus() -> None:
    allowed = global_list({"alice@sender.test": "allow"})
    [d] = run(default_state(), result=scan(SPAM), global_list=allowed)
    assert d.final == "accept"
    assert run(default_state(), result=scan(SPAM))[0].final == "quarantine"  # without it
    assert run(default_state(), result=scan(SPAM, virus="Eicar"),
               global_list=allowed)[0].quarantine_kind == "virus"


def test_a_recipients_own_entry_comes_before_the_global_lists() -> None:
    def own(recipient: str, sender: str) -> Any:
        return {"bob@example.test": "allow", "carol@example.test": "block"}.get(recipient)

    blocked = global_list({"@sender.test": "block"})
    decisions = run(default_state(), envelope=env("bob@example.test", "carol@example.test",
                                                  "dave@example.test"),
                    result=scan(SPAM), user_list=own, global_list=blocked)
    assert [(d.recipient, d.final, d.rule) for d in decisions] == [
        ("bob@example.test", "accept", "default-accept"),  # bob allows: the global block yields
        ("carol@example.test", "quarantine", "user-blocklist"),
        ("dave@example.test", "quarantine", "global-blocklist")]
    allowed = global_list({"@sender.test": "allow"})
    decisions = run(default_state(), envelope=env("carol@example.test", "dave@example.test"),
                    result=scan(SPAM), user_list=own, global_list=allowed)
    assert [(d.final, d.rule) for d in decisions] == [
        ("quarantine", "user-blocklist"), ("accept", "default-accept")]


def test_outbound_mail_is_not_looked_up() -> None:
    blocked = global_list({"@sender.test": "block"})
    [d] = run(default_state(), envelope=env("x@elsewhere.example", direction="out"),
              global_list=blocked)
    assert d.rule != "global-blocklist" and blocked.asked == []


# --- API ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def api() -> Iterator[ApiEnv]:
    users = {"admin": "admin", "qman": "qmanager", "helper": "helpdesk", "auditor": "audit",
             "bob@example.test": "quser"}
    with api_env(users=users) as made:
        yield made


def test_admins_keep_the_global_lists_and_each_change_is_audited(api: ApiEnv) -> None:
    client, admin = api.client, api.login("admin")
    added = client.simulate_post("/api/lists/global", headers=admin,
                                 json={"sender": "@Pest.example", "kind": "block"})
    assert added.status_code == 201, added.text
    assert added.json == {"sender": "@pest.example", "kind": "block", "before": None}
    qman = api.login("qman")
    changed = client.simulate_post("/api/lists/global", headers=qman,
                                   json={"sender": "@pest.example", "kind": "allow"})
    assert changed.status_code == 201 and changed.json["before"] == "block"
    assert GlobalLists(api.db).lookup("any@pest.example") == "allow"
    for reader in ("helper", "auditor"):
        found = client.simulate_get("/api/lists/global", headers=api.login(reader),
                                    params={"q": "pest", "kind": "allow"})
        assert [(e["sender"], e["added_by"]) for e in found.json["items"]] == [
            ("@pest.example", "qman")]
    assert client.simulate_delete("/api/lists/global", headers=qman,
                                  json={"sender": "@pest.example"}).status_code == 204
    gone = client.simulate_delete("/api/lists/global", headers=qman,
                                  json={"sender": "@pest.example"})
    assert gone.status_code == 404 and "not on the global lists" in gone.text
    log = [(a["actor"], a["action"], a["target"], a["detail"])
           for a in Audit(CredentialStore.for_layout(api.layout)).list(limit=50)
           if a["action"].startswith("list.global.")]
    assert log == [
        ("qman", "list.global.remove", "@pest.example",
         {"sender": "@pest.example", "before": "allow"}),
        ("qman", "list.global.allow", "@pest.example",
         {"sender": "@pest.example", "before": "block"}),
        ("admin", "list.global.block", "@pest.example",
         {"sender": "@pest.example", "before": None})]
    # The per-recipient lists are another thing: the global entry is not among them.
    assert client.simulate_get("/api/lists", headers=admin, params={"q": "pest"}
                               ).json["items"] == []


def test_readers_may_not_change_and_users_may_not_see(api: ApiEnv) -> None:
    client = api.client
    entry = {"sender": "x@y.example", "kind": "block"}
    for name in ("helper", "auditor"):
        headers = api.login(name)
        assert client.simulate_post("/api/lists/global", headers=headers,
                                    json=entry).status_code == 403
        assert client.simulate_delete("/api/lists/global", headers=headers,
                                      json={"sender": "x@y.example"}).status_code == 403
    bob = api.login("bob@example.test")
    assert client.simulate_get("/api/lists/global", headers=bob).status_code == 403
    assert client.simulate_post("/api/lists/global", headers=bob, json=entry).status_code == 403
    assert client.simulate_get("/api/lists/global").status_code == 401
    assert GlobalLists(api.db).lookup("x@y.example") is None


@pytest.mark.parametrize(("body", "field"), [
    ({"sender": "example.com", "kind": "block"}, "sender"),  # a domain is written @example.com
    ({"sender": "two@@signs.example", "kind": "block"}, "sender"),
    ({"sender": "a b@c.example", "kind": "allow"}, "sender"),
    ({"sender": "x" * 400 + "@long.example", "kind": "allow"}, "sender"),
    ({"sender": "@ok.example", "kind": "maybe"}, "kind"),
    ({"sender": "@ok.example"}, "kind"),
    ({"sender": "@ok.example", "kind": "block", "recipient": "bob@example.test"}, "recipient"),
])
def test_bad_entries_are_refused_with_the_field(api: ApiEnv, body: dict[str, Any],
                                                field: str) -> None:
    result = api.client.simulate_post("/api/lists/global", headers=api.login("admin"),
                                      json=body)
    assert result.status_code == 400, result.text
    assert result.json["error"]["field"] == field and result.json["error"]["message"]
    if body["sender"] == "example.com":  # said for a person, not as a regular expression
        assert "(for the whole domain: @example.com)" in result.json["error"]["message"]
    assert GlobalLists(api.db).search() == [] or all(
        e["sender"] != body["sender"] for e in GlobalLists(api.db).search())


def test_a_bad_kind_filter_is_refused(api: ApiEnv) -> None:
    result = api.client.simulate_get("/api/lists/global", headers=api.login("helper"),
                                     params={"kind": "maybe"})
    assert result.status_code == 400 and result.json["error"]["field"] == "kind"


# --- command line ------------------------------------------------------------------------------


def test_the_command_line_keeps_the_global_lists(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from mailwarden.layout import sandbox

    (tmp_path / "sb").mkdir()
    (tmp_path / "sb" / "layout.json").write_text(sandbox(tmp_path / "sb").to_json())
    root = ["--root", str(tmp_path / "sb")]
    assert cli.main(["lists", "add", "--global", "@Pest.example", "block", *root]) == 0
    assert cli.main(["lists", "add", "bob@example.test", "@pest.example", "allow", *root]) == 0
    capsys.readouterr()
    assert cli.main(["lists", "show", "--global", *root]) == 0
    out = capsys.readouterr().out
    assert out.startswith("global  block  @pest.example  (by console:")
    assert "bob@example.test" not in out
    assert cli.main(["lists", "add", "--global", "bob@example.test", "@a.example", "block",
                     *root]) == 1
    assert "has no recipient" in capsys.readouterr().err
    assert cli.main(["lists", "add", "@a.example", "block", *root]) == 1
    assert "--global" in capsys.readouterr().err
    assert cli.main(["lists", "add", "--global", "pest.example", "block", *root]) == 1
    assert "sender: 'pest.example' is neither an address nor @domain (for the whole domain: " \
        "@pest.example)" in capsys.readouterr().err
    assert cli.main(["lists", "remove", "--global", "@pest.example", *root]) == 0
    assert cli.main(["lists", "remove", "--global", "@pest.example", *root]) == 1
    assert "[not_found]" in capsys.readouterr().err
