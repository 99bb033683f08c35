"""Users, sessions, API tokens and the audit log, in the API's credentials store.

Passwords are argon2id hashes; session and API token secrets are random and only their
SHA-256 is stored, so a copy of the database opens no doors. TOTP secrets are encrypted with
the store's key (store/credentials.py); a code is accepted once (the last accepted time step
is kept per user). API tokens belong to the user who made them, carry no more than that user's
role, expire, and die with the user.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import argon2
import pyotp

from ..errors import MailwardenError, NotFound, StoreError
from .credentials import CredentialStore

Role = Literal["admin", "qmanager", "audit", "helpdesk", "quser"]
ROLES: tuple[str, ...] = ("admin", "qmanager", "audit", "helpdesk", "quser")

SESSION_LIFETIME = 8 * 3600
# Wrong passwords for one account from one address before that address must wait; counted
# per (address, account), so someone elsewhere cannot lock the owner out.
LOCKOUT_AFTER = 5
LOCKOUT_SECONDS = 15 * 60
TOTP_STEP = 30
TOKEN_DAYS_DEFAULT = 90
TOKEN_DAYS_MAX = 365

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


def may_grant(owner_role: str, role: str) -> bool:
    """Roles are not ranked beyond this: an admin may hand out any role, anyone else only
    their own."""
    return owner_role == "admin" or owner_role == role


@dataclass(frozen=True)
class User:
    id: int
    username: str
    role: str
    totp: bool
    # The addresses whose mail a quarantine user sees and acts on: the user name (when it is
    # an address) and those an administrator attached (aliases), lower case.
    addresses: tuple[str, ...] = ()

    def receives(self, address: str) -> bool:
        return address.lower() in self.addresses


@dataclass(frozen=True)
class Session:
    user: User
    csrf_token: str
    expires: float


class Users:
    def __init__(self, store: CredentialStore) -> None:
        self.store = store
        self.db = store.db

    # --- accounts -----------------------------------------------------------------------

    def add(self, username: str, password: str, role: str) -> User:
        if len(password) < 10:
            raise StoreError("the password must have at least 10 characters")
        return self.add_hashed(username, _hasher.hash(password), role)

    def add_hashed(self, username: str, password_hash: str, role: str, *,
                   replace: bool = False) -> User:
        """An account whose password arrives already hashed (a first-boot seed file, so the
        password itself is never written to a disk image or a cloud-init drive).

        replace: an existing account of that name gets this password and role instead, its
        second factor, sessions and tokens gone (first-run setup names the administrator)."""
        if role not in ROLES:
            raise StoreError(f"unknown role '{role}' (one of {', '.join(ROLES)})")
        if not password_hash.startswith(("$argon2id$", "$argon2i$")):
            raise StoreError("the password hash must be an argon2 hash")
        with self.db.transaction() as conn:
            if replace and conn.execute("SELECT 1 FROM users WHERE username = ?",
                                        (username,)).fetchone():
                conn.execute("DELETE FROM users WHERE username = ?", (username,))
            try:
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
        return self._user(row, bool(row["totp_secret"]))

    def list(self) -> list[User]:
        return [self._user(r, bool(r["totp_secret"])) for r in self.db.connection().execute(
            "SELECT id, username, role, totp_secret FROM users ORDER BY username")]

    def _user(self, row: Any, totp: bool) -> User:
        attached = [r[0] for r in self.db.connection().execute(
            "SELECT address FROM user_addresses WHERE user_id = ? ORDER BY address",
            (row["id"],))]
        own = [row["username"].lower()] if "@" in row["username"] else []
        return User(row["id"], row["username"], row["role"], totp,
                    tuple(dict.fromkeys(own + attached)))

    # --- addresses (aliases) ------------------------------------------------------------

    def attach(self, username: str, address: str) -> User:
        """One more address for a quarantine user; an address belongs to one account."""
        user = self.get(username)
        if user.role != "quser":
            raise StoreError("addresses are for quarantine users (role quser)")
        address = address.lower()
        owner = self.owner_of(address)
        if owner is not None and owner.id != user.id:
            raise StoreError(f"{address} belongs to '{owner.username}' already")
        with self.db.transaction() as conn:
            conn.execute("INSERT OR IGNORE INTO user_addresses (address, user_id) VALUES (?, ?)",
                         (address, user.id))
        return self.get(username)

    def detach(self, username: str, address: str) -> User:
        user = self.get(username)
        with self.db.transaction() as conn:
            if conn.execute("DELETE FROM user_addresses WHERE address = ? AND user_id = ?",
                            (address.lower(), user.id)).rowcount == 0:
                raise NotFound(f"{address} is not an address of '{username}'")
        return self.get(username)

    def owner_of(self, address: str) -> User | None:
        """The account whose mail address this is: by its user name, else an attached one."""
        address = address.lower()
        row = self.db.connection().execute(
            "SELECT id, username, role, totp_secret FROM users WHERE lower(username) = ?"
            " UNION ALL SELECT u.id, u.username, u.role, u.totp_secret FROM user_addresses a"
            " JOIN users u ON u.id = a.user_id WHERE a.address = ? LIMIT 1",
            (address, address)).fetchone()
        return self._user(row, bool(row["totp_secret"])) if row else None

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
            cursor = conn.execute("UPDATE users SET password_hash = ? WHERE username = ?",
                                  (_hasher.hash(password), username))
            if cursor.rowcount == 0:
                raise NotFound(f"no user '{username}'")
            conn.execute("DELETE FROM sessions WHERE user_id = (SELECT id FROM users"
                         " WHERE username = ?)", (username,))

    def delete(self, username: str) -> None:
        """The user, their sessions and their API tokens."""
        with self.db.transaction() as conn:
            if conn.execute("DELETE FROM users WHERE username = ?",
                            (username,)).rowcount == 0:
                raise NotFound(f"no user '{username}'")

    # --- second factor ------------------------------------------------------------------

    def _secret(self, row: Any) -> str | None:
        sealed = row["totp_secret"]
        return self.store.box.open(sealed, str(row["id"])) if sealed else None

    def _accept_code(self, row: Any, secret: str, code: str | None, now: float) -> bool:
        """Whether code is the TOTP code of a time step near now that was not used before;
        that step is then used up (a code seen on the wire cannot be replayed)."""
        if not code or not code.isascii() or not code.strip().isdigit():
            return False
        code = code.strip()
        totp = pyotp.TOTP(secret)
        current = int(now) // TOTP_STEP
        for step in (current - 1, current, current + 1):
            if hmac.compare_digest(totp.at(step * TOTP_STEP), code):
                with self.db.transaction() as conn:
                    used = conn.execute(
                        "UPDATE users SET totp_last_step = ? WHERE id = ? AND totp_last_step < ?",
                        (step, row["id"], step)).rowcount
                return used == 1
        return False

    def _row(self, username: str) -> Any:
        row = self.db.connection().execute(
            "SELECT * FROM users WHERE username = ?", (username,)).fetchone()
        if row is None:
            raise NotFound(f"no user '{username}'")
        return row

    def _confirm(self, row: Any, password: str | None, code: str | None, now: float) -> None:
        """The account holder themself: the password, and the current code if TOTP is on."""
        try:
            _hasher.verify(row["password_hash"], password or "")
        except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
            raise AuthError("the current password is required and was wrong") from None
        secret = self._secret(row)
        if secret and not self._accept_code(row, secret, code, now):
            raise AuthError("a valid current one-time code is required")

    def enable_totp(self, username: str, *, password: str | None, current_code: str | None,
                    secret: str, code: str, now: float | None = None) -> None:
        """Turn TOTP on, or move it to a new device: the password (and, when TOTP is on, a
        code of the current device), and a code of the new secret, proving the device has it."""
        now = time.time() if now is None else now
        row = self._row(username)
        self._confirm(row, password, current_code, now)
        current = int(now) // TOTP_STEP
        code = code.strip()
        if not (code.isascii() and code.isdigit()):
            raise StoreError("the code is the 6 digits the app shows")
        try:
            totp = pyotp.TOTP(secret)
            matched = [step for step in (current - 1, current, current + 1)
                       if hmac.compare_digest(totp.at(step * TOTP_STEP), code)]
        except (ValueError, TypeError):
            raise StoreError("the secret is not a base32 TOTP secret") from None
        if not matched:
            raise StoreError("the code does not match; check the device's clock")
        with self.db.transaction() as conn:
            # The code just shown is used up: it cannot log in a second time.
            conn.execute("UPDATE users SET totp_secret = ?, totp_last_step = ? WHERE id = ?",
                         (self.store.box.seal(secret, str(row["id"])), matched[0], row["id"]))

    def disable_totp(self, username: str, *, password: str | None, code: str | None,
                     now: float | None = None) -> None:
        now = time.time() if now is None else now
        row = self._row(username)
        self._confirm(row, password, code, now)
        with self.db.transaction() as conn:
            conn.execute("UPDATE users SET totp_secret = NULL WHERE id = ?", (row["id"],))

    # --- login --------------------------------------------------------------------------

    def authenticate(self, username: str, password: str, totp_code: str | None = None,
                     now: float | None = None) -> User:
        """The user, or AuthError. Throttling repeated failures is the caller's (per source
        address and account: api/resources.py)."""
        now = time.time() if now is None else now
        row = self.db.connection().execute(
            "SELECT * FROM users WHERE username = ?", (username,)).fetchone()
        if row is None:
            with contextlib.suppress(argon2.exceptions.VerifyMismatchError):
                _hasher.verify(_DUMMY_HASH, password + "x")
            raise AuthError("wrong username or password")
        try:
            _hasher.verify(row["password_hash"], password)
        except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
            raise AuthError("wrong username or password") from None
        secret = self._secret(row)
        if secret and not self._accept_code(row, secret, totp_code, now):
            raise AuthError("a valid one-time code is required (each code works once)")
        return self._user(row, bool(secret))

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
        user = self._user(row, bool(row["totp_secret"]))
        return Session(user, row["csrf_token"], row["expires"])

    def end_session(self, token: str) -> None:
        with self.db.transaction() as conn:
            conn.execute("DELETE FROM sessions WHERE token_hash = ?", (_digest(token),))

    # --- API tokens ---------------------------------------------------------------------

    def create_token(self, name: str, role: str, owner: User, *,
                     days: int = TOKEN_DAYS_DEFAULT, now: float | None = None
                     ) -> tuple[int, str]:
        """(id, secret); the secret is shown once and never stored. The token acts for its
        owner with `role` (no more than the owner's) until it expires in `days`."""
        if role not in ROLES:
            raise StoreError(f"unknown role '{role}'")
        if owner.id < 0:
            raise StoreError("an API token cannot make API tokens")
        if not may_grant(owner.role, role):
            raise StoreError(f"the role '{owner.role}' cannot make a token with role '{role}'")
        if isinstance(days, bool) or not isinstance(days, int) \
                or not 1 <= days <= TOKEN_DAYS_MAX:
            raise StoreError(f"a token lives 1 to {TOKEN_DAYS_MAX} days")
        now = time.time() if now is None else now
        secret = "mwt_" + secrets.token_urlsafe(32)
        with self.db.transaction() as conn:
            cursor = conn.execute(
                "INSERT INTO api_tokens (name, token_hash, role, user_id, created, expires)"
                " VALUES (?,?,?,?,?,?)",
                (name, _digest(secret), role, owner.id, now, now + days * 86400))
        return int(cursor.lastrowid or 0), secret

    def token_user(self, secret: str, now: float | None = None) -> User | None:
        now = time.time() if now is None else now
        row = self.db.connection().execute(
            "SELECT t.id, t.name, t.role, u.role AS owner_role, u.username"
            " FROM api_tokens t JOIN users u ON u.id = t.user_id"
            " WHERE t.token_hash = ? AND t.revoked IS NULL AND t.expires > ?",
            (_digest(secret), now)).fetchone()
        if row is None or not may_grant(row["owner_role"], row["role"]):
            return None
        with self.db.transaction() as conn:
            conn.execute("UPDATE api_tokens SET last_used = ? WHERE id = ?", (now, row["id"]))
        return User(-row["id"], f"token:{row['name']}", row["role"], False)

    # builtins.list: in the class body below the list() method, `list` names the method.
    def tokens(self) -> builtins.list[dict[str, Any]]:
        return [dict(r) for r in self.db.connection().execute(
            "SELECT t.id, t.name, t.role, u.username AS owner, t.created, t.expires,"
            " t.last_used, t.revoked FROM api_tokens t JOIN users u ON u.id = t.user_id"
            " ORDER BY t.id")]

    def revoke_token(self, token_id: int) -> None:
        with self.db.transaction() as conn:
            if conn.execute("UPDATE api_tokens SET revoked = ? WHERE id = ? AND revoked IS NULL",
                            (time.time(), token_id)).rowcount == 0:
                raise NotFound(f"no active API token {token_id}")


class Audit:
    def __init__(self, store: CredentialStore) -> None:
        self.db = store.db

    def record(self, actor: str, action: str, target: str | None = None,
               detail: dict[str, Any] | None = None, source_ip: str | None = None,
               now: float | None = None) -> None:
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT INTO audit_log (time, actor, action, target, detail, source_ip)"
                " VALUES (?,?,?,?,?,?)",
                (time.time() if now is None else now, actor, action, target,
                 json.dumps(detail) if detail is not None else None, source_ip))

    def count(self, action: str, *, source_ip: str | None, since: float,
              actor: str | None = None) -> int:
        """Entries of `action` from source_ip since then (and by actor, if given)."""
        query = "SELECT COUNT(*) FROM audit_log WHERE action = ? AND source_ip IS ? AND time >= ?"
        params: list[Any] = [action, source_ip, since]
        if actor is not None:
            query += " AND actor = ?"
            params.append(actor)
        return int(self.db.connection().execute(query, params).fetchone()[0])

    def count_by(self, action: str, actor: str, *, since: float) -> int:
        """Entries of `action` by actor since then, from wherever they came."""
        return int(self.db.connection().execute(
            "SELECT COUNT(*) FROM audit_log WHERE action = ? AND actor = ? AND time >= ?",
            (action, actor, since)).fetchone()[0])

    def list(self, limit: int = 100, offset: int = 0,
             actions: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Newest first; only these actions when `actions` is given."""
        where, params = "", []
        if actions is not None:
            where = f"WHERE action IN ({','.join('?' * len(actions))}) "
            params = list(actions)
        rows = self.db.connection().execute(
            f"SELECT * FROM audit_log {where}ORDER BY id DESC LIMIT ? OFFSET ?",  # noqa: S608
            (*params, limit, offset))
        return [{**dict(r), "detail": json.loads(r["detail"]) if r["detail"] else None}
                for r in rows]
