"""Who is calling, and may they? Session cookie + CSRF header, or an API token.

Each resource says, per HTTP method, which roles may call it (`roles`), or that it is
public. Browsers authenticate with the session cookie (HttpOnly, Secure, SameSite=Strict) and
must echo the session's CSRF token in X-CSRF-Token on every state-changing request; programs
send `Authorization: Bearer mwt_...`.
"""

from __future__ import annotations

import hmac
from typing import Any

import falcon

from ..store.users import User, Users

SESSION_COOKIE = "mw_session"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


class Forbidden(falcon.HTTPForbidden):
    def __init__(self, message: str, code: str = "forbidden") -> None:
        super().__init__(title="Forbidden", description=message)
        self.error_code = code


class Unauthorized(falcon.HTTPUnauthorized):
    def __init__(self, message: str) -> None:
        super().__init__(title="Unauthorized", description=message)
        self.error_code = "unauthorized"


class AuthMiddleware:
    def __init__(self, users: Users) -> None:
        self.users = users

    def process_resource(self, req: falcon.Request, resp: falcon.Response, resource: Any,
                         params: dict[str, Any]) -> None:
        req.context.user = None
        req.context.session_token = None
        if resource is None:
            return
        allowed: dict[str, tuple[str, ...]] = getattr(resource, "roles", {})
        public = req.method in getattr(resource, "public", ())
        if public and getattr(resource, "anonymous", False):
            return  # its own credential (a digest's ticket); a session counts for nothing
        user = self._identify(req)
        req.context.user = user
        if public or req.method == "OPTIONS":
            return
        if user is None:
            raise Unauthorized("log in or send an API token")
        roles = allowed.get(req.method)
        if roles is None or user.role not in roles:
            raise Forbidden(f"the role '{user.role}' may not {req.method} {req.path}")

    def _identify(self, req: falcon.Request) -> User | None:
        header = req.get_header("Authorization") or ""
        if header.startswith("Bearer "):
            user = self.users.token_user(header.removeprefix("Bearer ").strip())
            if user is None:
                raise Unauthorized("unknown, expired or revoked API token")
            return user
        token = req.cookies.get(SESSION_COOKIE)
        if not token:
            return None
        session = self.users.session(token)
        if session is None:
            return None
        if req.method not in SAFE_METHODS:
            sent = req.get_header(CSRF_HEADER) or ""
            # compare_digest takes ASCII text only (anything else raises): a header of other
            # characters is simply wrong.
            if not sent.isascii() or not hmac.compare_digest(sent, session.csrf_token):
                raise Forbidden(f"missing or wrong {CSRF_HEADER} header", code="csrf")
        req.context.session_token = token
        return session.user


def set_session_cookie(resp: falcon.Response, token: str, max_age: int) -> None:
    resp.set_cookie(SESSION_COOKIE, token, max_age=max_age, path="/", secure=True,
                    http_only=True, same_site="Strict")


def clear_session_cookie(resp: falcon.Response) -> None:
    resp.unset_cookie(SESSION_COOKIE, path="/")
