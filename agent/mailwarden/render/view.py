"""The typed view templates read: every derived value computed here, in Python.

Templates only look up, loop and branch (logic in Jinja is untyped and hard to test); anything
that needs a decision, a join or a unit conversion happens here, where it is typed and
unit-tested.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from ..layout import Layout
from ..state.schema import State, TlsLevel

_POSTFIX_TLS = {"none": "none", "may": "may", "encrypt": "encrypt", "dane": "dane",
                "verify": "verify", "secure": "secure"}


def postfix_network(network: str) -> str:
    """Postfix wants IPv6 networks in brackets: [2001:db8::]/32."""
    net = ipaddress.ip_network(network)
    if net.version == 6:
        return f"[{net.network_address}]/{net.prefixlen}"
    return str(net)


def nexthop(host: str, port: int, mx_lookup: bool) -> str:
    """A Postfix next hop: [host]:port unless MX records are to be looked up."""
    try:
        ip = ipaddress.ip_address(host)
        host = f"ipv6:{ip}" if ip.version == 6 else str(ip)
        mx_lookup = False  # an address has no MX records
    except ValueError:
        pass
    target = host if mx_lookup else f"[{host}]"
    return f"{target}:{port}"


@dataclass(frozen=True)
class TransportEntry:
    domain: str  # "example.org" or ".example.org" for subdomains
    transport: str  # "smtp:[10.0.0.5]:25"


@dataclass(frozen=True)
class PolicyEntry:
    destination: str
    policy: str  # "verify match=..." as Postfix wants it


# SSH keeps its standard port: the state has no setting for it (roles/hardening's default).
SSH_PORT = 22


def management_networks(state: State) -> list[str]:
    """Who may reach the web UI/API and SSH: the management networks, or the trusted ones
    when none are given (the schema's documented fallback). Empty: nobody."""
    return list(state.networks.management or state.networks.trusted)


def _by_family(networks: list[str]) -> tuple[list[str], list[str]]:
    """IPv4 and IPv6 networks, overlaps merged: nftables refuses overlapping elements in an
    interval set, and the schema allows e.g. 10.0.0.0/8 beside 10.1.0.0/16."""
    parsed = [ipaddress.ip_network(n) for n in networks]
    v4 = ipaddress.collapse_addresses(n for n in parsed if isinstance(n, ipaddress.IPv4Network))
    v6 = ipaddress.collapse_addresses(n for n in parsed if isinstance(n, ipaddress.IPv6Network))
    return [str(n) for n in v4], [str(n) for n in v6]


@dataclass(frozen=True)
class Firewall:
    """The appliance's nftables input policy (default deny)."""

    smtp_port: int  # from anywhere
    submission_port: int  # from the trusted networks
    api_port: int  # from the management networks
    ssh_port: int | None  # from the management networks; None: closed
    trusted_v4: list[str]
    trusted_v6: list[str]
    management_v4: list[str]
    management_v6: list[str]


def build_firewall(state: State, layout: Layout) -> Firewall:
    trusted_v4, trusted_v6 = _by_family(list(state.networks.trusted))
    management_v4, management_v6 = _by_family(management_networks(state))
    return Firewall(
        smtp_port=layout.ports.smtp,
        submission_port=layout.ports.submission,
        api_port=layout.ports.api,
        ssh_port=SSH_PORT if state.networks.ssh else None,
        trusted_v4=trusted_v4,
        trusted_v6=trusted_v6,
        management_v4=management_v4,
        management_v6=management_v6,
    )


@dataclass(frozen=True)
class View:
    state: State
    layout: Layout
    # postfix
    config_dir: str
    queue_dir: str
    data_dir: str
    maps_dir: str
    log_file: str
    mynetworks: str
    relay_domains: list[str]
    transports: list[TransportEntry]
    tls_policies: list[PolicyEntry]
    verify_recipient_domains: list[str]
    dnsbl_sites: str
    postscreen_access: list[tuple[str, str]]
    message_size_limit: int
    reinject_size_limit: int
    tls_cert_file: str
    tls_key_file: str
    smarthost: str
    # rspamd
    rspamd_dbdir: str
    dns_servers: list[str]
    # clamav
    clamav_db_dir: str
    clamd_socket: str
    clamav_log_dir: str
    # redis
    redis_dir: str
    # unbound
    unbound_dir: str
    forward_zones: list[tuple[str, list[str]]]
    unbound_access: list[str]
    # nftables
    firewall: Firewall


def _tls_policy(level: TlsLevel, match: list[str]) -> str:
    policy = _POSTFIX_TLS[level]
    if match and level in ("verify", "secure"):
        policy += " match=" + ":".join(match)
    return policy


def build_view(state: State, layout: Layout) -> View:
    p = layout.path
    trusted = ["127.0.0.0/8", "::1/128", *state.networks.trusted]
    transports: list[TransportEntry] = []
    policies: list[PolicyEntry] = []
    seen: set[str] = set()  # destinations with a policy line: the table allows one each
    for domain in state.domains:
        t = domain.transport
        hop = nexthop(t.host, t.port, t.mx_lookup)
        transport = f"{'lmtp' if t.protocol == 'lmtp' else 'smtp'}:{hop}"
        transports.append(TransportEntry(domain.name, transport))
        if domain.subdomains:
            transports.append(TransportEntry("." + domain.name, transport))
        if t.protocol == "smtp" and hop not in seen:
            # Domains sharing a server share its one policy line (checks.check_domains
            # makes sure they agree on it; host names are lower-cased by the schema).
            seen.add(hop)
            policies.append(PolicyEntry(hop, _tls_policy(t.tls, [])))
    for policy in state.tls.policies:
        if policy.destination in seen:
            continue  # a transport's own TLS setting wins over a duplicate policy line
        policies.append(PolicyEntry(policy.destination, _tls_policy(policy.level, policy.match)))

    sites = []
    for site in state.postscreen.dnsbl:
        entry = site.zone + (f"={site.filter}" if site.filter else "") + f"*{site.weight}"
        sites.append(entry)

    # cidr: tables take IPv6 networks without brackets, unlike main.cf.
    access = [(n, "permit") for n in state.postscreen.allow_networks + state.networks.backup_mx]
    access += [(n, "reject") for n in state.postscreen.block_networks]

    if layout.dns_upstream:
        zones = [(".", list(layout.dns_upstream))]
    else:
        zones = [(z.zone, [f"{s}@{z.port}" for s in z.servers])
                 for z in state.system.dns.forward_zones]
        if state.system.dns.resolver == "forward":
            zones.append((".", list(state.system.dns.forwarders)))

    smarthost = ""
    if state.mail.smarthost:
        s = state.mail.smarthost
        smarthost = nexthop(s.host, s.port, s.mx_lookup)

    secrets = layout.secrets_dir
    cert = state.tls.inbound.certificate
    size = state.mail.max_size_mb * 1024 * 1024
    return View(
        state=state,
        layout=layout,
        config_dir=str(p("/etc/postfix")),
        queue_dir=str(p("/var/spool/postfix")),
        data_dir=str(p("/var/lib/postfix")),
        maps_dir=str(p("/etc/postfix/mailwarden")),
        log_file=str(p("/var/log/postfix/postfix.log")),
        mynetworks=" ".join(postfix_network(n) for n in trusted),
        relay_domains=[d.name for d in state.domains]
        + ["." + d.name for d in state.domains if d.subdomains],
        transports=transports,
        tls_policies=policies,
        verify_recipient_domains=[d.name for d in state.domains if d.verify_recipients],
        dnsbl_sites=", ".join(sites),
        postscreen_access=access,
        message_size_limit=size,
        reinject_size_limit=size * 2,
        tls_cert_file=str(secrets / f"{cert}.crt"),
        tls_key_file=str(secrets / f"{cert}.key"),
        smarthost=smarthost,
        rspamd_dbdir=str(p("/var/lib/rspamd")),
        dns_servers=[f"127.0.0.1:{layout.ports.dns}"],
        clamav_db_dir=str(p("/var/lib/clamav")),
        clamd_socket=str(p("/run/clamav/clamd.ctl")),
        clamav_log_dir=str(p("/var/log/clamav")),
        redis_dir=str(p("/var/lib/redis")),
        unbound_dir=str(p("/etc/unbound")),
        forward_zones=zones,
        unbound_access=sorted({"127.0.0.0/8", "::1/128"}),
        firewall=build_firewall(state, layout),
    )
