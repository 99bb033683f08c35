"""A stand-in for Rspamd's controller worker on loopback, answering learning as Rspamd 3.4
does: 200 {"success": true} once per message and class, 208 for a message already learned
as that class, 204 with no body for one with too few words, {"error"} otherwise; and for
the Redis it learns into, the one command the agent sends (HMGET RS learns_spam learns_ham).

The unit tier has no Rspamd; the integration tier holds the client to the real one
(tests/integration/test_learning.py)."""

from __future__ import annotations

import hashlib
import json
import re
import socketserver
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MIN_WORDS = 11


class FakeController:
    def __init__(self) -> None:
        self.learned: dict[str, str] = {}  # digest -> class
        self.requests: list[str] = []
        self.lock = threading.Lock()

    def counts(self) -> dict[str, int]:
        values = list(self.learned.values())
        return {"spam": values.count("spam"), "ham": values.count("ham")}


def _handler(fake: FakeController) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def _send(self, status: int, answer: dict[str, object]) -> None:
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            fake.requests.append(f"GET {self.path}")
            self._send(404, {"error": "Unknown command"})

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            fake.requests.append(f"POST {self.path}")
            kind = self.path.removeprefix("/learn")
            if kind not in ("spam", "ham"):
                self._send(404, {"error": "Unknown command"})
                return
            words = re.split(rb"\r?\n\r?\n", body, maxsplit=1)[-1].split()
            if len(words) < MIN_WORDS:
                self.send_response(204)
                self.end_headers()
                return
            digest = hashlib.sha256(body).hexdigest()
            with fake.lock:
                if fake.learned.get(digest) == kind:
                    self._send(208, {"error": f"<msg> has been already learned as {kind}, "
                                              "ignore it"})
                    return
                fake.learned[digest] = kind
            self._send(200, {"success": True})

    return Handler


def _redis(fake: FakeController) -> type[socketserver.StreamRequestHandler]:
    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            count = int(self.rfile.readline()[1:])
            parts = []
            for _ in range(count):
                size = int(self.rfile.readline()[1:])
                parts.append(self.rfile.read(size + 2)[:-2])
            fake.requests.append("REDIS " + b" ".join(parts).decode())
            if parts != [b"HMGET", b"RS", b"learns_spam", b"learns_ham"]:
                self.wfile.write(b"-ERR not what the agent asks\r\n")
                return
            counts = fake.counts()
            # A class never learned has no field: nil, as Redis answers.
            values = [str(counts[k]).encode() if counts[k] else None for k in ("spam", "ham")]
            self.wfile.write(b"*2\r\n" + b"".join(
                b"$-1\r\n" if v is None else b"$%d\r\n%s\r\n" % (len(v), v) for v in values))

    return Handler


@contextmanager
def fake_controller(port: int = 0, redis_port: int = 0,
                    ) -> Iterator[tuple[FakeController, int, int]]:
    """The controller on port and Redis on redis_port (0: any free one)."""
    fake = FakeController()
    controller = ThreadingHTTPServer(("127.0.0.1", port), _handler(fake))
    redis = socketserver.ThreadingTCPServer(("127.0.0.1", redis_port), _redis(fake))
    threads = [threading.Thread(target=s.serve_forever, daemon=True)
               for s in (controller, redis)]
    for thread in threads:
        thread.start()
    try:
        yield fake, controller.server_address[1], redis.server_address[1]
    finally:
        for server in (controller, redis):
            server.shutdown()
            server.server_close()
        for thread in threads:
            thread.join()


def message(subject: str, words: int = 40) -> bytes:
    """A message with enough words to learn (or not, with few)."""
    text = " ".join(f"word{i} offer cheap" for i in range(words // 3 + 1))
    return (f"From: seller@bad.example\r\nTo: user@example.test\r\nSubject: {subject}\r\n"
            f"Message-ID: <{subject}@bad.example>\r\n\r\n{text}\r\n").encode()
