"""Quarantine resources: list, view, download, release, delete, allow/block the sender.

Quarantine users (role quser, logged in with their address as user name) see and act on
their own recipient address only; the staff roles see everything. Viruses are released by
staff only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import falcon

from ..errors import MailwardenError
from ..store.lists import UserLists
from ..store.quarantine import KINDS, Quarantine, QuarantineEntry
from ..store.users import Audit, User
from .auth import Forbidden
from .errors import BadInput
from .preview import PREVIEW_CSP, preview, preview_document

STAFF = ("admin", "qmanager", "helpdesk", "audit")
ACTORS = ("admin", "qmanager", "helpdesk")
Deliver = Callable[[bytes, str, list[str]], None]


def _visible(user: User, entry: QuarantineEntry) -> list[str]:
    """Recipients of entry this user may act for."""
    if user.role in STAFF:
        return list(entry.recipients)
    return [r for r in entry.recipients if r.lower() == user.username.lower()]


def _entry(q: Quarantine, user: User, entry_id: str) -> QuarantineEntry:
    entry = q.get(entry_id)
    if not _visible(user, entry):
        # Same answer as for a missing id: a user learns nothing about others' mail.
        raise falcon.HTTPNotFound(title="Not Found", description=f"no quarantined message "
                                                                 f"'{entry_id}'")
    return entry


def _public(entry: QuarantineEntry, user: User) -> dict[str, Any]:
    data = entry.to_dict()
    del data["path"]
    visible = set(_visible(user, entry))
    data["recipients"] = {r: s for r, s in entry.recipients.items() if r in visible}
    return data


def _recipients(req_data: dict[str, Any], allowed: list[str]) -> list[str]:
    chosen = req_data.get("recipients")
    if chosen is None:
        return allowed
    if not isinstance(chosen, list) or not all(isinstance(r, str) for r in chosen):
        raise BadInput("recipients must be a list of addresses", "recipients")
    stranger = [r for r in chosen if r not in allowed]
    if stranger:
        raise BadInput(f"not a recipient you may act for: {', '.join(stranger)}",
                       "recipients")
    return chosen


@dataclass
class QuarantineListResource:
    quarantine: Quarantine
    roles = {"GET": (*STAFF, "quser")}

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        user: User = req.context.user
        kind = req.get_param("kind")
        if kind is not None and kind not in KINDS:
            raise BadInput(f"kind must be one of {', '.join(KINDS)}", "kind")
        recipient = req.get_param("recipient")
        if user.role == "quser":
            recipient = user.username
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
        resp.media = {"items": [_public(e, user) for e in entries], "limit": limit,
                      "offset": offset}


@dataclass
class QuarantineEntryResource:
    quarantine: Quarantine
    roles = {"GET": (*STAFF, "quser")}

    def on_get(self, req: falcon.Request, resp: falcon.Response, entry_id: str) -> None:
        resp.media = _public(_entry(self.quarantine, req.context.user, entry_id),
                             req.context.user)


@dataclass
class QuarantineRawResource:
    quarantine: Quarantine
    roles = {"GET": (*STAFF, "quser")}

    def on_get(self, req: falcon.Request, resp: falcon.Response, entry_id: str) -> None:
        entry = _entry(self.quarantine, req.context.user, entry_id)
        resp.content_type = "message/rfc822"
        resp.downloadable_as = f"{entry.id}.eml"
        resp.data = self.quarantine.raw(entry_id)


@dataclass
class QuarantinePreviewResource:
    """The message made safe to look at (JSON), or as a page for a sandboxed frame."""

    quarantine: Quarantine
    roles = {"GET": (*STAFF, "quser")}

    def on_get(self, req: falcon.Request, resp: falcon.Response, entry_id: str) -> None:
        _entry(self.quarantine, req.context.user, entry_id)
        view = preview(self.quarantine.raw(entry_id))
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
    roles = {"POST": ACTORS}

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        data = req.get_media(default_when_empty=None)
        if not isinstance(data, dict):
            raise BadInput("the request body must be a JSON object")
        ids, action = data.get("ids"), data.get("action")
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids) or not ids:
            raise BadInput("ids must be a non-empty list of quarantine ids", "ids")
        if len(ids) > 1000:
            raise BadInput("at most 1000 ids per call", "ids")
        if action not in ("release", "delete"):
            raise BadInput("action must be release or delete", "action")
        results: dict[str, Any] = {}
        for entry_id in ids:
            try:
                if action == "release":
                    results[entry_id] = {"released": self.quarantine.release(entry_id,
                                                                             self.deliver)}
                else:
                    self.quarantine.delete(entry_id)
                    results[entry_id] = {"deleted": True}
            except MailwardenError as exc:
                results[entry_id] = {"error": {"code": exc.code, "message": exc.message}}
        self.audit.record(req.context.user.username, f"quarantine.bulk_{action}",
                          f"{len(ids)} messages", {"ids": ids}, req.remote_addr)
        resp.media = {"results": results}


@dataclass
class QuarantineActionResource:
    """POST /api/quarantine/{id}/{action}: release, delete, allow, block."""

    quarantine: Quarantine
    lists: UserLists
    deliver: Deliver
    audit: Audit
    allow_user_virus_release: Callable[[], bool]
    roles = {"POST": (*ACTORS, "quser")}

    def on_post(self, req: falcon.Request, resp: falcon.Response, entry_id: str,
                action: str) -> None:
        user: User = req.context.user
        entry = _entry(self.quarantine, user, entry_id)
        data = req.get_media(default_when_empty={}) or {}
        if not isinstance(data, dict):
            raise BadInput("the request body must be a JSON object")
        recipients = _recipients(data, _visible(user, entry))
        if action == "release":
            if entry.kind == "virus" and user.role == "quser" \
                    and not self.allow_user_virus_release():
                raise Forbidden("viruses are released by the administrators only")
            done = self.quarantine.release(entry_id, self.deliver, recipients)
            result: dict[str, Any] = {"released": done}
        elif action == "delete":
            self.quarantine.delete(entry_id, recipients)
            result = {"deleted": recipients}
        elif action in ("allow", "block"):
            for recipient in recipients:
                self.lists.set(recipient, entry.sender, action)
            if action == "allow":
                result = {"allowed": entry.sender,
                          "released": self.quarantine.release(entry_id, self.deliver,
                                                              recipients)}
            else:
                self.quarantine.delete(entry_id, recipients)
                result = {"blocked": entry.sender, "deleted": recipients}
        else:
            raise falcon.HTTPNotFound(title="Not Found",
                                      description=f"no quarantine action '{action}'")
        self.audit.record(user.username, f"quarantine.{action}", entry_id,
                          {"recipients": recipients}, req.remote_addr)
        resp.media = result
