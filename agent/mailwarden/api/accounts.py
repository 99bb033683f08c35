"""Users, API tokens and the second factor, through the API."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import falcon
import pyotp

from ..store.users import Audit, AuthError, User, Users
from . import replies
from .auth import Forbidden
from .bodies import (
    NewPassword,
    NewToken,
    NewUser,
    TotpChange,
    TotpRemoval,
    UserAddress,
    accepts,
)
from .errors import BadInput
from .replies import returns
from .resources import ADMIN, EVERYONE


@dataclass
class UsersResource:
    users: Users
    audit: Audit
    roles = {"GET": ADMIN, "POST": ADMIN}

    @returns(replies.UserList)
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"items": [{"username": u.username, "role": u.role, "totp": u.totp,
                                 "addresses": list(u.addresses)} for u in self.users.list()]}

    @returns(replies.UserInfo, status=201)
    @accepts(NewUser)
    def on_post(self, req: falcon.Request, resp: falcon.Response, body: NewUser) -> None:
        user = self.users.add(body.username, body.password, body.role)
        self.audit.record(req.context.user.username, "user.add", user.username,
                          {"role": body.role}, req.remote_addr)
        resp.status = falcon.HTTP_201
        resp.media = {"username": user.username, "role": user.role}


@dataclass
class UserAddressesResource:
    """A quarantine user's further addresses (aliases): POST adds one, DELETE takes one
    away. Their quarantine, lists and digest links then cover every one of them."""

    users: Users
    audit: Audit
    roles = {"POST": ADMIN, "DELETE": ADMIN}

    @returns(replies.UserInfo)
    @accepts(UserAddress)
    def on_post(self, req: falcon.Request, resp: falcon.Response, body: UserAddress,
                username: str) -> None:
        self._done(req, resp, "user.address_add", self.users.attach(username, body.address),
                   body.address)

    @returns(replies.UserInfo)
    @accepts(UserAddress)
    def on_delete(self, req: falcon.Request, resp: falcon.Response, body: UserAddress,
                  username: str) -> None:
        self._done(req, resp, "user.address_remove",
                   self.users.detach(username, body.address), body.address)

    def _done(self, req: falcon.Request, resp: falcon.Response, action: str, user: User,
              address: str) -> None:
        self.audit.record(req.context.user.username, action, user.username,
                          {"address": address.lower()}, req.remote_addr)
        resp.media = {"username": user.username, "role": user.role,
                      "addresses": list(user.addresses)}


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

    @accepts(NewPassword)
    def on_put(self, req: falcon.Request, resp: falcon.Response, body: NewPassword,
               username: str) -> None:
        """Set a new password (the user's sessions end)."""
        self.users.set_password(username, body.password)
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

    @returns(replies.TokenIssued, status=201)
    @accepts(NewToken)
    def on_post(self, req: falcon.Request, resp: falcon.Response, body: NewToken) -> None:
        """A token acting for the caller, with a role no higher than theirs, for
        `expires_days` (default 90, at most 365)."""
        owner = req.context.user
        days = body.expires_days
        token_id, secret = self.users.create_token(body.name, body.role, owner, days=days)
        self.audit.record(owner.username, "token.create", str(token_id),
                          {"role": body.role, "expires_days": days}, req.remote_addr)
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

    @returns(replies.Proposal)
    @accepts(TotpChange, optional=True)
    def on_post(self, req: falcon.Request, resp: falcon.Response, body: TotpChange) -> None:
        user = _person(req)
        if body.code is None:
            secret = pyotp.random_base32()
            resp.media = {"secret": secret, "uri": pyotp.TOTP(secret).provisioning_uri(
                name=user.username, issuer_name="Mailwarden")}
            return
        if body.secret is None:
            raise BadInput("secret is required with code", "secret")
        with _reauth():
            self.users.enable_totp(user.username, password=body.password,
                                   current_code=body.current_code,
                                   secret=body.secret, code=body.code)
        self.audit.record(user.username, "totp.enable", source_ip=req.remote_addr)
        resp.media = {"totp": True}

    @accepts(TotpRemoval, optional=True)
    def on_delete(self, req: falcon.Request, resp: falcon.Response, body: TotpRemoval) -> None:
        user = _person(req)
        with _reauth():
            self.users.disable_totp(user.username, password=body.password, code=body.code)
        self.audit.record(user.username, "totp.disable", source_ip=req.remote_addr)
        resp.status = falcon.HTTP_204


def _person(req: falcon.Request) -> User:
    """The signed-in person; a token stands for no person's device."""
    user: User = req.context.user
    if user.id < 0:
        raise BadInput("API tokens have no second factor")
    return user


@contextmanager
def _reauth() -> Iterator[None]:
    """A wrong password or code here is 403, not 401: the session itself is still good (a
    401 would send the web UI to the login page)."""
    try:
        yield
    except AuthError as exc:
        raise Forbidden(exc.message, code="reauth_failed") from None
