"""The disks an installer may write, from sysfs (the kernel's own view; the live system's udev
database is not relied on), and the checks before one is chosen."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import MailwardenError
from ..process import run

SYS_BLOCK = Path("/sys/class/block")
DEV = Path("/dev")
# The disk image's size: the root file system, its growth room and the boot partitions.
MIN_DISK = 8 * 1024**3
# Devices that are never an installation target.
_NOT_DISKS = ("loop", "ram", "zram", "sr", "fd", "dm-", "md", "nbd", "mmcblk0boot")


class InstallError(MailwardenError):
    """The installation cannot go on; the message says what failed."""

    code = "install_failed"


# A probe: the file system or partition table found on a device ("ext4", "gpt"), or None.
Probe = Callable[[str], str | None]


def blkid_probe(path: str) -> str | None:
    """What blkid finds on the device itself, reading it afresh (-p: no cache, no udev)."""
    result = run(["blkid", "-p", "-o", "export", path], check=False, timeout=60)
    if result.returncode == 2:  # nothing found
        return None
    values = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    found = values.get("PTTYPE") or values.get("TYPE")
    return found or ("unknown data" if result.returncode == 0 else None)


@dataclass(frozen=True)
class Disk:
    name: str  # sda, nvme0n1
    size: int  # bytes
    model: str
    removable: bool
    readonly: bool
    # (partition name, what is on it) for each partition; the disk's own signature apart.
    partitions: tuple[tuple[str, str | None], ...] = ()
    signature: str | None = None

    @property
    def path(self) -> str:
        return f"/dev/{self.name}"

    @property
    def empty(self) -> bool:
        return not self.partitions and self.signature is None

    def contents(self) -> str:
        if self.empty:
            return "empty"
        if self.partitions:
            kinds = sorted({kind or "unknown" for _, kind in self.partitions})
            count = len(self.partitions)
            table = f"{self.signature} " if self.signature else ""
            return (f"holds data: {table}{count} partition{'s' if count != 1 else ''} "
                    f"({', '.join(kinds)})")
        return f"holds data: {self.signature}"

    def describe(self) -> str:
        flags = "".join([", removable" if self.removable else "",
                         ", read-only" if self.readonly else ""])
        return (f"{self.path:<16} {gib(self.size):>10}  {self.model or 'unknown model'}"
                f"{flags}  {self.contents()}")


def gib(size: int) -> str:
    return f"{size / 1024**3:.1f} GiB"


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return ""


def list_disks(*, sys_block: Path = SYS_BLOCK, probe: Probe = blkid_probe,
               exclude: frozenset[str] = frozenset()) -> list[Disk]:
    """Whole disks with a size, in the kernel's order; `exclude` names (the medium's disk)
    left out."""
    disks = []
    for entry in sorted(sys_block.iterdir(), key=lambda p: p.name):
        name = entry.name
        if name in exclude or name.startswith(_NOT_DISKS) or (entry / "partition").exists():
            continue
        sectors = _read(entry / "size")
        size = int(sectors) * 512 if sectors.isdigit() else 0
        if size == 0:
            continue
        model = " ".join(_read(entry / "device" / part) for part in ("vendor", "model")
                         if _read(entry / "device" / part))
        parts = tuple((part, probe(f"/dev/{part}")) for part in _partitions(entry))
        disks.append(Disk(name, size, " ".join(model.split()),
                          _read(entry / "removable") == "1", _read(entry / "ro") == "1",
                          parts, probe(f"/dev/{name}")))
    return disks


def _partitions(entry: Path) -> list[str]:
    found = [(int(_read(child / "partition") or 0), child.name) for child in entry.iterdir()
             if (child / "partition").exists()]
    return [name for _, name in sorted(found)]


def partition_paths(disk: str, *, sys_block: Path = SYS_BLOCK,
                    dev: Path = DEV) -> dict[int, str]:
    """Partition number -> device node, for the partitions the kernel knows and udev has made
    a node for (lsblk's partition numbers come from the udev database, which a live system
    may not have filled yet)."""
    found = {}
    for child in (sys_block / disk).iterdir():
        number = _read(child / "partition")
        if number.isdigit() and (dev / child.name).exists():
            found[int(number)] = str(dev / child.name)
    return found


def disk_of(device: str, *, sys_block: Path = SYS_BLOCK) -> str:
    """The whole disk a device belongs to: sdb for /dev/sdb1, sr0 for /dev/sr0."""
    name = os.path.basename(os.path.realpath(device))
    entry = sys_block / name
    if (entry / "partition").exists():
        return Path(os.path.realpath(entry)).parent.name
    return name


def resolve(wanted: str, disks: list[Disk], *, wipe: bool, minimum: int = MIN_DISK) -> Disk:
    """The disk an answer file names ('auto', a name, a /dev path or a by-id link), checked."""
    if wanted == "auto":
        fits = [d for d in disks if d.size >= minimum and not d.readonly]
        empty = [d for d in fits if d.empty]
        if empty:
            return empty[0]
        if wipe and len(fits) == 1:
            return fits[0]
        listing = "\n".join(f"  {d.describe()}" for d in disks) or "  (no disks found)"
        reason = ("no empty disk of at least " + gib(minimum) if not wipe or not fits
                  else f"{len(fits)} disks could be overwritten; name one")
        raise InstallError(f"install.disk auto: {reason}\n{listing}")
    name = os.path.basename(os.path.realpath(wanted if "/" in wanted else f"/dev/{wanted}"))
    for disk in disks:
        if disk.name == name:
            check(disk, wipe=wipe, minimum=minimum)
            return disk
    raise InstallError(f"install.disk {wanted}: no such disk (found: "
                       f"{', '.join(d.path for d in disks) or 'none'})")


def check(disk: Disk, *, wipe: bool, minimum: int = MIN_DISK) -> None:
    if disk.readonly:
        raise InstallError(f"{disk.path} is read-only")
    if disk.size < minimum:
        raise InstallError(f"{disk.path} is too small: {gib(disk.size)}, the appliance needs "
                           f"at least {gib(minimum)}")
    if not disk.empty and not wipe:
        raise InstallError(f"{disk.path} {disk.contents()}; it is only overwritten when that "
                           "is confirmed (install.wipe: true in an answer file)")
