"""Mail throughput of the stacks, measured side by side in one run (issue 7, first slice).

Stacks so far: a) bare Postfix relay (no filter), d) Mailwarden after-queue, e) Mailwarden
before-queue, each a private sandbox relaying to Postfix's smtp-sink. Load comes from
Postfix's smtp-source, in a message-size mix drawn with a fixed seed. Reported per stack and
concurrency: messages/s end to end (first byte sent -> last message at the sink), and for
Mailwarden the agent's own CPU seconds per message (filter process) and its filter time
(p50/p99 of what the filter records per message, including the wait on the scanners).

Not yet: stacks b (Rspamd milter) and c (amavisd-new + SpamAssassin), latency per message,
CPU per process of Postfix/Rspamd/clamd, peak RSS.
"""

from __future__ import annotations

import json
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from mailwarden.sandbox.instance import Sandbox
from mailwarden.sandbox.process import wait_until

SIZES = [(2 * 1024, 60), (20 * 1024, 25), (200 * 1024, 12), (2 * 1024 * 1024, 3)]  # bytes, %
RESULTS = Path(__file__).parent / "results"


def state(sandbox: Sandbox, mode: str) -> str:
    return f"""\
version: 1
system:
  hostname: mx.example.test
domains:
  - name: example.test
    transport: {{host: 127.0.0.1, port: {sandbox.sink.port}, tls: none}}
mail:
  filter_mode: {mode}
  reject_unknown_sender_domain: false
spam:
  fuzzy_check: false
greylisting:
  enabled: false
"""


def mix(total: int, seed: int = 2026) -> dict[int, int]:
    rng = random.Random(seed)  # noqa: S311 - a reproducible load mix, not a secret
    counts = dict.fromkeys((s for s, _ in SIZES), 0)
    for _ in range(total):
        counts[rng.choices([s for s, _ in SIZES], weights=[w for _, w in SIZES])[0]] += 1
    return counts


def run_load(sandbox: Sandbox, total: int, concurrency: int) -> float:
    before = len(list(sandbox.sink.folder.iterdir()))
    started = time.perf_counter()
    for size, count in mix(total).items():
        if count:
            subprocess.run(["smtp-source", "-s", str(concurrency), "-m", str(count),
                            "-l", str(size), "-f", "bench@sender.test",
                            "-t", "user@example.test", f"127.0.0.1:{sandbox.layout.ports.smtp}"],
                           check=True, capture_output=True)
    wait_until("all messages at the sink",
               lambda: len(list(sandbox.sink.folder.iterdir())) >= before + total, 900)
    return time.perf_counter() - started


def filter_times(sandbox: Sandbox) -> list[float]:
    db = sandbox.layout.database
    if not db.exists():
        return []
    with sqlite3.connect(db) as conn:
        return [r[0] for r in conn.execute("SELECT filter_ms FROM messages") if r[0] is not None]


def measure(name: str, agent: bool, mode: str, total: int, levels: list[int]) -> list[dict]:
    root = Path(tempfile.mkdtemp(prefix=f"mw-bench-{name}-", dir="/tmp"))
    root.chmod(0o755)
    sandbox = Sandbox(root / "gw", agent_services=agent)
    rows = []
    try:
        sandbox.start(state(sandbox, mode))
        run_load(sandbox, 20, 5)  # warm up: Rspamd maps, Python imports, connections
        for concurrency in levels:
            filt = sandbox.daemons.get("filter")
            proc = psutil.Process(filt.process.pid) if filt and filt.process else None
            cpu0 = sum(proc.cpu_times()[:2]) if proc else 0.0
            done_before = len(filter_times(sandbox))
            seconds = run_load(sandbox, total, concurrency)
            row = {"stack": name, "concurrency": concurrency, "messages": total,
                   "seconds": round(seconds, 2), "msgs_per_s": round(total / seconds, 2)}
            if proc:
                row["agent_cpu_ms_per_msg"] = round(
                    (sum(proc.cpu_times()[:2]) - cpu0) * 1000 / total, 2)
                row["agent_rss_mb"] = round(proc.memory_info().rss / 2**20, 1)
                times = filter_times(sandbox)[done_before:]
                if times:
                    row["filter_ms_p50"] = round(statistics.median(times), 1)
                    row["filter_ms_p99"] = round(sorted(times)[int(len(times) * 0.99) - 1], 1)
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        sandbox.stop()
        shutil.rmtree(root, ignore_errors=True)
    return rows


def main(argv: list[str]) -> int:
    total = int(argv[1]) if len(argv) > 1 else 200
    levels = [1, 10, 50]
    rows = []
    rows += measure("a-postfix", False, "after_queue", total, levels)
    rows += measure("d-mailwarden-after-queue", True, "after_queue", total, levels)
    rows += measure("e-mailwarden-before-queue", True, "before_queue", total, levels)
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y-%m-%d")
    (RESULTS / "mailflow.json").write_text(json.dumps(
        {"date": stamp, "messages_per_run": total, "size_mix": SIZES, "seed": 2026,
         "machine": {"cpus": psutil.cpu_count(), "memory_gb": round(
             psutil.virtual_memory().total / 2**30)}, "rows": rows}, indent=2) + "\n")
    lines = ["| stack | concurrency | msgs/s | agent CPU ms/msg | filter ms p50 / p99 | "
             "agent RSS MB |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['stack']} | {r['concurrency']} | {r['msgs_per_s']} | "
                     f"{r.get('agent_cpu_ms_per_msg', '-')} | "
                     f"{r.get('filter_ms_p50', '-')} / {r.get('filter_ms_p99', '-')} | "
                     f"{r.get('agent_rss_mb', '-')} |")
    (RESULTS / "mailflow.md").write_text(
        f"# Mail flow, {stamp}\n\n{total} messages per run, size mix {SIZES} (seed 2026), "
        "loopback, one 2-core machine, all stacks in one run.\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
