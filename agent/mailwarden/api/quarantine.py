"""Quarantine resources: list, view, download, release, delete, allow/block the sender,
learn as spam or (with a release) as ham.

Quarantine users (role quser, logged in with their address as user name) see and act on
their own recipient address only; the staff roles see everything. A message that carries a
virus reaches a quarantine user only through staff, unless quarantine.user_release_virus says
otherwise: every action that delivers (release, and allow, which also releases) asks
`offered` first, and each entry tells the web UI which actions it offers, from the same
function.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import falcon

from ..errors import MailwardenError
from ..mail.learning import Kind, Learner
from ..mail.types import Learned
from ..store.lists import UserLists
from ..store.quarantine import KINDS, Quarantine, QuarantineEntry
from ..store.users import Audit, User
from .auth import Forbidden
from .bodies import QuarantineBulk, QuarantineDecision, accepts
from .errors import BadInput, error_body
from .learning import learn_recorded, outcome
from .preview import PREVIEW_CSP, preview, preview_document
from .replies import returns

STAFF = ("admin", "qmanager", "helpdesk", "audit")
ACTORS = ("admin", "qmanager", "helpdesk")
ACTIONS = ("release", "delete", "allow", "block", "spam")
# The actions that send the message on to its recipients.
DELIVERING = ("release", "allow")
Deliver = Callable[[bytes, str, list[str]], None]
# Learn the message as spam or ham and record it (api/learning.learn_recorded, bound to the
# user and the message).
Learn = Callable[[bytes, Kind], Learned]
# Whether quarantine users may have viruses delivered (quarantine.user_release_virus).
UsersMayReleaseViruses = Callable[[], bool]


def _visible(user: User, entry: QuarantineEntry) -> list[str]:
    """Recipients of entry this user may act for."""
    if user.role in STAFF:
        return list(entry.recipients)
    return [r for r in entry.recipients if user.receives(r)]


def _entry(q: Quarantine, user: User, entry_id: str) -> QuarantineEntry:
    entry = q.get(entry_id)
    if not _visible(user, entry):
        # Same answer as for a missing id: a user learns nothing about others' mail.
        raise falcon.HTTPNotFound(title="Not Found", description=f"no quarantined message "
                                                                 f"'{entry_id}'")
    return entry


def _raw(q: Quarantine, entry: QuarantineEntry) -> bytes:
    """The message itself; its file goes once every recipient's copy is released or
    deleted, while the record stays for the history."""
    try:
        return q.raw(entry.id)
    except FileNotFoundError:
        raise falcon.HTTPNotFound(
            title="Not Found", description=f"quarantined message '{entry.id}' was released "
                                           "or deleted; only its record is kept") from None


def carries_virus(entry: QuarantineEntry) -> bool:
    """Quarantined as a virus, or by a rule of another kind on a message clamd flagged."""
    return entry.kind == "virus" or entry.virus is not None


def _viruses_allowed(user: User, users_may_release_viruses: UsersMayReleaseViruses) -> bool:
    """Whether this user may have viruses delivered; the state is read for quarantine users
    only, once per request."""
    return user.role != "quser" or users_may_release_viruses()


def offered(user: User, entry: QuarantineEntry, viruses_allowed: bool) -> tuple[str, ...]:
    """The actions this user may take on entry: the one answer for the API and the UI."""
    if user.role not in (*ACTORS, "quser"):
        return ()
    if carries_virus(entry) and not viruses_allowed:
        return tuple(a for a in ACTIONS if a not in DELIVERING)
    return ACTIONS


def _check_action(user: User, entry: QuarantineEntry, action: str,
                  viruses_allowed: bool) -> None:
    if action in offered(user, entry, viruses_allowed):
        return
    if carries_virus(entry) and action in DELIVERING:
        raise Forbidden(f"quarantine users may not {action} a message that carries a virus; "
                        f"ask an administrator", code="virus_release_forbidden")
    raise Forbidden(f"the role '{user.role}' may not {action} quarantined messages")


def act(quarantine: Quarantine, lists: UserLists, deliver: Deliver, user: User,
        entry: QuarantineEntry, action: str, recipients: list[str],
        viruses_allowed: bool, *, learn: Learn | None = None,
        delete: bool = False) -> dict[str, Any]:
    """One action on one message for these recipients, by this user: the API's and the
    digest links' single way to act. Refused before anything is written: a refused allow
    leaves no list entry behind either. A release with `learn` learns the message as ham
    first; "spam" learns it as spam (and deletes it with `delete`)."""
    _check_action(user, entry, action, viruses_allowed)
    if action == "release":
        reply: dict[str, Any] = {}
        if learn is not None:
            # Learned before it goes: a message Rspamd refuses is then still here to
            # release without learning.
            reply["learned"] = {"as": "ham", "result": outcome(
                learn(_raw(quarantine, entry), "ham"))}
        return {**reply, "released": quarantine.release(entry.id, deliver, recipients)}
    if action == "spam":
        if learn is None:
            raise BadInput("learning needs the message itself: use the API", "action")
        reply = {"learned": {"as": "spam", "result": outcome(
            learn(_raw(quarantine, entry), "spam"))}}
        if delete:
            quarantine.delete(entry.id, recipients)
            reply["deleted"] = recipients
        return reply
    if action == "delete":
        quarantine.delete(entry.id, recipients)
        return {"deleted": recipients}
    listed: Literal["allow", "block"] = "allow" if action == "allow" else "block"
    for recipient in recipients:
        lists.set(recipient, entry.sender, listed)
    if action == "allow":
        return {"allowed": entry.sender,
                "released": quarantine.release(entry.id, deliver, recipients)}
    quarantine.delete(entry.id, recipients)
    return {"blocked": entry.sender, "deleted": recipients}


def _public(entry: QuarantineEntry, user: User, viruses_allowed: bool) -> dict[str, Any]:
    data = entry.to_dict()
    del data["path"]
    visible = set(_visible(user, entry))
    data["recipients"] = {r: s for r, s in entry.recipients.items() if r in visible}
    data["actions"] = list(offered(user, entry, viruses_allowed))
    return data


def _recipients(chosen: list[str] | None, allowed: list[str]) -> list[str]:
    if chosen is None:
        return allowed
    stranger = [r for r in chosen if r not in allowed]
    if stranger:
        raise BadInput(f"not a recipient you may act for: {', '.join(stranger)}",
                       "recipients")
    return chosen


@dataclass
class QuarantineListResource:
    quarantine: Quarantine
    users_may_release_viruses: UsersMayReleaseViruses
    roles = {"GET": (*STAFF, "quser")}

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        user: User = req.context.user
        kind = req.get_param("kind")
        if kind is not None and kind not in KINDS:
            raise BadInput(f"kind must be one of {', '.join(KINDS)}", "kind")
        asked = req.get_param("recipient")
        recipient: str | list[str] | None = asked
        if user.role == "quser":
            # Their own addresses only: one of them if asked for, else all.
            recipient = [asked.lower()] if asked and user.receives(asked) \
                else list(user.addresses)
            if not recipient:
                resp.media = {"items": [], "limit": 0, "offset": 0}
                return
        limit = req.get_param_as_int("limit", default=50, min_value=1, max_value=1000)
        offset = req.get_param_as_int("offset", default=0, min_value=0)
        status = req.get_param("status", default="new")
        if status not in ("new", "released", "deleted", "any"):
            raise BadInput("status must be new, released, deleted or any", "status")
        entries = self.quarantine.list(
            kind=kind, recipient=recipient, sender=req.get_param("sender"),
            status=None if status == "any" else status, limit=limit, offset=offset,
            since=req.get_param_as_float("since"), until=req.get_param_as_float("until"),
            min_score=req.get_param_as_float("min_score"),
            max_score=req.get_param_as_float("max_score"), search=req.get_param("q"),
            sort=req.get_param("sort", default="-time"))
        viruses_allowed = _viruses_allowed(user, self.users_may_release_viruses)
        resp.media = {"items": [_public(e, user, viruses_allowed) for e in entries],
                      "limit": limit, "offset": offset}


@dataclass
class QuarantineEntryResource:
    quarantine: Quarantine
    users_may_release_viruses: UsersMayReleaseViruses
    roles = {"GET": (*STAFF, "quser")}

    def on_get(self, req: falcon.Request, resp: falcon.Response, entry_id: str) -> None:
        user: User = req.context.user
        resp.media = _public(_entry(self.quarantine, user, entry_id), user,
                             _viruses_allowed(user, self.users_may_release_viruses))


@dataclass
class QuarantineRawResource:
    quarantine: Quarantine
    roles = {"GET": (*STAFF, "quser")}

    @returns(media_types=("message/rfc822",))
    def on_get(self, req: falcon.Request, resp: falcon.Response, entry_id: str) -> None:
        entry = _entry(self.quarantine, req.context.user, entry_id)
        resp.data = _raw(self.quarantine, entry)
        resp.content_type = "message/rfc822"
        resp.downloadable_as = f"{entry.id}.eml"


@dataclass
class QuarantinePreviewResource:
    """The message made safe to look at (JSON), or as a page for a sandboxed frame."""

    quarantine: Quarantine
    roles = {"GET": (*STAFF, "quser")}

    @returns(media_types=("application/json", "text/html"))
    def on_get(self, req: falcon.Request, resp: falcon.Response, entry_id: str) -> None:
        view = preview(_raw(self.quarantine, _entry(self.quarantine, req.context.user,
                                                    entry_id)))
        if req.get_param("format") == "html":
            resp.content_type = "text/html; charset=utf-8"
            resp.set_header("Content-Security-Policy", PREVIEW_CSP)
            resp.set_header("X-Content-Type-Options", "nosniff")
            resp.text = preview_document(view["html"], view["text"])
            return
        resp.media = view


@dataclass
class QuarantineBulkResource:
    """POST {"ids": [...], "action": "release"|"delete"}: one call for many messages; each
    result reported on its own, so one bad id does not hide the others."""

    quarantine: Quarantine
    deliver: Deliver
    audit: Audit
    users_may_release_viruses: UsersMayReleaseViruses
    roles = {"POST": ACTORS}

    @accepts(QuarantineBulk)
    def on_post(self, req: falcon.Request, resp: falcon.Response, body: QuarantineBulk) -> None:
        ids, action = body.ids, body.action
        user: User = req.context.user
        viruses_allowed = _viruses_allowed(user, self.users_may_release_viruses)
        results: dict[str, Any] = {}
        for entry_id in ids:
            try:
                # The same rules as one message at a time, should the roles ever widen.
                _check_action(user, _entry(self.quarantine, user, entry_id), action,
                              viruses_allowed)
                if action == "release":
                    results[entry_id] = {"released": self.quarantine.release(entry_id,
                                                                             self.deliver)}
                else:
                    self.quarantine.delete(entry_id)
                    results[entry_id] = {"deleted": True}
            except MailwardenError as exc:
                results[entry_id] = {"error": {"code": exc.code, "message": exc.message}}
            except falcon.HTTPError as exc:
                results[entry_id] = error_body(exc)
        self.audit.record(user.username, f"quarantine.bulk_{action}",
                          f"{len(ids)} messages", {"ids": ids}, req.remote_addr)
        resp.media = {"results": results}


@dataclass
class QuarantineActionResource:
    """POST /api/quarantine/{id}/{action}: release (learn: as ham too), delete, allow,
    block, spam (learn as spam; delete: and delete it)."""

    quarantine: Quarantine
    lists: UserLists
    deliver: Deliver
    audit: Audit
    users_may_release_viruses: UsersMayReleaseViruses
    learner: Learner
    roles = {"POST": (*ACTORS, "quser")}

    @accepts(QuarantineDecision, optional=True)
    def on_post(self, req: falcon.Request, resp: falcon.Response, body: QuarantineDecision,
                entry_id: str, action: str) -> None:
        user: User = req.context.user
        entry = _entry(self.quarantine, user, entry_id)
        if action not in ACTIONS:
            raise falcon.HTTPNotFound(title="Not Found",
                                      description=f"no quarantine action '{action}'")
        recipients = _recipients(body.recipients, _visible(user, entry))
        if body.learn and action != "release":
            raise BadInput("learn goes with release (spam learns by itself)", "learn")
        if body.learn and entry.kind != "spam":
            raise BadInput(f"only a message quarantined as spam is learned as not spam; "
                           f"this one is {entry.kind}", "learn")
        if body.delete and action != "spam":
            raise BadInput("delete goes with spam", "delete")

        def learn(raw: bytes, kind: Kind) -> Learned:
            return learn_recorded(self.learner, self.audit, user.username, raw, kind,
                                  entry_id, req.remote_addr)

        resp.media = act(self.quarantine, self.lists, self.deliver, user, entry, action,
                         recipients, _viruses_allowed(user, self.users_may_release_viruses),
                         learn=learn if body.learn or action == "spam" else None,
                         delete=body.delete)
        self.audit.record(user.username, f"quarantine.{action}", entry_id,
                          {"recipients": recipients,
                           **({"learned": resp.media["learned"]} if "learned" in resp.media
                              else {})}, req.remote_addr)
