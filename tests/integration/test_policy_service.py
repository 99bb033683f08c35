"""The policy service, DKIM and DMARC against real DNS: NSD serving test zones, the sandbox's
Unbound in front of it, and the policy protocol spoken over TCP to the real server."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.resolver
import pytest

from mailwarden.layout import LAYOUT_FILE, free_ports
from mailwarden.mail import dkim, dmarc
from mailwarden.mail.policy import (
    format_request,
    make_spf_check,
    start_policy_server,
)
from mailwarden.mail.receivedspf import parse_received_spf
from mailwarden.mail.resolver import make_resolver, resolver_at
from mailwarden.state.load import load_state_text
from mailwarden.state.schema import State
from mailwarden.store import dmarc as dmarc_store
from mailwarden.store.db import Database
from mailwarden_dev.instance import Sandbox
from mailwarden_dev.process import wait_until
from mailwarden_dev.testdns import Zone

from .conftest import state_for

pytestmark = pytest.mark.integration

GREY_DELAY = 2  # seconds: the smallest the schema allows but one, so the test stays short
POLICY_STATE = f"""\
greylisting:
  delay_seconds: {GREY_DELAY}
  exempt_networks: [192.0.2.25/32, 198.51.100.0/24]
dkim:
  dmarc: enforce
"""


class ThreadServer:
    """The real asyncio policy server on the layout's policy port, in its own loop."""

    def __init__(self, state: State, sandbox: Sandbox, db: Database) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        future = asyncio.run_coroutine_threadsafe(
            start_policy_server(state, sandbox.layout, db), self.loop)
        self.server = future.result(10)

    def stop(self) -> None:
        async def close() -> None:
            self.server.close()
            await self.server.wait_closed()
            self.server.policy_server.close()

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def env(sandbox_root: Path) -> Iterator[dict[str, object]]:
    sandbox = Sandbox(sandbox_root / "policy", agent_services=False)
    state_text = state_for(sandbox, POLICY_STATE)
    sandbox.start(state_text)
    db = Database(sandbox.layout.database)
    state = load_state_text(state_text)
    server = ThreadServer(state, sandbox, db)
    try:
        yield {"sandbox": sandbox, "db": db, "state": state, "state_text": state_text}
    finally:
        server.stop()
        sandbox.stop()


def ask(sandbox: Sandbox, *requests: dict[str, str], port: int | None = None) -> list[str]:
    """Send requests on one connection; the action of each."""
    payload = b"".join(format_request(r) for r in requests)
    answers: list[str] = []
    with socket.create_connection(("127.0.0.1", port or sandbox.layout.ports.policy),
                                  timeout=30) as conn:
        conn.sendall(payload)
        buffer = b""
        while len(answers) < len(requests):
            chunk = conn.recv(65536)
            assert chunk, f"connection closed after {answers}"
            buffer += chunk
            while b"\n\n" in buffer:
                answer, buffer = buffer.split(b"\n\n", 1)
                answers.append(answer.decode().removeprefix("action="))
    return answers


def rcpt(client: str, sender: str, recipient: str = "user@example.test",
         instance: str | None = None) -> dict[str, str]:
    return {
        "request": "smtpd_access_policy", "protocol_state": "RCPT", "protocol_name": "ESMTP",
        "client_address": client, "client_name": "unknown", "helo_name": "mail.sender.test",
        "sender": sender, "recipient": recipient,
        "instance": instance or f"{time.monotonic_ns():x}",
    }


def publish(sandbox: Sandbox, zone: Zone, probe: str) -> None:
    """Serve zone and wait until NSD answers for probe (before Unbound ever asks, so it caches
    no failure)."""
    sandbox.dns.update(zone)
    direct = resolver_at("127.0.0.1", sandbox.dns.port, timeout=0.5, lifetime=1)

    def answers() -> bool:
        try:
            direct.resolve(probe, "TXT")
            return True
        except dns.exception.DNSException:
            return False

    wait_until(f"NSD serving {zone.name}", answers, 15)


# --- SPF and greylisting over the protocol -------------------------------------------------


def test_spf_fail_is_rejected_at_rcpt(env: dict[str, object]) -> None:
    sandbox = env["sandbox"]
    assert isinstance(sandbox, Sandbox)
    # sender.test allows only 192.0.2.0/24 (-all).
    [action] = ask(sandbox, rcpt("203.0.113.5", "someone@sender.test"))
    assert action.startswith("550 5.7.23 SPF fail: sender.test does not allow 203.0.113.5")


def test_spf_pass_prepends_received_spf_once_per_message(env: dict[str, object]) -> None:
    sandbox = env["sandbox"]
    assert isinstance(sandbox, Sandbox)
    first, second = ask(sandbox, rcpt("192.0.2.25", "someone@sender.test", instance="m1"),
                        rcpt("192.0.2.25", "someone@sender.test", "other@example.test",
                             instance="m1"))
    assert first.startswith("PREPEND Received-SPF: pass (mx.example.test: domain of "
                            "sender.test designates 192.0.2.25 as permitted sender)")
    assert parse_received_spf(first.split(": ", 1)[1]) == ("pass", "sender.test")
    assert second == "DUNNO"


def test_greylisting_defers_then_accepts_the_retry(env: dict[str, object]) -> None:
    sandbox = env["sandbox"]
    assert isinstance(sandbox, Sandbox)
    request = rcpt("192.0.2.77", "list+bounce-1@sender.test")
    [first] = ask(sandbox, request)
    assert first == f"DEFER_IF_PERMIT 4.7.1 Greylisted, try again in {GREY_DELAY} seconds"
    time.sleep(GREY_DELAY + 0.1)  # greylisting is about time: the real clock is the subject
    [retry] = ask(sandbox, rcpt("192.0.2.77", "list+bounce-2@sender.test"))
    assert retry.startswith("PREPEND Received-SPF: pass ")
    # Auto-whitelist: the network's other triplets pass at once.
    [other] = ask(sandbox, rcpt("192.0.2.78", "someone-else@sender.test", "x@example.test"))
    assert other.startswith("PREPEND Received-SPF: pass ")


def test_health_probe_and_trusted_networks(env: dict[str, object]) -> None:
    sandbox = env["sandbox"]
    assert isinstance(sandbox, Sandbox)
    from mailwarden.control import health

    health.wait_healthy("policy", sandbox.layout, timeout=5)
    assert ask(sandbox, rcpt("10.20.1.2", "clerk@example.test")) == ["DUNNO"]


# --- SPF, DKIM, DMARC through Unbound ------------------------------------------------------


@pytest.fixture(scope="module")
def signer(env: dict[str, object]) -> dkim.DkimKeyInfo:
    """signer.test: an SPF softfail record, a DKIM key, a DMARC reject policy."""
    sandbox = env["sandbox"]
    assert isinstance(sandbox, Sandbox)
    key = dkim.generate_key(sandbox.layout, "signer.test", "s2026", bits=2048)
    zone = Zone("signer.test")
    zone.add("@", "TXT", "v=spf1 ip4:198.51.100.0/24 ~all")
    zone.add("s2026._domainkey", "TXT", key.txt)
    zone.add("_dmarc", "TXT", "v=DMARC1; p=reject; rua=mailto:dmarc@signer.test")
    publish(sandbox, zone, key.dns_name)
    return key


def test_spf_softfail_through_unbound(env: dict[str, object], signer: dkim.DkimKeyInfo) -> None:
    sandbox = env["sandbox"]
    assert isinstance(sandbox, Sandbox)
    check = make_spf_check(make_resolver(sandbox.layout))
    assert check("203.0.113.9", "a@signer.test", "x.test")[0] == "softfail"
    assert check("198.51.100.4", "a@signer.test", "x.test")[0] == "pass"
    # dnsbl.test exists and publishes no SPF record (a zone NSD does not serve at all would
    # be SERVFAIL through Unbound: temperror).
    assert check("203.0.113.9", "a@dnsbl.test", "x.test")[0] == "none"
    [action] = ask(sandbox, rcpt("203.0.113.9", "a@signer.test"))
    assert action.startswith("DEFER_IF_PERMIT")  # softfail is not rejected; greylisted
    [exempt] = ask(sandbox, rcpt("198.51.100.4", "a@signer.test"))
    assert exempt.startswith("PREPEND Received-SPF: pass")


def test_dkim_sign_and_verify_through_unbound(env: dict[str, object],
                                              signer: dkim.DkimKeyInfo) -> None:
    sandbox = env["sandbox"]
    assert isinstance(sandbox, Sandbox)
    state = load_state_text(str(env["state_text"]) + f"""\
  sign:
    - {{domain: signer.test, selector: s2026, key: {signer.key_name}}}
""")
    message = (b"From: Alice <alice@signer.test>\r\nTo: user@example.test\r\n"
               b"Subject: signed\r\nDate: Wed, 25 Nov 2026 05:00:00 +0000\r\n"
               b"Message-ID: <it-1@signer.test>\r\n\r\nHello.\r\n")
    signed = dkim.sign(message, state, sandbox.layout)
    resolver = make_resolver(sandbox.layout)
    assert dkim.verify(signed, resolver) == ("pass", ["signer.test"])
    assert dkim.verify(signed.replace(b"Hello.", b"Hello!"), resolver) == ("fail", [])
    # DMARC passes on the aligned signature even though SPF softfailed.
    result = dmarc.evaluate("signer.test", "softfail", "signer.test", "pass", ["signer.test"],
                            resolver)
    assert (result.result, result.dkim_aligned, result.disposition) == ("pass", True, "none")


def test_dmarc_reject_for_a_spoofed_from(env: dict[str, object]) -> None:
    sandbox, db = env["sandbox"], env["db"]
    assert isinstance(sandbox, Sandbox) and isinstance(db, Database)
    resolver = make_resolver(sandbox.layout)
    # The spammer passes SPF for its own domain but forges From: sender.test (p=reject).
    result = dmarc.evaluate("sender.test", "pass", "spammer.test", "none", [], resolver)
    assert (result.result, result.policy, result.disposition) == ("fail", "reject", "reject")
    # A subdomain without its own record falls back to the organisational domain.
    sub = dmarc.evaluate("mail.sender.test", "fail", "spammer.test", "none", [], resolver)
    assert (sub.record_domain, sub.disposition) == ("sender.test", "reject")
    none = dmarc.evaluate("dnsbl.test", "fail", "spammer.test", "none", [], resolver)
    assert none.result == "none"
    dmarc.record(db, result, source_ip="203.0.113.5", mode="enforce")
    rows = dmarc_store.results(db, header_from="sender.test")
    assert rows[-1]["disposition"] == "reject" and rows[-1]["spf_aligned"] is False


def test_the_mail_path_caches_answers_no_longer_than_unbound_gave_them(
        env: dict[str, object]) -> None:
    sandbox = env["sandbox"]
    assert isinstance(sandbox, Sandbox)
    resolver = make_resolver(sandbox.layout)
    assert resolver.cache is not None
    first = dmarc.evaluate("sender.test", "pass", "sender.test", "none", [], resolver)
    key = (dns.name.from_text("_dmarc.sender.test"), dns.rdatatype.TXT, dns.rdataclass.IN)
    cached = resolver.cache.get(key)
    assert cached is not None and cached.rrset is not None
    # Served from the cache: the same verdict with the resolver pointed at a dead port.
    [dead_port] = free_ports(1)
    resolver.port = dead_port
    again = dmarc.evaluate("sender.test", "pass", "sender.test", "none", [], resolver)
    assert (again.result, again.policy) == (first.result, first.policy) == ("pass", "reject")
    # Once the TTL Unbound gave has run out the answer is gone: the next check must ask,
    # and with nobody answering it is a temporary error, not the old verdict.
    cached.expiration = time.time() - 1
    assert dmarc.evaluate("sender.test", "pass", "sender.test", "none", [], resolver).result \
        == "temperror"
    # Probes and tests ask every time.
    assert resolver_at("127.0.0.1", sandbox.layout.ports.dns).cache is None


def test_unreachable_dns_is_temperror_not_none(env: dict[str, object]) -> None:
    [dead_port] = free_ports(1)
    dead = resolver_at("127.0.0.1", dead_port, timeout=0.3, lifetime=0.6)
    assert dmarc.evaluate("sender.test", "pass", "x.test", "none", [], dead).result \
        == "temperror"
    assert make_spf_check(dead, timeout=1)("192.0.2.25", "a@sender.test", "h.test")[0] \
        == "temperror"


# --- the daemon entry ---------------------------------------------------------------------


def test_daemon_serves_reloads_on_sighup_and_stops_on_sigterm(env: dict[str, object],
                                                              tmp_path: Path) -> None:
    sandbox = env["sandbox"]
    assert isinstance(sandbox, Sandbox)
    # The same sandbox, another policy port (the thread server holds the layout's).
    [port] = free_ports(1)
    layout = replace(sandbox.layout, ports=replace(sandbox.layout.ports, policy=port))
    (tmp_path / LAYOUT_FILE).write_text(layout.to_json())
    code = ("import sys; from pathlib import Path; from mailwarden.layout import "
            "load_layout; from mailwarden.mail.policy import run_policy; "
            "sys.exit(run_policy(load_layout(Path(sys.argv[1]))))")
    log = (tmp_path / "policy.log").open("wb")
    process = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=log,
                               stderr=subprocess.STDOUT, env={**os.environ})
    try:
        def answering() -> bool:
            try:
                return ask(sandbox, rcpt("10.20.1.2", "a@example.test"), port=port) == ["DUNNO"]
            except OSError:
                return False

        wait_until("the policy daemon", answering, 20)
        process.send_signal(signal.SIGHUP)
        time.sleep(0.3)
        assert process.poll() is None
        assert ask(sandbox, rcpt("203.0.113.5", "x@sender.test"), port=port)[0].startswith(
            "550 5.7.23")
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)
        log.close()
    assert "state reloaded" in (tmp_path / "policy.log").read_text()
