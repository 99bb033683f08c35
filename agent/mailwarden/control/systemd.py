"""The appliance's controller: systemd units of the managed services."""

from __future__ import annotations

from ..mail.notify import ServiceStatus
from ..process import run

# What a configuration change needs: clamd and Redis read their files only at start;
# clamd's "reload" only reloads signatures.
UNITS: dict[str, tuple[str, str]] = {
    "postfix": ("postfix.service", "reload"),
    "rspamd": ("rspamd.service", "reload"),
    "clamav": ("clamav-daemon.service", "restart"),
    "freshclam": ("clamav-freshclam.service", "restart"),
    "redis": ("redis-server.service", "restart"),
    "unbound": ("unbound.service", "restart"),
    # Debian's reload runs `nft 'flush ruleset; include "/etc/nftables.conf"'`: one
    # transaction, so the old ruleset stays whole if the new one is refused.
    "nftables": ("nftables.service", "reload"),
    # The agent's daemons re-read the state file on SIGHUP (ExecReload).
    "filter": ("mailwarden-filter.service", "reload"),
    "policy": ("mailwarden-policy.service", "reload"),
}


class SystemdController:
    def is_running(self, service: str) -> bool:
        unit, _ = UNITS[service]
        return run(["systemctl", "is-active", "--quiet", unit], check=False).returncode == 0

    def reload(self, service: str, *, restart: bool = False) -> None:
        unit, verb = UNITS[service]
        run(["systemctl", "restart" if restart else verb, unit], timeout=120)


# What the service alerts watch (notifications.service_alerts): the mail daemons, the agent's
# and the API. nftables is a oneshot unit with nothing to watch.
WATCHED: dict[str, str] = {
    **{name: unit for name, (unit, _) in UNITS.items() if name != "nftables"},
    "api": "mailwarden-api.service",
}


def unit_status(watched: dict[str, str] = WATCHED) -> list[ServiceStatus]:
    """Each watched unit's state and systemd's count of its automatic restarts (NRestarts),
    read over D-Bus: an unprivileged user may read unit properties."""
    names = {unit: name for name, unit in watched.items()}
    result = run(["systemctl", "show", "--property=Id,ActiveState,SubState,NRestarts", "--",
                  *watched.values()], timeout=30)
    found = []
    for block in result.stdout.strip().split("\n\n"):
        fields = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        name = names.get(fields.get("Id", ""))
        if name is None:
            continue
        restarts = fields.get("NRestarts", "")
        found.append(ServiceStatus(
            name=name, running=fields.get("ActiveState") in ("active", "reloading"),
            state=f"{fields.get('ActiveState', '?')}/{fields.get('SubState', '?')}",
            restarts=int(restarts) if restarts.isdigit() else None))
    return found
