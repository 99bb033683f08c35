"""A stand-in for Rspamd's controller worker on loopback, answering learning and /stat as
Rspamd 3.4 does: 200 {"success": true} once per message and class, 208 for a message
already learned as that class, 204 for one with too few words, {"error"} otherwise; /stat
with a BAYES_SPAM and a BAYES_HAM statfile whose revision counts what was learned.

The unit tier has no Rspamd; the integration tier holds the client to the real one
(tests/integration/test_learning.py)."""

from __future__ import annotations

import hashlib
import json
import re
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
            if self.path != "/stat":
                self._send(404, {"error": "Unknown command"})
                return
            counts = fake.counts()
            self._send(200, {"read_only": False, "learned": sum(counts.values()),
                             "statfiles": [
                                 {"symbol": "BAYES_SPAM", "type": "redis",
                                  "revision": counts["spam"], "users": 1},
                                 {"symbol": "BAYES_HAM", "type": "redis",
                                  "revision": counts["ham"], "users": 1}]})

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            fake.requests.append(f"POST {self.path}")
            kind = self.path.removeprefix("/learn")
            if kind not in ("spam", "ham"):
                self._send(404, {"error": "Unknown command"})
                return
            words = re.split(rb"\r?\n\r?\n", body, maxsplit=1)[-1].split()
            if len(words) < MIN_WORDS:
                self._send(204, {"error": f"<msg> contains less tokens than required for "
                                          f"bayes classifier: {len(words)} < {MIN_WORDS}"})
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


@contextmanager
def fake_controller(port: int = 0) -> Iterator[tuple[FakeController, int]]:
    fake = FakeController()
    server = ThreadingHTTPServer(("127.0.0.1", port), _handler(fake))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake, server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def message(subject: str, words: int = 40) -> bytes:
    """A message with enough words to learn (or not, with few)."""
    text = " ".join(f"word{i} offer cheap" for i in range(words // 3 + 1))
    return (f"From: seller@bad.example\r\nTo: user@example.test\r\nSubject: {subject}\r\n"
            f"Message-ID: <{subject}@bad.example>\r\n\r\n{text}\r\n").encode()
