"""The runtime store on a real SQLite file: quarantine, user lists, tracking."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from mailwarden.errors import NotFound, StoreError
from mailwarden.store.batch import BatchWriter
from mailwarden.store.db import SCHEMA, Database
from mailwarden.store.lists import UserLists
from mailwarden.store.quarantine import Quarantine
from mailwarden.store.tracking import Delivery, MessageRecord, Tracking
from mailwarden.store.tracking import insert as tracking_insert

RAW = b"From: a@sender.test\r\nSubject: hi\r\n\r\nbody\r\n"


@pytest.fixture
def db(tmp_path: Path) -> Database:
    return Database(tmp_path / "mw.db")


@pytest.fixture
def quarantine(db: Database, tmp_path: Path) -> Quarantine:
    return Quarantine(db, tmp_path / "quarantine")


def test_schema_is_versioned_and_reopening_migrates_nothing(tmp_path: Path) -> None:
    Database(tmp_path / "a.db").close()
    again = Database(tmp_path / "a.db")
    assert again.connection().execute("PRAGMA user_version").fetchone()[0] == len(SCHEMA)
    assert again.connection().execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_migrated_store_opens_while_another_process_writes(tmp_path: Path) -> None:
    """The API's workers open the stores at once while others may be writing: opening a
    store already at its schema takes no write lock, so it never waits on someone else's
    (a wait here would end in "database is locked" after the busy timeout)."""
    Database(tmp_path / "mw.db").close()
    writer = sqlite3.connect(tmp_path / "mw.db", isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    try:
        opened = Database(tmp_path / "mw.db")
        assert opened.created_from == len(SCHEMA)
        opened.close()
    finally:
        writer.execute("ROLLBACK")
        writer.close()


def test_put_writes_the_file_before_the_index(quarantine: Quarantine) -> None:
    qid = quarantine.put(RAW, kind="spam", sender="a@sender.test",
                         recipients=["u1@example.test", "u2@example.test"], lifetime_days=7,
                         subject="hi", spam_score=12.5, rule="Quarantine spam")
    entry = quarantine.get(qid)
    assert Path(entry.path).read_bytes() == RAW
    assert Path(entry.path).stat().st_mode & 0o777 == 0o640
    assert entry.recipients == {"u1@example.test": "new", "u2@example.test": "new"}
    assert entry.expires - entry.time == pytest.approx(7 * 86400)
    assert quarantine.raw(qid) == RAW


def test_unknown_kind_and_id_are_refused(quarantine: Quarantine) -> None:
    with pytest.raises(StoreError, match="unknown quarantine kind"):
        quarantine.put(RAW, kind="junk", sender="", recipients=["u@example.test"],
                       lifetime_days=1)
    with pytest.raises(NotFound):
        quarantine.get("nope")


def test_list_filters(quarantine: Quarantine) -> None:
    a = quarantine.put(RAW, kind="spam", sender="a@sender.test", recipients=["u1@example.test"],
                       lifetime_days=7, now=1000)
    b = quarantine.put(RAW, kind="virus", sender="b@sender.test",
                       recipients=["u2@example.test"], lifetime_days=7, now=2000)
    assert [e.id for e in quarantine.list()] == [b, a]  # newest first
    assert [e.id for e in quarantine.list(kind="spam")] == [a]
    assert [e.id for e in quarantine.list(recipient="u2@example.test")] == [b]
    assert [e.id for e in quarantine.list(sender="a@sender.test")] == [a]
    assert [e.id for e in quarantine.list(limit=1, offset=1)] == [a]


def test_release_delivers_exactly_once_even_when_racing(quarantine: Quarantine) -> None:
    qid = quarantine.put(RAW, kind="spam", sender="a@sender.test",
                         recipients=["u1@example.test", "u2@example.test"], lifetime_days=7)
    delivered: list[list[str]] = []
    barrier = threading.Barrier(4)

    def deliver(raw: bytes, sender: str, rcpts: list[str]) -> None:
        assert raw == RAW and sender == "a@sender.test"
        delivered.append(rcpts)

    def release() -> None:
        barrier.wait()
        quarantine.release(qid, deliver)

    threads = [threading.Thread(target=release) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r for batch in delivered for r in batch) == ["u1@example.test",
                                                               "u2@example.test"]
    assert set(quarantine.get(qid).recipients.values()) == {"released"}
    assert quarantine.release(qid, deliver) == []  # nothing left to release


def test_failed_release_can_be_retried(quarantine: Quarantine) -> None:
    qid = quarantine.put(RAW, kind="spam", sender="", recipients=["u@example.test"],
                         lifetime_days=7)

    def broken(raw: bytes, sender: str, rcpts: list[str]) -> None:
        raise OSError("postfix is down")

    with pytest.raises(OSError):
        quarantine.release(qid, broken)
    assert quarantine.get(qid).recipients == {"u@example.test": "new"}
    assert quarantine.release(qid, lambda *a: None) == ["u@example.test"]


def test_release_to_a_stranger_is_refused(quarantine: Quarantine) -> None:
    qid = quarantine.put(RAW, kind="spam", sender="", recipients=["u@example.test"],
                         lifetime_days=7)
    with pytest.raises(StoreError, match="not a recipient"):
        quarantine.release(qid, lambda *a: None, ["evil@example.test"])


def test_delete_removes_the_file_when_nobody_waits(quarantine: Quarantine) -> None:
    qid = quarantine.put(RAW, kind="spam", sender="",
                         recipients=["u1@example.test", "u2@example.test"], lifetime_days=7)
    path = Path(quarantine.get(qid).path)
    quarantine.delete(qid, ["u1@example.test"])
    assert path.exists()
    quarantine.delete(qid, ["u2@example.test"])
    assert not path.exists()


def test_expire(quarantine: Quarantine) -> None:
    old = quarantine.put(RAW, kind="spam", sender="", recipients=["u@example.test"],
                         lifetime_days=1, now=0)
    new = quarantine.put(RAW, kind="spam", sender="", recipients=["u@example.test"],
                         lifetime_days=1, now=10**9)
    path = Path(quarantine.get(old).path)
    assert quarantine.expire(now=10**9) == 1
    assert not path.exists()
    with pytest.raises(NotFound):
        quarantine.get(old)
    assert quarantine.get(new)


def test_user_lists_address_beats_domain(db: Database) -> None:
    lists = UserLists(db)
    lists.set("U@Example.test", "@sender.test", "block")
    lists.set("u@example.test", "friend@sender.test", "allow")
    assert lists.lookup("u@example.test", "friend@SENDER.test") == "allow"
    assert lists.lookup("u@example.test", "other@sender.test") == "block"
    assert lists.lookup("u@example.test", "x@elsewhere.test") is None
    assert lists.lookup("v@example.test", "other@sender.test") is None
    lists.remove("u@example.test", "@sender.test")
    assert lists.lookup("u@example.test", "other@sender.test") is None


def test_tracking_records_and_counts(db: Database) -> None:
    tracking = Tracking(db)
    record = MessageRecord(direction="in", sender="a@sender.test", size=100,
                           deliveries=[Delivery("u@example.test", "accept", "default-accept"),
                                       Delivery("v@example.org", "quarantine", "Spam", "q1")],
                           queue_id="ABC123", spam_score=3.0, spam_symbols={"X": 1.0})
    tracking.record(record, now=3600 * 10)
    tracking.record(record, now=3600 * 10 + 5)
    found = tracking.search(queue_id="ABC123")
    assert len(found) == 2 and found[0]["deliveries"][1]["quarantine_id"] == "q1"
    assert tracking.search(recipient="v@example.org")[0]["sender"] == "a@sender.test"
    rows = db.connection().execute(
        "SELECT domain, messages, spam, bytes FROM counters ORDER BY domain").fetchall()
    assert [tuple(r) for r in rows] == [("example.org", 2, 2, 200), ("example.test", 2, 2, 200)]


def test_list_search_score_dates_and_sort(quarantine: Quarantine) -> None:
    cheap = quarantine.put(RAW, kind="spam", sender="a@sender.test", recipients=["u@x.test"],
                           lifetime_days=7, subject="Cheap 100% pills", spam_score=12.0, now=100)
    loan = quarantine.put(RAW, kind="spam", sender="b@sender.test", recipients=["u@x.test"],
                          lifetime_days=7, subject="Loan offer", spam_score=25.0, now=200)
    assert [e.id for e in quarantine.list(search="100%")] == [cheap]
    assert [e.id for e in quarantine.list(search="_")] == []  # LIKE wildcards are literal
    # Three characters or more go through the trigram index: substrings, any case, either
    # column, and quotes or FTS syntax in the text are just text.
    assert [e.id for e in quarantine.list(search="LOAN OF")] == [loan]
    assert [e.id for e in quarantine.list(search="b@sender")] == [loan]
    assert {e.id for e in quarantine.list(search="sender.test")} == {cheap, loan}
    assert quarantine.list(search='pills" OR "loan') == []
    assert quarantine.list(search="NEAR(a b)") == []
    assert [e.id for e in quarantine.list(min_score=20)] == [loan]
    assert [e.id for e in quarantine.list(since=150)] == [loan]
    assert [e.id for e in quarantine.list(until=150)] == [cheap]
    assert [e.id for e in quarantine.list(sort="score")] == [cheap, loan]
    assert [e.id for e in quarantine.list(sort="-score")] == [loan, cheap]
    with pytest.raises(StoreError, match="cannot sort by"):
        quarantine.list(sort="subject; DROP TABLE quarantine")


def test_batch_writer_writes_batches_in_one_transaction_and_everything_on_close(
        db: Database) -> None:
    writer = BatchWriter(db, interval=0.2)
    record = MessageRecord(direction="in", sender="a@sender.test", size=10,
                           deliveries=[Delivery("u@example.test", "accept")],
                           virus_scan="skipped: plain text")
    for n in range(50):
        writer.submit(lambda conn, n=n: tracking_insert(conn, record, now=3600.0 + n))
    assert writer.flush()
    assert db.connection().execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 50
    assert Tracking(db).search(limit=1)[0]["virus_scan"] == "skipped: plain text"

    def broken(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO no_such_table VALUES (1)")

    # A failing row is dropped alone; the rows batched with it are written.
    writer.submit(broken)
    writer.submit(lambda conn: tracking_insert(conn, record, now=7200.0))
    writer.close()  # and the rows still queued at shutdown are written before it returns
    writer2 = BatchWriter(db, interval=5)
    writer2.submit(lambda conn: tracking_insert(conn, record, now=7300.0))
    writer2.close()
    assert db.connection().execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 52


def test_credentials_move_out_of_the_shared_store_once(tmp_path: Path) -> None:
    """Users, tokens and the audit log of earlier versions: moved into the API's own store on
    its first open (TOTP secrets encrypted on the way), then gone from the shared one."""
    import hashlib

    import pyotp

    from mailwarden.store.credentials import CredentialStore
    from mailwarden.store.users import Audit, Users, hash_password

    shared = Database(tmp_path / "mw.db")
    secret = pyotp.random_base32()
    with shared.transaction() as conn:
        conn.execute("INSERT INTO users (id, username, password_hash, role, totp_secret, created)"
                     " VALUES (7, 'admin', ?, 'admin', ?, 1)", (hash_password("a long password"),
                                                                 secret))
        conn.execute("INSERT INTO api_tokens (name, token_hash, role, user_id, created)"
                     " VALUES ('ci', ?, 'audit', NULL, 1)",
                     (hashlib.sha256(b"mwt_old").hexdigest(),))
        conn.execute("INSERT INTO audit_log (time, actor, action) VALUES (1, 'admin', 'login')")
    store = CredentialStore(tmp_path / "api" / "auth.db", legacy=tmp_path / "mw.db")
    users = Users(store)
    assert [(u.username, u.role, u.totp) for u in users.list()] == [("admin", "admin", True)]
    raw = store.db.connection().execute("SELECT totp_secret FROM users").fetchone()[0]
    assert secret not in raw
    user = users.authenticate("admin", "a long password", pyotp.TOTP(secret).now())
    assert user.username == "admin"
    token = users.token_user("mwt_old")  # an ownerless token now belongs to the admin
    assert token is not None and token.role == "audit"
    assert [t["owner"] for t in users.tokens()] == ["admin"]
    assert any(a["action"] == "login" for a in Audit(store).list())
    tables = {r[0] for r in shared.connection().execute(
        "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert not tables & {"users", "sessions", "api_tokens", "audit_log"}
    assert (tmp_path / "api").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "api" / "auth.db").stat().st_mode & 0o777 == 0o600
    # Opened again, nothing is moved twice.
    again = Users(CredentialStore(tmp_path / "api" / "auth.db", legacy=tmp_path / "mw.db"))
    assert len(again.list()) == 1
