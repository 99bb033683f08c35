"""The SQLite databases: connection settings, schemas and their migrations.

WAL mode so the API reads while the filter writes; one connection per thread; every
statement parameterised. The schema version is SQLite's user_version.

Two stores use this: the mail path's shared store (SCHEMA, written by every agent daemon)
and the API's private credentials store (store/credentials.py, its own schema).
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SCHEMA: list[str] = [
    # version 1
    """
    CREATE TABLE messages (
        id INTEGER PRIMARY KEY,
        time REAL NOT NULL,
        direction TEXT NOT NULL,
        queue_id TEXT,
        message_id TEXT,
        sender TEXT NOT NULL,
        client_ip TEXT,
        helo TEXT,
        subject TEXT,
        size INTEGER NOT NULL,
        spam_score REAL,
        spam_symbols TEXT,
        virus TEXT,
        spf TEXT,
        dkim TEXT,
        dmarc TEXT,
        filter_ms REAL
    );
    CREATE INDEX messages_time ON messages(time);
    CREATE INDEX messages_sender ON messages(sender);
    CREATE INDEX messages_queue_id ON messages(queue_id);
    CREATE TABLE deliveries (
        message INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
        recipient TEXT NOT NULL,
        action TEXT NOT NULL,
        rule TEXT,
        quarantine_id TEXT
    );
    CREATE INDEX deliveries_message ON deliveries(message);
    CREATE INDEX deliveries_recipient ON deliveries(recipient);
    CREATE TABLE quarantine (
        id TEXT PRIMARY KEY,
        time REAL NOT NULL,
        expires REAL NOT NULL,
        kind TEXT NOT NULL,
        path TEXT NOT NULL,
        size INTEGER NOT NULL,
        sender TEXT NOT NULL,
        subject TEXT,
        message_id TEXT,
        spam_score REAL,
        virus TEXT,
        rule TEXT
    );
    CREATE INDEX quarantine_time ON quarantine(time);
    CREATE INDEX quarantine_kind_time ON quarantine(kind, time);
    CREATE TABLE quarantine_recipients (
        quarantine_id TEXT NOT NULL REFERENCES quarantine(id) ON DELETE CASCADE,
        recipient TEXT NOT NULL,
        status TEXT NOT NULL DEFAULT 'new',
        changed REAL,
        PRIMARY KEY (quarantine_id, recipient)
    );
    CREATE INDEX quarantine_recipients_recipient ON quarantine_recipients(recipient);
    CREATE TABLE user_lists (
        recipient TEXT NOT NULL,
        sender TEXT NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('allow', 'block')),
        created REAL NOT NULL,
        PRIMARY KEY (recipient, sender)
    );
    CREATE TABLE greylist (
        client_net TEXT NOT NULL,
        sender TEXT NOT NULL,
        recipient TEXT NOT NULL,
        first_seen REAL NOT NULL,
        last_seen REAL NOT NULL,
        passed INTEGER NOT NULL DEFAULT 0,
        attempts INTEGER NOT NULL DEFAULT 1,
        PRIMARY KEY (client_net, sender, recipient)
    );
    CREATE TABLE dmarc_results (
        id INTEGER PRIMARY KEY,
        time REAL NOT NULL,
        header_from TEXT NOT NULL,
        source_ip TEXT,
        spf_domain TEXT,
        spf_result TEXT,
        spf_aligned INTEGER NOT NULL,
        dkim_domains TEXT,
        dkim_result TEXT,
        dkim_aligned INTEGER NOT NULL,
        policy TEXT,
        result TEXT NOT NULL,
        disposition TEXT NOT NULL
    );
    CREATE INDEX dmarc_results_from_time ON dmarc_results(header_from, time);
    CREATE TABLE counters (
        hour INTEGER NOT NULL,
        domain TEXT NOT NULL,
        direction TEXT NOT NULL,
        messages INTEGER NOT NULL DEFAULT 0,
        spam INTEGER NOT NULL DEFAULT 0,
        virus INTEGER NOT NULL DEFAULT 0,
        bytes INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (hour, domain, direction)
    );
    """,
    # version 2: people and machines that use the API. These tables are no longer used here:
    # the API moves their rows into its own credentials store (store/credentials.py) and drops
    # them, since every daemon that writes this store could otherwise mint logins.
    """
    CREATE TABLE users (
        id INTEGER PRIMARY KEY,
        username TEXT NOT NULL UNIQUE,
        password_hash TEXT NOT NULL,
        role TEXT NOT NULL,
        totp_secret TEXT,
        created REAL NOT NULL,
        failed_logins INTEGER NOT NULL DEFAULT 0,
        locked_until REAL NOT NULL DEFAULT 0
    );
    CREATE TABLE sessions (
        token_hash TEXT PRIMARY KEY,
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        csrf_token TEXT NOT NULL,
        created REAL NOT NULL,
        expires REAL NOT NULL
    );
    CREATE TABLE api_tokens (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        token_hash TEXT NOT NULL UNIQUE,
        role TEXT NOT NULL,
        user_id INTEGER REFERENCES users(id) ON DELETE CASCADE,
        created REAL NOT NULL,
        last_used REAL,
        revoked REAL
    );
    CREATE TABLE audit_log (
        id INTEGER PRIMARY KEY,
        time REAL NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT,
        detail TEXT,
        source_ip TEXT
    );
    CREATE INDEX audit_log_time ON audit_log(time);
    """,
    # version 3: the quarantine's other sort orders and the sender filter, which otherwise
    # scan every row (2 s over a million messages: bench/results/controlplane.md)
    """
    CREATE INDEX quarantine_score ON quarantine(spam_score);
    CREATE INDEX quarantine_size ON quarantine(size);
    CREATE INDEX quarantine_sender ON quarantine(sender);
    """,
    # version 4: searching subjects and senders by substring without reading every row
    # (a trigram index answers LIKE '%text%' questions; 1.7 s -> milliseconds at 1M rows)
    """
    CREATE VIRTUAL TABLE quarantine_text USING fts5(
        subject, sender, content='quarantine', content_rowid='rowid', tokenize='trigram');
    CREATE TRIGGER quarantine_text_insert AFTER INSERT ON quarantine BEGIN
        INSERT INTO quarantine_text(rowid, subject, sender)
        VALUES (new.rowid, new.subject, new.sender);
    END;
    CREATE TRIGGER quarantine_text_delete AFTER DELETE ON quarantine BEGIN
        INSERT INTO quarantine_text(quarantine_text, rowid, subject, sender)
        VALUES ('delete', old.rowid, old.subject, old.sender);
    END;
    CREATE TRIGGER quarantine_text_update AFTER UPDATE OF subject, sender ON quarantine BEGIN
        INSERT INTO quarantine_text(quarantine_text, rowid, subject, sender)
        VALUES ('delete', old.rowid, old.subject, old.sender);
        INSERT INTO quarantine_text(rowid, subject, sender)
        VALUES (new.rowid, new.subject, new.sender);
    END;
    INSERT INTO quarantine_text(quarantine_text) VALUES ('rebuild');
    """,
    # version 5: whether clamd saw the message ("clamd"), or why not
    # ("skipped: plain text", "skipped: disabled", "skipped: failed"); NULL before it.
    """
    ALTER TABLE messages ADD COLUMN virus_scan TEXT;
    """,
    # version 6: each recipient's last quarantine digest (mail/digest.py): when it went out
    # and up to when quarantined mail was in it
    """
    CREATE TABLE digests (
        recipient TEXT PRIMARY KEY,
        sent REAL NOT NULL,
        cutoff REAL NOT NULL
    );
    """,
    # version 7: notifications to the administrators (mail/notify.py): the daily report's
    # last sending, and each service alert's condition while it lasts, so that one condition
    # is mailed once and not at every run
    """
    CREATE TABLE notices (
        key TEXT PRIMARY KEY,
        sent REAL NOT NULL,
        detail TEXT NOT NULL
    );
    """,
    # version 8: sender allow and block lists for every recipient (store/lists.py
    # GlobalLists). The mail path looks a sender up by its key, never by scanning the list.
    """
    CREATE TABLE global_lists (
        sender TEXT PRIMARY KEY,
        kind TEXT NOT NULL CHECK (kind IN ('allow', 'block')),
        created REAL NOT NULL,
        added_by TEXT NOT NULL
    );
    """,
]


def contains(text: str) -> str:
    """A LIKE pattern (with ESCAPE '\\') matching any value that holds text as it is: its
    own % and _ are not wildcards."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _statements(script: str) -> Iterator[str]:
    """One statement at a time (a trigger's body holds semicolons of its own); executescript
    would commit the migration's transaction half way."""
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            yield buffer.strip()
            buffer = ""
    if buffer.strip():
        raise ValueError(f"incomplete SQL statement in the schema: {buffer.strip()[:60]}")


class Database:
    """One SQLite file; a connection per thread; schema migrated on open.

    private: the file is made 0600 before SQLite opens it (SQLite gives its -wal and -shm
    files the main file's mode) and a missing folder 0700, for a store only its owner reads.
    """

    def __init__(self, path: Path, schema: list[str] = SCHEMA, *, private: bool = False) -> None:
        self.path = path
        self.schema = schema
        self._local = threading.local()
        if private:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                os.fchmod(fd, 0o600)
            finally:
                os.close(fd)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
        # A store already at this schema is opened without a write lock: the API's workers
        # open theirs at once, and one of them waiting on another's lock while a slow machine
        # is busy could run past the busy timeout and fail to start.
        self.created_from = self.connection().execute("PRAGMA user_version").fetchone()[0]
        if self.created_from < len(self.schema):
            with self.transaction() as conn:
                self.created_from = conn.execute("PRAGMA user_version").fetchone()[0]
                self._migrate(conn)

    def connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=30000")
            self._local.conn = conn
        return conn

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self.connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _migrate(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        for number, script in enumerate(self.schema[version:], start=version + 1):
            for statement in _statements(script):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number}")

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
