"""The one DNS resolver of the mail path: the gateway's own Unbound on loopback.

SPF, DKIM and DMARC all resolve here and never through the host's resolv.conf: on the
appliance Unbound validates DNSSEC and caches; in a sandbox it forwards to the test name
server, so tests control every answer. Timeouts are short because a policy or filter
decision waits on them while the client holds its SMTP session open.
"""

from __future__ import annotations

import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver

from ..errors import MailwardenError
from ..layout import Layout

# Per query, and for a whole resolve() including retries. Unbound on loopback answers from
# cache in microseconds; a slow answer is a remote server's, and mail can wait for a retry.
QUERY_TIMEOUT = 2.0
LIFETIME = 5.0


class DnsTemporaryError(MailwardenError):
    """The resolver timed out or answered SERVFAIL: the answer is unknown, not negative."""

    code = "dns_temporary"


# Answers kept per process (each of a few hundred bytes).
CACHE_ENTRIES = 4096


def resolver_at(address: str, port: int, *, timeout: float = QUERY_TIMEOUT,
                lifetime: float = LIFETIME, cache: bool = False) -> dns.resolver.Resolver:
    # configure=False: never read /etc/resolv.conf (the host's resolver is not ours).
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [address]
    resolver.port = port
    resolver.timeout = timeout
    resolver.lifetime = lifetime
    # A small cache in front of Unbound: a DMARC check is several queries (the record, the
    # organisational domain's, its report destinations), and asking Unbound through a
    # thread costs about a millisecond of the filter's CPU under load (bench/README.md)
    # even when Unbound answers from its cache. dnspython keeps an answer until the TTL
    # Unbound gave it runs out (Unbound's remaining TTL, not the zone's full one), so no
    # answer lives here longer than it would in Unbound.
    resolver.cache = dns.resolver.LRUCache(CACHE_ENTRIES) if cache else None
    return resolver


def make_resolver(layout: Layout, *, timeout: float = QUERY_TIMEOUT,
                  lifetime: float = LIFETIME, cache: bool = True) -> dns.resolver.Resolver:
    """A resolver asking the layout's Unbound (127.0.0.1:layout.ports.dns), with the cache
    the mail path uses (resolver_at without one asks every time: probes, tests)."""
    return resolver_at("127.0.0.1", layout.ports.dns, timeout=timeout, lifetime=lifetime,
                       cache=cache)


def txt_records(resolver: dns.resolver.Resolver, name: str,
                lifetime: float | None = None) -> list[bytes]:
    """Every TXT record at name, each with its strings joined; [] when none exist.

    NXDOMAIN and NODATA are answers ("no record"); timeouts and SERVFAIL are not, and raise
    DnsTemporaryError so callers can say temperror instead of none.
    """
    try:
        answer = resolver.resolve(name, dns.rdatatype.TXT, lifetime=lifetime,
                                  raise_on_no_answer=False, search=False)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
        raise DnsTemporaryError(f"TXT {name}: {exc}") from exc
    except dns.exception.DNSException as exc:
        # A name that cannot be a DNS name (empty label, too long): nothing can exist there.
        if isinstance(exc, (dns.exception.SyntaxError, dns.name.NameTooLong,
                            dns.name.IDNAException)):
            return []
        raise DnsTemporaryError(f"TXT {name}: {exc}") from exc
    if answer.rrset is None:
        return []
    return [b"".join(rdata.strings) for rdata in answer.rrset]
