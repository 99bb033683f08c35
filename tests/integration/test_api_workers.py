"""The API's gunicorn over real TLS: clients that connect and say nothing, or say half a
request, do not keep a normal request waiting, and a request that outlasts the worker
timeout (a state change waiting for the apply helper) still completes."""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailwarden.api import serve
from mailwarden.layout import free_ports
from mailwarden_dev.instance import Sandbox
from mailwarden_dev.process import Supervised, wait_until

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
# A stall guard, not a measure: "still answers" is shown by the order of events (the answer
# came while the idle connections were held), never by how soon it came.
STALL = 60.0
CONTEXT = ssl.create_default_context()
CONTEXT.check_hostname = False
CONTEXT.verify_mode = ssl.CERT_NONE  # the sandbox's own self-signed certificate


@pytest.fixture(scope="module")
def api(sandbox_root: Path) -> Iterator[Sandbox]:
    """Only the API, started as on the appliance: `mailwarden api` execs gunicorn with
    serve.gunicorn_argv (the default workers and threads)."""
    sandbox = Sandbox(sandbox_root / "workers", api=True)
    sandbox.start(None)
    try:
        yield sandbox
    finally:
        sandbox.stop()


def connect(port: int, timeout: float = 10) -> ssl.SSLSocket:
    """A TLS connection, handshake done, nothing sent."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    return CONTEXT.wrap_socket(raw)


def request(conn: ssl.SSLSocket | socket.socket, path: str, timeout: float) -> bytes:
    """One HTTP/1.1 GET on conn; the whole answer (the server closes after it)."""
    conn.settimeout(timeout)
    conn.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
                 .encode())
    chunks = []
    while chunk := conn.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def fresh_request(port: int, path: str, timeout: float) -> tuple[bytes, float]:
    started = time.monotonic()
    try:
        with connect(port, timeout) as conn:
            return request(conn, path, timeout), time.monotonic() - started
    except (TimeoutError, OSError) as exc:
        return f"no answer: {exc!r}".encode(), time.monotonic() - started


def held(conn: ssl.SSLSocket) -> bool:
    """Whether the server still holds conn: nothing to read, not even the end of it. (Not
    select(): TLS 1.3 session tickets make the socket readable with nothing for us.)"""
    timeout = conn.gettimeout()
    conn.setblocking(False)
    try:
        conn.recv(1)
    except ssl.SSLWantReadError:
        return True
    except (ConnectionError, ssl.SSLError):
        return False
    finally:
        conn.settimeout(timeout)
    return False  # the end of the stream, or an answer


def closed_by_server(conn: socket.socket, deadline: float) -> bool:
    """Whether the server closes conn before deadline (monotonic)."""
    try:
        conn.settimeout(max(deadline - time.monotonic(), 0.1))
        return conn.recv(1) == b""
    except (ConnectionError, ssl.SSLError):
        return True
    except TimeoutError:
        return False


def test_idle_and_slow_clients_do_not_starve_the_api(api: Sandbox) -> None:
    port = api.layout.ports.api
    threads = serve.DEFAULT_WORKERS * serve.DEFAULT_THREADS
    # More idle TLS connections than there are request threads (the old API had two sync
    # workers: two of these held it for the whole worker timeout, 16 minutes).
    idle = [connect(port) for _ in range(threads + 4)]
    silent_tcp = [socket.create_connection(("127.0.0.1", port)) for _ in range(4)]
    half = []
    for _ in range(4):
        conn = connect(port)
        conn.sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and no more
        half.append(conn)
    opened = time.monotonic()
    try:
        time.sleep(0.5)
        for _ in range(5):
            answer, _ = fresh_request(port, "/api/health", STALL)
            assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
            # Answered while more idle connections than request threads were held: they
            # did not take the threads (the server lets them go only after KEEPALIVE).
            assert all(held(c) for c in idle), "answered only once idle clients were let go"
        # An idle connection is still a connection: a request on it later is answered.
        answer = request(idle[0], "/api/setup", STALL)
        assert answer.startswith(b"HTTP/1.1 200") and b'"needed"' in answer, answer[:200]
        # The server lets go of the rest by itself: idle ones after the keep-alive time,
        # half a request after the read timeout.
        deadline = opened + serve.KEEPALIVE + serve.READ_TIMEOUT + 5
        lingering = [c for c in [*idle[1:], *silent_tcp, *half]
                     if not closed_by_server(c, deadline)]
        assert lingering == [], f"{len(lingering)} connections still open"
        answer, _ = fresh_request(port, "/api/health", STALL)
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    finally:
        for conn in [*idle, *silent_tcp, *half]:
            conn.close()
    api.daemons["api"].check_alive()


def _gunicorn(api: Sandbox, name: str, worker_class: str, workers: int, threads: int,
              timeout: int) -> tuple[Supervised, int]:
    """serve.gunicorn_argv with the slow test application, and the worker class and
    heartbeat timeout given, on a port of its own."""
    [port] = free_ports(1)
    argv = serve.gunicorn_argv(api.layout, workers=workers, threads=threads)
    argv[argv.index("mailwarden.api.wsgi:application")] = \
        "tests.integration.slow_wsgi:application"
    for option, value in (("--bind", f"127.0.0.1:{port}"), ("--timeout", str(timeout)),
                          ("--worker-class", worker_class)):
        argv[argv.index(option) + 1] = value
    daemon = Supervised(name, [*argv, "--chdir", str(REPO)], api.root / "logs" / f"{name}.out")
    daemon.start()

    def listening() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            return False

    wait_until(name, listening, 30, daemon.check_alive)
    return daemon, port


def test_a_request_outlasts_the_worker_timeout(api: Sandbox) -> None:
    daemon, port = _gunicorn(api, "gunicorn-long", serve.WORKER_CLASS, workers=1, threads=2,
                             timeout=2)
    try:
        started = time.monotonic()
        with connect(port) as slow:
            slow.settimeout(30)
            slow.sendall(b"GET /slow?seconds=7 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            # Meanwhile the other thread answers: while the slow answer is still to come.
            answer, _ = fresh_request(port, "/", STALL)
            assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
            assert held(slow), "answered only after the slow request was done"
            body = b""
            while chunk := slow.recv(65536):
                body += chunk
        assert body.startswith(b"HTTP/1.1 200") and body.endswith(b"done\n"), body[:200]
        assert time.monotonic() - started >= 7  # more than three heartbeat timeouts
        assert b"WORKER TIMEOUT" not in (api.root / "logs" / "gunicorn-long.out").read_bytes()
    finally:
        daemon.stop()


def test_sync_workers_were_starved_by_idle_connections(api: Sandbox) -> None:
    """The model this replaced, for contrast: two sync workers, two idle TLS connections,
    and nobody else is answered until the worker timeout (5 s here) kills the workers."""
    daemon, port = _gunicorn(api, "gunicorn-sync", "sync", workers=2, threads=1, timeout=5)
    try:
        idle = [connect(port) for _ in range(2)]
        time.sleep(0.5)
        answer, _ = fresh_request(port, "/", 1.5)
        assert not answer.startswith(b"HTTP/1.1 200"), "sync workers answered"
        for conn in idle:
            conn.close()
    finally:
        daemon.stop()
