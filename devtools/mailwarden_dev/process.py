"""A supervised child process: started in its own session, stopped for sure.

Daemons here run in the foreground under us (no systemd in a sandbox); stopping one waits
for it to exit, so nothing is left orphaned to PID 1 (where it would linger as a zombie).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .errors import HarnessError


@dataclass
class Supervised:
    name: str
    argv: Sequence[str | Path]
    log: Path
    user: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    # How to stop it when SIGTERM is not the right way (Postfix's `postfix stop`).
    stop_command: Callable[[], None] | None = None
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                [str(a) for a in self.argv],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C reaches us, and we stop children in order
                user=self.user,
                env={**os.environ, **self.env} if self.env else None,
            )

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise HarnessError(
                f"{self.name} exited with status {self.process.returncode}; "
                f"its output:\n{self.tail()}"
            )

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no output)"

    def signal(self, signum: int) -> None:
        if self.running and self.process is not None:
            self.process.send_signal(signum)

    def stop(self, timeout: float = 20.0) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            if self.stop_command is not None:
                self.stop_command()
            else:
                self._signal_group(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.process.wait(timeout=10)
        # Children that outlived their parent in the same session (workers) go too.
        self._signal_group(signal.SIGKILL)
        self.process = None

    def _signal_group(self, signum: int) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signum)


def wait_until(what: str, ready: Callable[[], bool], timeout: float,
               alive: Callable[[], None] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if alive is not None:
            alive()
        if time.monotonic() > deadline:
            raise HarnessError(f"{what} not ready after {timeout:.0f} s")
        time.sleep(0.05)
