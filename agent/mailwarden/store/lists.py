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

    def remove(self, recipient: str, sender: str) -> bool:
        """True if there was such an entry."""
        with self.db.transaction() as conn:
            cursor = conn.execute("DELETE FROM user_lists WHERE recipient = ? AND sender = ?",
                                  (recipient.lower(), sender.lower()))
            return cursor.rowcount > 0

    def search(self, *, recipient: str | None = None, text: str | None = None,
               kind: ListKind | None = None, limit: int = 100, offset: int = 0,
               ) -> list[dict[str, object]]:
        """Entries by recipient (exact), a piece of the sender or recipient, and kind; by
        recipient, then sender."""
        where: list[str] = []
        args: list[object] = []
        if recipient is not None:
            where.append("recipient = ?")
            args.append(recipient.lower())
        if text:
            escaped = text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            where.append("(sender LIKE ? ESCAPE '\\' OR recipient LIKE ? ESCAPE '\\')")
            args += [f"%{escaped}%", f"%{escaped}%"]
        if kind is not None:
            where.append("kind = ?")
            args.append(kind)
        # Only fixed fragments are joined; every value is a bound parameter.
        sql = "SELECT recipient, sender, kind, created FROM user_lists"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY recipient, sender LIMIT ? OFFSET ?"
        return [dict(r) for r in self.db.connection().execute(sql, (*args, limit, offset))]

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
