"""The appliance's controller: systemd units of the managed services."""

from __future__ import annotations

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
