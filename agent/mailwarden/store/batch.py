"""Writes the filter does not wait for, batched: one SQLite transaction per batch, off the
event loop, so the filter's answer never waits on SQLite.

Tracking records, statistics counters and DMARC results are history, not the mail: the
filter answers 250 once the message is reinjected or its quarantine file and index row are
written (those stay synchronous, store/quarantine.py), and hands these rows to a
`BatchWriter`. Its thread writes whatever has queued, at most `interval` seconds after the
first row of a batch arrived, in one transaction, and everything left on `close()`
(the filter's shutdown). A crash of the process loses at most the rows of that last
interval; a failing row is logged and dropped alone, never the batch with it.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable

from .db import Database

log = logging.getLogger("mailwarden.store")

Write = Callable[[sqlite3.Connection], object]
_STOP = object()


class BatchWriter:
    def __init__(self, db: Database, *, interval: float = 0.25, most: int = 1000) -> None:
        self.db = db
        self.interval = interval  # at most this long between a row's arrival and its write
        self.most = most
        self._queue: queue.SimpleQueue[Write | object] = queue.SimpleQueue()
        self._idle = threading.Condition()
        self._pending = 0
        self._thread = threading.Thread(target=self._run, name="mailwarden-batch-writer",
                                        daemon=True)
        self._thread.start()

    def submit(self, write: Write) -> None:
        """Queue one write (a function of the connection, inside the batch's transaction)."""
        with self._idle:
            self._pending += 1
        self._queue.put(write)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything submitted so far is written (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def close(self, timeout: float = 30.0) -> None:
        self._queue.put(_STOP)
        self._thread.join(timeout)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is _STOP:
                break
            batch: list[Write] = [first]  # type: ignore[list-item]
            deadline = time.monotonic() + self.interval
            while len(batch) < self.most:
                left = deadline - time.monotonic()
                try:
                    item = self._queue.get(timeout=left) if left > 0 else \
                        self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True  # write what came before it, then end
                    break
                batch.append(item)  # type: ignore[arg-type]
            self._write(batch)
        # Whatever is left (submitted after the stop): written too, so nothing is lost.
        rest: list[Write] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP:
                rest.append(item)  # type: ignore[arg-type]
        if rest:
            self._write(rest)

    def _write(self, batch: list[Write]) -> None:
        try:
            with self.db.transaction() as conn:
                for write in batch:
                    write(conn)
        except Exception:
            # One bad row must not take the others with it: each alone, failures logged.
            for write in batch:
                try:
                    with self.db.transaction() as conn:
                        write(conn)
                except Exception:
                    log.exception("could not record a row; dropped")
        finally:
            with self._idle:
                self._pending -= len(batch)
                self._idle.notify_all()
