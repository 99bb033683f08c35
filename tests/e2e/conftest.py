"""The end-to-end tier: the image built (or reused), booted in QEMU, used as a gateway.

Two guests run at once (pytest-xdist, `-n 2`, as ./build.sh runs it; workers.py): the
gateway module on one worker, every other boot on the other. A guest under single-threaded
TCG keeps one host core busy: the other core boots the other guests meanwhile.

Skips, saying why, when this machine cannot build or boot images. Knobs (environment):
MAILWARDEN_E2E_REBUILD=1 forces a build; MAILWARDEN_E2E_GATEWAY (bios, uefi, secureboot;
default secureboot) is the gateway boot's firmware; MAILWARDEN_E2E_INSTALL_FIRMWARES
(default secureboot) the installer's runs; MAILWARDEN_E2E_FIRMWARES (default none) the
boots without a seed; MAILWARDEN_E2E_LYNIS=1 (`--lynis`) adds the Lynis audit. The timeouts in
machine.py are stall guards only. See tests/e2e/README.md.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.machine import MAIL_TIMEOUT, OUT, ROOT, Machine, Panic, bridge, image_path
from tests.e2e.workers import pytest_xdist_make_scheduler  # noqa: F401  (a pytest hook)

# Figures worth more than a pass (times to a state, scores), printed after the run. Each
# worker appends them to this file; the controller prints them.
FIGURES = OUT / "e2e" / "figures.jsonl"


def _record(name: str, value: object) -> None:
    FIGURES.parent.mkdir(parents=True, exist_ok=True)
    with FIGURES.open("a", encoding="utf-8") as file:
        file.write(json.dumps([name, str(value)]) + "\n")


def pytest_configure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput"):  # the controller (or a run without workers)
        FIGURES.unlink(missing_ok=True)


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
    return _record


@pytest.fixture(scope="session")
def image(figure: Callable[[str, object], None]) -> Iterator[Image]:
    why = _why_not()
    if why:
        pytest.skip(f"end-to-end tier: {why}")
    OUT.mkdir(parents=True, exist_ok=True)
    # Both workers come here; the lock makes the second wait for the first one's build,
    # package installs (apt takes one at a time) and accelerator probe, and then reuse them.
    with (OUT / ".e2e-prepare.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        first = not _prepared_in_this_run()
        # The figures once per run, from whichever worker came first.
        figure = figure if first else (lambda _name, _value: None)
        path = _build_once(figure)
        (OUT / ".e2e-built-by").write_text(_run_id())
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


def _build_once(figure: Callable[[str, object], None]) -> Path:
    """Build the image unless out/ has one of the same inputs (called under the lock)."""
    path = image_path("qcow2")
    started = time.monotonic()
    rebuild = os.environ.get("MAILWARDEN_E2E_REBUILD") == "1" and not _prepared_in_this_run()
    if rebuild or bridge("image-current").strip() != "yes":
        # Its output goes to out/build.log and the terminal; only the result matters here.
        subprocess.run([str(ROOT / "image" / "build-image.sh")], check=True,
                       stdout=subprocess.DEVNULL)
        figure("image build", f"{time.monotonic() - started:.0f} s")
    else:
        figure("image build", "reused (inputs unchanged)")
    return path


def _run_id() -> str:
    """The same in the controller and its workers: the run's test-run uid from xdist, else
    this process."""
    return os.environ.get("PYTEST_XDIST_TESTRUNUID", str(os.getpid()))


def _prepared_in_this_run() -> bool:
    """Whether a worker of this run prepared the image already: MAILWARDEN_E2E_REBUILD=1
    asks for one build per run, not one per worker."""
    try:
        return (OUT / ".e2e-built-by").read_text() == _run_id()
    except FileNotFoundError:
        return False


def poll(what: Callable[[], bool], limit: float = MAIL_TIMEOUT, every: float = 3) -> bool:
    """Poll what() until true; False when the stall guard (limit, seconds) passed first."""
    started = time.monotonic()
    while not what():
        if time.monotonic() - started > limit:
            return False
        time.sleep(every)
    return True


def wait_for(what: Callable[[], bool], limit: float = MAIL_TIMEOUT, every: float = 3) -> float:
    """Poll what() until true; seconds it took."""
    started = time.monotonic()
    if not poll(what, limit, every):
        pytest.fail(f"not after {limit} s")
    return time.monotonic() - started


def boot(machine: Machine, ready: Callable[[Machine], bool], limit: float, *,
         again: bool = False) -> float:
    """Start machine and wait until ready(machine) (or QEMU ended, or the stall guard);
    a guest kernel panic is retried once. Seconds from power-on to ready. again: boot the
    disk of the machine's last run (Machine.start)."""
    for attempt in (1, 2):
        machine.start(again=again)
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
            _record(f"{machine.name}: guest kernel panic, retried", kept)
            if attempt == 2:
                pytest.fail(f"{machine.name}: guest kernel panic again ({kept})")
    raise AssertionError("unreachable")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if hasattr(terminalreporter.config, "workerinput") or not FIGURES.exists():
        return
    terminalreporter.section("end-to-end figures")
    for line in FIGURES.read_text(encoding="utf-8").splitlines():
        name, value = json.loads(line)
        terminalreporter.write_line(f"{name:<60} {value}")
