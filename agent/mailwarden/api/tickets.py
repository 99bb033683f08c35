"""The pages the links of a quarantine digest open: /ticket/{action}?t=TICKET.

Web pages for people, not API resources (so not in the OpenAPI document): GET shows what the
link would do and a button; only the button's POST acts. Link scanners, previews and
prefetchers that fetch every URL in a mail therefore change nothing. The ticket
(store/tickets.py) is the credential, for its recipient address alone: its holder acts as
that address's quarantine user would in the portal, with the same rules (api/quarantine.py
`act`), and `login` opens the portal as that user. A session cookie the browser also holds
is not looked at here (the CSRF rules of the API do not apply: a page elsewhere that could
post a form here would need the ticket, which is the secret).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

import falcon
import jinja2

from ..errors import MailwardenError, NotFound
from ..state.schema import Quarantine as QuarantineSettings
from ..store.lists import UserLists
from ..store.quarantine import Quarantine, QuarantineEntry
from ..store.tickets import Ticket, TicketError, Tickets
from ..store.users import SESSION_LIFETIME, Audit, User, Users
from .auth import Forbidden, set_session_cookie
from .quarantine import Deliver, act, carries_virus, offered

MESSAGE_ACTIONS = ("release", "delete", "allow", "block")
ACTIONS = (*MESSAGE_ACTIONS, "login")
# What each button says it will do (the page repeats the message's sender and subject).
PROMISES = {
    "release": "Deliver this message to {address}.",
    "delete": "Delete this message; it is not delivered.",
    "allow": "Deliver this message to {address} and let mail from {sender} through from now on.",
    "block": "Delete this message and hold mail from {sender} for {address} from now on.",
    "login": "Open the quarantine of {address}.",
}
DONE = {
    "release": "Delivered to {address}.",
    "delete": "Deleted.",
    "allow": "Delivered; mail from {sender} to {address} is let through from now on.",
    "block": "Deleted; mail from {sender} to {address} is held from now on.",
}
PORTAL_OFF = "The quarantine portal is turned off; ask your administrator."

_pages = jinja2.Environment(
    loader=jinja2.PackageLoader("mailwarden.api", "templates"),
    autoescape=jinja2.select_autoescape(["html.j2"]), undefined=jinja2.StrictUndefined)


class TicketPageError(Exception):
    """A page saying why the link cannot be used, with its HTTP status."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _page(resp: falcon.Response, status: str, **context: Any) -> None:
    resp.status = status
    resp.content_type = "text/html; charset=utf-8"
    resp.set_header("Cache-Control", "no-store")
    context.setdefault("entry", None)
    context.setdefault("button", None)
    context.setdefault("portal", None)
    resp.text = _pages.get_template("ticket.html.j2").render(context)


def _holder(ticket: Ticket) -> User:
    """Who acts: the ticket's address as its quarantine user."""
    return User(0, ticket.address, "quser", False, (ticket.address,))


@dataclass
class TicketPage:
    tickets: Tickets
    quarantine: Quarantine
    lists: UserLists
    deliver: Deliver
    users: Users
    audit: Audit
    settings: Callable[[], QuarantineSettings]
    public = ("GET", "POST")
    # The ticket is the credential: AuthMiddleware does not look for a session here.
    anonymous = True

    def on_get(self, req: falcon.Request, resp: falcon.Response, action: str) -> None:
        try:
            ticket, entry = self._open(req.get_param("t") or "", action)
            if action == "login":
                _page(resp, falcon.HTTP_200, title="Your quarantine",
                      message=PROMISES["login"].format(address=ticket.address),
                      button="Open the quarantine", ticket=req.get_param("t"),
                      action=action)
                return
            assert entry is not None
            waiting = entry.recipients.get(self._recipient(entry, ticket)) == "new"
            if not waiting:
                raise TicketPageError(falcon.HTTP_410, self._gone(entry, ticket))
            if action not in offered(_holder(ticket), entry, self._viruses_allowed()):
                raise TicketPageError(falcon.HTTP_403, self._refusal(entry, action))
            _page(resp, falcon.HTTP_200, title=f"{action.capitalize()} this message?",
                  message=PROMISES[action].format(address=ticket.address,
                                                  sender=entry.sender or "(no sender)"),
                  entry=entry, button=action.capitalize(), ticket=req.get_param("t"),
                  action=action)
        except TicketPageError as problem:
            _page(resp, problem.status, title="This link cannot be used",
                  message=problem.message)

    def on_post(self, req: falcon.Request, resp: falcon.Response, action: str) -> None:
        text = self._posted_ticket(req)
        try:
            ticket, entry = self._open(text, action)
            if action == "login":
                self._login(req, resp, ticket)
                return
            assert entry is not None
            recipient = self._recipient(entry, ticket)
            if entry.recipients.get(recipient) != "new":
                raise TicketPageError(falcon.HTTP_410, self._gone(entry, ticket))
            try:
                result = act(self.quarantine, self.lists, self.deliver, _holder(ticket),
                             entry, action, [recipient], self._viruses_allowed())
            except Forbidden:
                raise TicketPageError(falcon.HTTP_403, self._refusal(entry, action)) from None
            if action in ("release", "allow") and not result.get("released"):
                # Another click (or the portal) was first: nothing was delivered twice.
                raise TicketPageError(falcon.HTTP_410, self._gone(entry, ticket))
            self.audit.record(f"ticket:{ticket.address}", f"quarantine.{action}", entry.id,
                              {"recipients": [recipient], "via": "digest"}, req.remote_addr)
            _page(resp, falcon.HTTP_200, title="Done",
                  message=DONE[action].format(address=ticket.address,
                                              sender=entry.sender or "(no sender)"),
                  entry=entry, portal=self._portal_link(ticket, text))
        except TicketPageError as problem:
            _page(resp, problem.status, title="This link cannot be used",
                  message=problem.message)

    # --- helpers ----------------------------------------------------------------------

    def _open(self, text: str, action: str) -> tuple[Ticket, QuarantineEntry | None]:
        if action not in ACTIONS:
            raise TicketPageError(falcon.HTTP_404, f"there is no action '{action}'")
        try:
            ticket = self.tickets.check(text)
        except TicketError as exc:
            status = falcon.HTTP_410 if exc.code == "ticket_expired" else falcon.HTTP_403
            raise TicketPageError(status, exc.message) from None
        if action == "login":
            if ticket.message is not None:
                raise TicketPageError(falcon.HTTP_403, "this link is for one message only")
            return ticket, None
        if ticket.message is None:
            raise TicketPageError(falcon.HTTP_403, "this link names no message")
        try:
            entry = self.quarantine.get(ticket.message)
        except NotFound:
            raise TicketPageError(falcon.HTTP_410, "the message is no longer in the "
                                  "quarantine (it expired or was removed)") from None
        self._recipient(entry, ticket)
        return ticket, entry

    @staticmethod
    def _recipient(entry: QuarantineEntry, ticket: Ticket) -> str:
        """The entry's recipient the ticket is for; a ticket for someone else's message is
        refused the same way as a changed one."""
        for recipient in entry.recipients:
            if recipient.lower() == ticket.address:
                return recipient
        raise TicketPageError(falcon.HTTP_403, "the link was changed or cut short")

    def _viruses_allowed(self) -> bool:
        return self.settings().user_release_virus

    @staticmethod
    def _gone(entry: QuarantineEntry, ticket: Ticket) -> str:
        status = next((s for r, s in entry.recipients.items() if r.lower() == ticket.address),
                      "gone")
        return {"released": "This message was delivered already; nothing was sent again.",
                "releasing": "This message is being delivered right now.",
                "deleted": "This message was deleted already."}.get(
                    status, "This message is no longer in the quarantine.")

    @staticmethod
    def _refusal(entry: QuarantineEntry, action: str) -> str:
        if carries_virus(entry):
            return (f"This message carries a virus: you cannot {action} it yourself; ask your "
                    "administrator.")
        return f"You cannot {action} this message."

    def _portal_link(self, ticket: Ticket, text: str) -> str | None:
        if not self.settings().user_portal:
            return None
        # A message's ticket does not open the portal; a fresh one for the address does,
        # expiring with the one used.
        fresh = self.tickets.make(ticket.address, None, max(0.0, ticket.expires - time.time()))
        return f"/ticket/login?t={fresh}"

    def _posted_ticket(self, req: falcon.Request) -> str:
        """The form's field t (application/x-www-form-urlencoded), or the query's."""
        raw = req.bounded_stream.read(8192) if req.content_length else b""
        try:
            fields = parse_qs(raw.decode("ascii", "replace"), max_num_fields=4)
        except ValueError:  # more fields than the form has: not our form
            fields = {}
        return (fields.get("t") or [req.get_param("t") or ""])[0]

    def _login(self, req: falcon.Request, resp: falcon.Response, ticket: Ticket) -> None:
        if not self.settings().user_portal:
            raise TicketPageError(falcon.HTTP_403, PORTAL_OFF)
        # The account that receives this address (by its name or as an alias), else a new one.
        user = self.users.owner_of(ticket.address) or self._make_portal_user(ticket.address)
        if user.role != "quser":
            # Never a way into a staff account: its owner logs in with its password.
            raise TicketPageError(falcon.HTTP_403, "this address belongs to an account that "
                                  "logs in with its password")
        token, _ = self.users.create_session(user)
        self.audit.record(user.username, "login", None, {"via": "digest"}, req.remote_addr)
        set_session_cookie(resp, token, SESSION_LIFETIME)
        resp.status = falcon.HTTP_303
        resp.location = "/#/quarantine"

    def _make_portal_user(self, address: str) -> User:
        """A quarantine user for the address, made on its first ticket login. It has no
        password anyone knows (a random one, discarded): tickets are its way in until an
        administrator gives it one."""
        try:
            return self.users.add(address, secrets.token_urlsafe(32), "quser")
        except MailwardenError:  # made by a second click just now
            return self.users.get(address)


__all__ = ["ACTIONS", "TicketPage"]
