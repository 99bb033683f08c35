"""The built image and its boots in QEMU, for the end-to-end tier.

The QEMU command line, the accelerator probe, the seed volume, the image's path and the
build-input hash come from image/lib/common.sh (through image/test-image.sh), which the build
and run scripts share.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BRIDGE = ROOT / "image" / "test-image.sh"
OUT = Path(os.environ.get("MAILWARDEN_OUT", ROOT / "out"))
CACHE = Path(os.environ.get("MAILWARDEN_CACHE", "/var/cache/mailwarden"))


def env_seconds(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


# Stall guards, not performance limits: generous enough that a slow or busy machine under
# TCG never trips them (the slowest runs seen took 10-11 minutes to a healthy gateway).
BOOT_TIMEOUT = env_seconds("MAILWARDEN_BOOT_TIMEOUT", 1800)
SMTP_TIMEOUT = env_seconds("MAILWARDEN_SMTP_TIMEOUT", 2700)
MAIL_TIMEOUT = env_seconds("MAILWARDEN_MAIL_TIMEOUT", 900)
LYNIS_STALL = env_seconds("MAILWARDEN_LYNIS_STALL", 600)


def bridge(*args: str, env: dict[str, str] | None = None) -> str:
    """One of common.sh's helpers, through image/test-image.sh."""
    return subprocess.run([str(BRIDGE), *args], check=True, capture_output=True,
                          text=True, env=env).stdout


def bridge_list(*args: str, env: dict[str, str] | None = None) -> list[str]:
    return [a for a in bridge(*args, env=env).split("\0") if a]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def image_path(ext: str) -> Path:
    return Path(bridge("image-path", ext).strip())


class Panic(Exception):
    """The guest kernel panicked (seen under multi-threaded TCG; tests/e2e/README.md)."""


@dataclass
class Machine:
    """One boot of the image on a throw-away overlay."""

    name: str
    firmware: str
    image: Path
    accel: str
    work: Path
    logdir: Path
    size: str = ""
    hostfwd: str = ""
    extra: list[str] = field(default_factory=list)
    # TCG's threading for this boot (image/lib/common.sh); empty: the environment's default.
    tcg_thread: str = ""
    # The serial console also as a socket a test can drive it through (tests/e2e/console.py);
    # it is still logged to `serial` in full.
    interactive: bool = False
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0

    @property
    def serial(self) -> Path:
        return self.logdir / f"{self.name}.serial.log"

    @property
    def serial_socket(self) -> Path:
        return self.work / f"{self.name}.serial.sock"

    def start(self, *, again: bool = False) -> None:
        """Power on. again: the same disk and UEFI variables as the last boot (after the
        guest rebooted: QEMU runs with -no-reboot, so a reboot ends it); else a new overlay."""
        overlay = self.work / f"{self.name}.qcow2"
        if again:
            self.serial.rename(self.logdir / f"{self.name}.serial.{int(time.time())}.log")
            self.serial_socket.unlink(missing_ok=True)
        else:
            for path in (self.serial, overlay, self.work / f"{self.name}.vars",
                         self.serial_socket):
                path.unlink(missing_ok=True)
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b",
                            str(self.image.resolve()), "-F", "qcow2", str(overlay),
                            *([self.size] if self.size else [])], check=True)
        serial, extra = f"file:{self.serial}", list(self.extra)
        if self.interactive:
            # QEMU logs what the guest writes whether or not a client is connected.
            serial = "chardev:console0"
            extra += ["-chardev", f"socket,id=console0,path={self.serial_socket},server=on,"
                                  f"wait=off,logfile={self.serial},logappend=off"]
        args = bridge_list("qemu-args", self.firmware, self.accel, str(overlay),
                           str(self.work / f"{self.name}.vars"), serial,
                           env={**os.environ, "MW_HOSTFWD": self.hostfwd,
                                **({"MW_TCG_THREAD": self.tcg_thread} if self.tcg_thread else {})})
        self.started = time.monotonic()
        with (self.logdir / f"{self.name}.qemu.log").open("wb") as log:
            self.process = subprocess.Popen(["qemu-system-x86_64", *args, *extra],
                                            stdout=log, stderr=subprocess.STDOUT)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def console(self) -> str:
        try:
            return self.serial.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def check_panic(self) -> None:
        if "Kernel panic" in self.console():
            raise Panic(self.name)

    def wait_console(self, pattern: str, limit: float) -> re.Match[str] | None:
        """The first console line matching pattern; None when QEMU ended or limit passed.
        Raises Panic on a kernel panic."""
        regex = re.compile(pattern)
        while True:
            if match := regex.search(self.console()):
                return match
            self.check_panic()
            if not self.alive() or self.elapsed() > limit:
                return None
            time.sleep(1)

    def keep_panic_log(self) -> Path:
        kept = self.logdir / f"{self.name}.panic-{int(time.time())}.serial.log"
        shutil.copyfile(self.serial, kept)
        return kept

    def stop(self) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(30)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
            self.process = None

