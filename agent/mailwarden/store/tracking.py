"""Message tracking: every message's decision, and the counters statistics are made of."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .db import Database


@dataclass(frozen=True)
class Delivery:
    recipient: str
    action: str  # accept, block, reject, quarantine, tempfail
    rule: str | None = None
    quarantine_id: str | None = None


@dataclass(frozen=True)
class MessageRecord:
    direction: str
    sender: str
    size: int
    deliveries: Sequence[Delivery]
    queue_id: str | None = None
    message_id: str | None = None
    client_ip: str | None = None
    helo: str | None = None
    subject: str | None = None
    spam_score: float | None = None
    spam_symbols: dict[str, float] | None = None
    virus: str | None = None
    # "clamd: N parts" (virus.scan = parts), "clamd: whole message", "skipped: plain text"
    # (virus.skip_plain_text), "skipped: disabled", "skipped: failed"; "clamd" in records
    # written before the parts scan
    virus_scan: str | None = None
    spf: str | None = None
    dkim: str | None = None
    dmarc: str | None = None
    filter_ms: float | None = None


class Tracking:
    def __init__(self, db: Database) -> None:
        self.db = db

    def record(self, rec: MessageRecord, now: float | None = None) -> int:
        with self.db.transaction() as conn:
            return insert(conn, rec, now)

    def search(self, *, sender: str | None = None, recipient: str | None = None,
               queue_id: str | None = None, since: float | None = None,
               limit: int = 100) -> list[dict[str, Any]]:
        where: list[str] = []
        args: list[object] = []
        if sender:
            where.append("m.sender = ?")
            args.append(sender)
        if queue_id:
            where.append("m.queue_id = ?")
            args.append(queue_id)
        if since is not None:
            where.append("m.time >= ?")
            args.append(since)
        if recipient:
            where.append("EXISTS (SELECT 1 FROM deliveries d WHERE d.message = m.id"
                         " AND d.recipient = ?)")
            args.append(recipient)
        sql = "SELECT m.* FROM messages m"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY m.time DESC LIMIT ?"
        conn = self.db.connection()
        out = []
        for row in conn.execute(sql, (*args, limit)):
            item = dict(row)
            item["deliveries"] = [dict(d) for d in conn.execute(
                "SELECT recipient, action, rule, quarantine_id FROM deliveries"
                " WHERE message = ?", (row["id"],))]
            out.append(item)
        return out


def insert(conn: sqlite3.Connection, rec: MessageRecord, now: float | None = None) -> int:
    """One message's row, its deliveries and counters, in the caller's transaction (the
    filter's batches, store/batch.py)."""
    now = time.time() if now is None else now
    hour = int(now // 3600)
    spam = any(d.action == "quarantine" for d in rec.deliveries) and not rec.virus
    cursor = conn.execute(
        "INSERT INTO messages (time, direction, queue_id, message_id, sender, client_ip,"
        " helo, subject, size, spam_score, spam_symbols, virus, virus_scan, spf, dkim,"
        " dmarc, filter_ms) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (now, rec.direction, rec.queue_id, rec.message_id, rec.sender, rec.client_ip,
         rec.helo, rec.subject, rec.size, rec.spam_score,
         json.dumps(rec.spam_symbols) if rec.spam_symbols is not None else None,
         rec.virus, rec.virus_scan, rec.spf, rec.dkim, rec.dmarc, rec.filter_ms))
    message_id = int(cursor.lastrowid or 0)
    conn.executemany(
        "INSERT INTO deliveries (message, recipient, action, rule, quarantine_id)"
        " VALUES (?,?,?,?,?)",
        [(message_id, d.recipient, d.action, d.rule, d.quarantine_id)
         for d in rec.deliveries])
    domains = {d.recipient.rpartition("@")[2].lower() for d in rec.deliveries}
    if rec.direction == "out":
        domains = {rec.sender.rpartition("@")[2].lower() or "(null sender)"}
    for domain in domains:
        conn.execute(
            "INSERT INTO counters (hour, domain, direction, messages, spam, virus, bytes)"
            " VALUES (?,?,?,1,?,?,?) ON CONFLICT (hour, domain, direction) DO UPDATE SET"
            " messages = messages + 1, spam = spam + excluded.spam,"
            " virus = virus + excluded.virus, bytes = bytes + excluded.bytes",
            (hour, domain, rec.direction, int(spam), int(rec.virus is not None),
             rec.size))
    return message_id
