"""Line-based questions on a terminal: the VGA console, a serial line, or a test's pty.

Nothing but lines: no cursor addressing, so the same dialogue works over a 9600-baud serial
console and can be driven by a script. Each question is announced by a line
`MWCONSOLE prompt ID` (IDs are stable; see firstboot/README.md) before the question itself,
and each refused answer by `MWCONSOLE refused ID: message`: a driver waits for the first and
may watch for the second.
"""

from __future__ import annotations

import contextlib
import select
import signal
import termios
import threading
from collections.abc import Callable, Iterator
from typing import TextIO

PREFIX = "MWCONSOLE"

# A check: None for a good answer, else the message to show.
Check = Callable[[str], str | None]


@contextlib.contextmanager
def uninterrupted() -> Iterator[None]:
    """Ctrl-C is ignored while a change is made: half an apply is worse than a wait."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class Hangup(Exception):
    """The terminal went away (end of input): the unit restarts the console."""


class Terminal:
    def __init__(self, inp: TextIO, out: TextIO) -> None:
        self.inp = inp
        self.out = out

    def say(self, text: str = "") -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def mark(self, text: str) -> None:
        """A line for scripts reading the console."""
        self.say(f"{PREFIX} {text}")

    def _line(self, timeout: float | None = None) -> str | None:
        """One line without its end; None when `timeout` passed first."""
        if timeout is not None and self._has_fd():
            ready, _, _ = select.select([self.inp], [], [], timeout)
            if not ready:
                return None
        line = self.inp.readline()
        if not line:
            raise Hangup()
        return line.rstrip("\r\n")

    def _has_fd(self) -> bool:
        try:
            self.inp.fileno()
        except (OSError, ValueError, AttributeError):
            return False
        return True

    def wait_line(self, timeout: float) -> str | None:
        return self._line(timeout)

    def ask(self, prompt_id: str, question: str, default: str | None = None,
            check: Check | None = None, *, secret: bool = False) -> str:
        """Ask until the answer passes `check`; an empty answer takes the default."""
        while True:
            # Echo goes off before the question shows: an answer typed the moment it
            # appears (a script on the serial line, a quick typist) is never echoed.
            with self._no_echo() if secret else contextlib.nullcontext():
                self.mark(f"prompt {prompt_id}")
                shown = f" [{default}]" if default else ""
                self.out.write(f"{question}{shown}: ")
                self.out.flush()
                answer = self._line()
            if secret:
                self.say()
            answer = answer.strip() if answer is not None else ""
            if not answer and default is not None:
                answer = default
            problem = check(answer) if check else None
            if problem is None:
                return answer
            self.mark(f"refused {prompt_id}: {problem}")

    def choose(self, prompt_id: str, question: str, options: list[str], default: str) -> str:
        """One of `options` (a unique prefix is enough)."""
        def check(answer: str) -> str | None:
            found = [o for o in options if o.startswith(answer.lower())] if answer else []
            return None if len(found) == 1 else f"answer one of: {', '.join(options)}"

        answer = self.ask(prompt_id, f"{question} ({'/'.join(options)})", default, check)
        return next(o for o in options if o.startswith(answer.lower()))

    def confirm(self, prompt_id: str, question: str, default: bool = True) -> bool:
        return self.choose(prompt_id, question, ["yes", "no"],
                           "yes" if default else "no") == "yes"

    @contextlib.contextmanager
    def _no_echo(self) -> Iterator[None]:
        """Passwords are not shown; a pipe (no terminal) has nothing to turn off."""
        try:
            fd = self.inp.fileno()
            old = termios.tcgetattr(fd)
        except (OSError, ValueError, AttributeError, termios.error):
            yield
            return
        new = list(old)
        new[3] = new[3] & ~termios.ECHO
        termios.tcsetattr(fd, termios.TCSADRAIN, new)
        try:
            yield
        finally:
            termios.tcsetattr(fd, termios.TCSADRAIN, old)


__all__ = ["PREFIX", "Check", "Hangup", "Terminal", "uninterrupted"]
