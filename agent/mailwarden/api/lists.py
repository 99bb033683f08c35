"""Per-recipient sender allow and block lists (the rule engine honours them): a quarantine
user reads and changes their own, the staff everyone's, with search. The quarantine's allow
and block actions write the same lists."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, cast

import falcon

from ..store.lists import UserLists
from ..store.users import Audit, User
from .auth import Forbidden
from .bodies import ListEntry, ListRemoval, accepts
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
        kind = req.get_param("kind")
        if kind is not None and kind not in ("allow", "block"):
            raise BadInput("kind must be allow or block", "kind")
        limit = req.get_param_as_int("limit", default=100, min_value=1, max_value=1000)
        offset = req.get_param_as_int("offset", default=0, min_value=0)
        items = self.lists.search(recipient=recipient, text=req.get_param("q"),
                                  kind=cast(Literal["allow", "block"] | None, kind),
                                  limit=limit, offset=offset)
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


__all__ = ["ListsResource"]
