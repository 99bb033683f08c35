"""Where the agent's own CPU goes: py-spy on the content filter under load.

    python -m bench.profile [MESSAGES] [FORMAT]     FORMAT: flamegraph (default) or raw

Stack d (Mailwarden after-queue) with the benchmark's mix at 10 sessions; py-spy samples the
filter process on CPU only (idle threads, i.e. waits on scanners, are not sampled) and writes
results/agent-flamegraph.svg, or with `raw` the collapsed stacks plus a summary of the
functions with the most samples (self and total) to results/agent-profile.txt.

py-spy (pinned in pyproject's `bench` extra) samples from outside the process: nothing in the
agent changes to be profiled, and its overhead stays out of the measured process.
"""

from __future__ import annotations

import collections
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import load
from .mailflow import RESULTS, STACKS, state, wait_arrivals


def summary(collapsed: str, top: int = 25) -> str:
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        samples += n
        frames = stack.split(";")
        own[frames[-1]] += n
        for frame in set(frames):
            total[frame] += n
    out = [f"{samples} samples on CPU", "", "self %  function (file:line)"]
    out += [f"{100 * n / samples:6.1f}  {f}" for f, n in own.most_common(top)]
    out += ["", "total %  function (file:line), callees included"]
    out += [f"{100 * n / samples:6.1f}  {f}" for f, n in total.most_common(top)]
    return "\n".join(out) + "\n"


def main(argv: list[str]) -> int:
    total = int(argv[1]) if len(argv) > 1 else 300
    fmt = argv[2] if len(argv) > 2 else "flamegraph"
    _name, make, mode = STACKS["d"]
    root = Path(tempfile.mkdtemp(prefix="mw-bench-profile-", dir="/tmp"))
    root.chmod(0o755)
    sandbox = make(root / "gw")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / ("agent-flamegraph.svg" if fmt == "flamegraph" else "agent-profile.raw")
    try:
        sandbox.start(state(sandbox, mode), timeout=180)
        warmup = load.make_mix(20, load.SEED - 1)
        sent, _ = load.send(sandbox.layout.ports.smtp, warmup, 5, "profile.warmup")
        wait_arrivals(sandbox, "profile.warmup", 0, len(sent), quiet=30)
        filt = sandbox.daemons["filter"]
        assert filt.process is not None
        # The venv's py-spy (bench extra): run.sh does not activate the venv.
        py_spy = Path(sys.executable).parent / "py-spy"
        spy = subprocess.Popen([str(py_spy), "record", "--pid", str(filt.process.pid),
                                "--rate", "250", "--format", fmt, "--output", str(out),
                                "--nonblocking"], stdout=subprocess.DEVNULL)
        time.sleep(1)  # py-spy attaches
        before = len(list(sandbox.sink.folder.iterdir()))
        sent, _ = load.send(sandbox.layout.ports.smtp, load.make_mix(total, load.SEED), 10,
                            "profile")
        wait_arrivals(sandbox, "profile", before, len(sent))
        spy.send_signal(signal.SIGINT)
        spy.wait(timeout=60)
    finally:
        sandbox.stop()
        shutil.rmtree(root, ignore_errors=True)
    if fmt == "raw":
        (RESULTS / "agent-profile.txt").write_text(summary(out.read_text()))
        print((RESULTS / "agent-profile.txt").read_text())
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
