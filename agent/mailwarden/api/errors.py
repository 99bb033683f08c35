"""One error shape for every failure: {"error": {"code", "message", "field"}}.

Domain errors map to status codes here, centrally; nothing else reaches the client, and never
a stack trace.
"""

from __future__ import annotations

import logging
from typing import Any

import falcon

from ..errors import (
    AlreadySetUp,
    ConflictError,
    LearnError,
    MailwardenError,
    NotFound,
    RevisionNotFound,
    ScannerError,
    StateError,
    StoreError,
)
from ..store.users import AuthError, LockedOut

log = logging.getLogger("mailwarden.api")


def body(code: str, message: str, field: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "field": field, **extra}}


def _reply(resp: falcon.Response, status: str | int, media: dict[str, Any]) -> None:
    """The error as JSON, whatever the responder had set out to send (a download's
    message/rfc822 has no serialiser for an error body)."""
    resp.status = status
    resp.content_type = falcon.MEDIA_JSON
    resp.media = media


def _status(exc: MailwardenError) -> str:
    if isinstance(exc, StateError):
        return falcon.HTTP_400
    if isinstance(exc, ConflictError | AlreadySetUp):
        return falcon.HTTP_409
    if isinstance(exc, NotFound | RevisionNotFound):
        return falcon.HTTP_404
    if isinstance(exc, LockedOut):
        return falcon.HTTP_429
    if isinstance(exc, AuthError):
        return falcon.HTTP_401
    if isinstance(exc, StoreError):
        return falcon.HTTP_400
    if isinstance(exc, LearnError):
        # Turned off is the gateway's settings, not the request; a message Rspamd will
        # not learn is this message.
        return falcon.HTTP_409 if exc.code == "bayes_disabled" else falcon.HTTP_422
    if isinstance(exc, ScannerError):
        return falcon.HTTP_503  # a daemon the request needs is not answering
    return falcon.HTTP_500


def handle_domain_error(req: falcon.Request, resp: falcon.Response, exc: MailwardenError,
                        params: dict[str, Any]) -> None:
    status = _status(exc)
    if isinstance(exc, StateError):
        first = exc.errors[0] if exc.errors else None
        _reply(resp, status, body(exc.code, str(first) if first else exc.message,
                                  first.path if first else None,
                                  errors=[{"field": e.path, "message": e.message,
                                           "line": e.line} for e in exc.errors]))
    elif isinstance(exc, ConflictError):
        _reply(resp, status, body(exc.code, exc.message, None, current_revision=exc.current))
    else:
        if status.startswith("5"):
            log.error("%s on %s %s: %s", exc.code, req.method, req.path, exc.message)
        _reply(resp, status, body(exc.code, exc.message))


def error_body(exc: falcon.HTTPError) -> dict[str, Any]:
    """The error shape for an HTTP error: its own code, else one made from its title."""
    code = getattr(exc, "error_code", None) or exc.title.lower().replace(" ", "_")
    errors = getattr(exc, "errors", None)
    return body(str(code), exc.description or exc.title, getattr(exc, "field", None),
                **({"errors": errors} if errors else {}))


def handle_http_error(req: falcon.Request, resp: falcon.Response, exc: falcon.HTTPError,
                      params: dict[str, Any]) -> None:
    _reply(resp, exc.status, error_body(exc))
    resp.set_headers(exc.headers or {})


def handle_unexpected(req: falcon.Request, resp: falcon.Response, exc: Exception,
                      params: dict[str, Any]) -> None:
    if isinstance(exc, falcon.HTTPError):
        handle_http_error(req, resp, exc, params)
        return
    log.exception("unexpected error on %s %s", req.method, req.path)
    _reply(resp, falcon.HTTP_500,
           body("internal", "internal error; the details are in the agent's log"))


class BadInput(falcon.HTTPBadRequest):
    """400 naming the field, for input checked in the API layer itself; `errors` lists every
    wrong field when there is more than one to tell (a request body's model)."""

    error_code = "bad_input"

    def __init__(self, message: str, field: str | None = None,
                 errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(title="Bad Request", description=message)
        self.field = field
        self.errors = errors


class TooManyRequests(falcon.HTTPTooManyRequests):
    """429 with the API's code for what was throttled."""

    def __init__(self, message: str, code: str, retry_after: int) -> None:
        super().__init__(title="Too Many Requests", description=message,
                         retry_after=retry_after)
        self.error_code = code
