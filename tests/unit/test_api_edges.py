"""The API's edges through falcon.testing on a real SQLite store and a real sandbox render:
what a quarantine user may have delivered, the user portal switch, unknown API paths, and
the settings gunicorn is started with."""

from __future__ import annotations

import sqlite3
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from falcon import testing
from gunicorn.config import Config
from gunicorn.workers.gthread import ThreadWorker

from mailwarden.api import serve
from mailwarden.api.app import Services, create_app
from mailwarden.control.service import NoController
from mailwarden.layout import appliance, load_layout, sandbox
from mailwarden.store.db import Database
from mailwarden.store.lists import UserLists
from mailwarden.store.quarantine import Quarantine
from mailwarden.store.users import Users

from .test_api import DELIVERED, PASSWORD, _capture, _quarantine, login
from .test_api import env as api_env  # noqa: F401 - a fixture, used by name

USER = "user@example.test"
WEBUI = Path(__file__).resolve().parents[2] / "webui"


@dataclass
class Env:
    client: testing.TestClient
    users: Users
    quarantine: Quarantine
    lists: UserLists
    delivered: list[tuple[bytes, str, list[str]]]
    webui_client: testing.TestClient


@pytest.fixture(scope="module")
def env(request: pytest.FixtureRequest) -> Env:
    """test_api's app and accounts (admin, auditor, the quarantine user), a quarantine
    manager, and the same app serving the web UI too."""
    client, users, root = request.getfixturevalue("api_env")
    users.add("manager", PASSWORD, "qmanager")
    layout = load_layout(root / "sb")
    db = Database(layout.database)
    webui_client = testing.TestClient(create_app(Services(layout, db, NoController(),
                                                          deliver=_capture, webui=WEBUI)))
    return Env(client, users, _quarantine(root), UserLists(db), DELIVERED, webui_client)


def set_quarantine(env: Env, **settings: bool) -> None:
    """Change the quarantine section through the API, as an administrator would."""
    admin = login(env.client)
    current = env.client.simulate_get("/api/settings/quarantine", headers=admin)
    section = {**current.json["quarantine"], **settings}
    changed = env.client.simulate_put(
        "/api/settings/quarantine", json={"quarantine": section},
        headers={**admin, "If-Match": f'"{current.json["revision"]}"'})
    assert changed.status_code == 200, changed.text


def virus_for_user(env: Env, kind: str = "virus", sender: str = "worm@sender.test") -> str:
    return env.quarantine.put(b"Subject: invoice\r\n\r\nX5O!P%@AP", kind=kind, sender=sender,
                              recipients=[USER], lifetime_days=7, virus="Eicar-Test-Signature")


# --- a quarantine user and viruses ---------------------------------------------------------


@pytest.mark.parametrize("kind", ["virus", "spam"])  # spam: a rule's kind, clamd's finding
def test_quarantine_user_cannot_have_a_virus_delivered_through_allow(env: Env,
                                                                     kind: str) -> None:
    entry = virus_for_user(env, kind, sender=f"worm-{kind}@sender.test")
    user = login(env.client, USER)
    env.delivered.clear()
    for action in ("allow", "release"):
        refused = env.client.simulate_post(f"/api/quarantine/{entry}/{action}", headers=user,
                                           json={"recipients": [USER]})
        assert refused.status_code == 403, refused.text
        assert refused.json["error"]["code"] == "virus_release_forbidden"
    # Other spellings reach no action at all.
    for alias in ("Allow", "ALLOW", "allow-and-release", "release%00"):
        other = env.client.simulate_post(f"/api/quarantine/{entry}/{alias}", headers=user)
        assert other.status_code == 404, (alias, other.text)
    assert env.delivered == []
    assert env.lists.lookup(USER, f"worm-{kind}@sender.test") is None
    assert env.quarantine.get(entry).recipients == {USER: "new"}
    # What the web UI is told it may offer for this message.
    listed = env.client.simulate_get("/api/quarantine", headers=user,
                                     params={"status": "any"}).json["items"]
    assert next(i for i in listed if i["id"] == entry)["actions"] == ["delete", "block", "spam"]
    shown = env.client.simulate_get(f"/api/quarantine/{entry}", headers=user).json
    assert shown["actions"] == ["delete", "block", "spam"]
    # Block and delete stay open to the user.
    blocked = env.client.simulate_post(f"/api/quarantine/{entry}/block", headers=user)
    assert blocked.status_code == 200 and blocked.json["deleted"] == [USER]
    assert env.lists.lookup(USER, f"worm-{kind}@sender.test") == "block"
    assert env.delivered == []


def test_quarantine_user_cannot_use_bulk_actions(env: Env) -> None:
    entry = virus_for_user(env)
    user = login(env.client, USER)
    env.delivered.clear()
    refused = env.client.simulate_post("/api/quarantine/bulk", headers=user,
                                       json={"ids": [entry], "action": "release"})
    assert refused.status_code == 403
    assert env.delivered == [] and env.quarantine.get(entry).recipients == {USER: "new"}


def test_staff_release_and_allow_viruses(env: Env) -> None:
    manager = login(env.client, "manager")
    env.delivered.clear()
    first = virus_for_user(env, sender="staff-allow@sender.test")
    allowed = env.client.simulate_post(f"/api/quarantine/{first}/allow", headers=manager)
    assert allowed.status_code == 200, allowed.text
    assert allowed.json == {"allowed": "staff-allow@sender.test", "released": [USER]}
    assert env.lists.lookup(USER, "staff-allow@sender.test") == "allow"
    second = virus_for_user(env)
    bulk = env.client.simulate_post("/api/quarantine/bulk", headers=manager,
                                    json={"ids": [second], "action": "release"})
    assert bulk.json["results"][second] == {"released": [USER]}
    assert [d[2] for d in env.delivered] == [[USER], [USER]]
    listed = env.client.simulate_get(f"/api/quarantine/{second}", headers=manager).json
    assert listed["actions"] == ["release", "delete", "allow", "block", "spam"]


def test_user_release_virus_lets_users_allow_and_release(env: Env) -> None:
    set_quarantine(env, user_release_virus=True)
    try:
        entry = virus_for_user(env, sender="wanted@sender.test")
        user = login(env.client, USER)
        env.delivered.clear()
        assert env.client.simulate_get(f"/api/quarantine/{entry}", headers=user).json[
            "actions"] == ["release", "delete", "allow", "block", "spam"]
        allowed = env.client.simulate_post(f"/api/quarantine/{entry}/allow", headers=user)
        assert allowed.status_code == 200, allowed.text
        assert env.delivered[0][2] == [USER]
        assert env.lists.lookup(USER, "wanted@sender.test") == "allow"
    finally:
        set_quarantine(env, user_release_virus=False)
    # Switched back: refused again, read from the new state file.
    entry = virus_for_user(env)
    user = login(env.client, USER)
    assert env.client.simulate_post(f"/api/quarantine/{entry}/release",
                                    headers=user).status_code == 403


# --- the user portal switch ----------------------------------------------------------------


def test_portal_off_shuts_quarantine_users_out(env: Env) -> None:
    session = login(env.client, USER)  # logged in while the portal is on
    _, token = env.users.create_token("user-script", "quser",
                                       env.users.get(USER))
    bearer = {"Authorization": f"Bearer {token}"}
    assert env.client.simulate_get("/api/quarantine", headers=bearer).status_code == 200
    set_quarantine(env, user_portal=False)
    try:
        refused = env.client.simulate_post("/api/session",
                                           json={"username": USER, "password": PASSWORD})
        assert refused.status_code == 403
        assert refused.json["error"]["code"] == "portal_disabled"
        assert "portal" in refused.json["error"]["message"]
        assert "mw_session" not in refused.cookies
        for headers in (session, bearer):
            for method, path in (("GET", "/api/session"), ("GET", "/api/quarantine"),
                                 ("POST", "/api/session/totp")):
                result = env.client.simulate_request(method, path, headers=headers, json={})
                assert result.status_code == 403, (method, path, result.text)
                assert result.json["error"]["code"] == "portal_disabled"
        # Public resources answer as they would anyone; logging out still works.
        assert env.client.simulate_get("/api/health", headers=session).status_code == 200
        assert env.client.simulate_delete("/api/session", headers=session).status_code == 204
        # A wrong password is still just a wrong password (no hint which accounts exist).
        wrong = env.client.simulate_post("/api/session",
                                         json={"username": USER, "password": "not it"})
        assert wrong.status_code == 401
        # The staff are unaffected.
        admin = login(env.client)
        assert env.client.simulate_get("/api/quarantine", headers=admin).status_code == 200
        manager = login(env.client, "manager")
        assert env.client.simulate_get("/api/session", headers=manager).json["role"] == \
            "qmanager"
    finally:
        set_quarantine(env, user_portal=True)
    again = login(env.client, USER)
    assert env.client.simulate_get("/api/quarantine", headers=again).status_code == 200
    assert env.client.simulate_get("/api/quarantine", headers=bearer).status_code == 200


# --- unknown API paths ---------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE",
                                    "OPTIONS"])
@pytest.mark.parametrize("path", ["/api/does-not-exist", "/api", "/api/",
                                  "/api/state/revisions/abc", "/api/quarantine/x/y/z",
                                  "/api/webui/index.html"])
def test_unknown_api_paths_are_json_404s(env: Env, method: str, path: str) -> None:
    result = env.webui_client.simulate_request(method, path)
    assert result.status_code == 404, result.text
    assert "text/html" not in result.headers.get("content-type", "")
    if method != "HEAD":
        error = result.json["error"]
        assert error["code"] == "not_found" and path.rstrip("/") in error["message"]
    assert result.headers["cache-control"] == "no-store"


def test_other_paths_still_serve_the_web_ui(env: Env) -> None:
    for path in ("/", "/index.html", "/quarantine", "/apiary", "/app.js"):
        page = env.webui_client.simulate_get(path)
        assert page.status_code == 200, path
    assert "<html" in env.webui_client.simulate_get("/quarantine").text.lower()
    assert env.webui_client.simulate_get("/api/health").json is not None


# --- how gunicorn is started ---------------------------------------------------------------


def _option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_gunicorn_runs_threaded_workers_with_bounded_waits() -> None:
    argv = serve.gunicorn_argv(appliance(), workers=3, threads=6)
    assert argv[:4] == [sys.executable, "-m", "gunicorn", "mailwarden.api.wsgi:application"]
    assert _option(argv, "--workers") == "3" and _option(argv, "--threads") == "6"
    assert _option(argv, "--keep-alive") == str(serve.KEEPALIVE)
    assert 0 < serve.KEEPALIVE <= 30 and 0 < serve.READ_TIMEOUT <= 60
    # gunicorn itself resolves the worker class the same way.
    config = Config()
    for name in ("worker_class", "threads", "keepalive", "timeout", "worker_connections"):
        flag = {"worker_class": "--worker-class", "threads": "--threads",
                "keepalive": "--keep-alive", "timeout": "--timeout",
                "worker_connections": "--worker-connections"}[name]
        config.set(name, _option(argv, flag))
    assert "--no-control-socket" in argv
    assert issubclass(config.worker_class, ThreadWorker)
    assert config.worker_class is serve.ApiWorker
    # Room for idle connections beyond the busy threads, within the file descriptor limit.
    assert config.threads < config.worker_connections <= 512


def test_cli_passes_threads_through(monkeypatch: pytest.MonkeyPatch) -> None:
    from mailwarden import cli

    seen: dict[str, int] = {}

    def fake_run_api(layout: object, workers: int, threads: int) -> int:
        seen.update(workers=workers, threads=threads)
        return 0

    monkeypatch.setattr(serve, "run_api", fake_run_api)
    assert cli.main(["api", "--workers", "2", "--threads", "5"]) == 0
    assert seen == {"workers": 2, "threads": 5}


def test_the_stores_are_made_before_gunicorn_forks_its_workers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """run_api makes and migrates both databases before it becomes gunicorn, so the workers
    only open them (two workers making the same new database once raced for its lock)."""
    layout = sandbox(tmp_path / "sb")
    execs: list[list[str]] = []

    def fake_execve(path: str, argv: list[str], env: dict[str, str]) -> None:
        execs.append(argv)
        raise SystemExit(0)

    monkeypatch.setattr(serve.os, "execve", fake_execve)
    monkeypatch.setattr(serve.secrets, "ensure_self_signed", lambda *args: None)
    assert not layout.database.exists() and not layout.auth_database.exists()
    with pytest.raises(SystemExit):
        serve.run_api(layout, workers=2, threads=2)
    assert execs and execs[0][2] == "gunicorn"
    for path in (layout.database, layout.auth_database):
        version = sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0]
        assert version > 0, path
