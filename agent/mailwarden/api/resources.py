"""Resources: they translate between HTTP and domain calls, nothing more.

Changes to the state carry the revision they were based on (If-Match: "N"); a stale one gets
409 with what changed meanwhile. Every change lands in the audit log.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import falcon
import yaml

from ..control.apply import ApplyResult
from ..state.load import parse_yaml, validate_data
from ..state.revisions import RevisionStore
from ..state.schema import State
from ..store.users import LOCKOUT_AFTER, SESSION_LIFETIME, Audit, User, Users
from . import replies
from .auth import clear_session_cookie, set_session_cookie
from .bodies import Login, Rollback, StateChange, StatePatch, accepts
from .errors import BadInput, TooManyRequests
from .replies import returns

EVERYONE = ("admin", "qmanager", "audit", "helpdesk")
READERS = ("admin", "audit")
ADMIN = ("admin",)

# (text, author, comment, base) -> ApplyResult: in-process on a sandbox; on the appliance a
# privileged helper, since the API itself runs unprivileged.
Applier = Callable[[str, str, str, int | None], ApplyResult]
RollbackFn = Callable[[int, str, int | None], ApplyResult]


def _base_revision(req: falcon.Request) -> int:
    header = req.get_header("If-Match")
    if not header:
        raise falcon.HTTPPreconditionRequired(
            title="Precondition Required",
            description='send If-Match: "N" with the revision your change starts from')
    try:
        return int(header.strip().strip('W/').strip('"'))
    except ValueError:
        raise BadInput(f"If-Match must be a revision number in quotes, got {header}",
                       "If-Match") from None


LOGIN_FAILURES_PER_ADDRESS = 10
LOGIN_WINDOW = 15 * 60


def throttle_guessing(audit: Audit, action: str, source_ip: str, now: float,
                      what: str, *, actor: str | None = None,
                      limit: int = LOGIN_FAILURES_PER_ADDRESS,
                      code: str = "too_many_requests") -> None:
    """429 once an address has failed `limit` times in the window (failed attempts are
    audited under `action`), for any account, or for `actor` alone when given. Never per
    account alone: a guesser elsewhere must not lock the account's owner out."""
    recent = audit.count(action, source_ip=source_ip, since=now - LOGIN_WINDOW, actor=actor)
    if recent >= limit:
        raise TooManyRequests(f"too many {what} from your address; wait 15 minutes", code,
                              LOGIN_WINDOW)


@dataclass
class SessionResource:
    users: Users
    audit: Audit
    clock: Callable[[], float] = time.time
    # Raises for a user who may not log in now, though the password was right.
    admit: Callable[[User], None] = lambda user: None
    public = ("POST",)
    roles = {"GET": (*EVERYONE, "quser"), "DELETE": (*EVERYONE, "quser")}

    @returns(replies.LoggedIn)
    @accepts(Login)
    def on_post(self, req: falcon.Request, resp: falcon.Response, body: Login) -> None:
        username, password = body.username, body.password
        now = self.clock()
        # Per source address too: guessing across many accounts from one host is throttled,
        # whatever the accounts' own lockouts say.
        throttle_guessing(self.audit, "login.failed", req.remote_addr, now, "failed logins")
        throttle_guessing(self.audit, "login.failed", req.remote_addr, now,
                          f"failed logins as {username}", actor=username,
                          limit=LOCKOUT_AFTER, code="locked_out")
        try:
            user = self.users.authenticate(username, password, body.totp, now=now)
        except Exception:
            self.audit.record(username, "login.failed", source_ip=req.remote_addr, now=now)
            raise
        self.admit(user)
        token, session = self.users.create_session(user)
        self.audit.record(user.username, "login", source_ip=req.remote_addr)
        set_session_cookie(resp, token, SESSION_LIFETIME)
        resp.media = {"username": user.username, "role": user.role,
                      "csrf_token": session.csrf_token, "expires": session.expires}

    @returns(replies.Me)
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        user = req.context.user
        session = self.users.session(req.context.session_token) \
            if req.context.session_token else None
        resp.media = {"username": user.username, "role": user.role, "totp": user.totp,
                      "addresses": list(user.addresses),
                      "csrf_token": session.csrf_token if session else None}

    def on_delete(self, req: falcon.Request, resp: falcon.Response) -> None:
        if req.context.session_token:
            self.users.end_session(req.context.session_token)
        clear_session_cookie(resp)
        resp.status = falcon.HTTP_204


@dataclass
class StateResource:
    store: RevisionStore
    apply: Applier
    audit: Audit
    state_file: Any
    roles = {"GET": READERS, "PUT": ADMIN, "PATCH": ADMIN}

    @returns(replies.StateView)
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        current = self.store.current()
        if current is None:
            raise falcon.HTTPNotFound(title="Not Found", description="no state applied yet")
        state = validate_data(parse_yaml(self.store.text(current), "live state")[0],
                              source="live state")
        resp.etag = f'"{current}"'
        resp.media = {"revision": current,
                      "state": state.model_dump(mode="json", by_alias=True)}

    @returns(replies.Applied)
    @accepts(StatePatch)
    def on_patch(self, req: falcon.Request, resp: falcon.Response, body: StatePatch) -> None:
        """Replace some sections in one revision: a rule and the object it names belong
        together (one apply, one entry in the history, one rollback)."""
        base = _base_revision(req)
        sections = body.sections.sent()
        if not sections:
            raise BadInput("send {\"sections\": {\"rules\": [...], ...}}", "sections")
        current = self.store.current()
        if current is None:
            raise falcon.HTTPNotFound(title="Not Found", description="no state applied yet")
        live = parse_yaml(self.store.text(current), "live state")[0]
        live.update(sections)
        validate_data(live, source="state")  # errors name e.g. rules[3].from.objects[0]
        text = yaml.safe_dump(live, sort_keys=False, allow_unicode=True)
        comment = body.comment if body.comment is not None else f"{', '.join(sections)} changed"
        self._apply(req, resp, text, comment, base)

    @returns(replies.Applied)
    @accepts(StateChange)
    def on_put(self, req: falcon.Request, resp: falcon.Response, body: StateChange) -> None:
        base = _base_revision(req)
        if body.yaml is not None and body.state is None:
            text = body.yaml
        elif body.state is not None and body.yaml is None:
            # Validate before converting, so errors name the JSON paths the client sent.
            validate_data(body.state, source="state")
            text = yaml.safe_dump(body.state, sort_keys=False, allow_unicode=True)
        else:
            raise BadInput("send the new state as 'state' (an object) or 'yaml' (text), "
                           "one of them", "state")
        self._apply(req, resp, text, body.comment, base)

    def _apply(self, req: falcon.Request, resp: falcon.Response, text: str, comment: str,
               base: int) -> None:
        user = req.context.user
        result = self.apply(text, user.username, comment, base)
        self.audit.record(user.username, "state.apply", f"revision {result.revision.number}",
                          {"comment": comment, "reloaded": result.reloaded,
                           "changed": [str(p) for p in result.changed]}, req.remote_addr)
        resp.etag = f'"{result.revision.number}"'
        resp.media = {"revision": result.revision.number, "reloaded": result.reloaded,
                      "changed": [str(p) for p in result.changed]}


@dataclass
class RevisionsResource:
    store: RevisionStore
    roles = {"GET": READERS}

    @returns(replies.Revisions)
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        current = self.store.current()
        resp.media = {"current": current, "items": [
            {"number": r.number, "time": r.time, "author": r.author, "comment": r.comment}
            for r in reversed(self.store.history())]}


@dataclass
class RevisionResource:
    store: RevisionStore
    roles = {"GET": READERS}

    @returns(replies.RevisionText)
    def on_get(self, req: falcon.Request, resp: falcon.Response, number: int) -> None:
        revision = self.store.get(number)
        resp.media = {"number": revision.number, "time": revision.time,
                      "author": revision.author, "comment": revision.comment,
                      "yaml": self.store.text(number)}


@dataclass
class DiffResource:
    store: RevisionStore
    roles = {"GET": READERS}

    @returns(replies.Diff)
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        a = req.get_param_as_int("from", required=True, min_value=1)
        b = req.get_param_as_int("to", required=True, min_value=1)
        resp.media = {"from": a, "to": b, "diff": self.store.diff(a, b)}


@dataclass
class RollbackResource:
    rollback: RollbackFn
    audit: Audit
    roles = {"POST": ADMIN}

    @returns(replies.Applied)
    @accepts(Rollback)
    def on_post(self, req: falcon.Request, resp: falcon.Response, body: Rollback) -> None:
        base = _base_revision(req)
        number = body.revision
        user = req.context.user
        result = self.rollback(number, user.username, base)
        self.audit.record(user.username, "state.rollback", f"revision {number}",
                          {"new_revision": result.revision.number}, req.remote_addr)
        resp.etag = f'"{result.revision.number}"'
        resp.media = {"revision": result.revision.number, "reloaded": result.reloaded}


@dataclass
class AuditResource:
    audit: Audit
    roles = {"GET": READERS}

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        limit = req.get_param_as_int("limit", default=100, min_value=1, max_value=1000)
        offset = req.get_param_as_int("offset", default=0, min_value=0)
        resp.media = {"items": self.audit.list(limit, offset), "limit": limit,
                      "offset": offset}


@dataclass
class HealthResource:
    public = ("GET",)
    started: float = time.time()

    @returns(replies.Health)
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"status": "ok", "uptime": round(time.time() - self.started, 1)}


@dataclass
class StatisticsResource:
    statistics: Any
    roles = {"GET": EVERYONE}

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        now = time.time()
        until = req.get_param_as_float("until", default=now)
        since = req.get_param_as_float("since", default=until - 86400)
        if since >= until:
            raise BadInput("since must be before until", "since")
        resp.media = self.statistics.summary(since, until, req.get_param("domain"))


@dataclass
class TrackingResource:
    tracking: Any
    roles = {"GET": ("admin", "helpdesk", "audit")}

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        limit = req.get_param_as_int("limit", default=100, min_value=1, max_value=1000)
        resp.media = {"items": self.tracking.search(
            sender=req.get_param("sender"), recipient=req.get_param("recipient"),
            queue_id=req.get_param("queue_id"),
            since=req.get_param_as_float("since"), limit=limit), "limit": limit}


def state_schema() -> dict[str, Any]:
    return State.model_json_schema(by_alias=True)
