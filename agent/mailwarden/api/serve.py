"""`mailwarden api`: gunicorn serving the API over HTTPS (a self-signed certificate is made
on first start when none is installed).

Threaded workers, so that a client which connects and then says nothing cannot take the API
away from everyone else. With gunicorn's sync workers each connection held a whole worker
until the worker timeout: two idle TLS connections (a browser's spare connections, or anyone
who can reach port 8006) blocked the web UI for as long as the longest request may take.

ApiWorker is gunicorn's gthread worker with two changes:
- Every read from, and write to, a client is bounded by READ_TIMEOUT, the TLS handshake
  included: gthread reads a request without any timeout, so a client that completed the
  handshake and then sent nothing (or half a request) kept a thread for ever.
- A connection is handed to the main loop's poller, where waiting costs no thread, whenever
  its client has nothing to say yet: before the handshake and again after it. gthread waits
  5 s in a thread for the first bytes, and after the handshake not at all.
- A connection that ends is closed by the request thread that served it. gthread closes it
  in its main loop, lingering up to 2 s for the client to close too: a client that never
  does (one dropped for its silence, say) stalled accepting and dispatching for everyone.
Idle connections, kept alive or never used, are closed after KEEPALIVE seconds.

A state change waits for the root apply helper (up to its CLIENT_TIMEOUT, 1500 s). gthread's
main thread heartbeats to the arbiter while the request threads work (ThreadWorker.run calls
notify() on every turn of its loop, at least once a second), so HEARTBEAT_TIMEOUT bounds a
stuck worker process, never a request: a long apply completes.
"""

from __future__ import annotations

import errno
import os
import socket
import sys
from typing import Any, NoReturn

from gunicorn import util
from gunicorn.workers import gthread

from .. import secrets
from ..layout import Layout
from ..state.load import load_state_file
from ..store.credentials import CredentialStore
from ..store.db import Database

WORKER_CLASS = "mailwarden.api.serve.ApiWorker"
# Seconds a client may stay silent in the middle of a request (or of the TLS handshake), or
# not read what it is sent, before its connection is dropped.
READ_TIMEOUT = 15
# Seconds an idle connection (before its first request, or between two) is kept.
KEEPALIVE = 10
# Seconds a worker process may miss its heartbeat before the arbiter replaces it.
HEARTBEAT_TIMEOUT = 60
# Seconds a request thread waits for a client's next bytes before handing the connection
# back to the poller.
FIRST_BYTES_WAIT = 0.25
# Open connections per worker; at the limit a worker stops accepting until some close (kept
# well below the process's 1024 file descriptors: accept() failing with EMFILE would stop
# the worker).
WORKER_CONNECTIONS = 256
DEFAULT_WORKERS = 2
DEFAULT_THREADS = 8


class _SilenceEndsRequests:
    """The HTTP parser, where a client's silence past READ_TIMEOUT ends the connection as
    quietly as a client closing it (gthread logs any other socket error with a traceback:
    one per scanner that holds a connection open)."""

    def __init__(self, parser: Any) -> None:
        self._parser = parser

    def __iter__(self) -> _SilenceEndsRequests:
        return self

    def __next__(self) -> Any:
        try:
            return next(self._parser)
        except TimeoutError as exc:
            raise StopIteration(f"client silent for {READ_TIMEOUT} s") from exc

    def __getattr__(self, name: str) -> Any:
        return getattr(self._parser, name)


# gunicorn ships no type information: its classes are Any to mypy, and so are these bases.
class ApiConnection(gthread.TConn):  # type: ignore[misc]
    closed = False
    parser: Any

    def init(self) -> None:
        # ThreadWorker.handle made the socket blocking (no timeout at all) just before this.
        self.sock.settimeout(READ_TIMEOUT)
        if not self.initialized:
            super().init()
            self.parser = _SilenceEndsRequests(self.parser)

    def close(self, graceful: bool = False) -> None:
        # Closed once: by the request thread, then the main loop's close does nothing.
        if self.closed:
            return
        self.closed = True
        try:
            super().close(graceful)
        except OSError:  # gthread may have closed the socket already (a TLS EOF)
            util.close(self.sock)


class ApiWorker(gthread.ThreadWorker):  # type: ignore[misc]
    """gunicorn's gthread worker, bounded reads, no thread spent waiting for a client."""

    def accept(self, listener: Any) -> None:
        # gthread's accept(), making an ApiConnection.
        try:
            client, address = listener.accept()
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                return
            raise
        self.nr_conns += 1
        client.setblocking(True)
        self.enqueue_req(ApiConnection(self.cfg, client, address, listener.getsockname()))

    def handle(self, conn: gthread.TConn) -> Any:
        result = self._handle(conn)
        if result is False:
            conn.close(graceful=True)
        return result

    def _handle(self, conn: gthread.TConn) -> Any:
        if not conn.initialized:
            if not conn.data_ready and not conn.wait_for_data(FIRST_BYTES_WAIT):
                return gthread._DEFER
            if self.cfg.is_ssl:
                try:
                    conn.sock.setblocking(True)
                    conn.init()  # the handshake, within READ_TIMEOUT
                except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
                    self.log.debug("TLS handshake with %s failed: %s", conn.client, exc)
                    return False
                # The request may have come with the handshake's last flight; if not, wait
                # in the poller rather than here.
                if not conn.sock.pending():
                    conn.data_ready = False
                    if not conn.wait_for_data(FIRST_BYTES_WAIT):
                        return gthread._DEFER
        return super().handle(conn)


def _hostname(layout: Layout) -> str:
    """The state's host name; before the first-run wizard there is no state yet, and the
    wizard must be served all the same."""
    if layout.state_file.exists():
        return load_state_file(layout.state_file).system.hostname
    return socket.getfqdn()


def gunicorn_argv(layout: Layout, workers: int = DEFAULT_WORKERS,
                  threads: int = DEFAULT_THREADS) -> list[str]:
    host = "127.0.0.1" if layout.name == "sandbox" else "0.0.0.0"  # noqa: S104 - nftables filters
    return [
        sys.executable, "-m", "gunicorn", "mailwarden.api.wsgi:application",
        "--bind", f"{host}:{layout.ports.api}",
        "--worker-class", WORKER_CLASS,
        "--workers", str(workers),
        "--threads", str(threads),
        "--worker-connections", str(WORKER_CONNECTIONS),
        "--keep-alive", str(KEEPALIVE),
        "--timeout", str(HEARTBEAT_TIMEOUT),
        "--certfile", str(layout.api_certificate),
        "--keyfile", str(layout.api_certificate.with_name("api.key")),
        "--access-logfile", "-",
        "--forwarded-allow-ips", "",
        # gunicorn's runtime control socket (worker counts, reload, shutdown) in the
        # service user's home: systemd manages the service, nothing else needs it.
        "--no-control-socket",
    ]


def _prepare_stores(layout: Layout) -> None:
    """Create and migrate the API's databases here, in one process, before gunicorn forks
    its workers. Left to the workers, two of them made the same new database at once: one
    waited for the other's lock, and on a slow machine busy with its first boot that wait
    ran past SQLite's 30 s, the worker failed to boot and gunicorn stopped the service."""
    Database(layout.database).close()
    CredentialStore.for_layout(layout).db.close()


def run_api(layout: Layout, workers: int = DEFAULT_WORKERS,
            threads: int = DEFAULT_THREADS) -> NoReturn:
    secrets.ensure_self_signed(layout.secrets_dir, "api", _hostname(layout))
    _prepare_stores(layout)
    env = {**os.environ}
    if layout.name == "sandbox":
        env["MAILWARDEN_ROOT"] = str(layout.root)
    # Replace this process with gunicorn.
    os.execve(sys.executable, gunicorn_argv(layout, workers, threads), env)  # noqa: S606
