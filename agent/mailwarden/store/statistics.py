"""Statistics from the counters and the message log: totals, series, top lists."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .db import Database


@dataclass(frozen=True)
class DirectionTotals:
    direction: str
    messages: int
    filter_seconds: float
    bytes: int


@dataclass(frozen=True)
class Totals:
    """Counts since the store began, for /metrics (Prometheus counters and gauges)."""

    # (direction, action) -> recipients
    deliveries: dict[tuple[str, str], int]
    directions: list[DirectionTotals]
    # quarantine kind -> messages with a recipient still to decide on
    waiting: dict[str, int]


class Statistics:
    def __init__(self, db: Database) -> None:
        self.db = db

    def summary(self, since: float, until: float, domain: str | None = None) -> dict[str, Any]:
        conn = self.db.connection()
        where = "hour >= ? AND hour < ?"
        args: list[Any] = [int(since // 3600), int(until // 3600) + 1]
        if domain:
            where += " AND domain = ?"
            args.append(domain.lower())
        # `where` is one of two fixed fragments; every value is a bound parameter.
        sums = "SUM(messages) messages, SUM(spam) spam, SUM(virus) virus, SUM(bytes) bytes"
        base = f"FROM counters WHERE {where}"
        by_direction = f"SELECT direction, {sums} {base} GROUP BY direction"
        by_hour = (f"SELECT hour * 3600 AS time, direction, {sums} {base}"
                   " GROUP BY hour, direction ORDER BY hour")
        by_day = (f"SELECT (hour / 24) * 86400 AS time, direction, {sums} {base}"
                  " GROUP BY hour / 24, direction ORDER BY hour / 24")
        by_domain = (f"SELECT domain, direction, {sums} {base}"
                     " GROUP BY domain, direction ORDER BY messages DESC LIMIT 100")
        totals = {
            r["direction"]: {k: r[k] for k in ("messages", "spam", "virus", "bytes")}
            for r in conn.execute(by_direction, args)
        }
        hourly = [dict(r) for r in conn.execute(by_hour, args)]
        daily = [dict(r) for r in conn.execute(by_day, args)]
        domains = [dict(r) for r in conn.execute(by_domain, args)]
        top_senders = [dict(r) for r in conn.execute(
            "SELECT sender, COUNT(*) messages FROM messages WHERE time >= ? AND time < ?"
            " GROUP BY sender ORDER BY messages DESC LIMIT 10", (since, until))]
        top_recipients = [dict(r) for r in conn.execute(
            "SELECT d.recipient, COUNT(*) messages FROM deliveries d JOIN messages m"
            " ON m.id = d.message WHERE m.time >= ? AND m.time < ?"
            " GROUP BY d.recipient ORDER BY messages DESC LIMIT 10", (since, until))]
        # Per user: what each recipient received and how it ended (accepted, quarantined...).
        users = [dict(r) for r in conn.execute(
            "SELECT d.recipient, COUNT(*) messages,"
            " SUM(d.action = 'quarantine') quarantined, SUM(m.virus IS NOT NULL) viruses,"
            " SUM(m.size) bytes FROM deliveries d JOIN messages m ON m.id = d.message"
            " WHERE m.time >= ? AND m.time < ? GROUP BY d.recipient"
            " ORDER BY messages DESC LIMIT 100", (since, until))]
        top_viruses = [dict(r) for r in conn.execute(
            "SELECT virus, COUNT(*) messages FROM messages WHERE virus IS NOT NULL"
            " AND time >= ? AND time < ? GROUP BY virus ORDER BY messages DESC LIMIT 10",
            (since, until))]
        return {"since": since, "until": until, "totals": totals, "hourly": hourly,
                "daily": daily, "domains": domains, "users": users, "top_senders": top_senders,
                "top_recipients": top_recipients, "top_viruses": top_viruses}

    def outcomes(self, since: float, until: float) -> dict[str, dict[str, int]]:
        """{direction: {outcome (accept, quarantine, block, reject...): recipients}}."""
        found: dict[str, dict[str, int]] = {}
        for r in self.db.connection().execute(
                "SELECT m.direction, d.action, COUNT(*) n FROM deliveries d"
                " JOIN messages m ON m.id = d.message WHERE m.time >= ? AND m.time < ?"
                " GROUP BY m.direction, d.action ORDER BY m.direction, d.action",
                (since, until)):
            found.setdefault(r["direction"], {})[r["action"]] = r["n"]
        return found

    def quarantined(self, since: float, until: float) -> dict[str, int]:
        """{quarantine kind (spam, virus, attachment, blocked): messages held} in the time."""
        return {r["kind"]: r["n"] for r in self.db.connection().execute(
            "SELECT kind, COUNT(*) n FROM quarantine WHERE time >= ? AND time < ?"
            " GROUP BY kind ORDER BY kind", (since, until))}

    def quarantine_size(self) -> dict[str, int]:
        """What the quarantine holds now: messages, bytes, and messages still waiting for a
        decision."""
        conn = self.db.connection()
        row = conn.execute("SELECT COUNT(*) n, SUM(size) bytes FROM quarantine").fetchone()
        waiting = conn.execute(
            "SELECT COUNT(DISTINCT quarantine_id) FROM quarantine_recipients"
            " WHERE status = ?", ("new",)).fetchone()[0]
        return {"messages": row["n"], "bytes": row["bytes"] or 0, "waiting": waiting}

    def totals(self) -> Totals:
        conn = self.db.connection()
        deliveries = {
            (r["direction"], r["action"]): r["n"] for r in conn.execute(
                "SELECT m.direction, d.action, COUNT(*) n FROM deliveries d"
                " JOIN messages m ON m.id = d.message GROUP BY m.direction, d.action")}
        directions = [
            DirectionTotals(r["direction"], r["n"], (r["ms"] or 0) / 1000, r["bytes"] or 0)
            for r in conn.execute(
                "SELECT direction, COUNT(*) n, SUM(filter_ms) ms, SUM(size) bytes"
                " FROM messages GROUP BY direction")]
        waiting = {r["kind"]: r["n"] for r in conn.execute(
            "SELECT q.kind, COUNT(DISTINCT q.id) n FROM quarantine q"
            " JOIN quarantine_recipients r ON r.quarantine_id = q.id"
            " WHERE r.status = ? GROUP BY q.kind", ("new",))}
        return Totals(deliveries, directions, waiting)
