"""The appliance's console, driven over the serial console as a person at it would: a fresh
image booted without a seed under OVMF with Secure Boot on and Microsoft's keys enrolled
(Proxmox VE's `pre-enrolled-keys=1`: only Debian's signed shim and GRUB boot), set up by the
console wizard (one wrong answer refused in the web wizard's words), the admin signing in to
the API with the password typed there; the menu's password reset and SSH toggle, each a
revision; then a factory reset, and the web wizard's setup code as the console shows it:
refused once its lifetime is over (the guest's clock moved on), a new one accepted once, and
refused after use."""

# Every URL opened here is the booted guest's API, forwarded to a loopback port over HTTPS.
# ruff: noqa: S310

from __future__ import annotations

import hashlib
import json
import secrets
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from mailwarden.errors import StateError
from mailwarden.firstboot.answers import validate_answers
from tests.console_driver import ConsoleDriver
from tests.e2e import console
from tests.e2e.bootreport import FIRMWARE_LINE, HARDENING, has
from tests.e2e.conftest import Image
from tests.e2e.machine import BOOT_TIMEOUT, SMTP_TIMEOUT, Machine, free_port
from tests.e2e.mail import _context
from tests.e2e.qga import Guest

Figure = Callable[[str, object], None]
FIRMWARE = "secureboot"
HOSTNAME = "mx.console.e2e.example.org"
# QEMU's user network: the guest is 10.0.2.15, this host 10.0.2.2, QEMU's DNS 10.0.2.3.
ADDRESS, GATEWAY, DNS = "10.0.2.15", "10.0.2.2", "10.0.2.3"
MENU_PASSWORD, MENU_SSH, MENU_RESET = "4", "5", "6"


@dataclass
class ConsoleVM:
    machine: Machine
    guest: Guest
    url: str
    password: str
    driver: ConsoleDriver

    def reconnect(self) -> None:
        self.driver = _connect(self.machine)


def _connect(machine: Machine) -> ConsoleDriver:
    """The serial console's socket, as soon as QEMU made it (before the guest says much)."""
    deadline = time.monotonic() + 60
    while not machine.serial_socket.exists():
        if time.monotonic() > deadline or not machine.alive():
            pytest.fail(f"{machine.name}: QEMU made no serial socket ({machine.serial})")
        time.sleep(0.1)
    return console.connect(machine.serial_socket)


@pytest.fixture(scope="module")
def vm(image: Image, figure: Figure) -> Iterator[ConsoleVM]:
    https_port = free_port()
    qga = image.work / "console-qga.sock"
    machine = Machine(
        "console", FIRMWARE, image.path, image.accel, image.work, image.logdir,
        interactive=True, hostfwd=f"hostfwd=tcp:127.0.0.1:{https_port}-:8006",
        extra=["-chardev", f"socket,id=qga0,path={qga},server=on,wait=off",
               "-device", "virtio-serial",
               "-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0"])
    machine.start()
    try:
        driver = _connect(machine)
        driver.expect("MWCONSOLE wizard", timeout=BOOT_TIMEOUT)
        figure(f"console ({FIRMWARE}, {image.accel}): power-on to the console wizard",
               f"{machine.elapsed():.0f} s")
        yield ConsoleVM(machine, Guest(qga), f"https://127.0.0.1:{https_port}",
                        "console-" + secrets.token_urlsafe(12), driver)
    finally:
        machine.stop()


# --- the API from this host -------------------------------------------------------------------

def _call(url: str, method: str, path: str, body: Any = None,
          headers: dict[str, str] | None = None) -> tuple[int, Any, list[str]]:
    request = urllib.request.Request(
        url + path, method=method, headers={"Content-Type": "application/json",
                                            **(headers or {})},
        data=None if body is None else json.dumps(body).encode())
    try:
        with urllib.request.urlopen(request, timeout=900, context=_context()) as response:
            return (response.status, json.load(response),
                    response.headers.get_all("Set-Cookie") or [])
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}"), []


def _sign_in(vm: ConsoleVM, password: str) -> dict[str, str] | None:
    status, body, cookies = _call(vm.url, "POST", "/api/session",
                                  {"username": "admin", "password": password})
    if status not in (200, 201):
        return None
    return {"Cookie": "; ".join(c.split(";", 1)[0] for c in cookies),
            "X-CSRF-Token": str(body.get("csrf_token", ""))}


def _revisions(vm: ConsoleVM, headers: dict[str, str]) -> list[dict[str, Any]]:
    status, body, _ = _call(vm.url, "GET", "/api/state/revisions", headers=headers)
    assert status == 200, body
    return list(body["items"])


def _wait_api(vm: ConsoleVM) -> None:
    deadline = time.monotonic() + SMTP_TIMEOUT
    while True:
        try:
            with urllib.request.urlopen(vm.url + "/api/health", timeout=10,
                                        context=_context()) as response:
                if response.status == 200:
                    return
        except (OSError, ValueError):
            pass
        if time.monotonic() > deadline or not vm.machine.alive():
            pytest.fail(f"the API did not answer ({vm.machine.serial})")
        time.sleep(3)


def _web_wizard_message(answers: dict[str, Any], field: str) -> str:
    """What the web wizard answers for the same input: it validates with the same model, and
    its 400 lists these errors."""
    with pytest.raises(StateError) as refused:
        validate_answers(answers, "answers")
    return next(e.message for e in refused.value.errors if field in e.path)


def _presented_fingerprint(url: str) -> str:
    host, port = url.removeprefix("https://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as raw, \
            _context().wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


# --- the tests, in order ----------------------------------------------------------------------

def test_console_wizard_sets_the_appliance_up(vm: ConsoleVM, figure: Figure) -> None:
    driver = vm.driver
    driver.answer_all([("how", "console"), ("keyboard", "us"), ("ipv4", "static"),
                       ("ipv4-address", ADDRESS)], optional=["interface"], timeout=300)
    # The one wrong answer (no prefix length): refused with the web wizard's words.
    expected = _web_wizard_message(
        {"version": 1, "hostname": HOSTNAME, "admin": {"password": vm.password},
         "domains": [{"name": "console.e2e.example.org", "server": GATEWAY}],
         "network": {"mode": "static", "address": ADDRESS, "gateway": GATEWAY}}, "address")
    # To the line's end: over a serial line the message may arrive in pieces.
    refused = driver.expect(r"MWCONSOLE refused ipv4-address: ([^\r\n]*)\r?\n", timeout=60)
    assert refused.group(1).decode() == expected
    driver.answer_all([("ipv4-address", f"{ADDRESS}/24"), ("ipv4-gateway", GATEWAY),
                       ("ipv6", "off"), ("dns", DNS), ("hostname", HOSTNAME),
                       ("timezone", "UTC"), ("admin-password", vm.password),
                       ("admin-password-again", vm.password),
                       ("domain", "console.e2e.example.org"), ("server", GATEWAY),
                       ("port", "25"), ("apply", "yes")], timeout=300)
    started = time.monotonic()
    done = driver.expect(r"MWCONSOLE set-up complete revision=(\d+) hostname=(\S+)\s",
                         timeout=SMTP_TIMEOUT)
    figure("console wizard: answers applied", f"{time.monotonic() - started:.0f} s")
    assert done.group(1) == b"1" and done.group(2).decode() == HOSTNAME
    driver.expect("MWCONSOLE menu", timeout=300)
    assert vm.password.encode() not in driver.transcript  # never echoed


def test_boot_report_under_secure_boot(vm: ConsoleVM) -> None:
    assert vm.machine.wait_console(r"MWREPORT end", BOOT_TIMEOUT), "no boot report"
    console_log = vm.machine.console()
    has(console_log, FIRMWARE_LINE[FIRMWARE])
    for line in HARDENING.values():
        has(console_log, line)


def test_admin_signs_in_with_the_console_password(vm: ConsoleVM) -> None:
    _wait_api(vm)
    headers = _sign_in(vm, vm.password)
    assert headers, "the API refused the password set on the console"
    first = next(r for r in _revisions(vm, headers) if r["number"] == 1)
    assert first["number"] == 1 and first["author"] == "console wizard", first
    address = vm.guest.run("/usr/bin/ip", "-4", "-o", "addr", "show", "scope", "global").out
    assert f"{ADDRESS}/24" in address
    assert vm.guest.run("/usr/bin/hostname", "-f").out.strip() == HOSTNAME


def test_menu_password_reset_is_a_revision(vm: ConsoleVM) -> None:
    new = "console-reset-" + secrets.token_urlsafe(10)
    vm.driver.answer_all([("choice", MENU_PASSWORD), ("admin-password", new),
                          ("admin-password-again", new)], timeout=120)
    reset = vm.driver.expect(r"MWCONSOLE admin password reset revision=(\d+)\s", timeout=600)
    assert _sign_in(vm, vm.password) is None, "the old password still signs in"
    headers = _sign_in(vm, new)
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
    headers = _sign_in(vm, vm.password)
    assert headers
    comments = {r["number"]: (r["author"], r["comment"]) for r in _revisions(vm, headers)}
    assert comments[on] == ("console", "SSH on (console)")
    assert comments[off] == ("console", "SSH off (console)")


def test_factory_reset_then_the_setup_code(vm: ConsoleVM, figure: Figure) -> None:
    machine = vm.machine
    vm.driver.answer_all([("choice", MENU_RESET), ("reset-confirm", HOSTNAME)], timeout=120)
    vm.driver.expect(r"MWCONSOLE factory reset done", timeout=600)
    # The console reboots the guest; QEMU runs with -no-reboot and ends there.
    deadline = time.monotonic() + 600
    while machine.alive() and time.monotonic() < deadline:
        time.sleep(2)
    assert not machine.alive(), "the guest did not reboot after the factory reset"
    machine.stop()
    machine.start(again=True)
    vm.reconnect()
    vm.driver.expect("MWCONSOLE wizard", timeout=BOOT_TIMEOUT)
    figure("console: factory reset to the wizard again", f"{machine.elapsed():.0f} s")
    vm.driver.answer("how", "web", timeout=300)
    # The screen: address, code, its lifetime, the certificate; then the mark for scripts.
    shown = vm.driver.expect(r"Certificate\s+SHA-256 ([0-9A-F:]{95})", timeout=300)
    code = vm.driver.expect(r"MWCONSOLE setup-code (\S+)\s", timeout=60).group(1).decode()
    _wait_api(vm)
    assert shown.group(1).decode() == _presented_fingerprint(vm.url)

    password = "web-" + secrets.token_urlsafe(12)
    answers = {"version": 1, "hostname": HOSTNAME, "admin": {"password": password},
               "domains": [{"name": "console.e2e.example.org", "server": GATEWAY}]}
    # Past its lifetime: the guest's clock moved on by more than the 60 minutes.
    now = int(vm.guest.run("/usr/bin/date", "+%s").out)
    moved = vm.guest.run("/usr/bin/date", "-s", f"@{now + 61 * 60}")
    assert moved.status == 0, moved.err
    status, body, _ = _call(vm.url, "POST", "/api/setup",
                            {"setup_code": code, "answers": answers})
    assert (status, body["error"]["code"]) == (403, "setup_code_expired"), body
    # The console shows a new one by itself; it is accepted once.
    fresh = vm.driver.expect(r"MWCONSOLE setup-code (\S+)\s", timeout=300).group(1).decode()
    assert fresh != code
    status, body, _ = _call(vm.url, "POST", "/api/setup",
                            {"setup_code": fresh, "answers": answers})
    assert status == 201, body
    vm.driver.expect("MWCONSOLE set up by the web wizard", timeout=300)
    status, body, _ = _call(vm.url, "POST", "/api/setup",
                            {"setup_code": fresh, "answers": answers})
    assert (status, body["error"]["code"]) == (409, "already_set_up"), body
    assert _sign_in(vm, password), "the web wizard's admin does not sign in"
