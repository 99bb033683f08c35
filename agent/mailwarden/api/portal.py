"""The portal's front door for people without a password: POST /api/portal/link sends a login
link (a digest's login ticket, alive for an hour) to the address given.

The answer is the same whether or not a link went out, so the form tells nobody which
addresses receive mail here. A link goes only to an address that has a quarantine account
already or had mail quarantined here (never a made-up one: that would send mail to whatever
an outsider types), and never to a staff account's name. Asking is throttled per source
address and per address asked for, and recorded in the audit log.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import falcon

from ..mail.digest import login_link_mail, sender_of
from ..mail.reinject import RecipientsRefused
from ..state.schema import Quarantine as QuarantineSettings
from ..state.schema import State
from ..store.quarantine import Quarantine
from ..store.tickets import Tickets
from ..store.users import Audit, Users
from .auth import Forbidden
from .bodies import PortalLink, accepts
from .errors import TooManyRequests
from .quarantine import Deliver
from .replies import returns
from .resources import LOGIN_WINDOW, throttle_guessing

log = logging.getLogger("mailwarden.api")

LINK_LIFETIME = 3600
PER_SOURCE = 5  # requests per source address per 15 minutes
PER_ADDRESS = 3  # links per address asked for per 15 minutes
ANSWER = ("If this address receives mail here, a login link is on its way to it. It works for "
          "an hour.")
PORTAL_OFF = ("the quarantine portal is turned off: quarantine users cannot log in; ask your "
              "administrator")


@dataclass
class PortalLinkResource:
    users: Users
    audit: Audit
    quarantine: Quarantine
    tickets: Tickets
    deliver: Deliver
    state: Callable[[], State]
    settings: Callable[[], QuarantineSettings]
    clock: Callable[[], float] = time.time
    public = ("POST",)

    @returns(media_types=("application/json",), status=202)
    @accepts(PortalLink)
    def on_post(self, req: falcon.Request, resp: falcon.Response, body: PortalLink) -> None:
        if not self.settings().user_portal:
            raise Forbidden(PORTAL_OFF, code="portal_disabled")
        address = body.address.lower()
        now = self.clock()
        throttle_guessing(self.audit, "portal.link", req.remote_addr, now,
                          "login link requests", limit=PER_SOURCE)
        # Per address from anywhere: nobody fills a mailbox with links from many hosts.
        if self.audit.count_by("portal.link", address, since=now - LOGIN_WINDOW) >= PER_ADDRESS:
            raise TooManyRequests(f"too many login links for {address}; wait 15 minutes",
                                  "too_many_requests", LOGIN_WINDOW)
        sent = self._eligible(address)
        detail: dict[str, object] = {"sent": sent}
        if sent:
            state = self.state()
            message = login_link_mail(state, self.tickets, address, LINK_LIFETIME, now)
            try:
                self.deliver(message.as_bytes(), sender_of(state), [address])
            except RecipientsRefused as exc:
                if not exc.permanent:
                    raise
                # An account's name Postfix will not take as an address: recorded, and
                # answered like every other address.
                log.warning("login link for %s refused: %s", address, exc.message)
                detail = {"sent": False, "error": exc.message}
        # Who was sent a link is for the audit log, never for the answer.
        self.audit.record(address, "portal.link", address, detail, req.remote_addr, now=now)
        resp.status = falcon.HTTP_202
        resp.media = {"message": ANSWER}

    def _eligible(self, address: str) -> bool:
        owner = self.users.owner_of(address)
        if owner is not None:
            return owner.role == "quser"
        return bool(self.quarantine.list(recipient=address, status=None, limit=1))


__all__ = ["PortalLinkResource"]
