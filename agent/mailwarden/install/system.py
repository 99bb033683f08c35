"""Writing the system: partitions, file systems, the root file system copied from the live
medium, /etc/fstab, both boot loaders, and the answers for first boot.

The layout is the disk image's (image/lib/assemble-disk.sh): 1 BIOS boot (1 MiB), 2 EFI system
partition (200 MiB, FAT32 `MW-ESP`), 3 root (ext4 `mw-root`, type "Linux x86-64 root"), so
that first boot, growing the root and later upgrades see one kind of disk. Secure Boot takes
the same chain: Debian's shim (signed by Microsoft's UEFI CA), Debian's signed GRUB, the
signed kernel.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from ..files import write_atomic
from ..firstboot.answers import Answers
from ..process import run
from .disks import DEV, SYS_BLOCK, Disk, InstallError, partition_paths

ESP_MIB = 200
ESP_LABEL = "MW-ESP"
ROOT_LABEL = "mw-root"
SHIM = "usr/lib/shim/shimx64.efi.signed"
MOKMANAGER = "usr/lib/shim/mmx64.efi.signed"
GRUB_EFI = "usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed"

Progress = Callable[[int, int], None]  # bytes written, bytes in all


def root_end_sector(size: int) -> int:
    """The root partition's last sector: on a 1 MiB boundary, leaving the disk's last MiB
    (with the backup GPT) unused, as the disk image does: systemd-repart, growing a partition
    whose size is not a multiple of 4 KiB, asks for sectors the disk does not have."""
    sectors = size // 512
    return (sectors // 2048 - 1) * 2048 - 1


def partition_command(disk: Disk) -> list[str]:
    return ["sgdisk", "-o",
            "-n1:1M:+1M", "-t1:EF02", "-c1:bios-boot",
            f"-n2:0:+{ESP_MIB}M", "-t2:EF00", "-c2:esp",
            f"-n3:0:{root_end_sector(disk.size)}", "-t3:8304", "-c3:root",
            disk.path]


def partition(disk: Disk, *, sys_block: Path = SYS_BLOCK, dev: Path = DEV,
              wait: float = 30) -> dict[int, str]:
    """A new GPT with the three partitions; their device nodes once udev made them."""
    for _, path in sorted(partition_paths(disk.name, sys_block=sys_block, dev=dev).items()):
        run(["wipefs", "--all", "--quiet", path], timeout=60)
    run(["wipefs", "--all", "--quiet", disk.path], timeout=60)
    run(["sgdisk", "--zap-all", disk.path], timeout=60)
    run(partition_command(disk), timeout=60)
    run(["partx", "--update", disk.path], check=False, timeout=60)
    run(["udevadm", "settle", "--timeout=30"], check=False, timeout=60)
    deadline = time.monotonic() + wait
    while True:
        found = partition_paths(disk.name, sys_block=sys_block, dev=dev)
        if {1, 2, 3} <= set(found):
            return found
        if time.monotonic() > deadline:
            raise InstallError(f"{disk.path}: the new partitions did not appear "
                               f"(found {sorted(found) or 'none'})")
        time.sleep(0.5)


def make_filesystems(parts: dict[int, str]) -> str:
    """FAT32 on the ESP, ext4 on the root (as image/block-device.yaml makes it); the root's
    new UUID."""
    run(["mkfs.vfat", "-F", "32", "-n", ESP_LABEL, parts[2]], timeout=120)
    run(["mkfs.ext4", "-q", "-F", "-L", ROOT_LABEL, "-i", "8192", parts[3]], timeout=600)
    # udev makes /dev/disk/by-uuid/UUID from the new file systems: without that link
    # update-grub writes root=/dev/sdXN, a name that may change, instead of root=UUID=.
    run(["udevadm", "settle", "--timeout=30"], check=False, timeout=60)
    uuid = run(["blkid", "-p", "-s", "UUID", "-o", "value", parts[3]], timeout=60).stdout.strip()
    if not uuid:
        raise InstallError(f"{parts[3]}: no UUID after mkfs.ext4")
    return uuid


@contextlib.contextmanager
def mounted(device: str, folder: Path, *options: str) -> Iterator[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    run(["mount", *(["-o", ",".join(options)] if options else []), device, folder],
        timeout=120)
    try:
        yield folder
    finally:
        run(["umount", folder], check=False, timeout=300)


def tree_size(source: Path) -> int:
    """Bytes of the regular files under source (what the copy writes, near enough)."""
    total = 0
    for folder, _, files in os.walk(source):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(folder, name)).st_size
    return total


def used_bytes(folder: Path) -> int:
    stat = os.statvfs(folder)
    return (stat.f_blocks - stat.f_bfree) * stat.f_frsize


def copy_system(source: Path, target: Path, progress: Progress, every: float = 2.0) -> None:
    """The root file system copied with its owners, modes, links, ACLs and extended
    attributes (file capabilities are those); progress from the target's growth."""
    total = max(tree_size(source), 1)
    before = used_bytes(target)
    # cp, not a Python walk: hard links, sparse files and xattrs are its daily work.
    with subprocess.Popen(["cp", "-a", f"{source}/.", f"{target}/"],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as proc:
        while proc.poll() is None:
            progress(min(used_bytes(target) - before, total), total)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(every)
        output = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
    if proc.returncode != 0:
        raise InstallError(f"copying the system failed (cp exited {proc.returncode}): "
                           f"{output.strip()[-1500:]}")
    progress(total, total)


def fstab_for(text: str, uuid: str) -> str:
    """The image's /etc/fstab with the root line naming this disk's file system (options and
    the growfs marker kept)."""
    lines, found = [], False
    for line in text.splitlines():
        fields = line.split()
        if fields and not fields[0].startswith("#") and len(fields) >= 2 and fields[1] == "/":
            fields[0] = f"UUID={uuid}"
            line, found = "\t".join(fields), True
        lines.append(line)
    if not found:
        lines.append(f"UUID={uuid}\t/\text4\tdefaults,errors=remount-ro,x-systemd.growfs\t0\t1")
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def chroot_mounts(target: Path) -> Iterator[None]:
    """/dev, /proc, /sys of the live system inside the target, for grub-install."""
    done: list[Path] = []
    try:
        for name, argv in (("dev", ["--bind", "/dev"]), ("dev/pts", ["--bind", "/dev/pts"]),
                           ("proc", ["-t", "proc", "proc"]), ("sys", ["-t", "sysfs", "sysfs"])):
            point = target / name
            point.mkdir(exist_ok=True)
            run(["mount", *argv, point], timeout=60)
            done.append(point)
        yield
    finally:
        for point in reversed(done):
            run(["umount", "--lazy", point], check=False, timeout=60)


def install_bios(target: Path, disk: Disk) -> None:
    run(["chroot", target, "grub-install", "--target=i386-pc", "--boot-directory=/boot",
         disk.path], timeout=600)
    if not (target / "boot/grub/i386-pc/core.img").is_file():
        raise InstallError("grub-install (BIOS) wrote no core.img")


def grub_config(target: Path, uuid: str) -> None:
    run(["chroot", target, "update-grub"], timeout=600)
    config = (target / "boot/grub/grub.cfg").read_text(errors="replace")
    if f"root=UUID={uuid}" not in config:
        raise InstallError(f"update-grub wrote no entry with root=UUID={uuid}")


def esp_files(target: Path, uuid: str) -> dict[str, bytes]:
    """The ESP's files, as the disk image has them: the removable-media path EFI/BOOT (which
    firmware boots without a boot entry) and EFI/debian, each with shim, MokManager, signed
    GRUB and a grub.cfg that finds the root by its UUID."""
    missing = [name for name in (SHIM, MOKMANAGER, GRUB_EFI) if not (target / name).is_file()]
    if missing:
        raise InstallError(f"the system lacks {', '.join(missing)}")
    shim, manager, grub = ((target / name).read_bytes() for name in (SHIM, MOKMANAGER, GRUB_EFI))
    stub = (f"search.fs_uuid {uuid} root\nset prefix=($root)/boot/grub\n"
            "configfile $prefix/grub.cfg\n").encode()
    csv = target / "usr/lib/shim/BOOTX64.CSV"
    files = {}
    for folder in ("BOOT", "debian"):
        files[f"EFI/{folder}/grubx64.efi"] = grub
        files[f"EFI/{folder}/mmx64.efi"] = manager
        files[f"EFI/{folder}/grub.cfg"] = stub
    files["EFI/BOOT/BOOTX64.EFI"] = shim
    files["EFI/debian/shimx64.efi"] = shim
    files["EFI/debian/BOOTX64.CSV"] = csv.read_bytes() if csv.is_file() else \
        "shimx64.efi,Mailwarden,,This is the boot entry for Mailwarden\n".encode("utf-16-le")
    return files


def seed_files(answers: Answers | None, signatures: dict[str, bytes]) -> dict[str, bytes]:
    """What first boot reads from the ESP (mailwarden.firstboot.seed): the answers as one
    document (cloud-init's files beside them already merged in), and ClamAV signatures."""
    if answers is None:
        return {}
    data = answers.model_dump(mode="json", exclude_none=True, exclude={"install"})
    # JSON is YAML: the seed reader takes it as it is.
    files = {"mailwarden.yaml": (json.dumps(data, indent=2) + "\n").encode()}
    files.update({f"clamav/{name}": blob for name, blob in signatures.items()})
    return files


def write_files(folder: Path, files: dict[str, bytes]) -> None:
    for name, data in sorted(files.items()):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, data, 0o600)


def eject(device: str) -> None:
    """Open the tray of the CD the system came from, so that the restart boots the disk.
    Nothing to do for a stick or an image file; a failure is only a missed convenience."""
    cdromeject, cdrom_lockdoor = 0x5309, 0x5329
    import fcntl

    with contextlib.suppress(OSError):
        fd = os.open(device, os.O_RDONLY | os.O_NONBLOCK)
        try:
            with contextlib.suppress(OSError):
                fcntl.ioctl(fd, cdrom_lockdoor, 0)
            fcntl.ioctl(fd, cdromeject, 0)
        finally:
            os.close(fd)
