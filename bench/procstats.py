"""CPU seconds and peak RSS per process group (Postfix, Rspamd, clamd, amavis, agent...).

A group is every process in the session of one supervised daemon (the harness starts each in
its own session, and Postfix's, Rspamd's and amavisd's workers stay in it). CPU of a group is
its live processes' user+system time plus what their parents collected from children that
already exited: Postfix's smtpd, cleanup and smtp processes come and go during a run, and
their time lands in the master's children times when it reaps them.

RSS is sampled in a background thread; a group's RSS is the sum over its processes at one
instant (shared pages of forked workers count once per process, so this overstates Rspamd's
and amavisd's real footprint, the same way `ps` does), and the peak is over the run.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping

import psutil


def _members(roots: Mapping[int, str]) -> dict[str, list[psutil.Process]]:
    """roots: session leader pid -> group name (a group may have several sessions)."""
    groups: dict[str, list[psutil.Process]] = {name: [] for name in roots.values()}
    for proc in psutil.process_iter():
        try:
            name = roots.get(os.getsid(proc.pid))
        except (ProcessLookupError, PermissionError):
            continue
        if name is not None:
            groups[name].append(proc)
    return groups


def cpu_seconds(roots: Mapping[int, str]) -> dict[str, float]:
    out = {}
    for name, procs in _members(roots).items():
        total = 0.0
        for proc in procs:
            try:
                t = proc.cpu_times()
                total += t.user + t.system + t.children_user + t.children_system
            except psutil.NoSuchProcess:
                continue  # exited between listing and reading: its parent has its time
        out[name] = total
    return out


class RssSampler:
    """Peak RSS per group while the load runs (sum over the group's processes)."""

    def __init__(self, roots: Mapping[int, str], interval: float = 0.25) -> None:
        self.roots = dict(roots)
        self.interval = interval
        self.peak_mb: dict[str, float] = dict.fromkeys(self.roots.values(), 0.0)
        self.peak_process_mb: dict[str, float] = dict.fromkeys(self.roots.values(), 0.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _sample(self) -> None:
        for name, procs in _members(self.roots).items():
            sizes = []
            for proc in procs:
                try:
                    sizes.append(proc.memory_info().rss)
                except psutil.NoSuchProcess:
                    continue
            if sizes:
                self.peak_mb[name] = max(self.peak_mb[name], sum(sizes) / 2**20)
                self.peak_process_mb[name] = max(self.peak_process_mb[name],
                                                 max(sizes) / 2**20)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> RssSampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
