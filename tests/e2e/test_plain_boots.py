"""Boots of the disk image without a seed under the firmwares of MAILWARDEN_E2E_FIRMWARES
(a comma-separated list of bios, uefi, secureboot; default none, `./build.sh test e2e
--all-firmware` sets bios,uefi): the boot report of mailwarden-boot-report.service, the console
wizard on the serial console, and the one-time setup code a fresh appliance shows.

By default the other modules cover these boots: the gateway boots the image under OVMF with
Secure Boot and Microsoft's keys enrolled, and the system installed from the ISO boots the
same way, with the same report checked line by line and its console wizard driven."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

from tests.e2e.bootreport import ACTIVE, FIRMWARE_LINE, HARDENING, INSTALLED, WAITING, has
from tests.e2e.conftest import Image, boot
from tests.e2e.machine import BOOT_TIMEOUT, Machine

FIRMWARES = [f for f in os.environ.get("MAILWARDEN_E2E_FIRMWARES", "").split(",") if f]
pytestmark = pytest.mark.skipif(
    not FIRMWARES, reason="plain boots: none asked for (MAILWARDEN_E2E_FIRMWARES, "
    "--all-firmware); the gateway and the installed system boot under Secure Boot")


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


def test_firmware_reported(plain: tuple[str, str]) -> None:
    has(plain[1], FIRMWARE_LINE[plain[0]])


@pytest.mark.parametrize("unit", INSTALLED)
def test_service_installed(plain: tuple[str, str], unit: str) -> None:
    has(plain[1], f"MWREPORT unit={unit}.service LoadState=loaded")


@pytest.mark.parametrize("unit", ACTIVE)
def test_service_active(plain: tuple[str, str], unit: str) -> None:
    has(plain[1], f"MWREPORT unit={unit}.service LoadState=loaded ActiveState=active")


@pytest.mark.parametrize("line", list(WAITING.values()), ids=list(WAITING))
def test_mail_daemons_wait_for_the_first_state(plain: tuple[str, str], line: str) -> None:
    has(plain[1], line)


def test_apply_helper_socket_listening(plain: tuple[str, str]) -> None:
    has(plain[1], "MWREPORT unit=mailwarden-apply.socket LoadState=loaded ActiveState=active")


@pytest.mark.parametrize("line", list(HARDENING.values()), ids=list(HARDENING))
def test_hardening_reported(plain: tuple[str, str], line: str) -> None:
    has(plain[1], line)


def test_fresh_appliance_shows_setup_code(plain: tuple[str, str]) -> None:
    has(plain[1], "MWFIRSTBOOT setup-code [0-9A-Z]{4}-")
