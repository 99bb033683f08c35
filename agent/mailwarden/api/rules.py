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
from .bodies import Simulation, accepts


@dataclass
class SimulateResource:
    layout: Layout
    roles = {"POST": ("admin", "helpdesk", "audit")}

    @accepts(Simulation)
    def on_post(self, req: falcon.Request, resp: falcon.Response, body: Simulation) -> None:
        scan = None
        if body.score is not None or body.virus:
            scan = ScanResult(spam=SpamResult(score=body.score or 0.0),
                              virus=VirusResult(virus=body.virus or None))
        state = load_state_file(self.layout.state_file)
        envelope = Envelope(sender=body.sender, recipients=tuple(body.to),
                            direction=body.direction, client_ip=body.client_ip)
        report = simulate(state, body.message.encode("utf-8", "surrogateescape"), envelope,
                          scan=scan)
        resp.media = report.to_dict()
