"""Drive the appliance console (`mailwarden console`) the way a person at it would: read
its output, wait for a `MWCONSOLE prompt ID` line, type the answer for that ID.

Works over any byte stream: a pty's master side (tests/integration) or a serial console's
socket (tests/e2e)."""

from __future__ import annotations

import os
import re
import select
import socket
import time
from collections.abc import Callable, Iterable

PROMPT = re.compile(rb"MWCONSOLE prompt ([A-Za-z0-9_-]+)\r?\n")


class ConsoleDriver:
    def __init__(self, read: Callable[[], bytes], write: Callable[[bytes], None],
                 wait: Callable[[float], bool]) -> None:
        self._read, self._write, self._wait = read, write, wait
        self.transcript = b""
        self._seen = 0  # how far prompts and marks have been looked for

    @classmethod
    def over_fd(cls, fd: int) -> ConsoleDriver:
        def read() -> bytes:
            try:
                return os.read(fd, 65536)
            except OSError:  # EIO: the other side closed the pty
                return b""

        def write(data: bytes) -> None:
            os.write(fd, data)

        def wait(timeout: float) -> bool:
            return bool(select.select([fd], [], [], timeout)[0])

        return cls(read, write, wait)

    @classmethod
    def over_socket(cls, sock: socket.socket) -> ConsoleDriver:
        """A serial console QEMU serves on a socket (-serial unix:PATH,server,nowait)."""
        def read() -> bytes:
            try:
                return sock.recv(65536)
            except OSError:
                return b""

        def wait(timeout: float) -> bool:
            return bool(select.select([sock], [], [], timeout)[0])

        return cls(read, sock.sendall, wait)

    def _more(self, deadline: float) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the console said nothing more; it said:\n"
                               + self.transcript[-3000:].decode(errors="replace"))
        if self._wait(min(left, 1.0)):
            data = self._read()
            if not data:
                raise EOFError("the console closed; it said:\n"
                               + self.transcript[-3000:].decode(errors="replace"))
            self.transcript += data

    def send(self, data: bytes) -> None:
        """Keys as they are (a boot menu's hotkey), no line end added."""
        self._write(data)

    def expect(self, pattern: str | bytes, timeout: float = 60.0) -> re.Match[bytes]:
        """The next match of `pattern` after what was matched before."""
        regex = re.compile(pattern.encode() if isinstance(pattern, str) else pattern)
        deadline = time.monotonic() + timeout
        while True:
            found = regex.search(self.transcript, self._seen)
            if found:
                self._seen = found.end()
                return found
            self._more(deadline)

    def next_prompt(self, timeout: float = 60.0) -> str:
        return self.expect(PROMPT, timeout).group(1).decode()

    def answer(self, prompt_id: str, text: str, timeout: float = 60.0) -> None:
        """Wait for that prompt (it must be the next one) and type `text`."""
        found = self.next_prompt(timeout)
        if found != prompt_id:
            raise AssertionError(f"expected the prompt {prompt_id}, the console asked {found}")
        self._write(text.encode() + b"\r")

    def answer_all(self, answers: Iterable[tuple[str, str]], optional: Iterable[str] = (),
                   timeout: float = 60.0) -> None:
        """Answer in order; a prompt named in `optional` (asked only on some machines, such
        as the interface on a machine without any) is answered with its default."""
        skippable = set(optional)
        for prompt_id, text in answers:
            while True:
                found = self.next_prompt(timeout)
                if found == prompt_id:
                    self._write(text.encode() + b"\r")
                    break
                if found not in skippable:
                    raise AssertionError(f"expected the prompt {prompt_id}, the console "
                                         f"asked {found}")
                self._write(b"\r")
