"""The cloud-init drive as Proxmox VE builds it, for tests that boot the appliance.

Proxmox VE (qemu-server's src/PVE/QemuServer/Cloudinit.pm, read at e6352be67f70; the
`nocloud` type it picks for Linux guests) writes four files to an ISO labelled `cidata`:

- `user-data`: the `cicustom user=` snippet as it is, else a #cloud-config it writes itself:
  hostname and fqdn from the VM name (and the search domain), `user:`/`password:` from ciuser
  and cipassword, `ssh_authorized_keys:` from sshkeys, `chpasswd`, `users: [default]` and
  `package_upgrade: true`;
- `network-config`: version 1, one `physical` entry per netN with an ipconfigN (its MAC, the
  name ethN, a `dhcp4` or `static` subnet with a dotted netmask), then always one `nameserver`
  entry (empty when neither nameserver nor searchdomain is known);
- `meta-data`: only `instance-id:`, the SHA-1 of user-data followed by network-config (so a
  change to either is a new instance); no `local-hostname`;
- `vendor-data`: empty.

The ISO is made with `genisoimage -quiet -iso-level 3 -J -R -V cidata` (xorriso's mkisofs
emulation with the same options where genisoimage is not installed).

build_pve_cidata() writes exactly that, from the same inputs as `qm set`, so that a test boots
the appliance with what a Proxmox host would attach.
"""

from __future__ import annotations

import hashlib
import ipaddress
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

LABEL = "cidata"
# Proxmox VE's own MAC prefix (BC:24:11): what a new net0 gets.
DEFAULT_MAC = "BC:24:11:4D:57:01"


@dataclass(frozen=True)
class PveCidata:
    iso: Path
    files: dict[str, str]  # name on the drive -> contents, the four Proxmox writes


def pve_hostname_fqdn(name: str | None, vmid: int, searchdomain: str | None) -> tuple[str, str]:
    """Host name and FQDN as Proxmox derives them from the VM name (no dot: + search domain)."""
    hostname = name or f"VM{vmid}"
    if "." in hostname:
        return hostname.split(".", 1)[0], hostname
    return hostname, f"{hostname}.{searchdomain}" if searchdomain else hostname


def pve_user_data(*, name: str | None, vmid: int, searchdomain: str | None,
                  ciuser: str | None = None, cipassword: str | None = None,
                  sshkeys: str | None = None, ciupgrade: bool = True) -> str:
    """Proxmox's own user-data (when no `cicustom user=` is given). cipassword is the value
    stored in the VM config (Proxmox hashes a plain one when it is set); sshkeys the text of
    the file given to `qm set --sshkeys`."""
    hostname, fqdn = pve_hostname_fqdn(name, vmid, searchdomain)
    out = f"#cloud-config\nhostname: {hostname}\nmanage_etc_hosts: true\nfqdn: {fqdn}\n"
    if ciuser is not None:
        out += f"user: {ciuser}\n"
        if ciuser == "root":
            out += "disable_root: False\n"
    if cipassword is not None:
        out += f"password: {cipassword}\n"
    if sshkeys is not None:
        # Lines, chomped, blank ones dropped; comment lines are kept as they are.
        keys = [line.rstrip("\n") for line in sshkeys.split("\n")]
        out += "ssh_authorized_keys:\n" + "".join(f"  - {k}\n" for k in keys if k.strip())
    out += "chpasswd:\n  expire: False\n"
    if ciuser != "root":
        out += "users:\n  - default\n"
    if ciupgrade:
        out += "package_upgrade: true\n"
    return out


def _ipconfig(value: str) -> dict[str, str]:
    props = dict(part.split("=", 1) for part in value.split(",") if part)
    unknown = set(props) - {"ip", "gw", "ip6", "gw6"}
    if unknown:
        raise ValueError(f"ipconfig: unknown keys {sorted(unknown)}")
    if "gw" in props and props.get("ip", "dhcp") == "dhcp":
        raise ValueError("ipconfig: gw needs a static ip")
    if "ip" not in props and "ip6" not in props:
        return {"ip": "dhcp", "ip6": "dhcp"}
    return props


def pve_network_config(*, ipconfig0: str | None, macaddr: str = DEFAULT_MAC,
                       nameservers: Sequence[str] = (), searchdomain: str | None = None) -> str:
    """Proxmox's nocloud network-config (version 1) for a VM with one NIC, net0."""
    out = "version: 1\nconfig:\n"
    if ipconfig0:
        net = _ipconfig(ipconfig0)
        out += (f"    - type: physical\n      name: eth0\n      mac_address: '{macaddr.lower()}'\n"
                "      subnets:\n")
        indent = "        "
        ip = net.get("ip")
        if ip == "dhcp":
            out += f"{indent}- type: dhcp4\n"
        elif ip is not None:
            if "/" not in ip:
                raise ValueError(f"not a CIDR: {ip}")
            address = ipaddress.IPv4Interface(ip)
            out += (f"{indent}- type: static\n{indent}  address: '{ip.split('/')[0]}'\n"
                    f"{indent}  netmask: '{address.netmask}'\n")
            if "gw" in net:
                out += f"{indent}  gateway: '{net['gw']}'\n"
        ip6 = net.get("ip6")
        if ip6 == "dhcp":
            out += f"{indent}- type: dhcp6\n"
        elif ip6 == "auto":
            out += f"{indent}- type: ipv6_slaac\n"
        elif ip6 is not None:
            out += f"{indent}- type: static6\n{indent}  address: '{ip6}'\n"
            if "gw6" in net:
                out += f"{indent}  gateway: '{net['gw6']}'\n"
    # Proxmox tests two list references here, always true: the entry is always written.
    out += "    - type: nameserver\n"
    if nameservers:
        out += "      address:\n" + "".join(f"      - '{n}'\n" for n in nameservers)
    search = (searchdomain or "").split()
    if search:
        out += "      search:\n" + "".join(f"      - '{s}'\n" for s in search)
    return out


def pve_files(*, name: str | None = "mailwarden", vmid: int = 9000,
              user_data: str | None = None, ipconfig0: str | None = None,
              nameservers: Sequence[str] = (), searchdomain: str | None = None,
              sshkeys: str | None = None, ciuser: str | None = None,
              cipassword: str | None = None, ciupgrade: bool = True,
              macaddr: str = DEFAULT_MAC) -> dict[str, str]:
    """The four files Proxmox writes; user_data is the `cicustom user=` snippet, if any (it
    replaces Proxmox's own user-data whole: name, ciuser, sshkeys... then do not reach it)."""
    if user_data is None:
        user_data = pve_user_data(name=name, vmid=vmid, searchdomain=searchdomain,
                                  ciuser=ciuser, cipassword=cipassword, sshkeys=sshkeys,
                                  ciupgrade=ciupgrade)
    network = pve_network_config(ipconfig0=ipconfig0, macaddr=macaddr,
                                 nameservers=nameservers, searchdomain=searchdomain)
    instance = hashlib.sha1((user_data + network).encode(), usedforsecurity=False).hexdigest()
    files = {"user-data": user_data, "network-config": network,
             "meta-data": f"instance-id: {instance}\n", "vendor-data": ""}
    if sum(len(v.encode()) for v in files.values()) > 3 * 1024 * 1024:
        raise ValueError("Cloud-Init sum of snippets too big (> 3 MiB)")
    return files


def build_pve_cidata(out_iso: Path, *, name: str | None = "mailwarden", vmid: int = 9000,
                     user_data: str | None = None, ipconfig0: str | None = None,
                     nameservers: Sequence[str] = (), searchdomain: str | None = None,
                     sshkeys: str | None = None, ciuser: str | None = None,
                     cipassword: str | None = None, ciupgrade: bool = True,
                     macaddr: str = DEFAULT_MAC,
                     extra_files: Mapping[str, bytes] | None = None) -> PveCidata:
    """Write Proxmox VE's NoCloud drive for these `qm set` inputs to out_iso.

    name is the VM name (Proxmox's source of the guest's host name); user_data the contents of
    the `cicustom user=` snippet (e.g. a Mailwarden answer file); sshkeys the text of the
    `--sshkeys` file. extra_files (relative path -> bytes, e.g. `clamav/e2e.hdb`) are not
    something Proxmox writes: they are for the test tier's ClamAV signatures, which the
    appliance also reads from the drive.
    """
    files = pve_files(name=name, vmid=vmid, user_data=user_data, ipconfig0=ipconfig0,
                      nameservers=nameservers, searchdomain=searchdomain, sshkeys=sshkeys,
                      ciuser=ciuser, cipassword=cipassword, ciupgrade=ciupgrade,
                      macaddr=macaddr)
    with tempfile.TemporaryDirectory(prefix="pve-cidata-") as tmp:
        folder = Path(tmp)
        for filename, text in files.items():
            (folder / filename).write_text(text, encoding="utf-8")
        for relative, data in (extra_files or {}).items():
            path = (folder / relative).resolve()
            if not path.is_relative_to(folder.resolve()) or relative in files:
                raise ValueError(f"extra file {relative!r} is outside the drive or replaces "
                                 "one Proxmox writes")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        out_iso.unlink(missing_ok=True)
        options = ["-quiet", "-iso-level", "3", "-J", "-R", "-V", LABEL]
        if shutil.which("genisoimage"):
            command = ["genisoimage", *options, "-o", str(out_iso), str(folder)]
        else:
            command = ["xorriso", "-as", "mkisofs", *options, "-o", str(out_iso), str(folder)]
        subprocess.run(command, check=True, capture_output=True, timeout=120)
    return PveCidata(out_iso, files)


def read_iso(iso: Path, into: Path) -> str:
    """Extract an ISO's files into a folder (no mount needed); returns its volume label."""
    into.mkdir(parents=True, exist_ok=True)
    subprocess.run(["xorriso", "-osirrox", "on", "-indev", str(iso), "-extract", "/",
                    str(into)], check=True, capture_output=True, timeout=120)
    info = subprocess.run(["xorriso", "-indev", str(iso), "-pvd_info"], check=True,
                          capture_output=True, text=True, timeout=120)
    for line in (info.stdout + info.stderr).splitlines():
        if line.startswith("Volume Id"):
            return line.split(":", 1)[1].strip()
    raise ValueError(f"{iso}: no volume id")
