"""The REST API through falcon.testing, on a real SQLite store and a real sandbox render."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from falcon import testing

from mailwarden.api.app import Services, create_app
from mailwarden.control.service import NoController
from mailwarden.errors import StoreError
from mailwarden.store.credentials import CredentialStore
from mailwarden.store.db import Database
from mailwarden.store.lists import UserLists
from mailwarden.store.quarantine import Quarantine
from mailwarden.store.users import Users
from mailwarden_dev.instance import Sandbox

STATE = """\
version: 1
system:
  hostname: mx.example.test
domains:
  - name: example.test
    transport: {host: 192.0.2.10, port: 25}
"""
PASSWORD = "correct horse battery"
DELIVERED: list[tuple[bytes, str, list[str]]] = []


def _capture(raw: bytes, sender: str, recipients: list[str]) -> None:
    DELIVERED.append((raw, sender, recipients))


@pytest.fixture(scope="module")
def env() -> Iterator[tuple[testing.TestClient, Users, Path]]:
    root = Path(tempfile.mkdtemp(prefix="mw-api-", dir="/tmp"))
    root.chmod(0o755)
    sandbox = Sandbox(root / "sb")
    sandbox.prepare(STATE)  # revision 1, rendered and checked by the real tools
    db = Database(sandbox.layout.database)
    users = Users(CredentialStore.for_layout(sandbox.layout))
    users.add("admin", PASSWORD, "admin")
    users.add("auditor", PASSWORD, "audit")
    users.add("user@example.test", PASSWORD, "quser")
    client = testing.TestClient(create_app(Services(sandbox.layout, db, NoController(),
                                                    deliver=_capture)))
    yield client, users, root
    shutil.rmtree(root, ignore_errors=True)


def login(client: testing.TestClient, username: str = "admin") -> dict[str, str]:
    result = client.simulate_post("/api/session", json={"username": username,
                                                        "password": PASSWORD})
    assert result.status_code == 200, result.text
    return {"X-CSRF-Token": result.json["csrf_token"],
            "Cookie": f"mw_session={result.cookies['mw_session'].value}"}


def test_login_sets_a_strict_cookie(env) -> None:
    client, _, _ = env
    result = client.simulate_post("/api/session", json={"username": "admin",
                                                        "password": PASSWORD})
    cookie = result.cookies["mw_session"]
    assert cookie.http_only and cookie.secure and cookie.same_site == "Strict"
    assert result.json["role"] == "admin" and result.json["csrf_token"]


def test_wrong_password_is_401_then_locked(env) -> None:
    client, users, _ = env
    users.add("victim", PASSWORD, "helpdesk")
    for _ in range(5):
        result = client.simulate_post("/api/session", json={"username": "victim",
                                                            "password": "wrong-password"})
        assert result.status_code == 401
        assert result.json["error"]["code"] == "unauthorized"
    result = client.simulate_post("/api/session", json={"username": "victim",
                                                        "password": PASSWORD})
    assert result.status_code == 429 and result.json["error"]["code"] == "locked_out"


def test_missing_fields_name_the_field(env) -> None:
    client, _, _ = env
    result = client.simulate_post("/api/session", json={"username": "admin"})
    assert result.status_code == 400
    assert result.json["error"] == {"code": "bad_input", "message": "password is required",
                                    "field": "password",
                                    "errors": [{"field": "password",
                                                "message": "password is required"}]}


def test_state_needs_a_login(env) -> None:
    client, _, _ = env
    result = client.simulate_get("/api/state")
    assert result.status_code == 401 and result.json["error"]["code"] == "unauthorized"


def test_get_state_has_the_revision_as_etag(env) -> None:
    client, _, _ = env
    result = client.simulate_get("/api/state", headers=login(client))
    assert result.status_code == 200
    assert result.headers["etag"] == f'"{result.json["revision"]}"'
    assert result.json["state"]["spam"]["levels"]["tag"] == 6.0


def test_put_without_csrf_is_refused(env) -> None:
    client, _, _ = env
    headers = login(client)
    del headers["X-CSRF-Token"]
    result = client.simulate_put("/api/state", headers={**headers, "If-Match": '"1"'},
                                 json={"yaml": STATE})
    assert result.status_code == 403 and result.json["error"]["code"] == "csrf"


def test_put_without_if_match_is_428(env) -> None:
    client, _, _ = env
    result = client.simulate_put("/api/state", headers=login(client), json={"yaml": STATE})
    assert result.status_code == 428


def test_bad_state_is_400_with_the_field(env) -> None:
    client, _, _ = env
    current = client.simulate_get("/api/state", headers=login(client)).json
    state = current["state"]
    state["domains"][0]["transport"]["port"] = 70000
    result = client.simulate_put("/api/state", json={"state": state},
                                 headers={**login(client), "If-Match": f'"{current["revision"]}"'})
    assert result.status_code == 400
    assert result.json["error"]["field"] == "domains[0].transport.port"
    assert "must be 1..65535" in result.json["error"]["message"]


def test_apply_diff_rollback_and_conflict(env) -> None:
    client, _, _ = env
    headers = login(client)
    base = client.simulate_get("/api/state", headers=headers).json["revision"]
    new = STATE.replace("192.0.2.10", "192.0.2.11")
    result = client.simulate_put("/api/state", json={"yaml": new, "comment": "move"},
                                 headers={**headers, "If-Match": f'"{base}"'})
    assert result.status_code == 200, result.text
    assert result.json["revision"] == base + 1
    stale = client.simulate_put("/api/state", json={"yaml": STATE},
                                headers={**headers, "If-Match": f'"{base}"'})
    assert stale.status_code == 409
    assert stale.json["error"]["code"] == "conflict"
    assert stale.json["error"]["current_revision"] == base + 1
    diff = client.simulate_get("/api/state/diff", params={"from": base, "to": base + 1},
                               headers=headers)
    assert "+    transport: {host: 192.0.2.11, port: 25}" in diff.json["diff"]
    revisions = client.simulate_get("/api/state/revisions", headers=headers).json
    assert revisions["current"] == base + 1 and revisions["items"][0]["comment"] == "move"
    back = client.simulate_post("/api/state/rollback", json={"revision": base},
                                headers={**headers, "If-Match": f'"{base + 1}"'})
    assert back.status_code == 200 and back.json["revision"] == base + 2
    text = client.simulate_get(f"/api/state/revisions/{base + 2}", headers=headers).json
    assert "192.0.2.10" in text["yaml"]


def test_audit_role_reads_but_cannot_change(env) -> None:
    client, _, _ = env
    headers = login(client, "auditor")
    assert client.simulate_get("/api/state", headers=headers).status_code == 200
    result = client.simulate_put("/api/state", json={"yaml": STATE},
                                 headers={**headers, "If-Match": '"1"'})
    assert result.status_code == 403 and result.json["error"]["code"] == "forbidden"


def test_api_tokens(env) -> None:
    client, users, _ = env
    token_id, secret = users.create_token("ci", "audit", users.get("admin"))
    ok = client.simulate_get("/api/state", headers={"Authorization": f"Bearer {secret}"})
    assert ok.status_code == 200
    users.revoke_token(token_id)
    gone = client.simulate_get("/api/state", headers={"Authorization": f"Bearer {secret}"})
    assert gone.status_code == 401


def test_every_change_and_login_is_audited(env) -> None:
    # Its own events: under xdist the module's other tests may run in another worker.
    client, _, _ = env
    refused = client.simulate_post("/api/session", json={"username": "admin",
                                                         "password": "not-the-password"})
    assert refused.status_code == 401
    headers = login(client)
    base = client.simulate_get("/api/state", headers=headers).json["revision"]
    new = STATE.replace("192.0.2.10", "192.0.2.12")
    changed = client.simulate_put("/api/state", json={"yaml": new, "comment": "audited"},
                                  headers={**headers, "If-Match": f'"{base}"'})
    assert changed.status_code == 200, changed.text
    back = client.simulate_post("/api/state/rollback", json={"revision": base},
                                headers={**headers, "If-Match": f'"{base + 1}"'})
    assert back.status_code == 200, back.text
    items = client.simulate_get("/api/audit", headers=headers).json["items"]
    actions = {item["action"] for item in items}
    assert {"login", "login.failed", "state.apply", "state.rollback"} <= actions


def test_openapi_document(env) -> None:
    client, _, _ = env
    doc = client.simulate_get("/api/openapi.json").json
    assert doc["openapi"] == "3.1.0"
    assert "put" in doc["paths"]["/api/state"]
    assert doc["paths"]["/api/state"]["put"]["x-roles"] == ["admin"]
    assert "State" in doc["components"]["schemas"]
    assert "RelayDomain" in doc["components"]["schemas"]


def test_unknown_path_is_a_json_404(env) -> None:
    client, _, _ = env
    result = client.simulate_get("/api/nope")
    assert result.status_code == 404
    assert set(result.json["error"]) == {"code", "message", "field"}


def _quarantine(root: Path) -> Quarantine:
    sb = root / "sb"
    db = Database(sb / "var/lib/mailwarden/mailwarden.db")
    return Quarantine(db, sb / "var/lib/mailwarden/quarantine")


def test_quarantine_users_see_only_their_own_mail(env) -> None:
    client, _, root = env
    q = _quarantine(root)
    mine = q.put(b"Subject: mine\r\n\r\nx", kind="spam", sender="s@sender.test",
                 recipients=["user@example.test", "boss@example.test"], lifetime_days=7,
                 subject="mine")
    theirs = q.put(b"Subject: theirs\r\n\r\nx", kind="spam", sender="s@sender.test",
                   recipients=["boss@example.test"], lifetime_days=7, subject="theirs")
    staff = client.simulate_get("/api/quarantine", headers=login(client)).json["items"]
    assert {mine, theirs} <= {item["id"] for item in staff}
    user = login(client, "user@example.test")
    items = client.simulate_get("/api/quarantine", headers=user,
                                params={"recipient": "boss@example.test"}).json["items"]
    assert [item["id"] for item in items] == [mine]
    assert items[0]["recipients"] == {"user@example.test": "new"}
    assert "path" not in items[0]
    assert client.simulate_get(f"/api/quarantine/{theirs}", headers=user).status_code == 404
    raw = client.simulate_get(f"/api/quarantine/{mine}/raw", headers=user)
    assert raw.headers["content-type"] == "message/rfc822" and b"mine" in raw.content
    DELIVERED.clear()
    released = client.simulate_post(f"/api/quarantine/{mine}/release", headers=user)
    assert released.json == {"released": ["user@example.test"]}
    assert DELIVERED[0][2] == ["user@example.test"]
    again = client.simulate_post(f"/api/quarantine/{mine}/release", headers=user)
    assert again.json == {"released": []} and len(DELIVERED) == 1
    stranger = client.simulate_post(f"/api/quarantine/{mine}/release", headers=user,
                                    json={"recipients": ["boss@example.test"]})
    assert stranger.status_code == 400 and stranger.json["error"]["field"] == "recipients"


def test_users_cannot_release_viruses_but_can_block_senders(env) -> None:
    client, _, root = env
    q = _quarantine(root)
    virus = q.put(b"x", kind="virus", sender="v@sender.test",
                  recipients=["user@example.test"], lifetime_days=7, virus="Eicar-Test")
    user = login(client, "user@example.test")
    refused = client.simulate_post(f"/api/quarantine/{virus}/release", headers=user)
    assert refused.status_code == 403
    spam = q.put(b"x", kind="spam", sender="pest@sender.test",
                 recipients=["user@example.test"], lifetime_days=7)
    blocked = client.simulate_post(f"/api/quarantine/{spam}/block", headers=user)
    assert blocked.json == {"blocked": "pest@sender.test", "deleted": ["user@example.test"]}
    lists = UserLists(Database(root / "sb/var/lib/mailwarden/mailwarden.db"))
    assert lists.lookup("user@example.test", "pest@sender.test") == "block"
    auditor = login(client, "auditor")
    assert client.simulate_post(f"/api/quarantine/{virus}/delete",
                                headers=auditor).status_code == 403


def test_settings_sections(env) -> None:
    client, _, _ = env
    headers = login(client)
    spam = client.simulate_get("/api/settings/spam", headers=headers)
    assert spam.status_code == 200 and spam.json["spam"]["levels"]["quarantine"] == 10.0
    revision = spam.json["revision"]
    levels = {**spam.json["spam"], "levels": {"tag": 5.0, "quarantine": 8.0, "reject": 12.0}}
    changed = client.simulate_put("/api/settings/spam", json={"spam": levels},
                                  headers={**headers, "If-Match": f'"{revision}"'})
    assert changed.status_code == 200, changed.text
    assert client.simulate_get("/api/settings/spam", headers=headers).json["spam"]["levels"][
        "tag"] == 5.0
    bad = client.simulate_put(
        "/api/settings/domains", headers={**headers, "If-Match": f'"{revision + 1}"'},
        json={"domains": [{"name": "example.test", "transport": {"host": "x y"}}]})
    assert bad.status_code == 400 and bad.json["error"]["field"] == "domains[0].transport.host"
    assert client.simulate_get("/api/settings/nope", headers=headers).status_code == 404


def test_patch_replaces_several_sections_in_one_revision(env) -> None:
    client, _, _ = env
    headers = login(client)
    live = client.simulate_get("/api/state", headers=headers).json
    revision, state = live["revision"], live["state"]
    objects = {**state["rule_objects"], "partners": [{"domain": "partner.test"}]}
    rules = [*state["rules"], {"name": "Tag partners", "priority": 90,
                               "from": {"objects": ["partners"]},
                               "actions": [{"tag_subject": {"text": "[PARTNER]"}}]}]
    changed = client.simulate_patch(
        "/api/state", headers={**headers, "If-Match": f'"{revision}"'},
        json={"sections": {"rule_objects": objects, "rules": rules}, "comment": "partners"})
    assert changed.status_code == 200, changed.text
    assert changed.json["revision"] == revision + 1
    after = client.simulate_get("/api/state", headers=headers).json["state"]
    [entry] = after["rule_objects"]["partners"]
    assert {k: v for k, v in entry.items() if v is not None} == {"domain": "partner.test"}
    assert after["rules"][-1]["name"] == "Tag partners"
    history = client.simulate_get("/api/state/revisions", headers=headers).json["items"]
    assert history[0]["comment"] == "partners"
    # A rule naming an object that does not exist is refused with its path; nothing applied.
    broken = client.simulate_patch(
        "/api/state", headers={**headers, "If-Match": f'"{revision + 1}"'},
        json={"sections": {"rules": [*rules[:-1], {**rules[-1], "from": {"objects": ["nope"]}}]}})
    assert broken.status_code == 400
    assert broken.json["error"]["field"].startswith(f"rules[{len(rules) - 1}].from")
    unknown = client.simulate_patch(
        "/api/state", headers={**headers, "If-Match": f'"{revision + 1}"'},
        json={"sections": {"version": 2}})
    assert unknown.status_code == 400
    assert unknown.json["error"]["field"] == "sections.version"
    stale = client.simulate_patch("/api/state", headers={**headers, "If-Match": f'"{revision}"'},
                                  json={"sections": {"rules": rules}})
    assert stale.status_code == 409


def test_statistics_and_tracking(env) -> None:
    client, _, root = env
    from mailwarden.store.tracking import Delivery, MessageRecord, Tracking

    Tracking(Database(root / "sb/var/lib/mailwarden/mailwarden.db")).record(MessageRecord(
        direction="in", sender="a@sender.test", size=1234, queue_id="Q1", virus="Eicar-Test",
        deliveries=[Delivery("user@example.test", "quarantine", "Block viruses", "x")]))
    headers = login(client)
    stats = client.simulate_get("/api/statistics", headers=headers).json
    assert stats["totals"]["in"]["virus"] >= 1 and stats["top_viruses"][0]["virus"] == "Eicar-Test"
    assert stats["daily"] and any(u["recipient"] == "user@example.test" and u["viruses"]
                                  for u in stats["users"])
    found = client.simulate_get("/api/tracking", params={"queue_id": "Q1"}, headers=headers)
    assert found.json["items"][0]["deliveries"][0]["rule"] == "Block viruses"
    user = login(client, "user@example.test")
    assert client.simulate_get("/api/tracking", headers=user).status_code == 403


def test_users_tokens_and_totp(env) -> None:
    import pyotp

    from mailwarden.layout import load_layout

    client, _, root = env
    headers = login(client)
    created = client.simulate_post("/api/users", headers=headers, json={
        "username": "helper", "password": PASSWORD, "role": "helpdesk"})
    assert created.status_code == 201
    duplicate = client.simulate_post("/api/users", headers=headers, json={
        "username": "helper", "password": PASSWORD, "role": "helpdesk"})
    assert duplicate.status_code == 400 and "exists already" in duplicate.json["error"]["message"]
    bad_role = client.simulate_post("/api/users", headers=headers, json={
        "username": "x", "password": PASSWORD, "role": "god"})
    assert bad_role.json["error"]["field"] == "role"
    token = client.simulate_post("/api/tokens", headers=headers,
                                 json={"name": "monitoring", "role": "audit"}).json
    assert token["secret"].startswith("mwt_")
    listed = client.simulate_get("/api/tokens", headers=headers).json["items"]
    assert "secret" not in listed[-1] and "token_hash" not in listed[-1]
    helper = login(client, "helper")
    start = client.simulate_post("/api/session/totp", headers=helper).json
    code = pyotp.TOTP(start["secret"]).now()
    done = client.simulate_post("/api/session/totp", headers=helper,
                                json={"secret": start["secret"], "code": code,
                                      "password": PASSWORD})
    assert done.json == {"totp": True}
    stored = CredentialStore.for_layout(load_layout(root / "sb")).db.connection().execute(
        "SELECT totp_secret FROM users WHERE username = 'helper'").fetchone()[0]
    assert start["secret"] not in stored and stored.startswith("v1:")
    no_code = client.simulate_post("/api/session", json={"username": "helper",
                                                         "password": PASSWORD})
    assert no_code.status_code == 401 and "one-time code" in no_code.json["error"]["message"]
    # The code that turned TOTP on is used up; the next time step's code logs in.
    import time as _time
    next_code = pyotp.TOTP(start["secret"]).at(_time.time() + 30)
    with_code = client.simulate_post("/api/session", json={
        "username": "helper", "password": PASSWORD, "totp": next_code})
    assert with_code.status_code == 200
    assert client.simulate_delete("/api/users/helper", headers=headers).status_code == 204


HOSTILE = b"""From: Eve <eve@sender.test>\r
To: user@example.test\r
Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r
MIME-Version: 1.0\r
Content-Type: multipart/alternative; boundary=b\r
\r
--b\r
Content-Type: text/plain; charset=utf-8\r
\r
plain words\r
--b\r
Content-Type: text/html; charset=utf-8\r
\r
<p onmouseover="steal()">Hello<script>alert(1)</script>\r
<img src="https://tracker.example/pixel.gif"><img src="data:image/png;base64,iVBORw0KGgo=">\r
<a href="javascript:alert(2)">x</a><a href="https://ok.example/">ok</a>\r
<style>body{background:url(https://tracker.example/bg)}</style></p>\r
--b--\r
"""


def test_preview_removes_scripts_and_remote_content(env) -> None:
    client, _, root = env
    qid = _quarantine(root).put(HOSTILE, kind="spam", sender="eve@sender.test",
                                recipients=["user@example.test"], lifetime_days=7)
    user = login(client, "user@example.test")
    view = client.simulate_get(f"/api/quarantine/{qid}/preview", headers=user).json
    assert view["subject"] == "Grüße" and view["text"].startswith("plain words")
    html = view["html"]
    for bad in ("script", "onmouseover", "tracker.example", "javascript:", "<style"):
        assert bad not in html, bad
    assert 'src="data:image/png' in html
    assert 'rel="noopener noreferrer nofollow"' in html
    page = client.simulate_get(f"/api/quarantine/{qid}/preview", headers=user,
                               params={"format": "html"})
    assert page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]


def test_bulk_release_reports_each_id(env) -> None:
    client, _, root = env
    q = _quarantine(root)
    ids = [q.put(b"Subject: b\r\n\r\nx", kind="spam", sender="s@sender.test",
                 recipients=["boss@example.test"], lifetime_days=7) for _ in range(3)]
    DELIVERED.clear()
    result = client.simulate_post("/api/quarantine/bulk", headers=login(client),
                                  json={"ids": [*ids, "missing"], "action": "release"}).json
    assert all(result["results"][i] == {"released": ["boss@example.test"]} for i in ids)
    assert result["results"]["missing"]["error"]["code"] == "not_found"
    assert len(DELIVERED) == 3


def test_dkim_key_generation_and_records(env) -> None:
    client, _, _ = env
    headers = login(client)
    made = client.simulate_post("/api/dkim/keys", headers=headers,
                                json={"domain": "example.test", "selector": "mw2026"})
    assert made.status_code == 201, made.text
    assert made.json["dns_name"] == "mw2026._domainkey.example.test"
    assert "v=DKIM1; k=rsa; p=" in made.json["txt"]
    again = client.simulate_post("/api/dkim/keys", headers=headers,
                                 json={"domain": "example.test", "selector": "mw2026"})
    assert again.status_code == 400  # never overwrite a live key silently
    assert client.simulate_post("/api/dkim/keys", headers=headers,
                                json={"domain": "example.test"}).json["error"]["field"] == \
        "selector"


def test_simulate_says_which_rule_and_why(env) -> None:
    client, _, _ = env
    headers = login(client)
    result = client.simulate_post("/api/rules/simulate", headers=headers, json={
        "message": "From: a@sender.test\r\nSubject: hello\r\n\r\nbody\r\n",
        "from": "a@sender.test", "to": ["user@example.test"], "score": 99.0})
    assert result.status_code == 200, result.text
    text = str(result.json)
    assert "Reject spam" in text and "99.0 >= reject level" in text
    bad = client.simulate_post("/api/rules/simulate", headers=headers,
                               json={"message": "x", "to": "not-a-list"})
    assert bad.status_code == 400 and bad.json["error"]["field"] == "to"


ROLE_NAMES = ("admin", "qmanager", "helpdesk", "audit", "quser")


def test_every_resource_allows_and_refuses_by_role(env) -> None:
    """For each route and method: a token of each role gets in (not 401/403) or is refused
    (403), exactly as the resource declares."""
    client, users, _ = env
    admin = users.get("admin")
    tokens = {role: users.create_token(f"matrix-{role}", role, admin)[1] for role in ROLE_NAMES}
    app = client.app
    checked = 0
    for path, resource in _routes(app):
        roles: dict[str, tuple[str, ...]] = getattr(resource, "roles", {})
        for method, allowed in roles.items():
            concrete = (path.replace("{number:int(min=1)}", "1").replace("{token_id:int}", "999")
                        .replace("{section}", "spam").replace("{entry_id}", "none")
                        .replace("{action}", "release").replace("{username}", "nobody")
                        .replace("{queue_id}", "ABCDEF123"))
            for role in ROLE_NAMES:
                result = client.simulate_request(
                    method, concrete, headers={"Authorization": f"Bearer {tokens[role]}"},
                    json={} if method in ("POST", "PUT", "PATCH") else None)
                if role in allowed:
                    assert result.status_code not in (401, 403), (method, path, role,
                                                                  result.text)
                else:
                    assert result.status_code == 403, (method, path, role, result.status_code)
                checked += 1
    assert checked > 100


def _routes(app):
    """(path template, resource) for every route of the Falcon app."""
    found = []

    def walk(nodes):
        for node in nodes:
            if node.resource is not None:
                found.append((node.uri_template, node.resource))
            walk(node.children)

    walk(app._router._roots)
    return found



def _app_at(root: Path, now: list[float]) -> testing.TestClient:
    from mailwarden.layout import load_layout

    layout = load_layout(root / "sb")
    return testing.TestClient(create_app(Services(layout, Database(layout.database),
                                                  NoController(), clock=lambda: now[0])))


def test_guessing_from_one_address_does_not_lock_the_owner_out(env) -> None:
    _client, users, root = env
    users.add("target", PASSWORD, "admin")
    now = [1_000_000.0]
    c = _app_at(root, now)
    statuses = [c.simulate_post("/api/session", remote_addr="198.51.100.50",
                                json={"username": "target", "password": f"guess-{n}"}
                                ) for n in range(50)]
    assert [r.status_code for r in statuses[:5]] == [401] * 5  # wrong password
    assert {r.status_code for r in statuses[5:]} == {429}  # this address, this account
    assert statuses[5].json["error"]["code"] == "locked_out"
    right = {"username": "target", "password": PASSWORD}
    assert c.simulate_post("/api/session", remote_addr="198.51.100.50",
                           json=right).status_code == 429
    # The owner, elsewhere, logs in all the same.
    assert c.simulate_post("/api/session", remote_addr="198.51.100.51",
                           json=right).status_code == 200
    # One address guessing across many accounts is throttled too.
    spread = [c.simulate_post("/api/session", remote_addr="198.51.100.52",
                              json={"username": f"someone-{n}", "password": "guess-xyz"}
                              ).status_code for n in range(12)]
    assert spread[:10] == [401] * 10 and spread[10:] == [429, 429]
    now[0] += 16 * 60  # the window ends
    assert c.simulate_post("/api/session", remote_addr="198.51.100.50",
                           json=right).status_code == 200


def test_a_totp_code_works_once(env) -> None:
    import pyotp

    client, users, _ = env
    users.add("replay", PASSWORD, "helpdesk")
    headers = login(client, "replay")
    secret = pyotp.random_base32()
    totp = pyotp.TOTP(secret)
    import time as _time

    now = _time.time()
    assert client.simulate_post("/api/session/totp", headers=headers, json={
        "secret": secret, "code": totp.at(now), "password": PASSWORD}).status_code == 200
    code = totp.at(now + 30)  # a code seen on the wire
    first = client.simulate_post("/api/session", json={"username": "replay",
                                                       "password": PASSWORD, "totp": code})
    assert first.status_code == 200
    replayed = client.simulate_post("/api/session", json={"username": "replay",
                                                          "password": PASSWORD, "totp": code})
    assert replayed.status_code == 401 and "once" in replayed.json["error"]["message"]
    # An older code than one already used is refused as well.
    older = client.simulate_post("/api/session", json={
        "username": "replay", "password": PASSWORD, "totp": totp.at(now - 30)})
    assert older.status_code == 401


def test_totp_changes_need_the_password_and_a_current_code(env) -> None:
    import time as _time

    import pyotp

    client, users, _ = env
    users.add("careful", PASSWORD, "qmanager")
    headers = login(client, "careful")
    secret = pyotp.random_base32()
    now = _time.time()
    no_password = client.simulate_post("/api/session/totp", headers=headers, json={
        "secret": secret, "code": pyotp.TOTP(secret).at(now)})
    assert no_password.status_code == 403
    assert no_password.json["error"]["code"] == "reauth_failed"
    assert users.get("careful").totp is False
    assert client.simulate_post("/api/session/totp", headers=headers, json={
        "secret": secret, "code": pyotp.TOTP(secret).at(now),
        "password": PASSWORD}).status_code == 200
    # Off: the session alone, or the password without a current code, is not enough.
    assert client.simulate_delete("/api/session/totp", headers=headers).status_code == 403
    wrong = client.simulate_delete("/api/session/totp", headers=headers,
                                   json={"password": "not the password"})
    assert wrong.status_code == 403
    assert client.simulate_delete("/api/session/totp", headers=headers,
                                  json={"password": PASSWORD}).status_code == 403
    # Moving to another device without a code of the current one is refused too.
    other = pyotp.random_base32()
    moved = client.simulate_post("/api/session/totp", headers=headers, json={
        "secret": other, "code": pyotp.TOTP(other).at(now), "password": PASSWORD})
    assert moved.status_code == 403 and users.get("careful").totp is True
    off = client.simulate_delete("/api/session/totp", headers=headers, json={
        "password": PASSWORD, "code": pyotp.TOTP(secret).at(now + 30)})
    assert off.status_code == 204 and users.get("careful").totp is False


def test_tokens_expire_belong_to_a_user_and_die_with_them(env) -> None:
    import time as _time

    client, users, _ = env
    admin = login(client)
    made = client.simulate_post("/api/tokens", headers=admin, json={
        "name": "short", "role": "audit", "expires_days": 1})
    assert made.status_code == 201 and made.json["expires_days"] == 1
    secret = made.json["secret"]
    listed = {t["id"]: t for t in client.simulate_get("/api/tokens", headers=admin).json["items"]}
    assert listed[made.json["id"]]["owner"] == "admin"
    assert 0 < listed[made.json["id"]]["expires"] - _time.time() <= 86400
    assert users.token_user(secret) is not None
    assert users.token_user(secret, now=_time.time() + 86401) is None  # expired
    too_long = client.simulate_post("/api/tokens", headers=admin, json={
        "name": "forever", "role": "audit", "expires_days": 3650})
    assert too_long.status_code == 400 and too_long.json["error"]["field"] == "expires_days"

    # Expired: refused by the API.
    owner = users.add("token-owner", PASSWORD, "admin")
    _token_id, old = users.create_token("old", "audit", owner, now=_time.time() - 2 * 86400,
                                       days=1)
    result = client.simulate_get("/api/state", headers={"Authorization": f"Bearer {old}"})
    assert result.status_code == 401
    # The owner's other token works until the owner is deleted.
    _, alive = users.create_token("alive", "admin", owner)
    bearer = {"Authorization": f"Bearer {alive}"}
    assert client.simulate_get("/api/users", headers=bearer).status_code == 200
    assert client.simulate_delete("/api/users/token-owner", headers=admin).status_code == 204
    assert client.simulate_get("/api/users", headers=bearer).status_code == 401
    # No role above the owner's; a token cannot make tokens.
    helper = users.add("desk", PASSWORD, "helpdesk")
    with pytest.raises(StoreError):
        users.create_token("escalate", "admin", helper)
    _, mine = users.create_token("mine", "admin", users.get("admin"))
    by_token = client.simulate_post("/api/tokens", headers={"Authorization": f"Bearer {mine}"},
                                    json={"name": "child", "role": "audit"})
    assert by_token.status_code == 400


def test_a_non_ascii_csrf_header_is_403_not_500(env) -> None:
    client, _, _ = env
    headers = login(client)
    headers["X-CSRF-Token"] = "\u00e9t\u00e9"
    result = client.simulate_put("/api/state", headers={**headers, "If-Match": '"1"'},
                                 json={"yaml": STATE})
    assert result.status_code == 403
    assert result.json["error"]["code"] == "csrf"


def test_odd_totp_input_is_400_not_500(env) -> None:
    client, users, _ = env
    users.add("odd", PASSWORD, "audit")
    headers = login(client, "odd")
    for body in ({"secret": "JBSWY3DPEHPK3PXP", "code": "\u0661\u0662\u0663", "password": PASSWORD},
                 {"secret": "not base32 !", "code": "123456", "password": PASSWORD},
                 {"secret": "JBSWY3DPEHPK3PXP", "code": "123456", "password": 5}):
        result = client.simulate_post("/api/session/totp", headers=headers, json=body)
        assert result.status_code == 400, (body, result.text)
