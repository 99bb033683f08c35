"""POST /api/rules/simulate: which rules a message would match, and why; no side effects.

The message is sent as text (`message`, the raw RFC 5322 source) with its envelope; an
assumed spam score and virus name stand in for the scanners, so an admin can try "what if
this scored 12?" without sending anything.
"""

from __future__ import annotations

from dataclasses import dataclass

import falcon

from ..layout import Layout
from ..mail.simulate import simulate
from ..mail.types import Envelope, ScanResult, SpamResult, VirusResult
from ..state.load import load_state_file
from .errors import BadInput

MAX_MESSAGE = 10 * 1024 * 1024


@dataclass
class SimulateResource:
    layout: Layout
    roles = {"POST": ("admin", "helpdesk", "audit")}

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        data = req.get_media(default_when_empty=None)
        if not isinstance(data, dict):
            raise BadInput("the request body must be a JSON object")
        message = data.get("message")
        if not isinstance(message, str) or not message.strip():
            raise BadInput("message (the raw source of an email) is required", "message")
        if len(message) > MAX_MESSAGE:
            raise BadInput("message is larger than 10 MiB", "message")
        recipients = data.get("to")
        if not isinstance(recipients, list) or not recipients or not all(
                isinstance(r, str) and "@" in r for r in recipients):
            raise BadInput("to must be a non-empty list of addresses", "to")
        sender = data.get("from", "")
        if not isinstance(sender, str):
            raise BadInput("from must be an address (or empty for bounces)", "from")
        direction = data.get("direction", "in")
        if direction not in ("in", "out"):
            raise BadInput("direction must be in or out", "direction")
        score, virus = data.get("score"), data.get("virus")
        if score is not None and (not isinstance(score, int | float) or isinstance(score, bool)):
            raise BadInput("score must be a number", "score")
        if virus is not None and not isinstance(virus, str):
            raise BadInput("virus must be a signature name", "virus")
        client_ip = data.get("client_ip")
        if client_ip is not None and not isinstance(client_ip, str):
            raise BadInput("client_ip must be an address", "client_ip")
        scan = None
        if score is not None or virus:
            scan = ScanResult(spam=SpamResult(score=float(score or 0.0)),
                              virus=VirusResult(virus=virus or None))
        state = load_state_file(self.layout.state_file)
        envelope = Envelope(sender=sender, recipients=tuple(recipients),
                            direction=direction, client_ip=client_ip)
        report = simulate(state, message.encode("utf-8", "surrogateescape"), envelope,
                          scan=scan)
        resp.media = report.to_dict()
