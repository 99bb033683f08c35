"""The appliance console over its serial line, for end-to-end tests: QEMU serves ttyS0 on a
socket (machine.py, `interactive`), and the console prints `MWCONSOLE prompt ID` before each
question (the IDs: firstboot/README.md)."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from ..console_driver import ConsoleDriver
from .machine import Machine


def connect(path: Path, timeout: float = 60.0) -> ConsoleDriver:
    """A driver on the serial console's socket. A thread reads the socket all the time: QEMU
    holds the guest's serial output until someone reads it, so a test busy elsewhere (an API
    call, a reboot to wait for) would otherwise stall the guest's console, and with it
    whatever writes to it (the kernel, a shutdown)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(str(path))
    sock.settimeout(None)
    pending = bytearray()
    lock = threading.Lock()
    arrived = threading.Event()
    closed = threading.Event()

    def pump() -> None:
        while True:
            try:
                data = sock.recv(65536)
            except OSError:
                data = b""
            with lock:
                if data:
                    pending.extend(data)
                else:
                    closed.set()
                arrived.set()
            if not data:
                return

    def read() -> bytes:  # b"" only once the socket closed: the driver's end of input
        with lock:
            data = bytes(pending)
            pending.clear()
            if not closed.is_set():
                arrived.clear()
            return data

    def wait(seconds: float) -> bool:
        return arrived.wait(seconds)

    threading.Thread(target=pump, name=f"console {path.name}", daemon=True).start()
    return ConsoleDriver(read, sock.sendall, wait)



def attach(machine: Machine) -> ConsoleDriver:
    """The serial console of an interactive machine, as soon as QEMU made its socket (before
    the guest says much)."""
    deadline = time.monotonic() + 60
    while not machine.serial_socket.exists():
        if time.monotonic() > deadline or not machine.alive():
            pytest.fail(f"{machine.name}: QEMU made no serial socket ({machine.serial})")
        time.sleep(0.1)
    return connect(machine.serial_socket)
