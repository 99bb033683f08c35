"""The appliance console over its serial line, for end-to-end tests: QEMU serves ttyS0 on a
socket (`-serial unix:PATH,server,nowait`), and the console prints `MWCONSOLE prompt ID`
before each question (the IDs: firstboot/README.md)."""

from __future__ import annotations

import socket
from collections.abc import Iterable
from pathlib import Path

from ..console_driver import ConsoleDriver


def connect(path: Path, timeout: float = 60.0) -> ConsoleDriver:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(str(path))
    sock.settimeout(None)
    return ConsoleDriver.over_socket(sock)


def drive(driver: ConsoleDriver, answers: Iterable[tuple[str, str]], *,
          optional: Iterable[str] = ("interface",), until: str | None = None,
          timeout: float = 600.0) -> ConsoleDriver:
    """Answer each (prompt id, text) in order (prompts in `optional` take their default when
    they come up), then wait for the regular expression `until` (e.g.
    r"MWCONSOLE set-up complete revision=\\d+"). Connect before the console asks (QEMU's
    `server=on,wait=on` holds the machine until then): a prompt printed to nobody is not
    printed again, and an empty line would take its default."""
    driver.answer_all(answers, optional=optional, timeout=timeout)
    if until is not None:
        driver.expect(until, timeout=timeout)
    return driver
