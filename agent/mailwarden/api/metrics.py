"""/metrics in Prometheus' text format: mail by action, filter time, queue size.

Readable with an API token of any staff role, or without one from the management networks
(Prometheus servers rarely do logins).
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass

import falcon

from ..layout import Layout
from ..process import run
from ..render.view import management_networks
from ..state.load import load_state_file
from ..store.statistics import Statistics
from .auth import Unauthorized
from .replies import returns

STAFF = ("admin", "qmanager", "helpdesk", "audit")


def _allowed_network(layout: Layout, address: str | None) -> bool:
    if not address:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if ip.is_loopback:
        return True
    state = load_state_file(layout.state_file)
    return any(ip in ipaddress.ip_network(n) for n in management_networks(state))


def _label(value: str) -> str:
    """A label value as the exposition format quotes it."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


@dataclass
class MetricsResource:
    layout: Layout
    statistics: Statistics
    public = ("GET",)  # authorised below: a token, or the source network

    @returns(media_types=("text/plain",))
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        user = req.context.user
        if not (user and user.role in STAFF) and not _allowed_network(self.layout,
                                                                       req.remote_addr):
            raise Unauthorized("send an API token, or scrape from a management network")
        totals = self.statistics.totals()
        lines = [
            "# HELP mailwarden_deliveries_total Recipients by direction and outcome.",
            "# TYPE mailwarden_deliveries_total counter",
        ]
        lines += [f'mailwarden_deliveries_total{{direction="{_label(direction)}",'
                  f'action="{_label(action)}"}} {n}'
                  for (direction, action), n in totals.deliveries.items()]
        lines += ["# HELP mailwarden_messages_total Messages filtered.",
                  "# TYPE mailwarden_messages_total counter"]
        for row in totals.directions:
            direction = _label(row.direction)
            lines.append(f'mailwarden_messages_total{{direction="{direction}"}} {row.messages}')
            lines.append(f'mailwarden_filter_seconds_total{{direction="{direction}"}} '
                         f"{row.filter_seconds:.3f}")
            lines.append(f'mailwarden_bytes_total{{direction="{direction}"}} {row.bytes}')
        lines += ["# HELP mailwarden_quarantine_waiting Quarantined messages not yet handled.",
                  "# TYPE mailwarden_quarantine_waiting gauge"]
        lines += [f'mailwarden_quarantine_waiting{{kind="{_label(kind)}"}} {n}'
                  for kind, n in totals.waiting.items()]
        queue = run(["postqueue", "-c", self.layout.path("/etc/postfix"), "-j"],
                    check=False)
        if queue.returncode == 0:
            size = sum(1 for line in queue.stdout.splitlines()
                       if line.strip().startswith("{") and json.loads(line))
            lines += ["# HELP mailwarden_queue_messages Messages in Postfix's queue.",
                      "# TYPE mailwarden_queue_messages gauge",
                      f"mailwarden_queue_messages {size}"]
        resp.content_type = "text/plain; version=0.0.4"
        resp.text = "\n".join(lines) + "\n"
