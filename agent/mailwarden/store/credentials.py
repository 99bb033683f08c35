"""The API's credentials store: users, sessions, API tokens and the audit log.

A SQLite file of its own (the appliance: /var/lib/mailwarden-api/auth.db, folder 0700 owned
by the API's user), apart from the mail path's shared store, which the internet-facing
content filter and policy service write: a row they insert there grants nothing. TOTP secrets
are encrypted at rest (AES-GCM, bound to the user's id) with a key beside the store, 0600, made
on first use.

Stores of earlier versions kept these tables in the shared store; the first open here moves
their rows over and drops them there.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import secrets
import sqlite3
import time
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..errors import MailwardenError
from .db import Database

if TYPE_CHECKING:
    from ..layout import Layout

log = logging.getLogger("mailwarden.store")

TOTP_KEY_FILE = "totp.key"
# Tokens of earlier versions belonged to nobody and never expired: they are given to the
# oldest administrator and this long from the move.
LEGACY_TOKEN_DAYS = 90

AUTH_SCHEMA: list[str] = [
    # version 1
    """
    CREATE TABLE users (
        id INTEGER PRIMARY KEY,
        username TEXT NOT NULL UNIQUE,
        password_hash TEXT NOT NULL,
        role TEXT NOT NULL,
        totp_secret TEXT,
        totp_last_step INTEGER NOT NULL DEFAULT 0,
        created REAL NOT NULL
    );
    CREATE TABLE sessions (
        token_hash TEXT PRIMARY KEY,
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        csrf_token TEXT NOT NULL,
        created REAL NOT NULL,
        expires REAL NOT NULL
    );
    CREATE TABLE api_tokens (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        token_hash TEXT NOT NULL UNIQUE,
        role TEXT NOT NULL,
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        created REAL NOT NULL,
        expires REAL NOT NULL,
        last_used REAL,
        revoked REAL
    );
    CREATE INDEX api_tokens_user ON api_tokens(user_id);
    CREATE TABLE audit_log (
        id INTEGER PRIMARY KEY,
        time REAL NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT,
        detail TEXT,
        source_ip TEXT
    );
    CREATE INDEX audit_log_time ON audit_log(time);
    CREATE INDEX audit_log_action_source ON audit_log(action, source_ip, time);
    """,
    # version 2: more addresses for one quarantine user (aliases); each belongs to one account
    """
    CREATE TABLE user_addresses (
        address TEXT PRIMARY KEY,
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE
    );
    CREATE INDEX user_addresses_user ON user_addresses(user_id);
    """,
]


class CredentialsKeyError(MailwardenError):
    code = "credentials_key"


def owner_key(path: Path) -> bytes:
    """A 256-bit key kept in a 0600 file of its owner's, made on first use (by whichever
    process comes first; the others read it). Refused if others may read it."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        key = secrets.token_bytes(32)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600)
        except FileExistsError:  # another worker made it just now
            fd = os.open(path, flags)
        else:
            try:
                os.write(fd, key)
                os.fsync(fd)
            finally:
                os.close(fd)
            return key
    try:
        info = os.fstat(fd)
        if info.st_mode & 0o077:
            raise CredentialsKeyError(f"{path} must be 0600 (its owner's only)")
        key = os.read(fd, 64)
    finally:
        os.close(fd)
    if len(key) != 32:
        raise CredentialsKeyError(f"{path} is not a 256-bit key")
    return key


class SecretBox:
    """AES-GCM with a 256-bit key kept in a 0600 file, made on first use. Each value is bound
    to a context (the user's id), so a ciphertext copied to another row does not decrypt."""

    PREFIX = "v1:"

    def __init__(self, key_file: Path) -> None:
        self.key_file = key_file
        self._key: bytes | None = None

    def _load(self) -> bytes:
        if self._key is None:
            self._key = owner_key(self.key_file)
        return self._key

    def seal(self, plain: str, context: str) -> str:
        nonce = secrets.token_bytes(12)
        sealed = AESGCM(self._load()).encrypt(nonce, plain.encode(), context.encode())
        return self.PREFIX + base64.b64encode(nonce + sealed).decode()

    def open(self, sealed: str, context: str) -> str:
        if not sealed.startswith(self.PREFIX):
            raise CredentialsKeyError("a TOTP secret is not encrypted")
        raw = base64.b64decode(sealed.removeprefix(self.PREFIX))
        try:
            return AESGCM(self._load()).decrypt(raw[:12], raw[12:], context.encode()).decode()
        except InvalidTag:
            raise CredentialsKeyError("a TOTP secret does not decrypt with this key") from None


class CredentialStore:
    """The credentials database and its TOTP key; legacy rows moved in on creation."""

    def __init__(self, path: Path, *, legacy: Path | None = None) -> None:
        self.db = Database(path, AUTH_SCHEMA, private=True)
        self.box = SecretBox(path.parent / TOTP_KEY_FILE)
        if self.db.created_from == 0 and legacy is not None and legacy.exists():
            self._move_legacy(legacy)

    @classmethod
    def for_layout(cls, layout: Layout) -> CredentialStore:
        return cls(layout.auth_database, legacy=layout.database)

    def _move_legacy(self, legacy: Path) -> None:
        """Rows of the shared store's old tables, moved here once. Sessions are not kept
        (everyone logs in again); TOTP secrets are encrypted on the way."""
        old = sqlite3.connect(legacy, timeout=30, isolation_level=None)
        old.row_factory = sqlite3.Row
        try:
            tables = {r[0] for r in old.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
            if "users" not in tables:
                return
            old.execute("BEGIN IMMEDIATE")
            users = old.execute("SELECT id, username, password_hash, role, totp_secret, created"
                                " FROM users ORDER BY id").fetchall()
            tokens = old.execute("SELECT * FROM api_tokens").fetchall() \
                if "api_tokens" in tables else []
            audit = old.execute("SELECT * FROM audit_log ORDER BY id").fetchall() \
                if "audit_log" in tables else []
            now = time.time()
            with self.db.transaction() as conn:
                for u in users:
                    conn.execute("INSERT INTO users (id, username, password_hash, role, created)"
                                 " VALUES (?,?,?,?,?)", (u["id"], u["username"],
                                                         u["password_hash"], u["role"],
                                                         u["created"]))
                    if u["totp_secret"]:
                        conn.execute("UPDATE users SET totp_secret = ? WHERE id = ?",
                                     (self.box.seal(u["totp_secret"], str(u["id"])), u["id"]))
                admins = [u["id"] for u in users if u["role"] == "admin"]
                known = {u["id"] for u in users}
                for t in tokens:
                    owner = t["user_id"] if t["user_id"] in known else (
                        admins[0] if admins else None)
                    if owner is None:
                        continue
                    conn.execute(
                        "INSERT INTO api_tokens (name, token_hash, role, user_id, created,"
                        " expires, last_used, revoked) VALUES (?,?,?,?,?,?,?,?)",
                        (t["name"], t["token_hash"], t["role"], owner, t["created"],
                         now + LEGACY_TOKEN_DAYS * 86400, t["last_used"], t["revoked"]))
                for a in audit:
                    conn.execute(
                        "INSERT INTO audit_log (time, actor, action, target, detail, source_ip)"
                        " VALUES (?,?,?,?,?,?)", (a["time"], a["actor"], a["action"],
                                                  a["target"], a["detail"], a["source_ip"]))
            for table in ("sessions", "api_tokens", "audit_log", "users"):
                old.execute(f"DROP TABLE IF EXISTS {table}")
            old.execute("COMMIT")
            log.info("moved %d users, %d API tokens and %d audit entries into %s",
                     len(users), len(tokens), len(audit), self.db.path)
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                old.execute("ROLLBACK")
            raise
        finally:
            old.close()


def admin_exists(path: Path) -> bool:
    """Whether the store at path has an administrator, read without writing anything (root's
    check for appliances set up before the set-up marker existed)."""
    for query in ("mode=ro", "immutable=1"):
        try:
            conn = sqlite3.connect(f"file:{path}?{query}", uri=True, timeout=5)
        except sqlite3.Error:
            continue
        try:
            row = conn.execute("SELECT COUNT(*) FROM users WHERE role = 'admin'").fetchone()
            return bool(row and row[0])
        except sqlite3.Error:
            continue
        finally:
            conn.close()
    return False


def prepare_folder(path: Path, owner: str) -> None:
    """Root, before running anything as the store's owner: the store's folder exists, 0700,
    owned by them (the image makes it; an older one may not have). Its parent is root's."""
    import pwd

    entry = pwd.getpwnam(owner)
    folder = path.parent
    with contextlib.suppress(FileExistsError):
        folder.mkdir(mode=0o700)
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if (info.st_uid, info.st_gid) != (entry.pw_uid, entry.pw_gid):
            os.fchown(fd, entry.pw_uid, entry.pw_gid)
        if info.st_mode & 0o777 != 0o700:
            os.fchmod(fd, 0o700)
    finally:
        os.close(fd)


def run_as_owner(layout: Layout, owner: str, args: list[str],
                 input_text: str | None = None) -> str:
    """`mailwarden ARGS` as the credentials store's owner (the API's user), never as root:
    root writing the store would leave files the API cannot open, and root has no business
    holding credentials. Returns what the command printed; CommandError if it failed."""
    import pwd
    import sys

    from ..process import run

    entry = pwd.getpwnam(owner)
    prepare_folder(layout.auth_database, owner)
    argv = [sys.executable, "-m", "mailwarden.cli", *args]
    if layout.name == "sandbox":
        argv += ["--root", str(layout.root)]
    # A Python start of seconds; minutes on a busy emulated machine.
    result = run(argv, input_text=input_text, user=entry.pw_uid, group=entry.pw_gid,
                 cwd=Path("/"), timeout=600)
    return result.stdout
