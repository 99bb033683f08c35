"""Greylisting triplets: (client network, normalised sender, recipient) and their history.

The decision is made here, in one transaction, because two recipients of the same message
arrive at the policy service at once and must not both insert a "new" row or both miss a
retry. The policy service passes the timing settings in; nothing here knows the state file.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Literal

from .db import Database

Outcome = Literal["new", "early", "retry", "known", "whitelisted"]


@dataclass(frozen=True)
class GreylistVerdict:
    passed: bool
    outcome: Outcome
    wait_seconds: int = 0  # how long the client should still wait, when not passed


@dataclass(frozen=True)
class GreylistTimes:
    delay: float  # seconds before a retry is accepted
    retry_window: float  # seconds after the first attempt during which a retry counts
    pass_lifetime: float  # seconds a passed triplet (and its client network) stays known


class GreylistStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def attempt(self, client_net: str, sender: str, recipient: str, now: float,
                times: GreylistTimes) -> GreylistVerdict:
        """Record one delivery attempt of the triplet and say whether it may pass."""
        key = (client_net, sender, recipient)
        with self.db.transaction() as conn:
            row = conn.execute(
                "SELECT first_seen, last_seen, passed FROM greylist"
                " WHERE client_net = ? AND sender = ? AND recipient = ?", key).fetchone()
            if row is not None and row["passed"] and now - row["last_seen"] <= times.pass_lifetime:
                conn.execute(
                    "UPDATE greylist SET last_seen = ?, attempts = attempts + 1"
                    " WHERE client_net = ? AND sender = ? AND recipient = ?", (now, *key))
                return GreylistVerdict(True, "known")
            # Auto-whitelist: a network that once retried properly is a real MTA; any of its
            # triplets passes. Recording the triplet as passed keeps an active sender known.
            proven = conn.execute(
                "SELECT 1 FROM greylist WHERE client_net = ? AND passed = 1 AND last_seen >= ?"
                " LIMIT 1", (client_net, now - times.pass_lifetime)).fetchone()
            if proven is not None:
                self._upsert(conn, key, now, now, passed=True)
                return GreylistVerdict(True, "whitelisted")
            if row is not None and not row["passed"] \
                    and now - row["first_seen"] <= times.retry_window:
                waited = now - row["first_seen"]
                if waited >= times.delay:
                    conn.execute(
                        "UPDATE greylist SET last_seen = ?, passed = 1, attempts = attempts + 1"
                        " WHERE client_net = ? AND sender = ? AND recipient = ?", (now, *key))
                    return GreylistVerdict(True, "retry")
                conn.execute(
                    "UPDATE greylist SET last_seen = ?, attempts = attempts + 1"
                    " WHERE client_net = ? AND sender = ? AND recipient = ?", (now, *key))
                return GreylistVerdict(False, "early", _ceil(times.delay - waited))
            # Unknown, or expired (never retried in the window, or passed too long ago).
            self._upsert(conn, key, now, now, passed=False)
            return GreylistVerdict(False, "new", _ceil(times.delay))

    @staticmethod
    def _upsert(conn: sqlite3.Connection, key: tuple[str, str, str], first_seen: float,
                last_seen: float, *, passed: bool) -> None:
        conn.execute(
            "INSERT INTO greylist (client_net, sender, recipient, first_seen, last_seen,"
            " passed, attempts) VALUES (?, ?, ?, ?, ?, ?, 1)"
            " ON CONFLICT (client_net, sender, recipient) DO UPDATE SET"
            " first_seen = excluded.first_seen, last_seen = excluded.last_seen,"
            " passed = excluded.passed, attempts = 1",
            (*key, first_seen, last_seen, int(passed)))

    def purge(self, now: float, times: GreylistTimes) -> int:
        """Forget first attempts never retried in the window and passed triplets gone stale."""
        with self.db.transaction() as conn:
            cursor = conn.execute(
                "DELETE FROM greylist WHERE (passed = 0 AND first_seen < ?)"
                " OR (passed = 1 AND last_seen < ?)",
                (now - times.retry_window, now - times.pass_lifetime))
            return cursor.rowcount

    def count(self) -> int:
        return int(self.db.connection().execute("SELECT COUNT(*) FROM greylist").fetchone()[0])


def _ceil(seconds: float) -> int:
    whole = int(seconds)
    return whole + 1 if seconds > whole else max(whole, 0)
