"""The installer's dialogue on the console: what the boot entry asked for (interactive,
unattended, a shell), the answer file, the disk, the writing with its progress, and what
happens after (restart, or a shell when something failed).

Lines only, as the console wizard (console.terminal): it works on a serial line and a test
can drive it. Marks for scripts: `MWINSTALL step NAME`, `MWINSTALL progress PERCENT`,
`MWINSTALL done DISK SECONDS`, `MWINSTALL failed: MESSAGE`, and the terminal's
`MWCONSOLE prompt ID` before each question.
"""

from __future__ import annotations

import os
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .. import __version__
from ..console.terminal import Terminal
from ..errors import MailwardenError
from ..firstboot.answers import Answers, InstallAnswer, install_only
from ..firstboot.seed import (
    MAX_SEED,
    SEED_LABELS,
    Seed,
    answers_from_seed,
    devices_with_label,
    mounted,
    read_seed_dir,
)
from ..process import run
from ..state.load import parse_yaml
from . import system
from .disks import MIN_DISK, Disk, InstallError, check, disk_of, gib, list_disks, resolve

LIVE = Path("/run/mwlive")
MARK = "MWINSTALL"
MODES = ("interactive", "unattended", "shell")
TARGET = Path("/run/mailwarden-install/target")
ESP = Path("/run/mailwarden-install/esp")


@dataclass(frozen=True)
class Options:
    mode: str = "interactive"
    answers_url: str | None = None


def options_from_cmdline(text: str) -> Options:
    """mailwarden.install=MODE and mailwarden.answers=URL from the kernel command line."""
    mode, url = "interactive", None
    for word in text.split():
        key, _, value = word.partition("=")
        if key == "mailwarden.install" and value in MODES:
            mode = value
        elif key == "mailwarden.answers" and value:
            url = value
    return Options(mode, url)


@dataclass
class Found:
    """The answer file the installer found: its install section, and the set-up answers
    (None when it only says where to install)."""

    source: str
    install: InstallAnswer
    answers: Answers | None
    signatures: dict[str, bytes] = field(default_factory=dict)


def read_answers(seed: Seed) -> Found:
    data, _ = parse_yaml(seed.text, seed.source)
    inner = data.get("mailwarden") if isinstance(data, dict) and "mailwarden" in data else data
    if install_only(inner):
        assert isinstance(inner, dict)
        install = InstallAnswer.model_validate(inner["install"]) if inner["install"] else \
            InstallAnswer()
        return Found(seed.source, install, None)
    answers = answers_from_seed(seed)
    return Found(seed.source, answers.install or InstallAnswer(), answers, seed.signatures)


def fetch(url: str, limit: int = MAX_SEED) -> Seed:
    if not url.startswith(("https://", "http://")):
        raise InstallError(f"mailwarden.answers={url}: only http:// and https:// URLs")
    try:
        with urllib.request.urlopen(url, timeout=60) as response:  # noqa: S310 (scheme checked)
            data = response.read(limit + 1)
    except OSError as exc:
        raise InstallError(f"cannot fetch the answer file {url}: {exc}") from None
    if len(data) > limit:
        raise InstallError(f"the answer file {url} is larger than {limit} bytes")
    return Seed(url, data.decode("utf-8", errors="replace"))


class Live:
    """The live system around the installer (the real one; tests give their own)."""

    medium = LIVE / "medium"
    squashfs_root = LIVE / "ro"

    def medium_device(self) -> str | None:
        for line in Path("/proc/self/mounts").read_text().splitlines():
            fields = line.split()
            if len(fields) > 1 and fields[1] == str(self.medium):
                return fields[0]
        return None

    def disks(self) -> list[Disk]:
        device = self.medium_device()
        exclude = frozenset({disk_of(device)}) if device else frozenset()
        return list_disks(exclude=exclude)

    def find_answers(self, options: Options, say: Callable[[str], None]) -> Seed | None:
        """An answer file: by URL (kernel command line), else on a volume labelled like the
        NoCloud seed, else on the installation medium itself."""
        if options.answers_url:
            say(f"Bringing up the network (DHCP) for {options.answers_url}")
            run(["systemctl", "start", "systemd-networkd.service"], check=False, timeout=60)
            run(["/usr/lib/systemd/systemd-networkd-wait-online", "--any", "--timeout=90"],
                check=False, timeout=120)
            return fetch(options.answers_url)
        medium = self.medium_device()
        for label in SEED_LABELS:
            for device in devices_with_label(label):
                if device == medium:
                    continue
                with mounted(device) as folder:
                    seed = read_seed_dir(folder, f"{label}:{device}")
                if seed is not None:
                    return seed
        return read_seed_dir(self.medium, f"medium:{medium}") if self.medium.is_dir() else None

    def reboot(self) -> None:
        device = self.medium_device()
        if device and os.path.basename(device).startswith("sr"):
            system.eject(device)
        run(["systemctl", "reboot"], check=False, timeout=60)

    def shell(self) -> None:
        # The console's own shell in place of the installer (a login shell: "-" in argv[0]).
        os.execv("/bin/bash", ["-bash"])  # noqa: S606


class Installer:
    def __init__(self, term: Terminal, live: Live | None = None, *,
                 minimum: int = MIN_DISK) -> None:
        self.term = term
        self.live = live or Live()
        self.minimum = minimum
        self._shown = -1

    def run(self, options: Options) -> int:
        term = self.term
        term.say(f"\nMailwarden installer {__version__}\n")
        if options.mode == "shell":
            term.say("Rescue shell: the installation medium is mounted on /run/mwlive/medium."
                     " `exit` comes back here.")
            self.live.shell()
            return 0
        try:
            found = self._answers(options)
            disk = self._target(options, found)
            started = time.monotonic()
            self.install(disk, found)
        except (MailwardenError, OSError) as exc:
            message = exc.message if isinstance(exc, MailwardenError) else str(exc)
            self._mark(f"failed: {message.splitlines()[0]}")
            term.say(f"\nThe installation failed:\n{message}\n")
            term.say("A shell follows: the log is `journalctl -b`; `exit` starts the installer "
                     "again.")
            self.live.shell()
            return 1
        took = time.monotonic() - started
        self._mark(f"done {disk.path} {took:.0f}")
        term.say(f"\nMailwarden is installed on {disk.path} ({took:.0f} s).")
        if options.mode == "interactive":
            term.ask("restart", "Remove the installation medium and press Enter to restart",
                     default="")
        else:
            term.say("Restarting into the installed system.")
        self.live.reboot()
        return 0

    # --- what to install where --------------------------------------------------------------

    def _answers(self, options: Options) -> Found | None:
        seed = self.live.find_answers(options, self.term.say)
        if seed is None:
            if options.mode == "unattended":
                raise InstallError("unattended install: no answer file (a volume labelled "
                                   "cidata, mailwarden.yaml on the medium, or "
                                   "mailwarden.answers=URL on the kernel command line)")
            self.term.say("No answer file: the appliance asks its questions at first boot.")
            return None
        found = read_answers(seed)
        self._mark(f"answers {found.source}")
        what = "where to install" if found.answers is None else \
            f"where to install and the set-up of {found.answers.hostname}"
        self.term.say(f"Answer file {found.source}: {what}.")
        return found

    def _target(self, options: Options, found: Found | None) -> Disk:
        disks = self.live.disks()
        self.term.say("Disks:")
        for number, disk in enumerate(disks, 1):
            self.term.say(f"  {number}) {disk.describe()}")
        if not disks:
            raise InstallError("no disks found to install on")
        if options.mode == "unattended":
            assert found is not None
            disk = resolve(found.install.disk, disks, wipe=found.install.wipe,
                           minimum=self.minimum)
            self.term.say(f"Installing on {disk.path} as the answer file says.")
            return disk
        return self._ask_disk(disks)

    def _ask_disk(self, disks: list[Disk]) -> Disk:
        def problem(answer: str) -> str | None:
            if not answer.isdigit() or not 1 <= int(answer) <= len(disks):
                return f"answer a number from 1 to {len(disks)}"
            disk = disks[int(answer) - 1]
            try:
                check(disk, wipe=True, minimum=self.minimum)
            except InstallError as exc:
                return exc.message
            return None

        fits = [n for n, d in enumerate(disks, 1)
                if d.size >= self.minimum and not d.readonly]
        default = next((str(n) for n in fits if disks[n - 1].empty), None)
        while True:
            answer = self.term.ask("disk", "Install on which disk (number)", default, problem)
            disk = disks[int(answer) - 1]
            if disk.empty:
                if self.term.confirm("confirm", f"Write Mailwarden to {disk.path} "
                                     f"({gib(disk.size)})?", default=True):
                    return disk
                continue
            typed = self.term.ask("erase", f"{disk.path} {disk.contents()}. Everything on it "
                                  f"will be lost. Type its name ({disk.name}) to erase it, or "
                                  "Enter to choose again", default="")
            if typed == disk.name:
                return disk

    def _mark(self, text: str) -> None:
        """A line for scripts reading the console (the tests, a remote installation log)."""
        self.term.say(f"{MARK} {text}")

    # --- writing ----------------------------------------------------------------------------

    def step(self, name: str, text: str) -> None:
        self._mark(f"step {name}")
        self.term.say(text)

    def progress(self, written: int, total: int) -> None:
        percent = written * 100 // total
        # Lines, not a redrawn bar: every 5 % is enough on a serial console.
        if percent // 5 != self._shown // 5 or (percent == 100 and self._shown != 100):
            self._shown = percent
            self._mark(f"progress {percent}")
            self.term.say(f"  {percent:3d} %  {written / 1024**2:,.0f} of "
                          f"{total / 1024**2:,.0f} MiB")

    def install(self, disk: Disk, found: Found | None) -> None:
        live = self.live
        self.step("partition", f"Partitioning {disk.path} (BIOS boot, EFI system, root)")
        parts = system.partition(disk)
        self.step("format", "Making the file systems")
        uuid = system.make_filesystems(parts)
        with system.mounted(parts[3], TARGET) as target:
            self.step("copy", "Writing the system")
            system.copy_system(live.squashfs_root, target, self.progress)
            fstab = target / "etc/fstab"
            fstab.write_text(system.fstab_for(fstab.read_text(), uuid))
            self.step("bootloader", "Installing the boot loaders (BIOS and UEFI)")
            with system.chroot_mounts(target):
                system.install_bios(target, disk)
                system.grub_config(target, uuid)
            with system.mounted(parts[2], ESP, "fmask=0177", "dmask=0077") as esp:
                system.write_files(esp, system.esp_files(target, uuid))
                seed = system.seed_files(found.answers if found else None,
                                         found.signatures if found else {})
                if seed:
                    self.step("answers", "Leaving the answers for first boot on the EFI "
                              "system partition")
                    system.write_files(esp, seed)
        run(["sync"], check=False, timeout=600)


def run_installer(options: Options, term: Terminal) -> int:
    return Installer(term).run(options)
