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
from ..store.db import Database
from .auth import Unauthorized

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


@dataclass
class MetricsResource:
    layout: Layout
    db: Database
    public = ("GET",)  # authorised below: a token, or the source network

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        user = req.context.user
        if not (user and user.role in STAFF) and not _allowed_network(self.layout,
                                                                       req.remote_addr):
            raise Unauthorized("send an API token, or scrape from a management network")
        conn = self.db.connection()
        lines = [
            "# HELP mailwarden_deliveries_total Recipients by direction and outcome.",
            "# TYPE mailwarden_deliveries_total counter",
        ]
        for row in conn.execute(
                "SELECT m.direction, d.action, COUNT(*) n FROM deliveries d"
                " JOIN messages m ON m.id = d.message GROUP BY m.direction, d.action"):
            lines.append(f'mailwarden_deliveries_total{{direction="{row["direction"]}",'
                         f'action="{row["action"]}"}} {row["n"]}')
        lines += ["# HELP mailwarden_messages_total Messages filtered.",
                  "# TYPE mailwarden_messages_total counter"]
        for row in conn.execute("SELECT direction, COUNT(*) n, SUM(filter_ms) ms,"
                                " SUM(size) bytes FROM messages GROUP BY direction"):
            lines.append(f'mailwarden_messages_total{{direction="{row["direction"]}"}} '
                         f'{row["n"]}')
            lines.append(f'mailwarden_filter_seconds_total{{direction="{row["direction"]}"}} '
                         f'{(row["ms"] or 0) / 1000:.3f}')
            lines.append(f'mailwarden_bytes_total{{direction="{row["direction"]}"}} '
                         f'{row["bytes"] or 0}')
        quarantined = conn.execute(
            "SELECT q.kind, COUNT(DISTINCT q.id) n FROM quarantine q JOIN quarantine_recipients"
            " r ON r.quarantine_id = q.id WHERE r.status = 'new' GROUP BY q.kind").fetchall()
        lines += ["# HELP mailwarden_quarantine_waiting Quarantined messages not yet handled.",
                  "# TYPE mailwarden_quarantine_waiting gauge"]
        lines += [f'mailwarden_quarantine_waiting{{kind="{r["kind"]}"}} {r["n"]}'
                  for r in quarantined]
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
