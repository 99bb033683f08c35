"""Reinjection over kept connections: every message arrives exactly once, also when Postfix
has dropped the connection the filter kept (real Postfix, real sink)."""

from __future__ import annotations

import socket
import uuid

from mailwarden.mail.reinject import Reinjector
from mailwarden_dev.instance import Sandbox


def _message(marker: str) -> bytes:
    return (f"From: a@sender.test\r\nTo: user@example.test\r\nSubject: {marker}\r\n"
            f"Message-ID: <{marker}@test>\r\n\r\nbody {marker}\r\n").encode()


def test_kept_connection_is_reused_and_replaced_when_dropped(gateway: Sandbox) -> None:
    reinjector = Reinjector(port=gateway.layout.ports.reinject, hostname="mx.example.test")
    first, second, third = (f"reuse-{uuid.uuid4().hex}" for _ in range(3))
    reinjector.send(_message(first), "a@sender.test", ["user@example.test"])
    kept = reinjector._local.conn[0]
    reinjector.send(_message(second), "a@sender.test", ["user@example.test"])
    assert reinjector._local.conn[0] is kept  # the same SMTP session carried both
    # The server side goes away (as after smtpd_timeout): the next message must still be
    # delivered, once, on a new connection.
    kept.sock.shutdown(socket.SHUT_RDWR)
    reinjector.send(_message(third), "a@sender.test", ["user@example.test"])
    assert reinjector._local.conn[0] is not kept
    for marker in (first, second, third):
        assert len(gateway.sink.wait_for_marker(marker)) == 1
