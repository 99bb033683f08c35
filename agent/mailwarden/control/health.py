"""Protocol-level health checks: is each service really answering, not just running?

Shared by the apply transaction (after a reload), the sandbox harness (start-up) and,
later, the API's service status.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import dns.message
import dns.query
import dns.rcode

from ..errors import ServiceError
from ..layout import Layout

Probe = Callable[[Layout], None]


def _exchange(port: int, send: bytes | None, expect: bytes, timeout: float = 3.0) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        if send:
            sock.sendall(send)
        data = b""
        while expect not in data and len(data) < 65536:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    if expect not in data:
        raise ConnectionError(f"expected {expect!r}, got {data[:200]!r}")


def postfix(layout: Layout) -> None:
    # The reinjection smtpd answers without postscreen's delays.
    _exchange(layout.ports.reinject, None, b"220 ")


def rspamd(layout: Layout) -> None:
    request = b"GET /ping HTTP/1.0\r\nHost: localhost\r\n\r\n"
    _exchange(layout.ports.rspamd_normal, request, b"pong")
    _exchange(layout.ports.rspamd_controller, request, b"pong")


def clamav(layout: Layout) -> None:
    _exchange(layout.ports.clamd, b"zPING\0", b"PONG")


def redis(layout: Layout) -> None:
    _exchange(layout.ports.redis, b"PING\r\n", b"+PONG")


def unbound(layout: Layout) -> None:
    query = dns.message.make_query("localhost.", "A")
    answer = dns.query.udp(query, "127.0.0.1", port=layout.ports.dns, timeout=3)
    if answer.rcode() not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
        raise ConnectionError(f"answered {dns.rcode.to_text(answer.rcode())}")


def filter_service(layout: Layout) -> None:
    _exchange(layout.ports.filter_in, None, b"220 ")
    _exchange(layout.ports.filter_out, None, b"220 ")


def policy(layout: Layout) -> None:
    # An empty request (just the blank line) is answered with an action.
    _exchange(layout.ports.policy, b"request=smtpd_access_policy\n\n", b"action=")


def api(layout: Layout) -> None:
    import ssl
    import urllib.request

    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # its own self-signed certificate, on loopback
    url = f"https://127.0.0.1:{layout.ports.api}/api/health"
    with urllib.request.urlopen(url, timeout=3, context=context) as response:
        if b'"ok"' not in response.read():
            raise ConnectionError("API health is not ok")


def freshclam(layout: Layout) -> None:
    """freshclam has no protocol to probe; its health is the signatures' age (the API's)."""


PROBES: dict[str, Probe] = {
    "postfix": postfix,
    "rspamd": rspamd,
    "clamav": clamav,
    "redis": redis,
    "unbound": unbound,
    "freshclam": freshclam,
    "filter": filter_service,
    "policy": policy,
    "api": api,
}


# Services whose reload is its own check: `nft -f` loads the whole ruleset in one transaction
# or refuses it (the reload then fails and the apply rolls back). Nothing answers on a port,
# and the kernel's ruleset is readable only with CAP_NET_ADMIN, which the API does not have.
RELOAD_IS_CHECK = frozenset({"nftables"})


def wait_healthy(service: str, layout: Layout, timeout: float = 30.0) -> None:
    """Probe until the service answers; ServiceError with the last failure otherwise."""
    if service in RELOAD_IS_CHECK:
        return
    probe = PROBES[service]
    deadline = time.monotonic() + timeout
    while True:
        try:
            probe(layout)
            return
        except (OSError, ConnectionError, dns.exception.DNSException) as exc:
            if time.monotonic() > deadline:
                raise ServiceError(service, f"not healthy after {timeout:.0f} s: {exc}") from exc
        time.sleep(0.1)
