"""Users, API tokens and the second factor, through the API."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import falcon
import pyotp

from ..store.users import ROLES, TOKEN_DAYS_DEFAULT, TOKEN_DAYS_MAX, Audit, AuthError, Users
from .auth import Forbidden
from .errors import BadInput
from .resources import ADMIN, EVERYONE, _media


def _text(data: dict[str, Any], name: str) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value:
        raise BadInput(f"{name} is required", name)
    return value


@dataclass
class UsersResource:
    users: Users
    audit: Audit
    roles = {"GET": ADMIN, "POST": ADMIN}

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"items": [{"username": u.username, "role": u.role, "totp": u.totp}
                                for u in self.users.list()]}

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        data = _media(req)
        role = _text(data, "role")
        if role not in ROLES:
            raise BadInput(f"role must be one of {', '.join(ROLES)}", "role")
        user = self.users.add(_text(data, "username"), _text(data, "password"), role)
        self.audit.record(req.context.user.username, "user.add", user.username,
                          {"role": role}, req.remote_addr)
        resp.status = falcon.HTTP_201
        resp.media = {"username": user.username, "role": user.role}


@dataclass
class UserResource:
    users: Users
    audit: Audit
    roles = {"DELETE": ADMIN, "PUT": ADMIN}

    def on_delete(self, req: falcon.Request, resp: falcon.Response, username: str) -> None:
        if username == req.context.user.username:
            raise BadInput("you cannot delete yourself", "username")
        self.users.delete(username)
        self.audit.record(req.context.user.username, "user.delete", username,
                          source_ip=req.remote_addr)
        resp.status = falcon.HTTP_204

    def on_put(self, req: falcon.Request, resp: falcon.Response, username: str) -> None:
        """Set a new password (the user's sessions end)."""
        self.users.set_password(username, _text(_media(req), "password"))
        self.audit.record(req.context.user.username, "user.password", username,
                          source_ip=req.remote_addr)
        resp.media = {"username": username}


@dataclass
class TokensResource:
    users: Users
    audit: Audit
    roles = {"GET": ADMIN, "POST": ADMIN}

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"items": self.users.tokens()}

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        """A token acting for the caller, with a role no higher than theirs, for
        `expires_days` (default 90, at most 365)."""
        data = _media(req)
        role = _text(data, "role")
        if role not in ROLES:
            raise BadInput(f"role must be one of {', '.join(ROLES)}", "role")
        days = data.get("expires_days", TOKEN_DAYS_DEFAULT)
        if isinstance(days, bool) or not isinstance(days, int) \
                or not 1 <= days <= TOKEN_DAYS_MAX:
            raise BadInput(f"expires_days must be a whole number from 1 to {TOKEN_DAYS_MAX}",
                           "expires_days")
        owner = req.context.user
        token_id, secret = self.users.create_token(_text(data, "name"), role, owner, days=days)
        self.audit.record(owner.username, "token.create", str(token_id),
                          {"role": role, "expires_days": days}, req.remote_addr)
        resp.status = falcon.HTTP_201
        resp.media = {"id": token_id, "secret": secret, "expires_days": days,
                      "note": "shown once; store it now"}


@dataclass
class TokenResource:
    users: Users
    audit: Audit
    roles = {"DELETE": ADMIN}

    def on_delete(self, req: falcon.Request, resp: falcon.Response, token_id: int) -> None:
        self.users.revoke_token(token_id)
        self.audit.record(req.context.user.username, "token.revoke", str(token_id),
                          source_ip=req.remote_addr)
        resp.status = falcon.HTTP_204


@dataclass
class TotpResource:
    """POST {} proposes a new secret (secret + otpauth URI); POST {"secret", "code",
    "password", "current_code"} turns it on or moves it to a new device; DELETE {"password",
    "code"} turns it off. Changing the second factor needs the password, and while it is on a
    code of the current device: a session alone (a borrowed browser) is not enough."""

    users: Users
    audit: Audit
    roles = {"POST": (*EVERYONE, "quser"), "DELETE": (*EVERYONE, "quser")}

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        user, data = _second_factor_request(req)
        if "code" not in data:
            secret = pyotp.random_base32()
            resp.media = {"secret": secret, "uri": pyotp.TOTP(secret).provisioning_uri(
                name=user.username, issuer_name="Mailwarden")}
            return
        secret, code = _text(data, "secret"), _text(data, "code")
        with _reauth():
            self.users.enable_totp(user.username, password=_optional(data, "password"),
                                   current_code=_optional(data, "current_code"),
                                   secret=secret, code=code)
        self.audit.record(user.username, "totp.enable", source_ip=req.remote_addr)
        resp.media = {"totp": True}

    def on_delete(self, req: falcon.Request, resp: falcon.Response) -> None:
        user, data = _second_factor_request(req)
        with _reauth():
            self.users.disable_totp(user.username, password=_optional(data, "password"),
                                    code=_optional(data, "code"))
        self.audit.record(user.username, "totp.disable", source_ip=req.remote_addr)
        resp.status = falcon.HTTP_204


def _second_factor_request(req: falcon.Request) -> tuple[Any, dict[str, Any]]:
    """The signed-in person and their JSON body; a token stands for no person's device."""
    user = req.context.user
    if user.id < 0:
        raise BadInput("API tokens have no second factor")
    data = req.get_media(default_when_empty={}) or {}
    if not isinstance(data, dict):
        raise BadInput("the request body must be a JSON object")
    return user, data


@contextmanager
def _reauth() -> Iterator[None]:
    """A wrong password or code here is 403, not 401: the session itself is still good (a
    401 would send the web UI to the login page)."""
    try:
        yield
    except AuthError as exc:
        raise Forbidden(exc.message, code="reauth_failed") from None


def _optional(data: dict[str, Any], name: str) -> str | None:
    value = data.get(name)
    if value is not None and not isinstance(value, str):
        raise BadInput(f"{name} must be text", name)
    return value
