"""DMARC evaluations, one row per inbound message, for aggregate (rua) reports later."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from typing import Any

from .db import Database


def record(db: Database, *, header_from: str, result: str, disposition: str,
           source_ip: str | None = None, spf_domain: str = "", spf_result: str = "",
           spf_aligned: bool = False, dkim_domains: Sequence[str] = (), dkim_result: str = "",
           dkim_aligned: bool = False, policy: str = "", when: float | None = None) -> int:
    """Store one evaluation; returns its id."""
    with db.transaction() as conn:
        return insert(conn, header_from=header_from, result=result, disposition=disposition,
                      source_ip=source_ip, spf_domain=spf_domain, spf_result=spf_result,
                      spf_aligned=spf_aligned, dkim_domains=dkim_domains,
                      dkim_result=dkim_result, dkim_aligned=dkim_aligned, policy=policy,
                      when=when)


def insert(conn: sqlite3.Connection, *, header_from: str, result: str, disposition: str,
           source_ip: str | None = None, spf_domain: str = "", spf_result: str = "",
           spf_aligned: bool = False, dkim_domains: Sequence[str] = (), dkim_result: str = "",
           dkim_aligned: bool = False, policy: str = "", when: float | None = None) -> int:
    """`record` inside the caller's transaction (the filter's batches, store/batch.py)."""
    cursor = conn.execute(
        "INSERT INTO dmarc_results (time, header_from, source_ip, spf_domain, spf_result,"
        " spf_aligned, dkim_domains, dkim_result, dkim_aligned, policy, result,"
        " disposition) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (time.time() if when is None else when, header_from.lower(), source_ip,
         spf_domain.lower(), spf_result, int(spf_aligned), json.dumps(list(dkim_domains)),
         dkim_result, int(dkim_aligned), policy, result, disposition))
    return int(cursor.lastrowid or 0)


def results(db: Database, *, since: float = 0.0, until: float | None = None,
            header_from: str | None = None) -> list[dict[str, Any]]:
    """Evaluations in [since, until), oldest first, optionally for one From domain."""
    sql = "SELECT * FROM dmarc_results WHERE time >= ? AND time < ?"
    args: list[Any] = [since, float("inf") if until is None else until]
    if header_from is not None:
        sql += " AND header_from = ?"
        args.append(header_from.lower())
    rows = db.connection().execute(sql + " ORDER BY time, id", args).fetchall()
    out = []
    for row in rows:
        item = dict(row)
        item["dkim_domains"] = json.loads(item["dkim_domains"] or "[]")
        item["spf_aligned"] = bool(item["spf_aligned"])
        item["dkim_aligned"] = bool(item["dkim_aligned"])
        out.append(item)
    return out
