"""Per-user sender allow and block lists, honoured by the rule engine."""

from __future__ import annotations

import time
from typing import Literal

from .db import Database, contains

ListKind = Literal["allow", "block"]


def _sender_keys(sender: str) -> tuple[str, str | None]:
    """The address and its '@domain', the two keys an entry may have."""
    sender = sender.lower()
    return sender, ("@" + sender.rpartition("@")[2] if "@" in sender else None)


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
            where.append("(sender LIKE ? ESCAPE '\\' OR recipient LIKE ? ESCAPE '\\')")
            args += [contains(text.lower())] * 2
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
        address, domain = _sender_keys(sender)
        rows = self.db.connection().execute(
            "SELECT sender, kind FROM user_lists WHERE recipient = ? AND sender IN (?, ?)",
            (recipient.lower(), address, domain or address)).fetchall()
        return _first_of({r["sender"]: r["kind"] for r in rows}, address, domain)

    def entries(self, recipient: str) -> list[tuple[str, str]]:
        return [(r["sender"], r["kind"]) for r in self.db.connection().execute(
            "SELECT sender, kind FROM user_lists WHERE recipient = ? ORDER BY sender",
            (recipient.lower(),))]


def _first_of(found: dict[str, ListKind], address: str, domain: str | None) -> ListKind | None:
    """The address's own entry beats its domain's."""
    return found.get(address) or (found.get(domain) if domain else None)


class GlobalLists:
    """Sender allow and block lists for every recipient, kept by the administrators. Data,
    not configuration (like UserLists): a change takes effect with the next message, without
    an apply, and the rule engine consults them only where a recipient's own list says
    nothing about the sender."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def set(self, sender: str, kind: ListKind, added_by: str) -> ListKind | None:
        """The entry's kind before (None: it is new)."""
        with self.db.transaction() as conn:
            before = conn.execute("SELECT kind FROM global_lists WHERE sender = ?",
                                  (sender.lower(),)).fetchone()
            conn.execute(
                "INSERT INTO global_lists (sender, kind, created, added_by) VALUES (?,?,?,?)"
                " ON CONFLICT (sender) DO UPDATE SET kind = excluded.kind,"
                " created = excluded.created, added_by = excluded.added_by",
                (sender.lower(), kind, time.time(), added_by))
            return before["kind"] if before is not None else None

    def remove(self, sender: str) -> ListKind | None:
        """The kind of the entry taken off (None: there was none)."""
        with self.db.transaction() as conn:
            row = conn.execute("DELETE FROM global_lists WHERE sender = ? RETURNING kind",
                               (sender.lower(),)).fetchone()
            return row["kind"] if row is not None else None

    def search(self, *, text: str | None = None, kind: ListKind | None = None,
               limit: int = 100, offset: int = 0) -> list[dict[str, object]]:
        """Entries by a piece of the sender and kind, by sender."""
        where: list[str] = []
        args: list[object] = []
        if text:
            where.append("sender LIKE ? ESCAPE '\\'")
            args.append(contains(text.lower()))
        if kind is not None:
            where.append("kind = ?")
            args.append(kind)
        # Only fixed fragments are joined; every value is a bound parameter.
        sql = "SELECT sender, kind, created, added_by FROM global_lists"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY sender LIMIT ? OFFSET ?"
        return [dict(r) for r in self.db.connection().execute(sql, (*args, limit, offset))]

    def lookup(self, sender: str) -> ListKind | None:
        """The entry for this sender address, else for its domain ('@domain'): two keys of
        the primary key, however long the list."""
        address, domain = _sender_keys(sender)
        rows = self.db.connection().execute(
            "SELECT sender, kind FROM global_lists WHERE sender IN (?, ?)",
            (address, domain or address)).fetchall()
        return _first_of({r["sender"]: r["kind"] for r in rows}, address, domain)
