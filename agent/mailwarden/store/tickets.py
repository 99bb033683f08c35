"""Tickets: the signed tokens in the links of a quarantine digest.

A ticket names one recipient address, optionally one quarantined message, and when it
expires; it is signed (HMAC-SHA256) with a key of the appliance kept beside the credentials
store (the API's user's, 0600), so only the appliance makes them and nobody can change what
one names. It is a bearer credential for that address alone: whoever holds the digest may
act on that address's quarantined mail, as its owner could in the portal, and nothing else.
Tickets are not stored; they expire (quarantine.digest.ticket_lifetime_days), and what they
allow is still checked against the quarantine when used (a message released once is not
released again).

Form: `v1.<payload>.<signature>`, both base64url without padding; the payload is compact
JSON {"a": address, "m": message id or null, "e": expiry (Unix seconds)}.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import MailwardenError
from .credentials import owner_key

PREFIX = "v1"
# Bound into every signature: a MAC made with this key for anything else is never a ticket.
CONTEXT = b"mailwarden quarantine ticket v1\n"
MAX_LENGTH = 1024


class TicketError(MailwardenError):
    """Not a ticket of this appliance, or changed since it was made."""

    code = "ticket_invalid"


class TicketExpired(TicketError):
    code = "ticket_expired"


@dataclass(frozen=True)
class Ticket:
    address: str
    message: str | None
    expires: int


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Tickets:
    def __init__(self, key_file: Path) -> None:
        self.key_file = key_file
        self._key: bytes | None = None

    def _mac(self, payload: str) -> bytes:
        if self._key is None:
            self._key = owner_key(self.key_file)
        return hmac.new(self._key, CONTEXT + payload.encode(), hashlib.sha256).digest()

    def make(self, address: str, message: str | None, lifetime: float,
             now: float | None = None) -> str:
        expires = int((time.time() if now is None else now) + lifetime)
        payload = _b64(json.dumps({"a": address.lower(), "m": message, "e": expires},
                                  separators=(",", ":"), sort_keys=True).encode())
        return f"{PREFIX}.{payload}.{_b64(self._mac(payload))}"

    def check(self, text: str, now: float | None = None) -> Ticket:
        """The ticket's content, or TicketError/TicketExpired. The signature is checked
        before anything in the payload is looked at."""
        parts = text.split(".") if len(text) <= MAX_LENGTH and text.isascii() else []
        if len(parts) != 3 or parts[0] != PREFIX:
            raise TicketError("this is not a link of this appliance's quarantine digests")
        try:
            signature = _unb64(parts[2])
        except (binascii.Error, ValueError):
            raise TicketError("the link was changed or cut short") from None
        if not hmac.compare_digest(signature, self._mac(parts[1])):
            raise TicketError("the link was changed or cut short")
        data = json.loads(_unb64(parts[1]))
        ticket = Ticket(str(data["a"]), data["m"], int(data["e"]))
        if ticket.expires < (time.time() if now is None else now):
            raise TicketExpired("this link has expired; a newer digest has links that work, "
                                "or ask for a login link on the portal's front page")
        return ticket


__all__ = ["Ticket", "TicketError", "TicketExpired", "Tickets"]
