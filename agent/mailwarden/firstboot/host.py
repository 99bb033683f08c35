"""The appliance's own operating system settings: host name, network, SSH, keyboard, time zone.

`ApplianceHost` is the first-run engine's Host for the real image (Debian 13 with
systemd-networkd, nftables, OpenSSH installed but masked). Everything it changes is a file
under `root` first; with `live` it also makes the running system follow (sethostname,
networkctl, systemctl). `live=False` with another root configures a system that is not running,
for an installer writing to /target, and for tests.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Sequence
from pathlib import Path

from ..errors import MailwardenError
from ..files import write_atomic
from ..layout import Layout, appliance
from ..process import run
from .answers import NetworkAnswer

log = logging.getLogger("mailwarden.firstboot")

MARK = "# Managed by Mailwarden (first run); changes here are overwritten."
# Sorted before the image's DHCP default (80-mailwarden-dhcp.network): networkd uses the first
# file that matches an interface, so this one wins for the interface it names.
NETWORK_FILE = "etc/systemd/network/10-mailwarden.network"
SSH_DROPIN = "etc/ssh/sshd_config.d/60-mailwarden.conf"
KEYBOARD_FILE = "etc/default/keyboard"
ARPHRD_ETHER = "1"

Runner = Callable[[Sequence[str]], object]


# systemctl enable/unmask reload systemd (every generator runs again): about 50 s each under
# emulation on a busy machine, where 120 s ran out at first boot.
HOST_COMMAND_TIMEOUT = 600


def _run(argv: Sequence[str]) -> object:
    return run(list(argv), timeout=HOST_COMMAND_TIMEOUT)


class ApplianceHost:
    def __init__(self, root: Path = Path("/"), *, live: bool = True,
                 layout: Layout | None = None, runner: Runner = _run) -> None:
        self.root = root
        self.live = live and root == Path("/")
        self.layout = layout or appliance()
        self._run = runner

    def path(self, relative: str) -> Path:
        return self.root / relative

    # --- host name ---------------------------------------------------------------------------

    def set_hostname(self, name: str) -> None:
        name = name.strip().rstrip(".").lower()
        short = name.split(".", 1)[0]
        write_atomic(self.path("etc/hostname"), f"{short}\n".encode(), 0o644)
        # Debian's convention: the FQDN on 127.0.1.1, so `hostname -f` answers it.
        write_atomic(self.path("etc/hosts"), _hosts(self._read("etc/hosts"), name, short)
                     .encode(), 0o644)
        write_atomic(self.path("etc/mailname"), f"{name}\n".encode(), 0o644)
        if self.live:
            socket.sethostname(short)
        log.info("host name set to %s", name)

    # --- network -----------------------------------------------------------------------------

    def set_network(self, network: NetworkAnswer) -> None:
        target = self.path(NETWORK_FILE)
        if network.mode == "dhcp" and network.ipv6 == "auto":
            # The image's default already asks DHCP and SLAAC on every Ethernet interface.
            target.unlink(missing_ok=True)
            interface = network.interface
        else:
            interface = network.interface or self.first_ethernet()
            write_atomic(target, network_file(network, interface).encode(), 0o644)
        if self.live:
            self._run(["networkctl", "reload"])
            if interface:
                self._run(["networkctl", "reconfigure", interface])
        log.info("network: %s on %s", network.mode, interface or "every Ethernet interface")

    def first_ethernet(self) -> str | None:
        """The first physical Ethernet interface by name (what a one-NIC appliance has)."""
        found = []
        net = self.path("sys/class/net") if not self.live else Path("/sys/class/net")
        if not net.is_dir():
            return None
        for entry in sorted(net.iterdir()):
            if is_physical_ethernet(entry):
                found.append(entry.name)
        return found[0] if found else None

    # --- keyboard and time zone ------------------------------------------------------------

    def set_keyboard(self, keyboard: str) -> None:
        """Debian's keyboard-configuration file (setupcon applies it on the consoles, and at
        every boot); loadkeys makes the running console follow when setupcon is missing."""
        layout, _, variant = keyboard.partition(":")
        body = (f'{MARK}\nXKBMODEL="pc105"\nXKBLAYOUT="{layout}"\nXKBVARIANT="{variant}"\n'
                'XKBOPTIONS=""\nBACKSPACE="guess"\n')
        write_atomic(self.path(KEYBOARD_FILE), body.encode(), 0o644)
        if self.live:
            try:
                if Path("/usr/bin/setupcon").exists() or Path("/bin/setupcon").exists():
                    self._run(["setupcon", "--force", "--keyboard-only"])
                elif Path("/usr/bin/loadkeys").exists() or Path("/bin/loadkeys").exists():
                    self._run(["loadkeys", layout])
            except MailwardenError as exc:
                # The file is written and takes effect at the next boot; a console without a
                # keymap tool (serial only) is no reason to fail a setup.
                log.warning("keyboard not loaded now: %s", exc.message)
        log.info("keyboard set to %s", keyboard)

    def set_timezone(self, timezone: str) -> None:
        """/etc/localtime as the link Debian makes (timedatectl needs a running timedated;
        the link and /etc/timezone are what it writes)."""
        zone = Path("/usr/share/zoneinfo") / timezone
        if not self.path(str(zone).lstrip("/")).exists() and not zone.exists():
            raise MailwardenError(f"time zone {timezone} is not installed here (tzdata)")
        localtime = self.path("etc/localtime")
        temporary = localtime.with_name(".localtime.mailwarden")
        temporary.unlink(missing_ok=True)
        temporary.symlink_to(Path("..") / str(zone).lstrip("/"))
        os.replace(temporary, localtime)
        write_atomic(self.path("etc/timezone"), f"{timezone}\n".encode(), 0o644)
        log.info("time zone set to %s", timezone)

    # --- SSH ---------------------------------------------------------------------------------

    def set_ssh_keys(self, keys: list[str]) -> None:
        """No keys: SSH stays off. Keys: root may log in with them (only them). Who may
        connect is the firewall's business: the ruleset rendered from the state opens SSH
        from the management networks when networks.ssh is on (state_from_answers sets it)."""
        authorized = self.path("root/.ssh/authorized_keys")
        if not keys:
            if self.live and self._unit_exists("ssh.service"):
                self._run(["systemctl", "disable", "--now", "ssh.service"])
                self._run(["systemctl", "mask", "ssh.service"])
            return
        if not self.path("usr/sbin/sshd").exists():
            raise MailwardenError("SSH keys were given, but OpenSSH is not installed here")
        authorized.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(authorized.parent, 0o700)
        body = MARK + "\n" + "".join(f"{k.strip()}\n" for k in keys)
        write_atomic(authorized, body.encode(), 0o600)
        write_atomic(self.path(SSH_DROPIN), SSHD_CONFIG.encode(), 0o644)
        if self.live:
            self._run(["ssh-keygen", "-A"])  # host keys, if first boot has not made them yet
            self._run(["systemctl", "unmask", "ssh.service"])
            self._run(["systemctl", "enable", "ssh.service"])
            # --no-block: at first boot ssh.service is ordered after us; waiting would hang.
            self._run(["systemctl", "--no-block", "restart", "ssh.service"])
        log.info("SSH on (key-only, %d key%s)", len(keys), "s" if len(keys) != 1 else "")

    def ssh_keys(self) -> list[str]:
        """The keys set_ssh_keys wrote (what the console keeps when it turns SSH back on)."""
        lines = self._read("root/.ssh/authorized_keys").splitlines()
        return [line for line in lines if line.strip() and not line.startswith("#")]

    def _unit_exists(self, unit: str) -> bool:
        return any((self.path(d) / unit).exists() for d in
                   ("usr/lib/systemd/system", "lib/systemd/system", "etc/systemd/system"))

    def _read(self, relative: str) -> str:
        try:
            return self.path(relative).read_text(encoding="utf-8")
        except FileNotFoundError:
            return ""


SSHD_CONFIG = f"""{MARK}
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
AuthenticationMethods publickey
MaxAuthTries 3
LoginGraceTime 30s
ClientAliveInterval 300
ClientAliveCountMax 2
TCPKeepAlive no
MaxSessions 2
LogLevel VERBOSE
AllowUsers root
AllowTcpForwarding no
AllowAgentForwarding no
AllowStreamLocalForwarding no
X11Forwarding no
PermitTunnel no
"""


def _hosts(current: str, fqdn: str, short: str) -> str:
    lines = [line for line in current.splitlines()
             if line.split("#", 1)[0].split()[:1] != ["127.0.1.1"]]
    if not any(line.split()[:1] == ["127.0.0.1"] for line in lines):
        lines.insert(0, "127.0.0.1\tlocalhost")
    index = next(i for i, line in enumerate(lines) if line.split()[:1] == ["127.0.0.1"]) + 1
    names = fqdn if fqdn == short else f"{fqdn} {short}"
    lines.insert(index, f"127.0.1.1\t{names}")
    return "\n".join(lines) + "\n"


def network_file(network: NetworkAnswer, interface: str | None) -> str:
    match = f"Name={interface}" if interface else "Type=ether\nName=en* eth*"
    lines = [MARK, "[Match]", match, "", "[Network]"]
    if network.mode == "static":
        lines.append(f"Address={network.address}")
        if network.gateway:
            lines.append(f"Gateway={network.gateway}")
    if network.ipv6 == "static":
        lines.append(f"Address={network.ipv6_address}")
        if network.ipv6_gateway:
            lines.append(f"Gateway={network.ipv6_gateway}")
    lines += [f"DNS={server}" for server in network.dns]
    # A static setting is meant: no DHCP behind the admin's back. IPv6 "auto" is router
    # advertisements, which also start DHCPv6 when the router says so.
    if network.mode == "dhcp":
        lines.append("DHCP=yes" if network.ipv6 == "auto" else "DHCP=ipv4")
    else:
        lines.append("DHCP=no")
    if network.ipv6 == "auto":
        lines.append("IPv6AcceptRA=yes")
    else:
        lines.append("IPv6AcceptRA=no")
        if network.ipv6 == "off":
            lines.append("LinkLocalAddressing=ipv4")
    lines.append("")
    return "\n".join(lines)


def is_physical_ethernet(entry: Path) -> bool:
    """A /sys/class/net entry for a real Ethernet card (not a bridge, veth or tunnel: those
    have no `device` link)."""
    try:
        kind = (entry / "type").read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return False
    return kind == ARPHRD_ETHER and (entry / "device").exists()
