"""Per-user sender allow and block lists, honoured by the rule engine."""

from __future__ import annotations

import time
from typing import Literal

from .db import Database

ListKind = Literal["allow", "block"]


class UserLists:
    def __init__(self, db: Database) -> None:
        self.db = db

    def set(self, recipient: str, sender: str, kind: ListKind) -> None:
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT INTO user_lists (recipient, sender, kind, created) VALUES (?,?,?,?)"
                " ON CONFLICT (recipient, sender) DO UPDATE SET kind = excluded.kind",
                (recipient.lower(), sender.lower(), kind, time.time()))

    def remove(self, recipient: str, sender: str) -> None:
        with self.db.transaction() as conn:
            conn.execute("DELETE FROM user_lists WHERE recipient = ? AND sender = ?",
                         (recipient.lower(), sender.lower()))

    def lookup(self, recipient: str, sender: str) -> ListKind | None:
        """The entry for this sender address, else for its domain ('@domain')."""
        sender = sender.lower()
        domain = "@" + sender.rpartition("@")[2] if "@" in sender else None
        rows = self.db.connection().execute(
            "SELECT sender, kind FROM user_lists WHERE recipient = ? AND sender IN (?, ?)",
            (recipient.lower(), sender, domain or sender)).fetchall()
        by_sender = {r["sender"]: r["kind"] for r in rows}
        kind = by_sender.get(sender) or (by_sender.get(domain) if domain else None)
        return kind

    def entries(self, recipient: str) -> list[tuple[str, str]]:
        return [(r["sender"], r["kind"]) for r in self.db.connection().execute(
            "SELECT sender, kind FROM user_lists WHERE recipient = ? ORDER BY sender",
            (recipient.lower(),))]
