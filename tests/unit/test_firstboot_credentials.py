"""The set-up marker and the credentials store, attacked as the appliance's real users.

The API's user owns the credentials store but must not be able to run the first-run setup a
second time (root's marker decides, not any store it writes); the internet-facing filter's
user must not be able to mint a login at all.
"""

from __future__ import annotations

import grp
import hashlib
import json
import os
import pwd
import shutil
import socket
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from falcon import testing

from mailwarden.api.app import Services, create_app
from mailwarden.cli import helper_operations
from mailwarden.control.service import NoController
from mailwarden.firstboot.answers import NetworkAnswer, validate_answers
from mailwarden.firstboot.boot import create_admin
from mailwarden.firstboot.configure import adopt_earlier_setup, is_set_up
from mailwarden.layout import Layout
from mailwarden.privileged.client import ApplyHelperClient
from mailwarden.privileged.permissions import share_with_agent
from mailwarden.privileged.server import listening_socket, serve
from mailwarden.state.revisions import RevisionStore
from mailwarden.store.credentials import CredentialStore, prepare_folder
from mailwarden.store.db import Database
from mailwarden.store.users import Users, hash_password
from mailwarden_dev.instance import Sandbox

from ..agent_users import API, FILTER, GROUP, PYTHON, Account, ensure_agent_users, run_as
from .test_api import STATE

PASSWORD = "correct horse battery"
ATTACKER_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGF0dGFja2VyLWtleQ attacker@evil"


@pytest.fixture(scope="module", autouse=True)
def accounts() -> dict[str, Account]:
    return ensure_agent_users()


def _ids(name: str) -> tuple[int, int]:
    entry = pwd.getpwnam(name)
    return entry.pw_uid, entry.pw_gid


def as_user(name: str, code: str, *args: str) -> dict[str, object]:
    """Run Python code as that user, as its unit runs it; it prints one JSON line."""
    result = run_as(ensure_agent_users()[name], code, *args)
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


@pytest.fixture
def agent_python(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """First boot runs `sys.executable -m mailwarden.cli` as the API's user; the appliance's
    venv is readable by it, this test's interpreter may not be (it may live under /root):
    the system's Python with this checkout's packages stands in for it."""
    import mailwarden

    packages = [p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
    wrapper = tree / "python"
    wrapper.write_text("#!/bin/sh\nPYTHONPATH=" + ":".join(
        [str(Path(mailwarden.__file__).parent.parent), *packages])
        + f' exec {PYTHON} "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(wrapper))


class RecordingHost:
    """The host settings, written under the test's folder: what root would write to /."""

    def __init__(self, root: Path) -> None:
        self.keys = root / "root/.ssh/authorized_keys"

    def set_hostname(self, name: str) -> None:
        pass

    def set_network(self, network: NetworkAnswer) -> None:
        pass

    def set_ssh_keys(self, keys: list[str]) -> None:
        self.keys.parent.mkdir(parents=True, exist_ok=True)
        self.keys.write_text("".join(k + "\n" for k in keys))

    def set_keyboard(self, keyboard: str) -> None:
        pass

    def set_timezone(self, timezone: str) -> None:
        pass


def _agent_folders(layout: Layout) -> None:
    """As the appliance's image lays them out: the shared store's folder is the agent group's,
    the credentials store's the API user's alone."""
    gid = grp.getgrnam(GROUP).gr_gid
    folder = layout.database.parent
    os.chown(folder, 0, gid)
    folder.chmod(0o3770)
    Database(layout.database)
    share_with_agent(layout, GROUP)
    prepare_folder(layout.auth_database, API)


@pytest.fixture
def tree() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="mw-creds-", dir="/tmp"))
    root.chmod(0o755)  # the agent's users must reach the sandbox
    yield root
    shutil.rmtree(root, ignore_errors=True)


# --- the API's user cannot run the first-run setup again ------------------------------------

ATTACK = r"""
import json, socket, sqlite3, sys
auth, shared, sock_path, key = sys.argv[1:5]
done = []
# Everything the API's user can write: its own credentials store, and the shared one.
db = sqlite3.connect(auth)
done.append(db.execute("UPDATE users SET username = 'renamed' WHERE role = 'admin'").rowcount)
db.execute("DELETE FROM users")
db.commit()
db = sqlite3.connect(shared)
try:
    db.execute("DELETE FROM users")
    db.commit()
except sqlite3.Error:
    pass  # the table moved out long ago
answers = {"version": 1, "hostname": "owned.example.org",
           "admin": {"password": "attacker password"},
           "domains": [{"name": "example.org", "server": "10.0.0.5"}],
           "trusted_networks": ["0.0.0.0/0"], "ssh_authorized_keys": [key]}
s = socket.socket(socket.AF_UNIX)
s.connect(sock_path)
s.sendall(json.dumps({"op": "setup", "answers": answers, "author": "x"}).encode() + b"\n")
s.shutdown(socket.SHUT_WR)
reply = b""
while chunk := s.recv(65536):
    reply += chunk
print(json.dumps({"renamed": done, "reply": json.loads(reply)}))
"""


class Helper:
    def __init__(self, layout: Layout, root: Path) -> None:
        self.path = root / "run" / "apply.sock"
        self.listener = listening_socket(self.path)
        os.chown(self.path, _ids(API)[0], 0)  # the appliance: the socket is the API's
        operations = helper_operations(layout, controller=NoController(),
                                       host_factory=lambda: RecordingHost(root))
        allowed = {_ids(API)[0], 0}
        self.thread = threading.Thread(target=serve, args=(self.listener, operations, allowed),
                                       kwargs={"idle_timeout": None}, daemon=True)
        self.thread.start()
        self.client = ApplyHelperClient(self.path, timeout=300)

    def close(self) -> None:
        self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self.thread.join(timeout=10)


def test_the_api_user_cannot_run_setup_again(tree: Path, agent_python: None) -> None:
    sandbox = Sandbox(tree / "sb")
    sandbox.prepare(None)
    layout = sandbox.layout
    _agent_folders(layout)
    helper = Helper(layout, tree)
    try:
        answers = validate_answers({
            "version": 1, "hostname": "gw.example.org",
            "admin": {"password_hash": hash_password(PASSWORD)},
            "domains": [{"name": "example.org", "server": "10.0.0.5"}]})
        outcome = helper.client.setup(answers)
        # What first boot does with a seed: the admin made by the agent as the API's user.
        create_admin(layout, outcome.admin, answers.admin.password_hash or "", as_user=API)
        assert is_set_up(layout)
        assert layout.auth_database.stat().st_uid == _ids(API)[0]
        revisions = [r.number for r in RevisionStore(layout.revisions_dir).history()]
        keys = RecordingHost(tree).keys
        assert keys.read_text() == ""  # the answers had no key

        result = as_user(API, ATTACK, str(layout.auth_database), str(layout.database),
                         str(helper.path), ATTACKER_KEY)
    finally:
        helper.close()
    assert result["renamed"] == [1]  # the API's user did own its store...
    error = result["reply"]["error"]  # type: ignore[index]
    assert error["code"] == "already_set_up", error  # ...but that decides nothing
    assert keys.read_text() == ""
    assert [r.number for r in RevisionStore(layout.revisions_dir).history()] == revisions
    assert "0.0.0.0/0" not in layout.state_file.read_text()


def test_an_appliance_set_up_before_the_marker_gets_it(tree: Path) -> None:
    sandbox = Sandbox(tree / "old")
    sandbox.prepare(STATE)  # revision 1
    layout = sandbox.layout
    # The shared store of earlier versions, with its administrator.
    conn = Database(layout.database).connection()
    conn.execute("INSERT INTO users (username, password_hash, role, created)"
                 " VALUES ('admin', ?, 'admin', 0)", (hash_password(PASSWORD),))
    assert not is_set_up(layout)
    assert adopt_earlier_setup(layout) and is_set_up(layout)
    assert layout.setup_marker.stat().st_mode & 0o777 == 0o640
    # A fresh one (revisions, no administrator anywhere) stays open for the wizard.
    fresh = Sandbox(tree / "fresh")
    fresh.prepare(STATE)
    Database(fresh.layout.database)
    assert not adopt_earlier_setup(fresh.layout) and not is_set_up(fresh.layout)


# --- the filter's user cannot mint a login --------------------------------------------------

FILTER_ATTACK = r"""
import hashlib, json, os, sqlite3, sys, time
auth, shared = sys.argv[1:3]
out = {}
try:
    os.open(auth, os.O_RDWR)
    out["open"] = "opened"
except OSError as exc:
    out["open"] = exc.strerror
try:
    db = sqlite3.connect(auth)
    db.execute("INSERT INTO api_tokens (name, token_hash, role, user_id, created, expires)"
               " VALUES ('x', 'y', 'admin', 1, 0, 1e12)")
    db.commit()
    out["sqlite"] = "inserted"
except sqlite3.Error as exc:
    out["sqlite"] = str(exc)
# The tables of earlier versions, in the store this user does write.
db = sqlite3.connect(shared)
db.execute("CREATE TABLE IF NOT EXISTS users (id INTEGER PRIMARY KEY, username TEXT,"
           " password_hash TEXT, role TEXT, totp_secret TEXT, created REAL,"
           " failed_logins INTEGER DEFAULT 0, locked_until REAL DEFAULT 0)")
db.execute("CREATE TABLE IF NOT EXISTS api_tokens (id INTEGER PRIMARY KEY, name TEXT,"
           " token_hash TEXT, role TEXT, user_id INTEGER, created REAL, last_used REAL,"
           " revoked REAL)")
db.execute("INSERT INTO users (username, password_hash, role, created)"
           " VALUES ('filter-admin', 'x', 'admin', 0)")
db.execute("INSERT INTO api_tokens (name, token_hash, role, user_id, created)"
           " VALUES ('forged', ?, 'admin', NULL, ?)",
           (hashlib.sha256(b"mwt_forged-by-the-filter").hexdigest(), time.time()))
db.commit()
out["shared"] = "inserted"
print(json.dumps(out))
"""


def test_the_filter_user_cannot_mint_a_login(tree: Path, agent_python: None) -> None:
    sandbox = Sandbox(tree / "sb")
    sandbox.prepare(STATE)
    layout = sandbox.layout
    _agent_folders(layout)
    create_admin(layout, "admin", hash_password(PASSWORD), as_user=API)

    result = as_user(FILTER, FILTER_ATTACK, str(layout.auth_database), str(layout.database))
    assert result["open"] == "Permission denied"
    assert result["sqlite"] == "unable to open database file"
    assert result["shared"] == "inserted"  # it may write the mail path's store...
    # ...which grants nothing: the API reads credentials from its own store only.
    client = testing.TestClient(create_app(Services(layout, Database(layout.database),
                                                    NoController())))
    forged = client.simulate_get(
        "/api/users", headers={"Authorization": "Bearer mwt_forged-by-the-filter"})
    assert forged.status_code == 401
    assert [u.username for u in Users(CredentialStore.for_layout(layout)).list()] == ["admin"]
    mode = layout.auth_database.parent.stat().st_mode & 0o777
    assert mode == 0o700 and layout.auth_database.stat().st_mode & 0o777 == 0o600


def test_totp_secrets_are_encrypted_with_a_key_only_the_api_reads(tree: Path) -> None:
    import pyotp

    sandbox = Sandbox(tree / "sb")
    sandbox.prepare(STATE)
    layout = sandbox.layout
    store = CredentialStore.for_layout(layout)
    users = Users(store)
    users.add("alice", PASSWORD, "helpdesk")
    secret = pyotp.random_base32()
    users.enable_totp("alice", password=PASSWORD, current_code=None, secret=secret,
                      code=pyotp.TOTP(secret).now())
    raw = store.db.connection().execute(
        "SELECT totp_secret FROM users WHERE username = 'alice'").fetchone()[0]
    assert raw.startswith("v1:") and secret not in raw
    key = layout.auth_database.parent / "totp.key"
    assert key.stat().st_mode & 0o777 == 0o600 and key.stat().st_size == 32
    # Copied to another user's row, the ciphertext does not decrypt (bound to the user).
    users.add("mallory", PASSWORD, "helpdesk")
    with store.db.transaction() as conn:
        conn.execute("UPDATE users SET totp_secret = ? WHERE username = 'mallory'", (raw,))
    from mailwarden.store.credentials import CredentialsKeyError

    with pytest.raises(CredentialsKeyError):
        users.authenticate("mallory", PASSWORD, "123456")
    assert hashlib.sha256(secret.encode()).hexdigest() not in key.read_bytes().hex()
