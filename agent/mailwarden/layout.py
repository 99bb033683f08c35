"""Where rendered files go, which ports and users the services use.

The same templates serve the appliance (files under /, standard ports) and sandboxes
(everything under one folder, unprivileged loopback ports, private queues and data) so that a
private instance of every daemon runs beside any other, for tests and `build.sh dev`.
"""

from __future__ import annotations

import json
import random
import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal


@dataclass(frozen=True)
class Ports:
    smtp: int = 25  # inbound from the internet (postscreen -> smtpd)
    submission: int = 26  # outbound from trusted networks
    policy: int = 10022  # agent policy service
    filter_out: int = 10023  # agent content filter, outbound
    filter_in: int = 10024  # agent content filter, inbound
    reinject: int = 10025  # Postfix smtpd without filter
    api: int = 8006  # API and web UI
    rspamd_normal: int = 11333
    rspamd_controller: int = 11334
    rspamd_proxy: int = 11332
    redis: int = 6379
    dns: int = 53  # Unbound
    clamd: int = 3310  # clamd also listens on its unix socket; TCP is loopback only


@dataclass(frozen=True)
class Users:
    postfix: str = "postfix"
    postdrop: str = "postdrop"
    rspamd: str = "_rspamd"
    clamav: str = "clamav"
    redis: str = "redis"
    unbound: str = "unbound"
    mailwarden: str = "mailwarden"


@dataclass(frozen=True)
class Layout:
    name: Literal["appliance", "sandbox"]
    root: Path
    ports: Ports = field(default_factory=Ports)
    users: Users = field(default_factory=Users)
    # Sandboxes listen on loopback only; the appliance on every interface (nftables decides).
    public_interfaces: str = "all"
    inet_protocols: str = "all"
    # Sandboxes have no internet: Unbound forwards everything to the test name server.
    dns_upstream: tuple[str, ...] = ()
    # Until the agent's filter and policy service run, a sandbox may render Postfix without
    # them (mail then flows straight to the relay transports).
    agent_services: bool = True
    # Loopback clients that may claim another address (XCLIENT): tests pose as outside hosts.
    xclient_hosts: tuple[str, ...] = ()
    # Postfix logs to this file instead of syslog when set (no /dev/log in sandboxes).
    postfix_log: bool = False
    # Who reloads the daemons after an apply (control.service): systemd on the appliance; a
    # sandbox names the controller of whatever runs its daemons (the development harness
    # registers one), or "none" when nothing runs them.
    service_control: str = "systemd"

    def path(self, absolute: str) -> Path:
        """Where the appliance path `absolute` lives in this layout."""
        return self.root / absolute.lstrip("/")

    # Well-known places, named once.
    @property
    def state_dir(self) -> Path:
        return self.path("/etc/mailwarden")

    @property
    def state_file(self) -> Path:
        return self.state_dir / "state.yaml"

    @property
    def secrets_dir(self) -> Path:
        return self.state_dir / "secrets"

    @property
    def api_certificate(self) -> Path:
        """The certificate the API serves (its key beside it, api.key); the console shows
        its fingerprint."""
        return self.secrets_dir / "api.crt"

    @property
    def templates_dir(self) -> Path:
        return self.state_dir / "templates"

    @property
    def root_data_dir(self) -> Path:
        """Root's own data: only root writes here (the agent's users may read revisions)."""
        return self.path("/var/lib/mailwarden-root")

    @property
    def revisions_dir(self) -> Path:
        return self.root_data_dir / "revisions"

    @property
    def staging_dir(self) -> Path:
        """Where the apply transaction checks rendered files before they go live."""
        return self.root_data_dir / "staging"

    @property
    def legacy_revisions_dir(self) -> Path:
        """Where revisions were kept before they moved to root_data_dir (moved on apply)."""
        return self.path("/var/lib/mailwarden/revisions")

    @property
    def database(self) -> Path:
        """The runtime store (SQLite, WAL)."""
        return self.path("/var/lib/mailwarden/mailwarden.db")

    @property
    def setup_marker(self) -> Path:
        """Written by root once the first-run setup succeeded: whether the appliance is set up
        is decided by this file alone (in a folder only root writes)."""
        return self.state_dir / "setup-complete"

    @property
    def auth_database(self) -> Path:
        """The API's credentials store (users, sessions, tokens, audit log): its own folder,
        0700, owned by the API's user."""
        return self.path("/var/lib/mailwarden-api/auth.db")

    @property
    def ticket_key(self) -> Path:
        """The key that signs the links of quarantine digests: beside the credentials store,
        the API's user's alone (the digests are sent as that user)."""
        return self.auth_database.parent / "tickets.key"

    @property
    def factory_firewall(self) -> Path:
        """The image's boot-time ruleset (roles/hardening), put back as /etc/nftables.conf by
        a factory reset."""
        return self.path("/usr/share/mailwarden/factory/nftables.conf")

    @property
    def quarantine_dir(self) -> Path:
        return self.path("/var/lib/mailwarden/quarantine")

    @property
    def setup_code(self) -> Path:
        """The web wizard's one-time code; beside the store, which the API may write."""
        return self.path("/var/lib/mailwarden/setup-code")

    @property
    def run_dir(self) -> Path:
        return self.path("/run/mailwarden")

    def pidfile(self, service: str) -> Path | None:
        """Where the service's main process writes its pid, if it does."""
        path = _PIDFILES.get(service)
        if path is None and self.name == "sandbox":
            # The sandbox writes these for its controller; on the appliance systemd knows.
            path = _SANDBOX_PIDFILES.get(service)
        return self.path(path) if path else None

    def to_json(self) -> str:
        data: dict[str, Any] = asdict(self)
        data["root"] = str(self.root)
        return json.dumps(data, indent=2)

    @classmethod
    def from_json(cls, text: str) -> Layout:
        data = json.loads(text)
        return cls(
            name=data["name"],
            root=Path(data["root"]),
            ports=Ports(**data["ports"]),
            users=Users(**data["users"]),
            public_interfaces=data["public_interfaces"],
            inet_protocols=data["inet_protocols"],
            dns_upstream=tuple(data["dns_upstream"]),
            agent_services=data["agent_services"],
            xclient_hosts=tuple(data["xclient_hosts"]),
            postfix_log=data["postfix_log"],
            # Sandbox folders written before layouts named their controller were all run by
            # the development harness.
            service_control=data.get("service_control", "pidfile"),
        )


LAYOUT_FILE = "layout.json"

_PIDFILES = {
    "postfix": "/var/spool/postfix/pid/master.pid",
    "rspamd": "/run/rspamd/rspamd.pid",
    "unbound": "/run/unbound.pid",
    "clamav": "/run/clamav/clamd.pid",
    "redis": "/run/redis/redis-server.pid",
}
_SANDBOX_PIDFILES = {
    "filter": "/run/mailwarden/filter.pid",
    "policy": "/run/mailwarden/policy.pid",
    "api": "/run/mailwarden/api.pid",
}


def appliance() -> Layout:
    return Layout(name="appliance", root=Path("/"))


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def free_ports(count: int) -> list[int]:
    """Distinct free loopback TCP ports (bound together, so no duplicates).

    Below the kernel's ephemeral range: a port the kernel handed out (bind to 0) is one it
    may hand out again to any outgoing connection made while the sandbox starts (health
    probes, Rspamd to Redis), and a daemon then fails to bind it (seen in the benchmark).
    """
    low = _ephemeral_low()
    rng = random.SystemRandom()
    sockets: list[socket.socket] = []
    try:
        while len(sockets) < count:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            if low > _PORT_FLOOR + 1000:
                try:
                    sock.bind(("127.0.0.1", rng.randrange(_PORT_FLOOR, low)))
                except OSError:
                    sockets.pop().close()  # in use (or just chosen): another one
                    continue
            else:
                sock.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


_PORT_FLOOR = 12000  # above the gateway's own fixed ports (10022-10025, 11333-11334)


def sandbox(
    root: Path, *, agent_services: bool = True, dns_upstream: tuple[str, ...] = (),
    service_control: str = "none",
) -> Layout:
    """A private layout under root with fresh loopback ports; service_control names who runs
    its daemons (nobody by default: a dry-run render)."""
    names = [f.name for f in Ports.__dataclass_fields__.values()]
    ports = Ports(**dict(zip(names, free_ports(len(names)), strict=True)))
    return Layout(
        name="sandbox",
        root=root.resolve(),
        ports=ports,
        public_interfaces="127.0.0.1",
        inet_protocols="ipv4",
        dns_upstream=dns_upstream,
        agent_services=agent_services,
        xclient_hosts=("127.0.0.1",),
        postfix_log=True,
        service_control=service_control,
    )


def load_layout(root: Path | None) -> Layout:
    """The appliance layout, or the sandbox whose layout.json lies in root."""
    if root is None:
        return appliance()
    return Layout.from_json((root / LAYOUT_FILE).read_text())


__all__ = [
    "LAYOUT_FILE", "Layout", "Ports", "Users", "appliance", "load_layout", "sandbox",
]
