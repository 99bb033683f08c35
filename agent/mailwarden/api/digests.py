"""Quarantine digests for administrators: what one recipient's digest would list now
(preview), and sending it now instead of at the next scheduled time."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import falcon

from ..mail.digest import DigestMail, Digests
from ..mail.reinject import RecipientsRefused
from ..state.schema import State
from ..store.users import Audit
from .bodies import DigestSend, accepts
from .errors import BadInput
from .quarantine import Deliver
from .replies import returns

ROLES = ("admin", "qmanager")


def _reply(mail: DigestMail) -> dict[str, Any]:
    message = mail.message
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    return {
        "address": mail.recipient,
        "subject": str(message["Subject"]),
        "messages": len(mail.items) + mail.more,
        "listed": [item.entry.id for item in mail.items],
        "text": text.get_content() if text is not None else "",
        "html": html.get_content() if html is not None else "",
    }


@dataclass
class DigestResource:
    digests: Digests
    state: Callable[[], State]
    deliver: Deliver
    audit: Audit
    roles = {"GET": ROLES, "POST": ROLES}

    @returns(media_types=("application/json",))
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        """?address=: the digest that address would get now; 404 when nothing is new."""
        address = (req.get_param("address") or "").strip()
        if "@" not in address:
            raise BadInput("give the recipient's address (?address=)", "address")
        mail = self.digests.preview(self.state(), address)
        if mail is None:
            raise falcon.HTTPNotFound(title="Not Found", description=f"nothing new was "
                                      f"quarantined for {address} since their last digest")
        resp.media = _reply(mail)

    @returns(media_types=("application/json",))
    @accepts(DigestSend)
    def on_post(self, req: falcon.Request, resp: falcon.Response, body: DigestSend) -> None:
        try:
            mail = self.digests.send(self.state(), body.address, self.deliver)
        except RecipientsRefused as exc:
            if not exc.permanent:
                raise
            raise BadInput(f"Postfix refused {body.address}: {exc.message}", "address") from None
        if mail is None:
            raise falcon.HTTPNotFound(title="Not Found", description=f"nothing new was "
                                      f"quarantined for {body.address} since their last "
                                      "digest: nothing sent")
        self.audit.record(req.context.user.username, "quarantine.digest_sent", body.address,
                          {"messages": len(mail.items) + mail.more}, req.remote_addr)
        resp.media = _reply(mail)


__all__ = ["DigestResource"]
