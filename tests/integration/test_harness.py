"""The daemon harness: every daemon from the sandbox render, mail relayed, nothing left."""

from __future__ import annotations

import json
import socket
import subprocess
import urllib.request
from pathlib import Path

import dns.message
import dns.query
import dns.rdatatype
import pytest

from mailwarden.control import health
from mailwarden_dev.instance import EICAR, Sandbox

from .conftest import SendMail, state_for

pytestmark = pytest.mark.integration


def test_every_daemon_answers(gateway: Sandbox) -> None:
    for service in gateway.services:
        health.PROBES[service](gateway.layout)  # raises if it does not answer


def test_endpoints_written(gateway: Sandbox) -> None:
    endpoints = json.loads((gateway.root / "endpoints.json").read_text())
    assert endpoints["smtp"] == f"127.0.0.1:{gateway.layout.ports.smtp}"
    assert endpoints["sink_folder"] == str(gateway.sink.folder)


def test_mail_is_relayed_to_the_sink(gateway: Sandbox, send_mail: SendMail) -> None:
    before = len(gateway.sink.messages())
    marker = send_mail(gateway.layout.ports.smtp)
    messages = gateway.sink.wait_for(before + 1)
    assert any(marker.encode() in m for m in messages)
    relayed = next(m for m in messages if marker.encode() in m)
    # Postfix itself relayed it: its Received header names our sandbox host.
    assert b"by mx.example.test (Postfix)" in relayed


def test_resolver_answers_from_the_test_zones(gateway: Sandbox) -> None:
    query = dns.message.make_query("sender.test.", dns.rdatatype.TXT)
    answer = dns.query.udp(query, "127.0.0.1", port=gateway.layout.ports.dns, timeout=5)
    texts = [b"".join(r.strings) for rrset in answer.answer for r in rrset]
    assert b"v=spf1 ip4:192.0.2.0/24 -all" in texts


def _clamd_instream(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"zINSTREAM\0" + len(data).to_bytes(4, "big") + data + b"\0\0\0\0")
        return sock.recv(4096)


def test_clamd_uses_the_test_signatures(gateway: Sandbox) -> None:
    assert b"Eicar-Test" in _clamd_instream(gateway.layout.ports.clamd, EICAR)
    assert _clamd_instream(gateway.layout.ports.clamd, b"just text").endswith(b"OK\0")


def test_rspamd_scans_with_our_config(gateway: Sandbox) -> None:
    gtube = (b"Subject: test\r\n\r\n"
             b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X\r\n")
    request = urllib.request.Request(
        f"http://127.0.0.1:{gateway.layout.ports.rspamd_normal}/checkv2", data=gtube,
        method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - loopback
        result = json.loads(response.read())
    assert "GTUBE" in result["symbols"]
    assert result["score"] >= 15


def _processes_under(root: Path) -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid,stat,args"], capture_output=True, text=True,
                         check=True).stdout
    return [line for line in out.splitlines() if str(root) in line and " Z" not in line]


def test_stop_leaves_nothing_running(sandbox_root: Path) -> None:
    sandbox = Sandbox(sandbox_root / "short-lived")
    sandbox.start(state_for(sandbox))
    assert _processes_under(sandbox.root), "the daemons should show the sandbox in their args"
    sandbox.stop()
    assert _processes_under(sandbox.root) == []
    for port in (sandbox.layout.ports.smtp, sandbox.layout.ports.redis, sandbox.dns.port):
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
