"""Boots without a seed under other firmwares (default: OVMF with Secure Boot on and
Microsoft's keys enrolled, which only boots through Debian's signed shim and GRUB; plain OVMF
is the console module's boot): the boot report of mailwarden-boot-report.service, the
console wizard on the serial console, and the one-time setup code a fresh appliance shows."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator

import pytest

from tests.e2e.conftest import Image, boot
from tests.e2e.machine import BOOT_TIMEOUT, Machine

# OVMF without Secure Boot is the console module's boot (test_console.py).
FIRMWARES = [f for f in os.environ.get("MAILWARDEN_E2E_FIRMWARES", "secureboot").split(",")
             if f]
INSTALLED = ["postfix", "rspamd", "redis-server", "unbound", "clamav-daemon", "clamav-freshclam",
             "nftables", "chrony", "qemu-guest-agent", "apparmor", "unattended-upgrades"]
ACTIVE = ["postfix", "redis-server", "unbound", "nftables", "mailwarden-firstboot",
          "mailwarden-api"]


@pytest.fixture(scope="module", params=FIRMWARES)
def plain(request: pytest.FixtureRequest, image: Image,
          figure: Callable[[str, object], None]) -> Iterator[tuple[str, str]]:
    """(firmware, console) of a boot that reached the login prompt."""
    firmware = str(request.param)
    # These boots only have to reach the login prompt: run alone, multi-threaded TCG halves
    # their time, and a kernel panic there is retried by boot() (tests/e2e/README.md). Beside
    # the gateway (two workers) each guest gets one host core: a second thread here would
    # only take time from the gateway.
    alone = "PYTEST_XDIST_WORKER" not in os.environ
    machine = Machine(firmware, firmware, image.path, image.accel, image.work, image.logdir,
                      tcg_thread=os.environ.get("MW_TCG_THREAD", "multi" if alone else "single"))
    try:
        report = boot(machine, lambda m: "MWREPORT end" in m.console(), BOOT_TIMEOUT)
        login = boot_to_login(machine)
        figure(f"boot {firmware} ({image.accel}): boot report / console wizard",
               f"{report:.0f} s / {login:.0f} s")
        yield firmware, machine.console()
    finally:
        machine.stop()


def boot_to_login(machine: Machine) -> float:
    """A fresh appliance's serial console is the console wizard (no login prompt)."""
    if machine.wait_console(r"MWCONSOLE prompt how", BOOT_TIMEOUT) is None:
        pytest.fail(f"{machine.name}: no console wizard ({machine.serial})")
    return machine.elapsed()


def _has(console: str, pattern: str) -> None:
    assert re.search(pattern, console), f"no console line matching {pattern!r}"


FIRMWARE_LINE = {"bios": "MWREPORT firmware=bios", "uefi": "MWREPORT firmware=uefi",
                 "secureboot": "MWREPORT firmware=uefi secureboot=on"}


def test_firmware_reported(plain: tuple[str, str]) -> None:
    _has(plain[1], FIRMWARE_LINE[plain[0]])


@pytest.mark.parametrize("unit", INSTALLED)
def test_service_installed(plain: tuple[str, str], unit: str) -> None:
    _has(plain[1], f"MWREPORT unit={unit}.service LoadState=loaded")


@pytest.mark.parametrize("unit", ACTIVE)
def test_service_active(plain: tuple[str, str], unit: str) -> None:
    _has(plain[1], f"MWREPORT unit={unit}.service LoadState=loaded ActiveState=active")


def test_rspamd_started(plain: tuple[str, str]) -> None:
    _has(plain[1], "MWREPORT unit=rspamd.service LoadState=loaded ActiveState=(active|activating)")


def test_apply_helper_socket_listening(plain: tuple[str, str]) -> None:
    _has(plain[1], "MWREPORT unit=mailwarden-apply.socket LoadState=loaded ActiveState=active")


def test_firewall_input_policy_drop(plain: tuple[str, str]) -> None:
    _has(plain[1], "MWREPORT nft-input-policy=drop")


def test_apparmor_enabled(plain: tuple[str, str]) -> None:
    _has(plain[1], "MWREPORT apparmor-enabled=Y")


def test_no_compilers(plain: tuple[str, str]) -> None:
    _has(plain[1], "MWREPORT compilers=none")


def test_no_failed_units(plain: tuple[str, str]) -> None:
    _has(plain[1], r"MWREPORT system=.* failed=\[\]")


def test_fresh_appliance_shows_setup_code(plain: tuple[str, str]) -> None:
    _has(plain[1], "MWFIRSTBOOT setup-code [0-9A-Z]{4}-")
