"""The unattended seed: an answer file found at first boot, applied once.

Where it is looked for, first found wins:

1. a NoCloud volume, file system label `cidata` (or `CIDATA`): what Proxmox VE's cloud-init
   drive is, an ISO made with `xorriso -as mkisofs -V cidata`, or a FAT image `mkfs.vfat -n
   CIDATA`. Its `mailwarden.yaml`, else its `user-data`: either the answers themselves, or a
   `#cloud-config` document with the answers under a `mailwarden:` key (Proxmox:
   `qm set VMID --cicustom user=local:snippets/mailwarden.yaml`). The volume's cloud-init
   files (meta-data, network-config, a #cloud-config user-data) fill the host name, network
   and SSH keys the answers leave out (cloudinit.py); a drive with only those (a plain
   Proxmox VE cloud-init drive) sets nothing up and first boot says what is missing;
2. the boot partition (the FAT EFI system partition, label `MW-ESP`, writable from any
   operating system after `dd` to a disk): `mailwarden.yaml` at its top;
3. `/boot/mailwarden.yaml` (an installer writes it there).

Beside the answers, a `clamav/` folder on the volume may hold ClamAV signature files
(main.cvd, daily.cvd, or your own .hdb/.ndb...): for appliances that cannot reach ClamAV's
mirrors, and for the end-to-end test's EICAR signature.

The answers are applied once: a stamp under /var/lib/mailwarden/firstboot records that (and
what), and a later boot finds the seed but leaves it alone. Answers written for this machine
alone (places 2 and 3: the installer puts them on the boot partition) are removed once
applied: they hold the admin's password hash, and a factory reset, which removes the stamp,
must come back to the wizard rather than to the installer's answers. A NoCloud volume is the
owner's (a Proxmox VE cloud-init drive stays attached) and is left as it is.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import pwd
import re
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import FieldError, MailwardenError, StateError
from ..files import write_atomic
from ..layout import Layout
from ..process import run
from ..state.load import parse_yaml
from .answers import Answers, validate_answers
from .cloudinit import CLOUD_FILES, CLOUD_KEYS, cloud_config, cloud_values

log = logging.getLogger("mailwarden.firstboot")

SEED_LABELS = ("cidata", "CIDATA")
BOOT_LABELS = ("MW-ESP",)
SEED_FILES = ("mailwarden.yaml", "user-data")
BOOT_FILE = "boot/mailwarden.yaml"
STAMP = "/var/lib/mailwarden/firstboot/seed.json"
MAX_SEED = 1024 * 1024
MAX_SIGNATURES = 2 * 1024 * 1024 * 1024
# ClamAV database files clamd loads from its DatabaseDirectory (signature formats and
# containers); nothing else is copied from a seed volume.
_SIGNATURE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,100}\.(cvd|cld|cud|hdb|hsb|hdu|hsu|mdb|"
                        r"msb|mdu|msu|ndb|ndu|ldb|ldu|idb|cdb|cbc|pdb|gdb|wdb|ftm|fp|sfp|ign|"
                        r"ign2|info|crb|yar|yara|imp)$")


class NoAnswers(MailwardenError):
    """A seed volume was found, but it holds no answers for Mailwarden."""

    code = "seed_without_answers"

    def __init__(self, message: str, missing: list[str] | None = None,
                 found: list[str] | None = None) -> None:
        super().__init__(message)
        self.missing = missing or []  # answer keys an unattended set-up still needs
        self.found = found or []  # those cloud-init gave


@dataclass(frozen=True)
class Seed:
    source: str  # where it was found, for the log and the stamp
    text: str
    signatures: dict[str, bytes] = field(default_factory=dict)
    # The volume's other cloud-init files (meta-data, network-config, and user-data when the
    # answers are in mailwarden.yaml): name -> text.
    cloud: dict[str, str] = field(default_factory=dict)
    # Answers written for this machine alone, removed once applied: the file's path on the
    # boot partition `device`, or on the root file system when device is None.
    own_file: str | None = None
    device: str | None = None

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()


# --- reading ---------------------------------------------------------------------------------


def answers_from_text(text: str, source: str,
                      cloud: dict[str, str] | None = None) -> Answers:
    """The answers in a seed file: the file itself, or its `mailwarden:` section; what they
    leave out of hostname, network and ssh_authorized_keys filled from the cloud-init files
    beside it (`cloud`: name -> text) and from the cloud-config around the section."""
    cloud = cloud or {}
    base = source.rsplit("/", 1)[0]
    # The same reader as state files (no aliases, bounded size and depth): root reads this.
    data, lines = parse_yaml(text, source)
    answers: object
    user: dict[str, Any] | None
    if isinstance(data, dict) and "mailwarden" in data:
        answers, user = data["mailwarden"], data
        lines = {path[1:]: line for path, line in lines.items() if path[:1] == ("mailwarden",)}
        where = f"{source} (mailwarden:)"
    elif text.lstrip().startswith("#cloud-config"):
        answers, user, where = None, data if isinstance(data, dict) else None, source
    else:
        answers, where = data, source
        user = cloud_config(cloud.get("user-data", ""), f"{base}/user-data")
    have = answers.keys() if isinstance(answers, dict) else ()
    wanted = tuple(key for key in CLOUD_KEYS if key not in have)
    filled = cloud_values(cloud, user, base, wanted)
    if answers is None:
        required = [name for name, spec in Answers.model_fields.items() if spec.is_required()]
        missing = [name for name in required if name not in filled]
        raise NoAnswers(f"{source} is a cloud-config without a 'mailwarden:' section: "
                        f"{', '.join(missing)} missing for an unattended set-up",
                        missing, sorted(filled))
    if isinstance(answers, dict):
        # The answers' own values win; cloud-init only fills what they leave out.
        answers = {**filled, **answers}
    return validate_answers(answers, where, lines)


def answers_from_seed(found: Seed) -> Answers:
    return answers_from_text(found.text, found.source, found.cloud)


def read_seed_dir(folder: Path, source: str) -> Seed | None:
    """A mounted seed volume (or any folder laid out like one)."""
    for name in SEED_FILES:
        path = folder / name
        if path.is_file():
            return Seed(f"{source}/{name}", _read(path, f"{source}/{name}"),
                        _signatures(folder / "clamav"),
                        {other: _read(folder / other, f"{source}/{other}")
                         for other in CLOUD_FILES
                         if other != name and (folder / other).is_file()})
    return None


def _read(path: Path, source: str) -> str:
    if path.stat().st_size > MAX_SEED:
        raise StateError([FieldError("", f"larger than {MAX_SEED} bytes")], source)
    return path.read_text(encoding="utf-8", errors="replace")


def _signatures(folder: Path) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    if not folder.is_dir():
        return found
    total = 0
    for path in sorted(folder.iterdir()):
        if not path.is_file() or not _SIGNATURE.fullmatch(path.name):
            continue
        total += path.stat().st_size
        if total > MAX_SIGNATURES:
            raise MailwardenError(f"{folder}: more than {MAX_SIGNATURES} bytes of signatures")
        found[path.name] = path.read_bytes()
    return found


# --- finding ---------------------------------------------------------------------------------


def devices_with_label(label: str) -> list[str]:
    """Block devices whose file system has this label (blkid probes afresh, no cache)."""
    result = run(["blkid", "-c", "/dev/null", "-o", "device", "-t", f"LABEL={label}"],
                 check=False, timeout=60)
    return [line.strip() for line in result.stdout.splitlines() if line.startswith("/dev/")]


def mount_point(device: str, mounts: Path = Path("/proc/self/mounts")) -> Path | None:
    """Where the device is mounted already, or None. systemd mounts the EFI system partition
    on /efi by itself on some boots (its gpt-auto generator, for the boot loader's random
    seed), and a second mount of it with other options is refused."""
    try:
        wanted = os.path.realpath(device)
        for line in mounts.read_text().splitlines():
            fields = line.split()
            if len(fields) >= 2 and fields[0].startswith("/dev/") and \
                    os.path.realpath(fields[0]) == wanted:
                # /proc/self/mounts escapes spaces and the like as octal (\040).
                return Path(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)),
                                   fields[1]))
    except OSError:
        return None
    return None


@contextlib.contextmanager
def mounted(device: str, writable: bool = False) -> Iterator[Path]:
    """The device mounted (read-only unless asked; nothing on it runs) on a private folder;
    where the system mounted it already, that mount."""
    already = mount_point(device)
    if already is not None:
        yield already
        return
    with tempfile.TemporaryDirectory(prefix="mw-seed-") as folder:
        mode = "rw" if writable else "ro"
        run(["mount", "-o", f"{mode},nosuid,nodev,noexec", device, folder], timeout=60)
        try:
            yield Path(folder)
        finally:
            run(["umount", folder], check=False, timeout=60)


Finder = Callable[[str], list[str]]


def find_seed(root: Path = Path("/"), *, finder: Finder = devices_with_label,
              mount: Callable[[str], contextlib.AbstractContextManager[Path]] = mounted
              ) -> Seed | None:
    for labels in (SEED_LABELS, BOOT_LABELS):
        for label in labels:
            for device in finder(label):
                try:
                    with mount(device) as folder:
                        seed = read_seed_dir(folder, f"{label}:{device}") if label in \
                            SEED_LABELS else _boot_seed(folder, label, device)
                except MailwardenError as exc:
                    log.warning("seed volume %s (%s) unreadable: %s", device, label,
                                exc.message.splitlines()[0])
                    continue
                if seed is not None:
                    return seed
    path = root / BOOT_FILE
    if path.is_file():
        return Seed(str(path), path.read_text(encoding="utf-8", errors="replace"),
                    own_file=str(path))
    return None


def _boot_seed(folder: Path, label: str, device: str) -> Seed | None:
    path = folder / "mailwarden.yaml"
    if not path.is_file():
        return None
    return Seed(f"{label}:{device}/mailwarden.yaml",
                path.read_text(encoding="utf-8", errors="replace"),
                _signatures(folder / "clamav"), own_file=path.name, device=device)


def consume(found: Seed, *, mount: Callable[[str], contextlib.AbstractContextManager[Path]]
            = lambda device: mounted(device, writable=True)) -> bool:
    """Remove answers written for this machine alone (the module's docstring says why);
    False for a seed that is the owner's to keep."""
    if found.own_file is None:
        return False
    if found.device is None:
        Path(found.own_file).unlink(missing_ok=True)
        return True
    with mount(found.device) as folder:
        # The partition is mounted on a private folder of root's; the name is the seed's own.
        (folder / found.own_file).unlink(missing_ok=True)
    return True


# --- applying once ---------------------------------------------------------------------------


def applied(layout: Layout) -> dict[str, object] | None:
    """What the stamp says was applied, or None."""
    try:
        return dict(json.loads(layout.path(STAMP).read_text()))
    except FileNotFoundError:
        return None


def mark_applied(layout: Layout, seed: Seed, outcome: str, revision: int | None) -> None:
    stamp = layout.path(STAMP)
    stamp.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
    record = {"source": seed.source, "sha256": seed.sha256, "outcome": outcome,
              "revision": revision,
              "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    write_atomic(stamp, (json.dumps(record, indent=2) + "\n").encode(), 0o640)


def install_signatures(seed: Seed, root: Path = Path("/")) -> list[str]:
    """Copy the seed's ClamAV signature files where clamd reads them (owned by clamav)."""
    folder = root / "var/lib/clamav"
    if not seed.signatures:
        return []
    folder.mkdir(parents=True, exist_ok=True)
    try:
        entry = pwd.getpwnam("clamav")
        owner: tuple[int, int] | None = (entry.pw_uid, entry.pw_gid)
    except KeyError:
        owner = None
    for name, data in seed.signatures.items():
        # Owner set on the new file before it appears: clamav may write this folder, and a
        # chown by name afterwards would follow a link it put there.
        write_atomic(folder / name, data, 0o644,
                     owner=owner if os.geteuid() == 0 else None)
    return sorted(seed.signatures)
