"""The installer ISO's installer, without a disk: the disks it lists from a sysfs tree, the
checks before it writes one, its partition table, fstab and ESP, the answer file it reads,
and its dialogue (scripted answers, a live system stand-in that records what it would do).
Writing a real disk and booting it is the end-to-end tier's (tests/e2e/test_install.py)."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest

from mailwarden.console.terminal import Terminal
from mailwarden.errors import StateError
from mailwarden.firstboot.answers import InstallAnswer
from mailwarden.firstboot.seed import Seed, answers_from_text
from mailwarden.install import system
from mailwarden.install.disks import (
    MIN_DISK,
    Disk,
    InstallError,
    check,
    disk_of,
    list_disks,
    partition_paths,
    resolve,
)
from mailwarden.install.installer import Installer, Options, options_from_cmdline, read_answers

GIB = 1024**3
HASH = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHRzYWx0$4Ijo6+o4m4JvXb9BZ4Vn5xO4vTMnIQiXVz8l0y0sW0s"
ANSWERS = f"""version: 1
install: {{disk: auto}}
hostname: mx1.example.org
admin: {{password_hash: "{HASH}"}}
domains: [{{name: example.org, server: 10.0.0.5}}]
"""


def _block(root: Path, name: str, size: int, *, model: str = "", parts: int = 0,
           removable: bool = False, ro: bool = False) -> None:
    entry = root / name
    (entry / "device").mkdir(parents=True)
    (entry / "size").write_text(f"{size // 512}\n")
    (entry / "removable").write_text("1\n" if removable else "0\n")
    (entry / "ro").write_text("1\n" if ro else "0\n")
    if model:
        (entry / "device" / "model").write_text(model + "   \n")
    for number in range(1, parts + 1):
        part = entry / f"{name}{number}"
        part.mkdir()
        (part / "partition").write_text(f"{number}\n")
        (part / "size").write_text("2048\n")


@pytest.fixture
def sysfs(tmp_path: Path) -> Path:
    root = tmp_path / "block"
    _block(root, "sda", 10 * GIB, model="QEMU HARDDISK")
    _block(root, "sdb", 500 * GIB, model="Samsung SSD", parts=2)
    _block(root, "sdc", 4 * GIB, model="small")
    _block(root, "sr0", GIB, model="QEMU DVD-ROM", removable=True)
    _block(root, "loop0", GIB)
    _block(root, "vda", 20 * GIB, ro=True)
    return root


def _probe(path: str) -> str | None:
    return {"/dev/sdb": "gpt", "/dev/sdb1": "vfat", "/dev/sdb2": "ext4"}.get(path)


def test_disks_listed_from_sysfs_without_cd_loop_or_partitions(sysfs: Path) -> None:
    disks = list_disks(sys_block=sysfs, probe=_probe)
    assert [d.name for d in disks] == ["sda", "sdb", "sdc", "vda"]
    sda, sdb = disks[0], disks[1]
    assert sda.describe().split() == ["/dev/sda", "10.0", "GiB", "QEMU", "HARDDISK", "empty"]
    assert sdb.contents() == "holds data: gpt 2 partitions (ext4, vfat)"
    assert "read-only" in disks[3].describe()


def test_medium_disk_left_out(sysfs: Path) -> None:
    names = [d.name for d in list_disks(sys_block=sysfs, probe=_probe,
                                        exclude=frozenset({"sdb"}))]
    assert "sdb" not in names


def test_disk_of_a_partition_is_its_parent(sysfs: Path, tmp_path: Path) -> None:
    # sysfs links partitions under their disk: sdb1's real folder is .../sdb/sdb1.
    (sysfs / "sdb1").symlink_to(sysfs / "sdb" / "sdb1")
    assert disk_of("/dev/sdb1", sys_block=sysfs) == "sdb"
    assert disk_of("/dev/sda", sys_block=sysfs) == "sda"


def test_partition_nodes_come_from_sysfs(sysfs: Path, tmp_path: Path) -> None:
    dev = tmp_path / "dev"
    dev.mkdir()
    (dev / "sdb1").touch()
    # sdb2 has no node yet (udev has not made it): not listed until it has.
    assert partition_paths("sdb", sys_block=sysfs, dev=dev) == {1: str(dev / "sdb1")}
    (dev / "sdb2").touch()
    assert partition_paths("sdb", sys_block=sysfs, dev=dev) == {1: str(dev / "sdb1"),
                                                                  2: str(dev / "sdb2")}


@pytest.mark.parametrize(("name", "wipe", "message"), [
    ("sdc", True, "too small: 4.0 GiB, the appliance needs at least 8.0 GiB"),
    ("vda", True, "read-only"),
    ("sdb", False, "holds data: gpt 2 partitions (ext4, vfat); it is only overwritten when"),
])
def test_unfit_disks_refused(sysfs: Path, name: str, wipe: bool, message: str) -> None:
    disk = next(d for d in list_disks(sys_block=sysfs, probe=_probe) if d.name == name)
    with pytest.raises(InstallError, match=re.escape(message)):
        check(disk, wipe=wipe)


def test_disk_with_data_taken_when_wipe_confirmed(sysfs: Path) -> None:
    disks = list_disks(sys_block=sysfs, probe=_probe)
    assert resolve("/dev/sdb", disks, wipe=True).name == "sdb"
    assert resolve("sdb", disks, wipe=True).name == "sdb"


def test_auto_takes_the_first_empty_disk_large_enough(sysfs: Path) -> None:
    assert resolve("auto", list_disks(sys_block=sysfs, probe=_probe), wipe=False).name == "sda"


def test_auto_never_picks_a_disk_with_data_among_several(sysfs: Path) -> None:
    disks = [d for d in list_disks(sys_block=sysfs, probe=_probe) if d.name != "sda"]
    with pytest.raises(InstallError, match=r"no empty disk of at least 8\.0 GiB"):
        resolve("auto", disks, wipe=False)


def test_unknown_disk_named(sysfs: Path) -> None:
    with pytest.raises(InstallError, match=r"install\.disk /dev/sdz: no such disk"):
        resolve("/dev/sdz", list_disks(sys_block=sysfs, probe=_probe), wipe=True)


# --- what is written ---------------------------------------------------------------------------


def test_partition_table_is_the_disk_images() -> None:
    argv = system.partition_command(Disk("sda", 10 * GIB, "", False, False))
    assert argv[:2] == ["sgdisk", "-o"] and argv[-1] == "/dev/sda"
    assert {"-t1:EF02", "-t2:EF00", "-t3:8304", "-n2:0:+200M", "-n1:1M:+1M"} <= set(argv)
    end = int(next(a for a in argv if a.startswith("-n3:")).split(":")[2])
    # Ends on a 1 MiB boundary one MiB before the end: systemd-repart can grow it.
    assert (end + 1) % 2048 == 0 and (end + 1) * 512 == 10 * GIB - 1024**2


def test_fstab_root_line_names_the_new_file_system() -> None:
    image = "# fstab\nLABEL=mw-root\t/\text4\tdefaults,errors=remount-ro,x-systemd.growfs\t0\t1\n"
    assert system.fstab_for(image, "1234-abcd").splitlines() == [
        "# fstab", "UUID=1234-abcd\t/\text4\tdefaults,errors=remount-ro,x-systemd.growfs\t0\t1"]
    assert "UUID=u\t/\text4" in system.fstab_for("", "u")


def _system_tree(root: Path) -> Path:
    for name, data in ((system.SHIM, b"shim"), (system.MOKMANAGER, b"mm"),
                       (system.GRUB_EFI, b"grub")):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def test_esp_holds_the_signed_chain_on_both_paths(tmp_path: Path) -> None:
    files = system.esp_files(_system_tree(tmp_path / "target"), "abcd")
    assert files["EFI/BOOT/BOOTX64.EFI"] == b"shim" == files["EFI/debian/shimx64.efi"]
    assert files["EFI/BOOT/grubx64.efi"] == b"grub"
    assert b"search.fs_uuid abcd root" in files["EFI/debian/grub.cfg"]
    esp = tmp_path / "esp"
    system.write_files(esp, files)
    assert (esp / "EFI/BOOT/mmx64.efi").read_bytes() == b"mm"


def test_esp_refused_without_shim(tmp_path: Path) -> None:
    with pytest.raises(InstallError, match=r"shimx64\.efi\.signed"):
        system.esp_files(tmp_path, "abcd")


def test_seed_on_esp_is_what_first_boot_reads(tmp_path: Path) -> None:
    answers = answers_from_text(ANSWERS, "cidata:/dev/sr1/mailwarden.yaml")
    files = system.seed_files(answers, {"e2e.hdb": b"sig"})
    assert files["clamav/e2e.hdb"] == b"sig"
    text = files["mailwarden.yaml"].decode()
    assert "install" not in json.loads(text)
    # First boot's own reader takes it, and it means the same.
    again = answers_from_text(text, "MW-ESP:/dev/sda2/mailwarden.yaml")
    assert again.hostname == "mx1.example.org" and again.admin.password_hash == HASH
    assert system.seed_files(None, {"x.hdb": b""}) == {}


def test_copy_reports_progress_to_the_end(tmp_path: Path) -> None:
    source, target = tmp_path / "src", tmp_path / "dst"
    (source / "etc").mkdir(parents=True)
    (source / "etc" / "hostname").write_text("mailwarden\n")
    (source / "bin").symlink_to("usr/bin")
    target.mkdir()
    seen: list[tuple[int, int]] = []
    system.copy_system(source, target, lambda done, total: seen.append((done, total)))
    assert (target / "etc/hostname").read_text() == "mailwarden\n"
    assert (target / "bin").is_symlink()
    assert seen[-1][0] == seen[-1][1]


# --- the answer file ---------------------------------------------------------------------------


def test_options_from_kernel_command_line() -> None:
    assert options_from_cmdline("boot=mwlive quiet") == Options("interactive", None)
    assert options_from_cmdline(
        "mailwarden.install=unattended mailwarden.answers=http://10.0.0.1/a.yaml") == \
        Options("unattended", "http://10.0.0.1/a.yaml")
    assert options_from_cmdline("mailwarden.install=bogus").mode == "interactive"


def test_install_only_answer_file() -> None:
    found = read_answers(Seed("medium:/dev/sr0/mailwarden.yaml",
                              "version: 1\ninstall: {disk: /dev/vda, wipe: true}\n"))
    assert found.answers is None and found.install == InstallAnswer(disk="/dev/vda", wipe=True)


def test_full_answer_file_with_install_section() -> None:
    found = read_answers(Seed("cidata:/dev/sr1/mailwarden.yaml", ANSWERS, {"a.hdb": b"x"}))
    assert found.answers is not None and found.answers.hostname == "mx1.example.org"
    assert found.install.disk == "auto" and found.signatures == {"a.hdb": b"x"}


def test_bad_install_section_refused_with_its_path() -> None:
    with pytest.raises(StateError, match=r"install.wipee"):
        read_answers(Seed("a.yaml", ANSWERS.replace("{disk: auto}", "{wipee: true}")))
    with pytest.raises(StateError, match=r"install.disk"):
        read_answers(Seed("a.yaml", ANSWERS.replace("{disk: auto}", "{disk: '; rm -rf /'}")))


# --- the dialogue ------------------------------------------------------------------------------


class FakeLive:
    """The live system, recording instead of writing."""

    def __init__(self, disks: list[Disk], seed: Seed | None) -> None:
        self._disks = disks
        self.seed = seed
        self.events: list[str] = []

    def disks(self) -> list[Disk]:
        return self._disks

    def find_answers(self, options: Options, say: object) -> Seed | None:
        return self.seed

    def reboot(self) -> None:
        self.events.append("reboot")

    def shell(self) -> None:
        self.events.append("shell")


class RecordingInstaller(Installer):
    def install(self, disk: Disk, found: object) -> None:
        self.live.events.append(f"install {disk.name}")  # type: ignore[attr-defined]


def _run(lines: list[str], disks: list[Disk], seed: Seed | None,
         mode: str = "interactive") -> tuple[FakeLive, str]:
    out = io.StringIO()
    live = FakeLive(disks, seed)
    term = Terminal(io.StringIO("".join(line + "\n" for line in lines)), out)
    RecordingInstaller(term, live).run(Options(mode))  # type: ignore[arg-type]
    return live, out.getvalue()


def _disks(sysfs: Path) -> list[Disk]:
    return list_disks(sys_block=sysfs, probe=_probe)


def test_interactive_refuses_a_small_disk_then_installs_on_the_empty_one(sysfs: Path) -> None:
    live, out = _run(["3", "", "yes", ""], _disks(sysfs), None)
    assert "MWCONSOLE refused disk: /dev/sdc is too small" in out
    assert live.events == ["install sda", "reboot"]
    assert "1) /dev/sda" in out and "No answer file" in out


def test_interactive_disk_with_data_needs_its_name_typed(sysfs: Path) -> None:
    live, out = _run(["2", "yes", "2", "sdb", ""], _disks(sysfs), None)
    assert out.count("MWCONSOLE prompt erase") == 2
    assert live.events == ["install sdb", "reboot"]


def test_unattended_takes_the_answer_files_disk(sysfs: Path) -> None:
    live, out = _run([], _disks(sysfs), Seed("cidata:/dev/sr1/mailwarden.yaml", ANSWERS),
                     "unattended")
    assert "MWINSTALL answers cidata:/dev/sr1/mailwarden.yaml" in out
    assert "MWINSTALL done /dev/sda" in out
    assert live.events == ["install sda", "reboot"]


def test_unattended_without_answers_fails_into_a_shell(sysfs: Path) -> None:
    live, out = _run([], _disks(sysfs), None, "unattended")
    assert "MWINSTALL failed: unattended install: no answer file" in out
    assert live.events == ["shell"]


def test_unattended_refuses_a_disk_with_data_unless_wiped(sysfs: Path) -> None:
    seed = Seed("a.yaml", ANSWERS.replace("{disk: auto}", "{disk: sdb}"))
    live, out = _run([], _disks(sysfs), seed, "unattended")
    assert "MWINSTALL failed: /dev/sdb holds data" in out and live.events == ["shell"]


def test_minimum_is_the_disk_images_size() -> None:
    assert MIN_DISK == 8 * GIB
