"""Mail throughput of five stacks, measured side by side in one run.

    python -m bench.mailflow [MESSAGES] [STACKS]    e.g. 200 abcde

Stacks, each a private sandbox from the harness relaying to Postfix's smtp-sink:
a) bare Postfix relay, b) Postfix + Rspamd milter (+ clamd), c) Postfix + amavisd-new +
SpamAssassin + clamd, d) Mailwarden after-queue, e) Mailwarden before-queue (default rules,
quarantine and tracking on).

Load (bench/load.py): the same reproducible mix for every stack (2 kB text to 2 MB zip,
seed 2026), at 1, 10 and 50 parallel sessions, after a warm-up. Per stack and level:
messages/s end to end (first byte sent -> last message at the sink), latency from the end
of DATA to arrival at the sink (p50/p95/p99), CPU ms per message of each process group and
its peak RSS (bench/procstats.py), and for Mailwarden the agent's own CPU per message as the
filter measures it (its work only, scanners' time excluded; p50/p99).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from mailwarden_dev.instance import Sandbox

from . import load
from .peers import AmavisSandbox, RspamdMilterSandbox
from .procstats import RssSampler, cpu_seconds

RESULTS = Path(__file__).parent / "results"
LEVELS = (1, 10, 50)
WARMUP = 20
# Process groups reported, in table order; the sandbox's service names map onto them.
GROUPS = ("postfix", "rspamd", "clamd", "amavis", "agent", "redis", "dns", "sink")
SERVICE_GROUP = {"postfix": "postfix", "rspamd": "rspamd", "clamd": "clamd",
                 "amavis": "amavis", "filter": "agent", "policy": "agent", "redis": "redis",
                 "unbound": "dns", "nsd": "dns", "smtp-sink": "sink"}


def state(sandbox: Sandbox, mode: str) -> str:
    # The load is one client (XCLIENT as sender.test's server) with up to 50 sessions: the
    # per-client connection limit (50 by default) would measure the limit, not the stack.
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
  max_connections_per_client: 0
spam:
  fuzzy_check: false
greylisting:
  enabled: false
"""


STACKS: dict[str, tuple[str, Callable[[Path], Sandbox], str]] = {
    "a": ("a-postfix", lambda root: Sandbox(root, agent_services=False), "after_queue"),
    "b": ("b-rspamd-milter", lambda root: RspamdMilterSandbox(root, agent_services=False),
          "after_queue"),
    "c": ("c-amavis-spamassassin", AmavisSandbox, "after_queue"),
    "d": ("d-mailwarden-after-queue", lambda root: Sandbox(root, agent_services=True),
          "after_queue"),
    "e": ("e-mailwarden-before-queue", lambda root: Sandbox(root, agent_services=True),
          "before_queue"),
}


def roots(sandbox: Sandbox) -> dict[int, str]:
    """Session leader pid -> process group, for every daemon of the sandbox."""
    out = {d.process.pid: SERVICE_GROUP.get(d.name, "other")
           for d in [*sandbox.daemons.values(), *sandbox.extra] if d.process is not None}
    # Postfix's master starts a session of its own (setsid), apart from `postfix start-fg`:
    # find it through its pid file.
    for service, daemon in sandbox.daemons.items():
        pidfile = sandbox.layout.pidfile(service)
        try:
            sid = os.getsid(int(pidfile.read_text().split()[0])) if pidfile else None
        except (OSError, ValueError, IndexError):
            continue
        if sid is not None:
            out.setdefault(sid, SERVICE_GROUP.get(daemon.name, "other"))
    return out


def filter_stats(sandbox: Sandbox) -> dict[str, Any] | None:
    """The filter's own per-message CPU figures (it writes them on SIGUSR1)."""
    filt = sandbox.daemons.get("filter")
    if filt is None or not filt.running:
        return None
    path = sandbox.layout.run_dir / "filter-stats.json"
    path.unlink(missing_ok=True)
    filt.signal(signal.SIGUSR1)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            return json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            time.sleep(0.02)
    return None


def wait_arrivals(sandbox: Sandbox, tag: str, before: int, expected: int,
                  quiet: float = 60.0) -> dict[str, float]:
    """Until every accepted message is at the sink, or nothing new arrived for `quiet` s (a
    message quarantined or discarded by a stack never arrives; the row then says so)."""
    folder = sandbox.sink.folder
    last_count, last_change = -1, time.monotonic()
    while True:
        count = len(list(folder.iterdir())) - before
        if count >= expected:
            # smtp-sink creates the file before the data is in: read them to be sure.
            seen = load.arrivals(folder, tag)
            if len(seen) >= expected:
                time.sleep(0.3)  # the last files' final writes (their mtimes) settle
                return load.arrivals(folder, tag)
            count = len(seen)
        if count != last_count:
            last_count, last_change = count, time.monotonic()
        elif time.monotonic() - last_change > quiet:
            return load.arrivals(folder, tag)
        time.sleep(0.05)


def ms(value: float) -> float:
    return round(value * 1000, 1)


def measure_level(sandbox: Sandbox, name: str, messages: list[load.Message], sessions: int,
                  ) -> dict[str, Any]:
    tag = f"{name}.c{sessions}.{int(time.time())}"
    group_roots = roots(sandbox)
    filt0 = filter_stats(sandbox)
    cpu0 = cpu_seconds(group_roots)
    before = len(list(sandbox.sink.folder.iterdir()))
    started = time.time()
    with RssSampler(group_roots) as rss:
        sent, failures = load.send(sandbox.layout.ports.smtp, messages, sessions, tag)
        seen = wait_arrivals(sandbox, tag, before, len(sent))
    cpu1 = cpu_seconds(group_roots)
    filt1 = filter_stats(sandbox)
    latencies = [seen[s.message_id] - s.data_end for s in sent if s.message_id in seen]
    accept = [s.accepted - s.data_end for s in sent]
    delivered = len(latencies)
    last = max(seen.values()) if seen else time.time()
    row: dict[str, Any] = {
        "stack": name, "concurrency": sessions, "messages": len(messages),
        "accepted": len(sent), "delivered": delivered, "refused": failures[:5],
        "seconds": round(last - started, 2),
        "msgs_per_s": round(delivered / (last - started), 2) if delivered else 0.0,
    }
    if latencies:
        row["latency_ms"] = {f"p{p}": ms(load.percentile(latencies, p)) for p in (50, 95, 99)}
        row["accept_ms_p50"] = ms(statistics.median(accept))
    per_msg = max(delivered, 1)
    groups = {g: cpu1.get(g, 0.0) - cpu0.get(g, 0.0) for g in GROUPS if g in cpu1}
    row["cpu_ms_per_msg"] = {g: round(v * 1000 / per_msg, 2) for g, v in groups.items()}
    row["cpu_ms_per_msg_stack"] = round(
        sum(v for g, v in groups.items() if g != "sink") * 1000 / per_msg, 2)
    row["peak_rss_mb"] = {g: round(v, 1) for g, v in rss.peak_mb.items() if v}
    if filt0 is not None and filt1 is not None:
        new = filt1["messages"] - filt0["messages"]
        own = filt1["cpu_ms"][-new:] if new else []
        if own:
            row["agent_own_cpu_ms"] = {"p50": round(statistics.median(own), 2),
                                       "p99": round(load.percentile(own, 99), 2),
                                       "mean": round(statistics.fmean(own), 2)}
    print(json.dumps(row), flush=True)
    return row


def measure(key: str, mixes: dict[int, list[load.Message]], warmup: list[load.Message],
            ) -> list[dict[str, Any]]:
    name, make, mode = STACKS[key]
    root = Path(tempfile.mkdtemp(prefix=f"mw-bench-{key}-", dir="/tmp"))
    root.chmod(0o755)
    sandbox = make(root / "gw")
    rows = []
    try:
        started = time.monotonic()
        sandbox.start(state(sandbox, mode), timeout=180)
        print(f"== {name}: started in {time.monotonic() - started:.1f} s", flush=True)
        # Warm-up: Rspamd's maps, SpamAssassin's first scan, Python's imports, connections.
        sent, _ = load.send(sandbox.layout.ports.smtp, warmup, 5, f"{name}.warmup")
        wait_arrivals(sandbox, f"{name}.warmup", 0, len(sent), quiet=30)
        for sessions in LEVELS:
            rows.append(measure_level(sandbox, name, mixes[sessions], sessions))
    finally:
        sandbox.stop()
        shutil.rmtree(root, ignore_errors=True)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    def cell(d: dict[str, Any] | None, key: str) -> str:
        return str(d[key]) if d and key in d else "-"

    out = ["| stack | sessions | msgs/s | delivered | latency ms p50 / p95 / p99 | "
           "CPU ms/msg, all | postfix | rspamd | clamd | amavis | agent | agent own p50 / p99 |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lat, cpu, own = r.get("latency_ms"), r["cpu_ms_per_msg"], r.get("agent_own_cpu_ms")
        out.append(
            f"| {r['stack']} | {r['concurrency']} | {r['msgs_per_s']} | "
            f"{r['delivered']}/{r['messages']} | "
            f"{cell(lat, 'p50')} / {cell(lat, 'p95')} / {cell(lat, 'p99')} | "
            f"{r['cpu_ms_per_msg_stack']} | {cell(cpu, 'postfix')} | {cell(cpu, 'rspamd')} | "
            f"{cell(cpu, 'clamd')} | {cell(cpu, 'amavis')} | {cell(cpu, 'agent')} | "
            f"{cell(own, 'p50')} / {cell(own, 'p99')} |")
    out += ["", "Peak RSS (MB, sum over each group's processes during the level):", "",
            "| stack | sessions | postfix | rspamd | clamd | amavis | agent | redis |",
            "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        rss = r["peak_rss_mb"]
        out.append(f"| {r['stack']} | {r['concurrency']} | " + " | ".join(
            cell(rss, g) for g in ("postfix", "rspamd", "clamd", "amavis", "agent", "redis"))
            + " |")
    return "\n".join(out)


def ratios(rows: list[dict[str, Any]]) -> dict[str, dict[int, float]]:
    rate = {(r["stack"][0], r["concurrency"]): r["msgs_per_s"] for r in rows}
    out: dict[str, dict[int, float]] = {}
    for key, label in (("d", "after-queue / b"), ("e", "before-queue / b"),
                       ("c", "amavis / b")):
        out[label] = {lvl: round(rate[(key, lvl)] / rate[("b", lvl)], 2)
                      for lvl in LEVELS if rate.get(("b", lvl)) and (key, lvl) in rate}
    return out


def main(argv: list[str]) -> int:
    total = int(argv[1]) if len(argv) > 1 else 200
    keys = argv[2] if len(argv) > 2 else "abcde"
    # One mix per level (different seeds), the same for every stack: a level never resends
    # bytes a scanner has just seen (clamd caches the hashes of clean files).
    mixes = {lvl: load.make_mix(total, load.SEED + i) for i, lvl in enumerate(LEVELS)}
    warmup = load.make_mix(WARMUP, load.SEED - 1)
    rows: list[dict[str, Any]] = []
    started = time.monotonic()
    for key in keys:
        rows += measure(key, mixes, warmup)
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y-%m-%d")
    sizes = [{"kind": k, "bytes": b, "percent": w} for k, b, w in load.SIZES]
    counts = {k: sum(1 for m in mixes[LEVELS[0]] if m.kind == k) for k, _, _ in load.SIZES}
    (RESULTS / "mailflow.json").write_text(json.dumps(
        {"date": stamp, "messages_per_level": total, "size_mix": sizes, "seed": load.SEED,
         "mix_counts_first_level": counts, "levels": LEVELS,
         "machine": {"cpus": psutil.cpu_count(),
                     "memory_gb": round(psutil.virtual_memory().total / 2**30)},
         "duration_s": round(time.monotonic() - started), "ratios": ratios(rows),
         "rows": rows}, indent=2) + "\n")
    text = table(rows)
    ratio_lines = "\n".join(f"- {label}: " + ", ".join(f"{v} at {lvl}" for lvl, v in r.items())
                            for label, r in ratios(rows).items())
    (RESULTS / "mailflow.md").write_text(
        f"# Mail flow, {stamp}\n\n{total} messages per level, size mix "
        f"{', '.join(f'{k} {w} %' for k, _, w in load.SIZES)} (seed {load.SEED}; "
        f"first level: {counts}), loopback, one {psutil.cpu_count()}-core machine, all "
        "stacks in one run. Generated by `bench/mailflow.py`.\n\n" + text
        + "\n\nmsgs/s ratios against stack b (targets: after-queue >= 0.9, before-queue >= 0.8):"
        f"\n\n{ratio_lines}\n")
    print(text)
    print(ratio_lines)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
