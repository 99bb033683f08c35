"""The installer ISO: booted with an empty disk and an answer file on a second volume
labelled like the NoCloud seed, "Unattended install" chosen at its boot menu over the serial
line, the system written; then the installed disk booted alone (the answers now come from its
own EFI system partition, where the installer left them): its boot report (firmware, Secure
Boot, services installed, the hardening), SMTP on 25, HTTPS on 8006, and one GTUBE message
quarantined.

Under OVMF with Secure Boot and Microsoft's keys by default (MAILWARDEN_E2E_INSTALL_FIRMWARES,
a comma-separated list of bios, uefi, secureboot; `./build.sh test e2e --all-firmware` runs
all three; empty: none)."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.console_driver import ConsoleDriver
from tests.e2e import console, mail
from tests.e2e.bootreport import FIRMWARE_LINE, HARDENING, INSTALLED, has
from tests.e2e.conftest import Image, boot
from tests.e2e.machine import (
    BOOT_TIMEOUT,
    MAIL_TIMEOUT,
    SMTP_TIMEOUT,
    Machine,
    bridge,
    free_port,
    image_path,
)

Figure = Callable[[str, object], None]
FIRMWARES = [f for f in os.environ.get("MAILWARDEN_E2E_INSTALL_FIRMWARES",
                                       "secureboot").split(",") if f]
INSTALL_TIMEOUT = int(os.environ.get("MAILWARDEN_INSTALL_TIMEOUT", "2700"))
HOSTNAME = "mx.install.e2e.example.org"
# The installed system's boot report: its firmware line, then the same lines as every boot.
REPORT = {"firmware": "", **HARDENING,
          **{f"{unit} installed": f"MWREPORT unit={unit}.service LoadState=loaded"
             for unit in INSTALLED}}


@dataclass
class Installed:
    firmware: str
    machine: Machine
    install_log: str
    report: str
    api: mail.Api
    smtp_port: int
    sink: Path
    run_id: str


def _answers(work: Path, sink_port: int, password: str) -> Path:
    """The answer file on a cidata volume: where to install and how to set up, and an EICAR
    signature beside it (clamd starts only with a database)."""
    folder = work / "answers"
    (folder / "clamav").mkdir(parents=True)
    (folder / "mailwarden.yaml").write_text(f"""\
# Mailwarden end-to-end test: unattended install (tests/e2e/test_install.py)
version: 1
install: {{disk: auto}}
hostname: {HOSTNAME}
admin: {{password_hash: "{mail.password_hash(password)}"}}
domains:
  - {{name: e2e.example.org, server: 10.0.2.2, port: {sink_port}}}
""")
    (folder / "clamav" / "e2e-eicar.hdb").write_bytes(mail.eicar_signature(work))
    iso = work / "answers.iso"
    bridge("seed-iso", str(folder), str(iso))
    return iso


def _cdrom(name: str, path: Path, bootindex: int | None = None) -> list[str]:
    boot_order = f",bootindex={bootindex}" if bootindex is not None else ""
    return ["-drive", f"if=none,id={name},media=cdrom,readonly=on,file={path}",
            "-device", f"scsi-cd,drive={name},bus=scsi0.0{boot_order}"]


def _connect(machine: Machine) -> ConsoleDriver:
    deadline = time.monotonic() + 60
    while not machine.serial_socket.exists():
        if time.monotonic() > deadline or not machine.alive():
            pytest.fail(f"{machine.name}: QEMU made no serial socket ({machine.serial})")
        time.sleep(0.1)
    return console.connect(machine.serial_socket)


@pytest.fixture(scope="module", params=FIRMWARES)
def installed(request: pytest.FixtureRequest, image: Image,
              figure: Figure) -> Iterator[Installed]:
    firmware = str(request.param)
    iso = image_path("iso")
    assert iso.exists(), f"no installer ISO at {iso}"
    work = image.work / f"install-{firmware}"
    work.mkdir()
    sink_port, smtp_port, https_port = (free_port() for _ in range(3))
    sink = work / "sink"
    sink.mkdir()
    shutil.chown(sink, "postfix")
    password = "e2e-" + secrets.token_urlsafe(12)
    answers = _answers(work, sink_port, password)
    blank = work / "blank.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(blank), "10G"], check=True)
    # The installer's run: the ISO first in the boot order, the answers on a second CD.
    machine = Machine(f"install-{firmware}", firmware, blank, image.accel, work,
                      image.logdir, interactive=True,
                      hostfwd=f"hostfwd=tcp:127.0.0.1:{smtp_port}-:25,"
                              f"hostfwd=tcp:127.0.0.1:{https_port}-:8006",
                      extra=[*_cdrom("installer", iso, 0), *_cdrom("answers", answers)])
    with (image.logdir / f"install-{firmware}.sink.log").open("wb") as log:
        sinker = subprocess.Popen(["smtp-sink", "-u", "postfix", "-d",
                                   f"{sink}/%Y%m%d%H%M%S.", f"127.0.0.1:{sink_port}", "100"],
                                  stdout=log, stderr=subprocess.STDOUT)
    try:
        machine.start()
        driver = _connect(machine)
        # GRUB's menu (its serial terminal under SeaBIOS, OVMF's console otherwise); the
        # entry's hotkey starts it.
        driver.expect("Rescue shell", timeout=BOOT_TIMEOUT)
        driver.send(b"u")
        at_menu = machine.elapsed()
        if machine.wait_console(r"MWINSTALL step partition", BOOT_TIMEOUT) is None:
            pytest.fail(f"{machine.name}: the installer did not start ({machine.serial})")
        started = machine.elapsed()
        done = machine.wait_console(r"MWINSTALL (done \S+ (\d+)|failed: .*)", INSTALL_TIMEOUT)
        if done is None or not done.group(1).startswith("done"):
            pytest.fail(f"{machine.name}: {done.group(0) if done else 'no end'} "
                        f"({machine.serial})")
        figure(f"install ({firmware}, {image.accel}): power-on to menu / installer writing / "
               "written in", f"{at_menu:.0f} s / {started:.0f} s / {done.group(2)} s")
        # The installer restarts the machine, which ends QEMU (-no-reboot).
        deadline = time.monotonic() + 600
        while machine.alive() and time.monotonic() < deadline:
            time.sleep(1)
        if machine.alive():
            pytest.fail(f"{machine.name}: no restart after the install ({machine.serial})")
        install_log = machine.console()
        figure(f"install ({firmware}): power-on to restart", f"{machine.elapsed():.0f} s")
        # The installed disk alone (no ISO, no answer volume), same disk and UEFI variables.
        machine.extra, machine.interactive = [], False
        at = boot(machine, lambda m: mail.smtp_greets(smtp_port), SMTP_TIMEOUT, again=True)
        figure(f"installed disk ({firmware}): power-on to port 25 answering", f"{at:.0f} s")
        if machine.wait_console(r"MWREPORT end", BOOT_TIMEOUT) is None:
            pytest.fail(f"{machine.name}: the installed system made no boot report "
                        f"({machine.serial})")
        yield Installed(firmware, machine, install_log, machine.console(),
                        mail.Api(f"https://127.0.0.1:{https_port}", "admin", password),
                        smtp_port, sink, f"{int(time.time())}-{os.getpid()}")
    finally:
        machine.stop()
        sinker.terminate()
        sinker.wait()


def _wait(what: Callable[[], bool], limit: float) -> float:
    started = time.monotonic()
    while not what():
        if time.monotonic() - started > limit:
            pytest.fail(f"not after {limit} s")
        time.sleep(3)
    return time.monotonic() - started


def test_installer_found_the_answer_volume(installed: Installed) -> None:
    assert re.search(r"MWINSTALL answers cidata:/dev/sr\d/mailwarden.yaml",
                     installed.install_log)


def test_installer_listed_the_empty_disk_with_size_and_model(installed: Installed) -> None:
    assert re.search(r"1\) /dev/sda\s+10\.0 GiB\s+QEMU QEMU HARDDISK\s+empty",
                     installed.install_log), "the disk list names no empty 10 GiB QEMU disk"


def test_installer_showed_its_progress(installed: Installed) -> None:
    steps = re.findall(r"MWINSTALL step (\w+)", installed.install_log)
    assert steps == ["partition", "format", "copy", "bootloader", "answers"]
    assert "MWINSTALL progress 100" in installed.install_log


def test_installed_system_applied_the_answers_from_its_own_esp(installed: Installed) -> None:
    console = installed.machine.console()
    assert re.search(r"MWFIRSTBOOT seed found MW-ESP:/dev/sda2/mailwarden.yaml", console)
    assert f"MWFIRSTBOOT seed applied revision=1 hostname={HOSTNAME}" in console
    assert "MWFIRSTBOOT signatures e2e-eicar.hdb" in console
    # Written for this machine alone: removed once applied (a factory reset finds none).
    assert "MWFIRSTBOOT seed removed MW-ESP:/dev/sda2/mailwarden.yaml" in console


@pytest.mark.parametrize("what", list(REPORT))
def test_installed_system_boot_report(installed: Installed, what: str) -> None:
    has(installed.report, REPORT[what] or FIRMWARE_LINE[installed.firmware])


def test_installed_system_answers_https_on_8006(installed: Installed) -> None:
    _wait(installed.api.health, SMTP_TIMEOUT)


def test_installed_system_quarantines_gtube(installed: Installed, figure: Figure) -> None:
    mail.send(installed.smtp_port, "gtube", installed.run_id)
    wanted = ("spam", mail.subject("gtube", installed.run_id))

    def listed() -> bool:
        try:
            return wanted in installed.api.quarantined()
        except (OSError, ValueError):
            return False

    took = _wait(listed, MAIL_TIMEOUT)
    figure(f"installed disk ({installed.firmware}): GTUBE sent to quarantined", f"{took:.0f} s")
