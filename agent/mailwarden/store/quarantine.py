"""The quarantine: message files on disk, indexed in the database.

The file is written and fsynced (and its folder too) before the index row, and both before
the filter answers 250: a crash at any point leaves either nothing (the sender retries) or a
complete message. Release goes through a conditional status change so that a message is
reinjected exactly once even if two admins click at the same moment.
"""

from __future__ import annotations

import builtins
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import NotFound, StoreError
from ..files import write_atomic
from .db import Database, contains

KINDS = ("spam", "virus", "attachment", "blocked")


@dataclass(frozen=True)
class QuarantineEntry:
    id: str
    time: float
    expires: float
    kind: str
    path: str
    size: int
    sender: str
    subject: str | None
    message_id: str | None
    spam_score: float | None
    virus: str | None
    rule: str | None
    recipients: dict[str, str]  # recipient -> status (new, releasing, released, deleted)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Quarantine:
    def __init__(self, db: Database, folder: Path) -> None:
        self.db = db
        self.folder = folder

    def put(
        self, raw: bytes, *, kind: str, sender: str, recipients: Sequence[str],
        lifetime_days: int, subject: str | None = None, message_id: str | None = None,
        spam_score: float | None = None, virus: str | None = None, rule: str | None = None,
        now: float | None = None,
    ) -> str:
        if kind not in KINDS:
            raise StoreError(f"unknown quarantine kind '{kind}'")
        now = time.time() if now is None else now
        entry_id = uuid.uuid4().hex
        day = time.strftime("%Y%m%d", time.gmtime(now))
        folder = self.folder / kind / day
        # Group-writable: on the appliance the API (another user of the agent's group)
        # deletes what the content filter quarantined; the service's umask keeps others out.
        folder.mkdir(parents=True, exist_ok=True, mode=0o770)
        path = folder / f"{entry_id}.eml"
        write_atomic(path, raw, 0o640, durable=True)
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT INTO quarantine (id, time, expires, kind, path, size, sender, subject,"
                " message_id, spam_score, virus, rule) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (entry_id, now, now + lifetime_days * 86400, kind, str(path), len(raw), sender,
                 subject, message_id, spam_score, virus, rule),
            )
            conn.executemany(
                "INSERT INTO quarantine_recipients (quarantine_id, recipient, status, changed)"
                " VALUES (?, ?, 'new', ?)",
                [(entry_id, r, now) for r in dict.fromkeys(recipients)],
            )
        return entry_id

    def get(self, entry_id: str) -> QuarantineEntry:
        conn = self.db.connection()
        row = conn.execute("SELECT * FROM quarantine WHERE id = ?", (entry_id,)).fetchone()
        if row is None:
            raise NotFound(f"no quarantined message '{entry_id}'")
        recipients = {
            r["recipient"]: r["status"]
            for r in conn.execute(
                "SELECT recipient, status FROM quarantine_recipients WHERE quarantine_id = ?"
                " ORDER BY recipient", (entry_id,))
        }
        return QuarantineEntry(recipients=recipients, **dict(row))

    def raw(self, entry_id: str) -> bytes:
        return Path(self.get(entry_id).path).read_bytes()

    def list(
        self, *, kind: str | None = None, recipient: str | Sequence[str] | None = None,
        sender: str | None = None, status: str | None = "new", limit: int = 100,
        offset: int = 0, since: float | None = None, until: float | None = None,
        min_score: float | None = None, max_score: float | None = None,
        search: str | None = None, sort: str = "-time",
    ) -> list[QuarantineEntry]:
        """Newest first by default; sort by time, score, size or sender ('-' for descending)."""
        column = {"time": "q.time", "score": "q.spam_score", "size": "q.size",
                  "sender": "q.sender"}.get(sort.lstrip("-"))
        if column is None:
            raise StoreError(f"cannot sort by '{sort}' (time, score, size, sender)")
        order = f"{column} {'DESC' if sort.startswith('-') else 'ASC'}, q.id"
        where: list[str] = []
        args: list[object] = []
        for clause, value in (("q.time >= ?", since), ("q.time < ?", until),
                              ("q.spam_score >= ?", min_score),
                              ("q.spam_score < ?", max_score)):
            if value is not None:
                where.append(clause)
                args.append(value)
        if search and len(search) >= 3:
            # The trigram index: a quoted phrase matches any substring of subject or sender.
            where.append("q.rowid IN (SELECT rowid FROM quarantine_text"
                         " WHERE quarantine_text MATCH ?)")
            args.append('"' + search.replace('"', '""') + '"')
        elif search:  # too short for trigrams
            where.append("(q.subject LIKE ? ESCAPE '\\' OR q.sender LIKE ? ESCAPE '\\')")
            args += [contains(search)] * 2
        if kind:
            where.append("q.kind = ?")
            args.append(kind)
        if sender:
            where.append("q.sender = ?")
            args.append(sender)
        if recipient:
            # One recipient, or a user's few addresses (their own view): start from those
            # recipients' rows, a few hundred, instead of walking every message newest first
            # looking for theirs.
            chosen = [recipient] if isinstance(recipient, str) else list(recipient)
            source = "quarantine_recipients r JOIN quarantine q ON q.id = r.quarantine_id"
            where.append(f"r.recipient IN ({', '.join('?' * len(chosen))})")
            args.extend(chosen)
            if status:
                where.append("r.status = ?")
                args.append(status)
        else:
            source = "quarantine q"
            if status:
                where.append("EXISTS (SELECT 1 FROM quarantine_recipients r WHERE "
                             "r.quarantine_id = q.id AND r.status = ?)")
                args.append(status)
        # Only fixed fragments are joined; every value is a bound parameter.
        sql = f"SELECT q.id FROM {source}"  # noqa: S608
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY {order} LIMIT ? OFFSET ?"
        ids = [row[0] for row in self.db.connection().execute(sql, (*args, limit, offset))]
        return [self.get(i) for i in ids]

    # builtins.list: in the class body below the list() method, `list` names the method.
    def release(
        self, entry_id: str, deliver: Callable[[bytes, str, builtins.list[str]], None],
        recipients: Sequence[str] | None = None,
    ) -> builtins.list[str]:
        """Reinject to the chosen (default: all waiting) recipients, exactly once each."""
        entry = self.get(entry_id)
        chosen = list(recipients) if recipients else [
            r for r, s in entry.recipients.items() if s == "new"]
        unknown = [r for r in chosen if r not in entry.recipients]
        if unknown:
            raise StoreError(f"not a recipient of this message: {', '.join(unknown)}")
        now = time.time()
        with self.db.transaction() as conn:
            claimed = []
            for recipient in chosen:
                cursor = conn.execute(
                    "UPDATE quarantine_recipients SET status = 'releasing', changed = ?"
                    " WHERE quarantine_id = ? AND recipient = ? AND status = 'new'",
                    (now, entry_id, recipient))
                if cursor.rowcount == 1:
                    claimed.append(recipient)
        if not claimed:
            return []
        try:
            deliver(Path(entry.path).read_bytes(), entry.sender, claimed)
        except BaseException:
            with self.db.transaction() as conn:
                conn.executemany(
                    "UPDATE quarantine_recipients SET status = 'new' WHERE quarantine_id = ?"
                    " AND recipient = ? AND status = 'releasing'",
                    [(entry_id, r) for r in claimed])
            raise
        with self.db.transaction() as conn:
            conn.executemany(
                "UPDATE quarantine_recipients SET status = 'released', changed = ?"
                " WHERE quarantine_id = ? AND recipient = ?",
                [(time.time(), entry_id, r) for r in claimed])
        return claimed

    def delete(self, entry_id: str, recipients: Sequence[str] | None = None) -> None:
        """Mark deleted for the recipients; the file goes when nobody waits for it."""
        entry = self.get(entry_id)
        chosen = list(recipients) if recipients else list(entry.recipients)
        with self.db.transaction() as conn:
            conn.executemany(
                "UPDATE quarantine_recipients SET status = 'deleted', changed = ?"
                " WHERE quarantine_id = ? AND recipient = ? AND status = 'new'",
                [(time.time(), entry_id, r) for r in chosen])
            waiting = conn.execute(
                "SELECT COUNT(*) FROM quarantine_recipients WHERE quarantine_id = ?"
                " AND status IN ('new', 'releasing')", (entry_id,)).fetchone()[0]
        if not waiting:
            Path(entry.path).unlink(missing_ok=True)

    def expire(self, now: float | None = None) -> int:
        """Remove entries past their lifetime (files first, then rows)."""
        now = time.time() if now is None else now
        conn = self.db.connection()
        rows = conn.execute("SELECT id, path FROM quarantine WHERE expires < ?",
                            (now,)).fetchall()
        for row in rows:
            Path(row["path"]).unlink(missing_ok=True)
        with self.db.transaction() as tx:
            tx.executemany("DELETE FROM quarantine WHERE id = ?", [(r["id"],) for r in rows])
        return len(rows)
