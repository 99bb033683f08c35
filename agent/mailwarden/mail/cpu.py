"""The filter's own CPU per message, without the time spent waiting on scanners.

The filter is one asyncio thread plus a few worker threads; many messages are in flight at
once, so neither the process's CPU time nor a clock around `process()` says what one message
cost. Instead each SMTP session's task is driven through `metered`, which reads the thread's
CPU clock around every step the task runs (between two awaits). Waiting on Rspamd, clamd or
the network is not a step and costs nothing; parsing, the rules, the store and aiosmtpd's
handling of the DATA lines are. Tasks the session starts (the scanner clients, run side by
side with `gather`) and work handed to worker threads (reinjection, quarantine files, DKIM
verification and DMARC lookups) add to the same meter. What is left out is the event loop's
own bookkeeping between steps (reading the sockets into buffers): the process's total CPU per
message, which the benchmark also reports, includes it.

`FilterStats` keeps the latest figures in memory; the daemon writes them to a file on SIGUSR1
(bench/mailflow.py reads them), so measuring costs no I/O per message.
"""

from __future__ import annotations

import collections
import contextvars
import json
import os
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Generator
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

_CURRENT: contextvars.ContextVar[CpuMeter | None] = contextvars.ContextVar(
    "mailwarden_cpu_meter", default=None)


class CpuMeter:
    """CPU seconds of one SMTP session's work, from any thread; `lap` per message."""

    __slots__ = ("_lap_at", "_lock", "_total", "step_started")

    def __init__(self) -> None:
        self._total = 0.0
        self._lap_at = 0.0
        self.step_started: float | None = None  # set while a step of the session runs
        self._lock = threading.Lock()  # worker threads add too

    def add(self, seconds: float) -> None:
        with self._lock:
            self._total += seconds

    def lap(self) -> float:
        """CPU seconds since the previous lap, including the step running now."""
        with self._lock:
            now = self._total
            if self.step_started is not None:
                now += time.thread_time() - self.step_started
            spent, self._lap_at = now - self._lap_at, now
        return spent


class _Metered:
    """Runs a coroutine step by step, adding each step's thread CPU time to a meter.

    The same protocol asyncio's own Future.__await__ uses: whatever the coroutine yields
    (a future to wait on) is passed up to the task unchanged, and what the task sends or
    throws back (results, cancellation) is passed down.
    """

    __slots__ = ("_coro", "_meter")

    def __init__(self, coro: Coroutine[Any, Any, Any], meter: CpuMeter) -> None:
        self._coro = coro
        self._meter = meter

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, meter = self._coro, self._meter
        value: Any = None
        error: BaseException | None = None
        while True:
            started = meter.step_started = time.thread_time()
            try:
                yielded = coro.send(value) if error is None else coro.throw(error)
            except StopIteration as stop:
                return stop.value
            finally:
                meter.step_started = None
                meter.add(time.thread_time() - started)
            try:
                value, error = (yield yielded), None
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # cancellation and the like go to the coroutine
                value, error = None, exc


def session(coro: Coroutine[Any, Any, T], meter: CpuMeter) -> Awaitable[T]:
    """Meter a whole SMTP session (its task's steps) and make the meter current for the
    tasks and threads it starts."""
    _CURRENT.set(meter)  # the task's own copy of the context: one meter per session
    return _Metered(coro, meter)


def metered(coro: Coroutine[Any, Any, T]) -> Coroutine[Any, Any, T] | Awaitable[T]:
    """A coroutine about to become a task of its own (asyncio.gather): meter it too."""
    meter = _CURRENT.get()
    return coro if meter is None else _Metered(coro, meter)


def in_thread(fn: Callable[[], T]) -> Callable[[], T]:
    """Work for a worker thread, its CPU time added to the current session's meter."""
    meter = _CURRENT.get()
    if meter is None:
        return fn

    def run() -> T:
        started = time.thread_time()
        try:
            return fn()
        finally:
            meter.add(time.thread_time() - started)

    return run


class FilterStats:
    """The latest messages' own CPU and wall time in the filter, and running totals."""

    def __init__(self, keep: int = 100_000) -> None:
        self.messages = 0
        self.cpu_ms_total = 0.0
        self.cpu_ms: collections.deque[float] = collections.deque(maxlen=keep)
        self.filter_ms: collections.deque[float] = collections.deque(maxlen=keep)

    def add(self, cpu_seconds: float, wall_seconds: float) -> None:
        self.messages += 1
        self.cpu_ms_total += cpu_seconds * 1000
        self.cpu_ms.append(round(cpu_seconds * 1000, 3))
        self.filter_ms.append(round(wall_seconds * 1000, 3))

    def write(self, path: Path) -> None:
        """Atomically, so a reader never sees half a file."""
        data = {"messages": self.messages, "cpu_ms_total": round(self.cpu_ms_total, 3),
                "process_cpu_s": round(time.process_time(), 3),
                "cpu_ms": list(self.cpu_ms), "filter_ms": list(self.filter_ms)}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(data))
        tmp.replace(path)
