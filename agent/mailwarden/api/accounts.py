"""Users, API tokens and the second factor, through the API."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import falcon
import pyotp

from ..store.users import ROLES, Audit, Users
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
        data = _media(req)
        role = _text(data, "role")
        if role not in ROLES:
            raise BadInput(f"role must be one of {', '.join(ROLES)}", "role")
        token_id, secret = self.users.create_token(_text(data, "name"), role, None)
        self.audit.record(req.context.user.username, "token.create", str(token_id),
                          {"role": role}, req.remote_addr)
        resp.status = falcon.HTTP_201
        resp.media = {"id": token_id, "secret": secret,
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
    """POST {} starts enrolment (secret + otpauth URI); POST {"secret", "code"} confirms;
    DELETE turns the second factor off."""

    users: Users
    audit: Audit
    roles = {"POST": (*EVERYONE, "quser"), "DELETE": (*EVERYONE, "quser")}

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        user = req.context.user
        if user.id < 0:
            raise BadInput("API tokens have no second factor")
        data = req.get_media(default_when_empty={}) or {}
        if not isinstance(data, dict):
            raise BadInput("the request body must be a JSON object")
        if "code" not in data:
            secret = pyotp.random_base32()
            resp.media = {"secret": secret, "uri": pyotp.TOTP(secret).provisioning_uri(
                name=user.username, issuer_name="Mailwarden")}
            return
        secret, code = _text(data, "secret"), _text(data, "code")
        if not pyotp.TOTP(secret).verify(code, valid_window=1):
            raise BadInput("the code does not match; check the device's clock", "code")
        self.users.set_totp(user.username, secret)
        self.audit.record(user.username, "totp.enable", source_ip=req.remote_addr)
        resp.media = {"totp": True}

    def on_delete(self, req: falcon.Request, resp: falcon.Response) -> None:
        self.users.set_totp(req.context.user.username, None)
        self.audit.record(req.context.user.username, "totp.disable", source_ip=req.remote_addr)
        resp.status = falcon.HTTP_204
