"""The installer ISO and the installed system's console, on one guest: the steps a person
takes with a new appliance, in order.

1. The ISO booted with an empty disk and an answer file on a second volume labelled like the
   NoCloud seed (it says where to install and nothing else); "Unattended install" chosen at
   the boot menu over the serial line; the system written; the machine restarts.
2. The installed disk booted alone, under OVMF with Secure Boot on and Microsoft's keys
   enrolled (Proxmox VE's `pre-enrolled-keys=1`: only Debian's signed shim and GRUB boot)
   unless MAILWARDEN_E2E_INSTALL_FIRMWARES says otherwise: its boot report, line by line.
3. No answers for first boot, so the console wizard: one wrong answer refused in the web
   wizard's words, static address, host name and admin password set; the admin signs in to
   the API (HTTPS on 8006) with that password; SMTP on 25 quarantines a GTUBE message.
4. The console menu's password reset and SSH toggle, each a revision.

One guest for all of it: a boot of its own for the console would cost CI another ten
minutes of TCG. First boot from answers (the NoCloud drive, the installer's answers on the
ESP) is the gateway's boot and the unit tests'. The factory reset and the web wizard's setup
code end the gateway's module instead: this guest's run is the tier's longest, and the two
run side by side (tests/e2e/README.md, "Two guests at once").

MAILWARDEN_E2E_INSTALL_FIRMWARES: a comma-separated list of bios, uefi, secureboot (default
secureboot; `./build.sh test e2e --all-firmware` runs all three; empty: none)."""

# Every URL opened here is the booted guest's API, forwarded to a loopback port over HTTPS.

from __future__ import annotations

import os
import re
import secrets
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mailwarden.errors import StateError
from mailwarden.firstboot.answers import validate_answers
from tests.console_driver import ConsoleDriver
from tests.e2e import console, mail
from tests.e2e.bootreport import FIRMWARE_LINE, HARDENING, INSTALLED, WAITING, has
from tests.e2e.conftest import Image, poll, wait_for
from tests.e2e.machine import (
    BOOT_TIMEOUT,
    SMTP_TIMEOUT,
    Machine,
    bridge,
    free_port,
    image_path,
)
from tests.e2e.qga import Guest

Figure = Callable[[str, object], None]
FIRMWARES = [f for f in os.environ.get("MAILWARDEN_E2E_INSTALL_FIRMWARES",
                                       "secureboot").split(",") if f]
INSTALL_TIMEOUT = int(os.environ.get("MAILWARDEN_INSTALL_TIMEOUT", "2700"))
HOSTNAME = "mx.console.e2e.example.org"
DOMAIN = "console.e2e.example.org"
# QEMU's user network: the guest is 10.0.2.15, this host 10.0.2.2, QEMU's DNS 10.0.2.3.
ADDRESS, GATEWAY, DNS = "10.0.2.15", "10.0.2.2", "10.0.2.3"
MENU_PASSWORD, MENU_SSH, MENU_RESET = "4", "5", "6"
# The installed system's boot report: its firmware line, then the same lines as every boot.
REPORT = {"firmware": "", **HARDENING, **WAITING,
          **{f"{unit} installed": f"MWREPORT unit={unit}.service LoadState=loaded"
             for unit in INSTALLED}}


@dataclass
class ConsoleVM:
    firmware: str
    machine: Machine
    guest: Guest
    url: str
    smtp_port: int
    password: str
    driver: ConsoleDriver
    install_log: str
    report: str


def _answers(work: Path) -> Path:
    """The answer file on a cidata volume: where to install, nothing else (first boot then
    asks on the console)."""
    folder = work / "answers"
    folder.mkdir(parents=True)
    (folder / "mailwarden.yaml").write_text(
        "# Mailwarden end-to-end test: unattended install (tests/e2e/test_install.py)\n"
        "version: 1\ninstall: {disk: auto}\n")
    iso = work / "answers.iso"
    bridge("seed-iso", str(folder), str(iso))
    return iso


def _cdrom(name: str, path: Path, bootindex: int | None = None) -> list[str]:
    boot_order = f",bootindex={bootindex}" if bootindex is not None else ""
    return ["-drive", f"if=none,id={name},media=cdrom,readonly=on,file={path}",
            "-device", f"scsi-cd,drive={name},bus=scsi0.0{boot_order}"]


def _install(machine: Machine, figure: Figure, accel: str) -> str:
    """The installer's run, to the restart that ends QEMU; its console log."""
    machine.start()
    driver = console.attach(machine)
    # GRUB's menu (its serial terminal under SeaBIOS, OVMF's console otherwise); the entry's
    # hotkey starts it.
    driver.expect("Rescue shell", timeout=BOOT_TIMEOUT)
    driver.send(b"u")
    at_menu = machine.elapsed()
    if machine.wait_console(r"MWINSTALL step partition", BOOT_TIMEOUT) is None:
        pytest.fail(f"{machine.name}: the installer did not start ({machine.serial})")
    started = machine.elapsed()
    done = machine.wait_console(r"MWINSTALL (done \S+ (\d+)|failed: .*)", INSTALL_TIMEOUT)
    if done is None or not done.group(1).startswith("done"):
        pytest.fail(f"{machine.name}: {done.group(0) if done else 'no end'} ({machine.serial})")
    figure(f"install ({machine.firmware}, {accel}): power-on to menu / installer writing / "
           "written in", f"{at_menu:.0f} s / {started:.0f} s / {done.group(2)} s")
    # The installer restarts the machine, which ends QEMU (-no-reboot).
    deadline = time.monotonic() + 600
    while machine.alive() and time.monotonic() < deadline:
        time.sleep(1)
    if machine.alive():
        pytest.fail(f"{machine.name}: no restart after the install ({machine.serial})")
    figure(f"install ({machine.firmware}): power-on to restart", f"{machine.elapsed():.0f} s")
    return machine.console()


@pytest.fixture(scope="module", params=FIRMWARES)
def vm(request: pytest.FixtureRequest, image: Image, figure: Figure) -> Iterator[ConsoleVM]:
    firmware = str(request.param)
    iso = image_path("iso")
    assert iso.exists(), f"no installer ISO at {iso}"
    work = image.work / f"install-{firmware}"
    work.mkdir()
    smtp_port, https_port = free_port(), free_port()
    blank = work / "blank.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(blank), "10G"], check=True)
    qga = work / "qga.sock"
    agent = ["-chardev", f"socket,id=qga0,path={qga},server=on,wait=off",
             "-device", "virtio-serial",
             "-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0"]
    # The installer's run: the ISO first in the boot order, the answers on a second CD.
    machine = Machine(f"install-{firmware}", firmware, blank, image.accel, work,
                      image.logdir, interactive=True,
                      hostfwd=f"hostfwd=tcp:127.0.0.1:{smtp_port}-:25,"
                              f"hostfwd=tcp:127.0.0.1:{https_port}-:8006",
                      extra=[*_cdrom("installer", iso, 0), *_cdrom("answers", _answers(work))])
    try:
        install_log = _install(machine, figure, image.accel)
        # The installed disk alone (no ISO, no answer volume), same disk and UEFI variables.
        machine.extra = agent
        machine.start(again=True)
        driver = console.attach(machine)
        driver.expect("MWCONSOLE wizard", timeout=BOOT_TIMEOUT)
        figure(f"installed disk ({firmware}): power-on to the console wizard",
               f"{machine.elapsed():.0f} s")
        if machine.wait_console(r"MWREPORT end", BOOT_TIMEOUT) is None:
            pytest.fail(f"{machine.name}: the installed system made no boot report "
                        f"({machine.serial})")
        yield ConsoleVM(firmware, machine, Guest(qga), f"https://127.0.0.1:{https_port}",
                        smtp_port, "console-" + secrets.token_urlsafe(12), driver,
                        install_log, machine.console())
    finally:
        machine.stop()


# --- the API from this host -------------------------------------------------------------------

def _revisions(vm: ConsoleVM, headers: dict[str, str]) -> list[dict[str, Any]]:
    status, body, _ = mail.call(vm.url, "GET", "/api/state/revisions", headers=headers)
    assert status == 200, body
    return list(body["items"])


def _wait_api(vm: ConsoleVM) -> None:
    if not poll(lambda: mail.answers_health(vm.url) or not vm.machine.alive(), SMTP_TIMEOUT):
        pytest.fail(f"the API did not answer ({vm.machine.serial})")
    assert vm.machine.alive(), f"QEMU ended ({vm.machine.serial})"


def _web_wizard_message(answers: dict[str, Any], field: str) -> str:
    """What the web wizard answers for the same input: it validates with the same model, and
    its 400 lists these errors."""
    with pytest.raises(StateError) as refused:
        validate_answers(answers, "answers")
    return next(e.message for e in refused.value.errors if field in e.path)


# --- the tests, in order ----------------------------------------------------------------------

def test_installer_found_the_answer_volume(vm: ConsoleVM) -> None:
    assert re.search(r"MWINSTALL answers cidata:/dev/sr\d/mailwarden.yaml", vm.install_log)


def test_installer_listed_the_empty_disk_with_size_and_model(vm: ConsoleVM) -> None:
    assert re.search(r"1\) /dev/sda\s+10\.0 GiB\s+QEMU QEMU HARDDISK\s+empty",
                     vm.install_log), "the disk list names no empty 10 GiB QEMU disk"


def test_installer_showed_its_progress(vm: ConsoleVM) -> None:
    # No "answers" step: this answer file only says where to install.
    steps = re.findall(r"MWINSTALL step (\w+)", vm.install_log)
    assert steps == ["partition", "format", "copy", "bootloader"]
    assert "MWINSTALL progress 100" in vm.install_log


@pytest.mark.parametrize("what", list(REPORT))
def test_installed_system_boot_report(vm: ConsoleVM, what: str) -> None:
    has(vm.report, REPORT[what] or FIRMWARE_LINE[vm.firmware])


def test_console_wizard_sets_the_appliance_up(vm: ConsoleVM, figure: Figure) -> None:
    driver = vm.driver
    driver.answer_all([("how", "console"), ("keyboard", "us"), ("ipv4", "static"),
                       ("ipv4-address", ADDRESS)], optional=["interface"], timeout=300)
    # The one wrong answer (no prefix length): refused with the web wizard's words.
    expected = _web_wizard_message(
        {"version": 1, "hostname": HOSTNAME, "admin": {"password": vm.password},
         "domains": [{"name": DOMAIN, "server": GATEWAY}],
         "network": {"mode": "static", "address": ADDRESS, "gateway": GATEWAY}}, "address")
    # To the line's end: over a serial line the message may arrive in pieces.
    refused = driver.expect(r"MWCONSOLE refused ipv4-address: ([^\r\n]*)\r?\n", timeout=60)
    assert refused.group(1).decode() == expected
    driver.answer_all([("ipv4-address", f"{ADDRESS}/24"), ("ipv4-gateway", GATEWAY),
                       ("ipv6", "off"), ("dns", DNS), ("hostname", HOSTNAME),
                       ("timezone", "UTC"), ("admin-password", vm.password),
                       ("admin-password-again", vm.password),
                       ("domain", DOMAIN), ("server", GATEWAY),
                       ("port", "25"), ("apply", "yes")], timeout=300)
    started = time.monotonic()
    done = driver.expect(r"MWCONSOLE set-up complete revision=(\d+) hostname=(\S+)\s",
                         timeout=SMTP_TIMEOUT)
    figure("console wizard: answers applied", f"{time.monotonic() - started:.0f} s")
    assert done.group(1) == b"1" and done.group(2).decode() == HOSTNAME
    driver.expect("MWCONSOLE menu", timeout=300)
    assert vm.password.encode() not in driver.transcript  # never echoed


def test_admin_signs_in_with_the_console_password(vm: ConsoleVM) -> None:
    _wait_api(vm)
    headers = mail.sign_in(vm.url, vm.password)
    assert headers, "the API refused the password set on the console"
    first = next(r for r in _revisions(vm, headers) if r["number"] == 1)
    assert first["number"] == 1 and first["author"] == "console wizard", first
    address = vm.guest.run("/usr/bin/ip", "-4", "-o", "addr", "show", "scope", "global").out
    assert f"{ADDRESS}/24" in address
    assert vm.guest.run("/usr/bin/hostname", "-f").out.strip() == HOSTNAME


def test_installed_system_quarantines_gtube(vm: ConsoleVM, figure: Figure) -> None:
    run_id = f"{int(time.time())}-{os.getpid()}"
    mail.send(vm.smtp_port, "gtube", run_id, recipient=f"bob@{DOMAIN}")
    api = mail.Api(vm.url, "admin", vm.password)
    wanted = ("spam", mail.subject("gtube", run_id))

    def listed() -> bool:
        try:
            return wanted in api.quarantined()
        except (OSError, ValueError):
            return False

    took = wait_for(listed)
    figure(f"installed disk ({vm.firmware}): GTUBE sent to quarantined", f"{took:.0f} s")


def test_menu_password_reset_is_a_revision(vm: ConsoleVM) -> None:
    new = "console-reset-" + secrets.token_urlsafe(10)
    vm.driver.answer_all([("choice", MENU_PASSWORD), ("admin-password", new),
                          ("admin-password-again", new)], timeout=120)
    reset = vm.driver.expect(r"MWCONSOLE admin password reset revision=(\d+)\s", timeout=600)
    assert mail.sign_in(vm.url, vm.password) is None, "the old password still signs in"
    headers = mail.sign_in(vm.url, new)
    assert headers, "the new password does not sign in"
    vm.password = new
    revision = next(r for r in _revisions(vm, headers) if r["number"] == int(reset.group(1)))
    assert (revision["author"], revision["comment"]) == (
        "console", "admin password reset on the console")


def test_menu_ssh_toggle_is_a_revision(vm: ConsoleVM, image: Image) -> None:
    key = image.work / "id_console"
    key.unlink(missing_ok=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "console-e2e",
                    "-f", str(key)], check=True)
    pub = key.with_suffix(".pub").read_text().strip()
    vm.driver.answer_all([("choice", MENU_SSH), ("ssh-key", pub)], timeout=120)
    on = int(vm.driver.expect(r"MWCONSOLE ssh on revision=(\d+)\s", timeout=600).group(1))
    # Started without waiting for it (--no-block): give it the time TCG needs.
    deadline = time.monotonic() + 300
    while (state := vm.guest.run("/usr/bin/systemctl", "is-active", "ssh.service").out.strip()
           ) != "active" and time.monotonic() < deadline:
        time.sleep(3)
    assert state == "active"
    vm.driver.answer_all([("choice", MENU_SSH), ("ssh-off", "yes")], timeout=120)
    off = int(vm.driver.expect(r"MWCONSOLE ssh off revision=(\d+)\s", timeout=600).group(1))
    headers = mail.sign_in(vm.url, vm.password)
    assert headers
    comments = {r["number"]: (r["author"], r["comment"]) for r in _revisions(vm, headers)}
    assert comments[on] == ("console", "SSH on (console)")
    assert comments[off] == ("console", "SSH off (console)")
