"""Users, sessions, API tokens and the audit log.

Passwords are argon2id hashes; session and API token secrets are random and only their
SHA-256 is stored, so a copy of the database opens no doors.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any, Literal

import argon2

from ..errors import MailwardenError, NotFound, StoreError
from .db import Database

Role = Literal["admin", "qmanager", "audit", "helpdesk", "quser"]
ROLES: tuple[str, ...] = ("admin", "qmanager", "audit", "helpdesk", "quser")

SESSION_LIFETIME = 8 * 3600
LOCKOUT_AFTER = 5
LOCKOUT_SECONDS = 15 * 60

_hasher = argon2.PasswordHasher()


def hash_password(password: str) -> str:
    """The argon2id hash the store keeps (and a seed file may carry instead of a password)."""
    return _hasher.hash(password)


# Verifying an unknown user costs the same as a known one: no user enumeration by timing.
_DUMMY_HASH = _hasher.hash("mailwarden-no-such-user")


class AuthError(MailwardenError):
    code = "unauthorized"


class LockedOut(AuthError):
    code = "locked_out"


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class User:
    id: int
    username: str
    role: str
    totp: bool


@dataclass(frozen=True)
class Session:
    user: User
    csrf_token: str
    expires: float


class Users:
    def __init__(self, db: Database) -> None:
        self.db = db

    # --- accounts -----------------------------------------------------------------------

    def add(self, username: str, password: str, role: str) -> User:
        if len(password) < 10:
            raise StoreError("the password must have at least 10 characters")
        return self.add_hashed(username, _hasher.hash(password), role)

    def add_hashed(self, username: str, password_hash: str, role: str) -> User:
        """An account whose password arrives already hashed (a first-boot seed file, so the
        password itself is never written to a disk image or a cloud-init drive)."""
        if role not in ROLES:
            raise StoreError(f"unknown role '{role}' (one of {', '.join(ROLES)})")
        if not password_hash.startswith(("$argon2id$", "$argon2i$")):
            raise StoreError("the password hash must be an argon2 hash")
        try:
            with self.db.transaction() as conn:
                conn.execute(
                    "INSERT INTO users (username, password_hash, role, created) VALUES (?,?,?,?)",
                    (username, password_hash, role, time.time()))
        except Exception as exc:
            if "UNIQUE" in str(exc):
                raise StoreError(f"user '{username}' exists already") from None
            raise
        return self.get(username)

    def get(self, username: str) -> User:
        row = self.db.connection().execute(
            "SELECT id, username, role, totp_secret FROM users WHERE username = ?",
            (username,)).fetchone()
        if row is None:
            raise NotFound(f"no user '{username}'")
        return User(row["id"], row["username"], row["role"], bool(row["totp_secret"]))

    def list(self) -> list[User]:
        return [User(r["id"], r["username"], r["role"], bool(r["totp_secret"]))
                for r in self.db.connection().execute(
                    "SELECT id, username, role, totp_secret FROM users ORDER BY username")]

    def count(self, role: str | None = None) -> int:
        if role is None:
            row = self.db.connection().execute("SELECT COUNT(*) FROM users").fetchone()
        else:
            row = self.db.connection().execute(
                "SELECT COUNT(*) FROM users WHERE role = ?", (role,)).fetchone()
        return int(row[0])

    def set_password(self, username: str, password: str) -> None:
        if len(password) < 10:
            raise StoreError("the password must have at least 10 characters")
        with self.db.transaction() as conn:
            cursor = conn.execute(
                "UPDATE users SET password_hash = ?, failed_logins = 0, locked_until = 0"
                " WHERE username = ?", (_hasher.hash(password), username))
            if cursor.rowcount == 0:
                raise NotFound(f"no user '{username}'")
            conn.execute("DELETE FROM sessions WHERE user_id = (SELECT id FROM users"
                         " WHERE username = ?)", (username,))

    def delete(self, username: str) -> None:
        with self.db.transaction() as conn:
            if conn.execute("DELETE FROM users WHERE username = ?",
                            (username,)).rowcount == 0:
                raise NotFound(f"no user '{username}'")

    def set_totp(self, username: str, secret: str | None) -> None:
        with self.db.transaction() as conn:
            conn.execute("UPDATE users SET totp_secret = ? WHERE username = ?",
                         (secret, username))

    # --- login --------------------------------------------------------------------------

    def authenticate(self, username: str, password: str, totp_code: str | None = None,
                     now: float | None = None) -> User:
        """The user, or AuthError; repeated failures lock the account for a while."""
        import pyotp

        now = time.time() if now is None else now
        row = self.db.connection().execute(
            "SELECT * FROM users WHERE username = ?", (username,)).fetchone()
        if row is None:
            with contextlib.suppress(argon2.exceptions.VerifyMismatchError):
                _hasher.verify(_DUMMY_HASH, password + "x")
            raise AuthError("wrong username or password")
        if row["locked_until"] > now:
            raise LockedOut(f"too many failed logins; try again in "
                            f"{int(row['locked_until'] - now) // 60 + 1} minutes")
        try:
            _hasher.verify(row["password_hash"], password)
            if row["totp_secret"] and not (totp_code and pyotp.TOTP(row["totp_secret"]).verify(
                    totp_code, for_time=int(now), valid_window=1)):
                raise AuthError("a valid one-time code is required")
        except (argon2.exceptions.VerifyMismatchError, AuthError) as exc:
            failures = row["failed_logins"] + 1
            locked = now + LOCKOUT_SECONDS if failures >= LOCKOUT_AFTER else 0
            with self.db.transaction() as conn:
                conn.execute("UPDATE users SET failed_logins = ?, locked_until = ? WHERE id = ?",
                             (0 if locked else failures, locked, row["id"]))
            if isinstance(exc, AuthError):
                raise
            raise AuthError("wrong username or password") from None
        with self.db.transaction() as conn:
            conn.execute("UPDATE users SET failed_logins = 0 WHERE id = ?", (row["id"],))
        return User(row["id"], row["username"], row["role"], bool(row["totp_secret"]))

    # --- sessions -----------------------------------------------------------------------

    def create_session(self, user: User, now: float | None = None) -> tuple[str, Session]:
        now = time.time() if now is None else now
        token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        with self.db.transaction() as conn:
            conn.execute("DELETE FROM sessions WHERE expires < ?", (now,))
            conn.execute(
                "INSERT INTO sessions (token_hash, user_id, csrf_token, created, expires)"
                " VALUES (?,?,?,?,?)", (_digest(token), user.id, csrf, now,
                                        now + SESSION_LIFETIME))
        return token, Session(user, csrf, now + SESSION_LIFETIME)

    def session(self, token: str, now: float | None = None) -> Session | None:
        now = time.time() if now is None else now
        row = self.db.connection().execute(
            "SELECT s.csrf_token, s.expires, u.id, u.username, u.role, u.totp_secret"
            " FROM sessions s JOIN users u ON u.id = s.user_id"
            " WHERE s.token_hash = ? AND s.expires > ?", (_digest(token), now)).fetchone()
        if row is None:
            return None
        user = User(row["id"], row["username"], row["role"], bool(row["totp_secret"]))
        return Session(user, row["csrf_token"], row["expires"])

    def end_session(self, token: str) -> None:
        with self.db.transaction() as conn:
            conn.execute("DELETE FROM sessions WHERE token_hash = ?", (_digest(token),))

    # --- API tokens ---------------------------------------------------------------------

    def create_token(self, name: str, role: str, owner: User | None) -> tuple[int, str]:
        """(id, secret); the secret is shown once and never stored."""
        if role not in ROLES:
            raise StoreError(f"unknown role '{role}'")
        secret = "mwt_" + secrets.token_urlsafe(32)
        with self.db.transaction() as conn:
            cursor = conn.execute(
                "INSERT INTO api_tokens (name, token_hash, role, user_id, created)"
                " VALUES (?,?,?,?,?)",
                (name, _digest(secret), role, owner.id if owner else None, time.time()))
        return int(cursor.lastrowid or 0), secret

    def token_user(self, secret: str) -> User | None:
        row = self.db.connection().execute(
            "SELECT id, name, role FROM api_tokens WHERE token_hash = ? AND revoked IS NULL",
            (_digest(secret),)).fetchone()
        if row is None:
            return None
        with self.db.transaction() as conn:
            conn.execute("UPDATE api_tokens SET last_used = ? WHERE id = ?",
                         (time.time(), row["id"]))
        return User(-row["id"], f"token:{row['name']}", row["role"], False)

    def tokens(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.db.connection().execute(
            "SELECT id, name, role, created, last_used, revoked FROM api_tokens ORDER BY id")]

    def revoke_token(self, token_id: int) -> None:
        with self.db.transaction() as conn:
            if conn.execute("UPDATE api_tokens SET revoked = ? WHERE id = ? AND revoked IS NULL",
                            (time.time(), token_id)).rowcount == 0:
                raise NotFound(f"no active API token {token_id}")


class Audit:
    def __init__(self, db: Database) -> None:
        self.db = db

    def record(self, actor: str, action: str, target: str | None = None,
               detail: dict[str, Any] | None = None, source_ip: str | None = None,
               now: float | None = None) -> None:
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT INTO audit_log (time, actor, action, target, detail, source_ip)"
                " VALUES (?,?,?,?,?,?)",
                (time.time() if now is None else now, actor, action, target,
                 json.dumps(detail) if detail is not None else None, source_ip))

    def count(self, action: str, *, source_ip: str | None, since: float) -> int:
        return int(self.db.connection().execute(
            "SELECT COUNT(*) FROM audit_log WHERE action = ? AND source_ip IS ? AND time >= ?",
            (action, source_ip, since)).fetchone()[0])

    def list(self, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
        rows = self.db.connection().execute(
            "SELECT * FROM audit_log ORDER BY id DESC LIMIT ? OFFSET ?", (limit, offset))
        return [{**dict(r), "detail": json.loads(r["detail"]) if r["detail"] else None}
                for r in rows]
