"""The end-to-end tier: the image built (or reused), booted in QEMU, used as a gateway.

Skips, saying why, when this machine cannot build or boot images. Knobs (environment):
MAILWARDEN_E2E_REBUILD=1 forces a build; MAILWARDEN_E2E_GATEWAY (bios, uefi, secureboot;
default bios) is the gateway boot's firmware; MAILWARDEN_E2E_FIRMWARES (default
uefi,secureboot; empty: none) the boots without a seed; MAILWARDEN_E2E_LYNIS=0 leaves Lynis
out. The timeouts in machine.py are stall guards only. See tests/e2e/README.md.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.machine import OUT, ROOT, Machine, Panic, bridge, image_path

# Figures worth more than a pass (times to a state, scores), printed after the run.
FIGURES: list[tuple[str, str]] = []


@dataclass(frozen=True)
class Image:
    path: Path
    accel: str
    logdir: Path
    work: Path


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root (loop devices, chroot) to build and boot the image"
    if not Path("/dev/loop-control").exists():
        return "no loop devices on this machine"
    if subprocess.run(["losetup", "-f"], capture_output=True, check=False).returncode != 0:
        return "no free loop device"
    return None


@pytest.fixture(scope="session")
def figure() -> Callable[[str, object], None]:
    def record(name: str, value: object) -> None:
        FIGURES.append((name, str(value)))
    return record


@pytest.fixture(scope="session")
def image(figure: Callable[[str, object], None]) -> Iterator[Image]:
    why = _why_not()
    if why:
        pytest.skip(f"end-to-end tier: {why}")
    path, inputs = image_path("qcow2"), image_path("inputs")
    want = bridge("inputs-hash").strip()
    have = inputs.read_text().strip() if inputs.exists() else ""
    started = time.monotonic()
    if os.environ.get("MAILWARDEN_E2E_REBUILD") == "1" or not path.exists() or have != want:
        # Its output goes to out/build.log and the terminal; only the result matters here.
        subprocess.run([str(ROOT / "image" / "build-image.sh")], check=True,
                       stdout=subprocess.DEVNULL)
        figure("image build", f"{time.monotonic() - started:.0f} s")
    else:
        figure("image build", "reused (inputs unchanged)")
    assert path.exists(), f"no image at {path}"
    bridge("need-packages", "qemu-system-x86", "qemu-utils", "ovmf", "xorriso", "postfix",
           "clamav", "openssh-client")
    started = time.monotonic()
    accel = bridge("probe-accel", str(path)).strip()
    figure(f"accelerator probe -> {accel}", f"{time.monotonic() - started:.0f} s")
    logdir = OUT / "e2e"
    logdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mw-e2e-") as work:
        # smtp-sink drops privileges to postfix and writes under here.
        Path(work).chmod(0o755)
        yield Image(path, accel, logdir, Path(work))


def boot(machine: Machine, ready: Callable[[Machine], bool], limit: float) -> float:
    """Start machine and wait until ready(machine) (or QEMU ended, or the stall guard);
    a guest kernel panic is retried once. Seconds from power-on to ready."""
    for attempt in (1, 2):
        machine.start()
        try:
            while not ready(machine):
                machine.check_panic()
                if not machine.alive():
                    pytest.fail(f"{machine.name}: QEMU ended after {machine.elapsed():.0f} s "
                                f"({machine.serial})")
                if machine.elapsed() > limit:
                    pytest.fail(f"{machine.name}: not ready after {limit} s ({machine.serial})")
                time.sleep(2)
            return machine.elapsed()
        except Panic:
            kept = machine.keep_panic_log()
            machine.stop()
            FIGURES.append((f"{machine.name}: guest kernel panic, retried", str(kept)))
            if attempt == 2:
                pytest.fail(f"{machine.name}: guest kernel panic again ({kept})")
    raise AssertionError("unreachable")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if FIGURES:
        terminalreporter.section("end-to-end figures")
        for name, value in FIGURES:
            terminalreporter.write_line(f"{name:<60} {value}")
