"""Machine identity, made on this machine at its first boot and never shipped in the image.

Every appliance built from the same image (or cloned from a template VM) would otherwise share
its machine-id, SSH host keys, TLS keys and DKIM keys: one leaked image, every gateway's keys.
`regenerate` runs once (a stamp records it) and replaces whatever it finds.
"""

from __future__ import annotations

import datetime as dt
import grp
import json
import logging
import os
import pwd
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .. import secrets
from ..files import write_atomic
from ..layout import Layout
from ..process import run

log = logging.getLogger("mailwarden.firstboot")

STAMP = "/var/lib/mailwarden/firstboot/identity.json"
# Secrets the appliance makes for itself: the SMTP certificate the state names by default,
# and the API's own.
CERTIFICATES = ("smtp", "api")
API_USER = "mailwarden-api"
SECRETS_GROUP = "mailwarden-secrets"
_MACHINE_ID = re.compile(r"[0-9a-f]{32}")


@dataclass
class IdentityReport:
    machine_id: str = ""
    ssh_host_keys: list[str] = field(default_factory=list)
    certificates: list[str] = field(default_factory=list)
    dkim_keys: list[str] = field(default_factory=list)
    time: str = ""


def done(layout: Layout) -> bool:
    return layout.path(STAMP).exists()


def regenerate(layout: Layout, hostname: str, *, root: Path = Path("/"),
               live: bool = True) -> IdentityReport:
    """New machine-id, SSH host keys, certificates and DKIM keys; records a stamp."""
    report = IdentityReport(time=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
    report.machine_id = machine_id(root, live=live)
    report.ssh_host_keys = ssh_host_keys(root, live=live)
    report.certificates = certificates(layout, hostname)
    report.dkim_keys = dkim_keys(layout)
    stamp = layout.path(STAMP)
    stamp.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
    write_atomic(stamp, (json.dumps(asdict(report), indent=2) + "\n").encode(), 0o640)
    return report


def machine_id(root: Path, *, live: bool) -> str:
    """The image's machine-id is 'uninitialized': systemd makes one at the first boot (and
    commits it when /etc is writable). Keep that one (journald already files this boot's
    logs under it); make one only where there is none."""
    path = root / "etc/machine-id"
    current = path.read_text().strip() if path.exists() else ""
    if live and _is_mount_point(path):
        run(["systemd-machine-id-setup", "--commit"])
    elif not _MACHINE_ID.fullmatch(current):
        if live:
            path.unlink(missing_ok=True)
            run(["systemd-machine-id-setup"])
        else:
            write_atomic(path, (os.urandom(16).hex() + "\n").encode(), 0o444)
    dbus = root / "var/lib/dbus/machine-id"
    if dbus.exists() and not dbus.is_symlink():
        dbus.unlink()
        dbus.symlink_to("/etc/machine-id")
    return path.read_text().strip()


def _is_mount_point(path: Path) -> bool:
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as mounts:
            return any(line.split()[4] == str(path) for line in mounts)
    except OSError:
        return False


def ssh_host_keys(root: Path, *, live: bool) -> list[str]:
    """Remove every host key the image may carry and make new ones (if OpenSSH is here)."""
    folder = root / "etc/ssh"
    if not (root / "usr/sbin/sshd").exists():
        return []
    for old in folder.glob("ssh_host_*"):
        old.unlink()
    if live:
        run(["ssh-keygen", "-A"])
    else:
        # ssh-keygen -A only knows /etc/ssh; -f takes the prefix of another root.
        run(["ssh-keygen", "-A", "-f", str(root)])
    return sorted(p.name for p in folder.glob("ssh_host_*_key.pub"))


def certificates(layout: Layout, hostname: str) -> list[str]:
    """Fresh self-signed certificates for SMTP and the API, named after this host."""
    folder = layout.secrets_dir
    made = []
    for name in CERTIFICATES:
        for suffix in (".key", ".crt"):
            (folder / f"{name}{suffix}").unlink(missing_ok=True)
        secrets.ensure_self_signed(folder, name, hostname)
        made.append(name)
    # gunicorn reads the API's key as the API's user; Postfix reads its own as root.
    _give(folder / "api.key", API_USER, SECRETS_GROUP, 0o600)
    _give(folder / "api.crt", API_USER, SECRETS_GROUP, 0o644)
    return made


def dkim_keys(layout: Layout) -> list[str]:
    """DKIM keys found at first boot came with the image or a cloned VM: new key material
    under the same names (their DNS records must be published again)."""
    folder = layout.secrets_dir
    renewed: list[str] = []
    if not folder.is_dir():
        return renewed
    skip = {f"{n}{s}" for n in CERTIFICATES for s in (".key", ".crt")}
    for path in sorted(folder.iterdir()):
        if path.name in skip or not path.is_file() or path.is_symlink():
            continue
        head = path.read_bytes()[:64]
        if b"PRIVATE KEY-----" not in head:
            continue
        info = path.stat()
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            fresh = Path(tmp) / "key"
            # -traditional: PKCS#1, the form dkimpy reads (as mail/dkim.py writes them).
            run(["openssl", "genrsa", "-traditional", "-out", fresh, "2048"])
            os.chown(fresh, info.st_uid, info.st_gid)
            os.chmod(fresh, info.st_mode & 0o777)
            os.replace(fresh, path)
        renewed.append(path.name)
        log.warning("DKIM key %s renewed: publish its new DNS record", path.name)
    return renewed


def _give(path: Path, user: str, group: str, mode: int) -> None:
    """chown to user:group where they exist (the appliance), chmod always."""
    try:
        uid = pwd.getpwnam(user).pw_uid
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        uid = gid = -1
    if path.exists():
        if uid != -1 and os.geteuid() == 0:
            os.chown(path, uid, gid)
        os.chmod(path, mode)


def seed_unbound_root_key(root: Path = Path("/")) -> bool:
    """Unbound's DNSSEC trust anchor before the first apply: unbound-checkconf refuses a
    configuration whose auto-trust-anchor-file does not exist yet. From dns-root-data."""
    target = root / "var/lib/unbound/root.key"
    source = root / "usr/share/dns/root.key"
    if target.exists() or not source.exists():
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    try:
        entry = pwd.getpwnam("unbound")
        os.chown(target, entry.pw_uid, entry.pw_gid)
        os.chown(target.parent, entry.pw_uid, entry.pw_gid)
    except KeyError:
        pass
    os.chmod(target, 0o644)
    return True
