"""What the console shows and does beside the questions: the machine's interfaces and
addresses, the API certificate's fingerprint, the services' health, the changes the menu
makes as revisions, and the factory reset."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import yaml

from ..control import health
from ..control.apply import ApplyResult, apply_state
from ..control.service import Controller
from ..errors import MailwardenError
from ..files import read_regular, remove, write_atomic
from ..firstboot.answers import NetworkAnswer
from ..firstboot.boot import API_USER, COMPLETE, create_admin
from ..firstboot.configure import ADMIN, Host
from ..firstboot.host import is_physical_ethernet
from ..firstboot.identity import CERTIFICATES
from ..firstboot.seed import STAMP as SEED_STAMP
from ..layout import Layout
from ..process import run
from ..state.revisions import RevisionStore
from ..store.users import hash_password

log = logging.getLogger("mailwarden.console")

AUTHOR = "console"


class ConsoleHost(Host, Protocol):
    """The first-run Host, and the SSH keys it wrote (kept when SSH is turned on again)."""

    def ssh_keys(self) -> list[str]: ...


class NoState(MailwardenError):
    code = "no_state"


@dataclass(frozen=True)
class Interface:
    name: str
    mac: str
    link: str  # up, down, unknown
    physical: bool
    addresses: tuple[str, ...] = ()


def interfaces(sys_net: Path = Path("/sys/class/net")) -> list[Interface]:
    """Every interface but loopback, physical Ethernet ones first; with their addresses
    when `ip` can tell."""
    addresses = _addresses()
    found = []
    if sys_net.is_dir():
        for entry in sorted(sys_net.iterdir()):
            if entry.name == "lo":
                continue
            found.append(Interface(
                name=entry.name, mac=_read(entry / "address") or "-",
                link=_read(entry / "operstate") or "unknown",
                physical=is_physical_ethernet(entry),
                addresses=tuple(addresses.get(entry.name, ()))))
    return sorted(found, key=lambda i: (not i.physical, i.name))


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return ""


def _addresses() -> dict[str, list[str]]:
    try:
        text = run(["ip", "-json", "address", "show"], timeout=10).stdout
        data = json.loads(text)
    except (MailwardenError, ValueError):
        return {}
    found: dict[str, list[str]] = {}
    for link in data if isinstance(data, list) else []:
        for info in link.get("addr_info") or []:
            if info.get("scope") == "global":
                found.setdefault(str(link.get("ifname")), []).append(
                    f"{info.get('local')}/{info.get('prefixlen')}")
    return found


def fingerprint(layout: Layout) -> str | None:
    """SHA-256 of the API certificate (DER), as browsers show it; None before it exists."""
    try:
        pem = layout.api_certificate.read_text(encoding="ascii")
        der = ssl.PEM_cert_to_DER_cert(pem)
    except (OSError, ValueError):
        return None
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


def web_url(layout: Layout, address: str | None) -> str:
    host = address or "THIS-ADDRESS"
    host = f"[{host}]" if ":" in host else host
    return f"https://{host}:{layout.ports.api}/"


def service_health(layout: Layout, controller: Controller) -> list[tuple[str, str]]:
    """Each service's probe, once: (service, "ok" or why not)."""
    report = []
    for service, probe in health.PROBES.items():
        if service == "freshclam":
            continue
        try:
            probe(layout)
        except Exception as exc:  # any failure of a probe is the report
            running = controller.is_running(service)
            report.append((service, f"not answering ({exc})" if running
                           else "not running"))
        else:
            report.append((service, "ok"))
    return report


# --- changes, each a revision ------------------------------------------------------------


def current_state(layout: Layout) -> tuple[int, str]:
    store = RevisionStore(layout.revisions_dir)
    number = store.current()
    if number is None:
        raise NoState("there is no applied state yet; set the appliance up first")
    return number, store.text(number)


def record_event(layout: Layout, controller: Controller, comment: str,
                 text: str | None = None) -> ApplyResult:
    """A change made from the console, through the apply transaction: the state `text`
    (None: the live one again, for changes outside the state file such as the network or
    the credentials store) as a revision authored `console`, so that the history shows it."""
    base, live = current_state(layout)
    return apply_state(live if text is None else text, layout=layout, controller=controller,
                       author=AUTHOR, comment=comment, base=base)


def ssh_enabled(layout: Layout) -> bool:
    _, text = current_state(layout)
    data = yaml.safe_load(text) or {}
    return bool((data.get("networks") or {}).get("ssh"))


def set_ssh(layout: Layout, controller: Controller, host: ConsoleHost, keys: list[str]
            ) -> ApplyResult:
    """SSH on (key-only, with `keys`) or off (no keys): the state's networks.ssh opens or
    closes the firewall, the host's sshd follows."""
    _, text = current_state(layout)
    data = yaml.safe_load(text) or {}
    was_on = bool((data.get("networks") or {}).get("ssh"))
    before = host.ssh_keys() if was_on else []
    data.setdefault("networks", {})["ssh"] = bool(keys)
    new = yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)
    # The host first: it may refuse (no OpenSSH), and then no revision claims SSH is on.
    host.set_ssh_keys(keys)
    try:
        return record_event(layout, controller, f"SSH {'on' if keys else 'off'} (console)",
                            new)
    except MailwardenError:
        host.set_ssh_keys(before)
        raise


def reset_admin_password(layout: Layout, controller: Controller, password: str, *,
                         live: bool) -> ApplyResult:
    """A new password for `admin` (made again if it was deleted: its second factor, sessions
    and tokens end), then a revision that says so: the credentials store has no history of
    its own that an administrator reads."""
    as_user = API_USER if live and os.geteuid() == 0 else None
    create_admin(layout, ADMIN, hash_password(password), as_user=as_user)
    return record_event(layout, controller, "admin password reset on the console")


# --- factory reset ---------------------------------------------------------------------


def factory_reset(layout: Layout, host: ConsoleHost, *, live: bool) -> list[str]:
    """Everything an owner made, gone; the machine's identity kept. Returns what was removed.

    Kept: machine-id, SSH host keys, the SMTP and API certificates (the identity first boot
    made, identity.json), the host name, the rendered daemon configuration (replaced by the
    next setup's first apply). Removed: the state and every revision, the set-up marker,
    the credentials store (users, sessions, tokens, audit log), the runtime store
    (quarantine index, statistics, greylisting, message tracking), the quarantined mail,
    the mail queue, every other secret (DKIM keys, certificates added later), the seed's
    record (a NoCloud volume still attached is applied again; answers on the boot partition
    were removed when applied), root's SSH keys and the static
    network (DHCP again). Put back: the image's firewall (8006 open to the private ranges
    again, as on a fresh appliance)."""
    removed: list[str] = []
    if live:
        for unit in ("mailwarden-api.service", "mailwarden-filter.service",
                     "mailwarden-policy.service"):
            run(["systemctl", "stop", unit], check=False, timeout=120)
        # Postfix goes back to what a fresh image has: stopped (mailwarden-mail.target starts
        # it with the next first state), loopback only, nothing queued.
        run(["systemctl", "stop", "postfix.service"], check=False, timeout=300)
        run(["postsuper", "-d", "ALL"], check=False, timeout=300)
        run(["postconf", "-e", "inet_interfaces=loopback-only"], check=False)

    for folder in (layout.revisions_dir, layout.legacy_revisions_dir):
        if folder.is_dir() and not folder.is_symlink():
            shutil.rmtree(folder)  # made again, root's, by the next apply
            removed.append(str(folder))
    # The quarantine's folder itself is the role's (owner, group, mode): only its contents go.
    quarantine = layout.quarantine_dir
    if quarantine.is_dir() and not quarantine.is_symlink():
        for entry in sorted(quarantine.iterdir()):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)  # by descriptor: a link inside is removed, not followed
            else:
                remove(entry)
            removed.append(str(entry))
    files = [layout.state_file, layout.setup_marker, layout.setup_code,
             layout.path(COMPLETE), layout.path(SEED_STAMP)]
    for database in (layout.database, layout.auth_database):
        files += [database, Path(f"{database}-wal"), Path(f"{database}-shm")]
    keep = {f"{n}{s}" for n in CERTIFICATES for s in (".key", ".crt")}
    if layout.secrets_dir.is_dir():
        files += [p for p in sorted(layout.secrets_dir.iterdir())
                  if p.name not in keep and not p.is_dir()]
    for path in files:
        if os.path.lexists(path):
            remove(path)
            removed.append(str(path))

    host.set_ssh_keys([])
    with contextlib.suppress(MailwardenError):
        host.set_network(NetworkAnswer(mode="dhcp"))
    _factory_firewall(layout, live=live)
    log.warning("factory reset: %d items removed", len(removed))
    return removed


def _factory_firewall(layout: Layout, *, live: bool) -> None:
    """The image's boot-time ruleset again: the last state's management networks may
    exclude the next owner's, who must reach the setup wizard on 8006 from the LAN."""
    default = read_regular(layout.factory_firewall)
    if default is None:
        # A development sandbox has no image defaults; an appliance without them was built
        # by an older image, whose firewall stays as the last state made it.
        log.warning("factory reset: no factory firewall at %s; the ruleset is kept",
                    layout.factory_firewall)
        return
    write_atomic(layout.path("/etc/nftables.conf"), default, mode=0o640, durable=True)
    if live:
        run(["systemctl", "reload", "nftables.service"], check=False, timeout=120)
