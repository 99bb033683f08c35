"""Per-recipient sender allow and block lists (the rule engine honours them): a quarantine
user reads and changes their own, the staff everyone's, with search. The quarantine's allow
and block actions write the same lists."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, cast

import falcon

from ..store.lists import GlobalLists, UserLists
from ..store.users import Audit, User
from .auth import Forbidden
from .bodies import GlobalListEntry, GlobalListRemoval, ListEntry, ListRemoval, accepts
from .errors import BadInput
from .replies import returns

READERS = ("admin", "qmanager", "helpdesk", "audit", "quser")
WRITERS = ("admin", "qmanager", "helpdesk", "quser")


def _whose(user: User, recipient: str | None) -> str:
    """The list this request is about: a quarantine user's own, whatever they name."""
    if user.role == "quser":
        if recipient is None:
            return user.username.lower()
        if not user.receives(recipient):
            raise Forbidden("a quarantine user changes the lists of their own addresses only")
        return recipient.lower()
    if recipient is None:
        raise BadInput("say whose list (recipient)", "recipient")
    return recipient.lower()


def _kind(req: falcon.Request) -> Literal["allow", "block"] | None:
    kind = req.get_param("kind")
    if kind is not None and kind not in ("allow", "block"):
        raise BadInput("kind must be allow or block", "kind")
    return cast(Literal["allow", "block"] | None, kind)


def _page(req: falcon.Request) -> tuple[int, int]:
    return (req.get_param_as_int("limit", default=100, min_value=1, max_value=1000),
            req.get_param_as_int("offset", default=0, min_value=0))


@dataclass
class ListsResource:
    lists: UserLists
    audit: Audit
    roles = {"GET": READERS, "POST": WRITERS, "DELETE": WRITERS}

    @returns(media_types=("application/json",))
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        """?recipient= (staff; a quarantine user sees their own), ?q= a piece of the sender or
        recipient, ?kind=allow|block, ?limit=, ?offset=."""
        user: User = req.context.user
        recipient = req.get_param("recipient")
        if user.role == "quser" and not (recipient and user.receives(recipient)):
            recipient = user.username
        limit, offset = _page(req)
        items = self.lists.search(recipient=recipient, text=req.get_param("q"),
                                  kind=_kind(req), limit=limit, offset=offset)
        resp.media = {"items": items, "limit": limit, "offset": offset}

    @returns(media_types=("application/json",), status=201)
    @accepts(ListEntry)
    def on_post(self, req: falcon.Request, resp: falcon.Response, body: ListEntry) -> None:
        user: User = req.context.user
        recipient = _whose(user, body.recipient)
        self.lists.set(recipient, body.sender, body.kind)
        self.audit.record(user.username, f"list.{body.kind}", recipient,
                          {"sender": body.sender.lower()}, req.remote_addr)
        resp.status = falcon.HTTP_201
        resp.media = {"recipient": recipient, "sender": body.sender.lower(), "kind": body.kind}

    @accepts(ListRemoval)
    def on_delete(self, req: falcon.Request, resp: falcon.Response, body: ListRemoval) -> None:
        user: User = req.context.user
        recipient = _whose(user, body.recipient)
        if not self.lists.remove(recipient, body.sender):
            raise falcon.HTTPNotFound(title="Not Found", description=f"{body.sender} is not on "
                                      f"the list of {recipient}")
        self.audit.record(user.username, "list.remove", recipient,
                          {"sender": body.sender.lower()}, req.remote_addr)
        resp.status = falcon.HTTP_204


# --- global sender lists --------------------------------------------------------------------

GLOBAL_READERS = ("admin", "qmanager", "helpdesk", "audit")
# Who may let a sender past everyone's spam checks, or hold everyone's mail from one.
GLOBAL_WRITERS = ("admin", "qmanager")


@dataclass
class GlobalListsResource:
    """The lists for every recipient; a recipient's own entry for a sender comes first."""

    lists: GlobalLists
    audit: Audit
    roles = {"GET": GLOBAL_READERS, "POST": GLOBAL_WRITERS, "DELETE": GLOBAL_WRITERS}

    @returns(media_types=("application/json",))
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        """?q= a piece of the sender, ?kind=allow|block, ?limit=, ?offset=."""
        kind = _kind(req)
        limit, offset = _page(req)
        items = self.lists.search(text=req.get_param("q"), kind=kind, limit=limit,
                                  offset=offset)
        resp.media = {"items": items, "limit": limit, "offset": offset}

    @returns(media_types=("application/json",), status=201)
    @accepts(GlobalListEntry)
    def on_post(self, req: falcon.Request, resp: falcon.Response,
                body: GlobalListEntry) -> None:
        user: User = req.context.user
        sender = body.sender.lower()
        before = self.lists.set(sender, body.kind, user.username)
        self.audit.record(user.username, f"list.global.{body.kind}", sender,
                          {"sender": sender, "before": before}, req.remote_addr)
        resp.status = falcon.HTTP_201
        resp.media = {"sender": sender, "kind": body.kind, "before": before}

    @accepts(GlobalListRemoval)
    def on_delete(self, req: falcon.Request, resp: falcon.Response,
                  body: GlobalListRemoval) -> None:
        user: User = req.context.user
        sender = body.sender.lower()
        before = self.lists.remove(sender)
        if before is None:
            raise falcon.HTTPNotFound(title="Not Found",
                                      description=f"{sender} is not on the global lists")
        self.audit.record(user.username, "list.global.remove", sender,
                          {"sender": sender, "before": before}, req.remote_addr)
        resp.status = falcon.HTTP_204


# --- end of global sender lists --------------------------------------------------------------


__all__ = ["GlobalListsResource", "ListsResource"]
