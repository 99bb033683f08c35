"""The control plane, measured: the API over a quarantine of 1,000,000
messages, applying a state change on running daemons, and the web UI's first load.

- Quarantine: a store filled with N rows (default 1,000,000; the rows are bulk-loaded with the
  store's own schema, without message files, since only the index is under test), then each
  query the UI and the API make is timed through the real Falcon app (falcon.testing: the app,
  its auth and the store; no TLS or gunicorn): the admin's first page, a kind filter, a quarantine
  user's own view, a search in subjects and senders, a sort by score, a deep page.
- Apply: a running sandbox (Postfix, Rspamd, clamd, Redis, Unbound, filter, policy); a change
  of the spam levels (reloads Rspamd and the agent's daemons) and of a relay domain (reloads
  Postfix), each the whole transaction: validate, render, check with the services' tools, swap,
  reload, probe.
- UI first load: headless Chromium against gunicorn over HTTPS; time to the login form, bytes
  transferred, time from login to a painted dashboard.

    python -m bench.controlplane [ROWS]
"""

from __future__ import annotations

import json
import random
import secrets
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from falcon import testing

from mailwarden.api.app import Services, create_app
from mailwarden.control.service import NoController
from mailwarden.store.db import Database
from mailwarden.store.users import Users
from mailwarden_dev.instance import Sandbox

RESULTS = Path(__file__).parent / "results"
PASSWORD = secrets.token_urlsafe(16)
STATE = """\
version: 1
system:
  hostname: mx.example.test
networks:
  trusted: [10.20.0.0/16]
domains:
  - name: example.test
    transport: {{host: 127.0.0.1, port: {port}, tls: none}}
spam:
  fuzzy_check: false
{extra}"""
SENDERS = [f"news{i}@sender{i % 500}.example" for i in range(5000)]
WORDS = ("invoice", "offer", "meeting", "urgent", "winner", "delivery", "password", "report",
         "viagra", "crypto", "loan", "update", "account", "free", "hello")


def _percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"p50_ms": round(1000 * statistics.median(ordered), 2),
            "p95_ms": round(1000 * ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 2),
            "max_ms": round(1000 * ordered[-1], 2), "runs": len(ordered)}


def _timed(call: Callable[[], Any], runs: int) -> dict[str, float]:
    call()  # warm the page cache and the app
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return _percentiles(samples)


def fill_quarantine(database: Path, rows: int, seed: int = 7) -> float:
    """Bulk-load rows into the store's own tables (the store made the schema). A benchmark
    fixture: the product writes these rows only through Quarantine.put."""
    Database(database).connection()  # creates and migrates the schema
    rng = random.Random(seed)  # noqa: S311 -- reproducible data, not secrets
    started = time.monotonic()
    conn = sqlite3.connect(database)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")
    now = time.time()
    batch = 50_000
    for first in range(0, rows, batch):
        entries, recipients = [], []
        for n in range(first, min(rows, first + batch)):
            entry_id = uuid.UUID(int=rng.getrandbits(128)).hex
            kind = rng.choices(("spam", "virus", "attachment"), (90, 4, 6))[0]
            when = now - rng.random() * 30 * 86400
            subject = " ".join(rng.choice(WORDS) for _ in range(4)) + f" #{n}"
            entries.append((entry_id, when, when + 7 * 86400, kind, f"/nonexistent/{entry_id}",
                            rng.randint(2_000, 200_000), rng.choice(SENDERS), subject,
                            f"<{entry_id}@x>", round(rng.uniform(5, 40), 2),
                            "Eicar-Signature" if kind == "virus" else None, "bench"))
            recipients.append((entry_id, f"user{rng.randrange(2000)}@example.test", when))
        conn.executemany("INSERT INTO quarantine (id, time, expires, kind, path, size, sender,"
                         " subject, message_id, spam_score, virus, rule)"
                         " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", entries)
        conn.executemany("INSERT INTO quarantine_recipients (quarantine_id, recipient, status,"
                         " changed) VALUES (?, ?, 'new', ?)", recipients)
        conn.commit()
    conn.execute("ANALYZE")
    conn.close()
    return time.monotonic() - started


def bench_quarantine(root: Path, rows: int, runs: int) -> dict[str, Any]:
    sandbox = Sandbox(root / "store")
    sandbox.prepare(STATE.format(port=2525, extra=""))
    load_seconds = fill_quarantine(sandbox.layout.database, rows)
    db = Database(sandbox.layout.database)
    users = Users(db)
    users.add("admin", PASSWORD, "admin")
    users.add("user42@example.test", PASSWORD, "quser")
    client = testing.TestClient(create_app(Services(sandbox.layout, db, NoController())))

    def session(username: str) -> dict[str, str]:
        result = client.simulate_post("/api/session", json={"username": username,
                                                            "password": PASSWORD})
        return {"Cookie": f"mw_session={result.cookies['mw_session'].value}"}

    admin, quser = session("admin"), session("user42@example.test")

    def query(params: str, headers: dict[str, str]) -> Callable[[], Any]:
        def call() -> Any:
            result = client.simulate_get("/api/quarantine", query_string=params,
                                         headers=headers)
            assert result.status_code == 200, result.text
            return result

        return call

    queries = {
        "first page (50 newest)": ("limit=50", admin),
        "viruses only": ("kind=virus&limit=50", admin),
        "a quarantine user's own": ("limit=50", quser),
        "search subject/sender": ("q=winner%20crypto&limit=50", admin),
        "search matching nothing": ("q=no-such-text&limit=50", admin),
        "sort by score": ("sort=-score&limit=50", admin),
        f"deep page (offset {rows // 10})": (f"limit=50&offset={rows // 10}", admin),
        "deep page by time (until=, 15 days back)": (
            f"limit=50&until={time.time() - 15 * 86400:.0f}", admin),
    }
    out: dict[str, Any] = {"rows": rows, "load_seconds": round(load_seconds, 1), "queries": {}}
    for name, (params, headers) in queries.items():
        out["queries"][name] = {"query": params, **_timed(query(params, headers), runs)}
        print(f"  quarantine {name}: {out['queries'][name]}", flush=True)
    return out


def bench_apply(root: Path, runs: int) -> tuple[dict[str, Any], Sandbox]:
    sandbox = Sandbox(root / "gw", agent_services=True, api=True)
    base = STATE.format(port=sandbox.sink.port, extra="")
    sandbox.start(base)
    variants = {
        "spam levels (Rspamd + agent reload)": [base + "  levels: {tag: 5.0}\n", base],
        "message size limit (Postfix reload)": [base + "mail:\n  max_size_mb: 30\n", base],
    }
    out: dict[str, Any] = {}
    for name, texts in variants.items():
        samples = []
        for i in range(runs):
            started = time.perf_counter()
            result = sandbox.apply(texts[i % 2], comment=f"bench {name} {i}")
            samples.append(time.perf_counter() - started)
        out[name] = {**_percentiles(samples), "reloaded": result.reloaded}
        print(f"  apply {name}: {out[name]}", flush=True)
    return out, sandbox


def _wait_mark(page: Any, name: str, timeout: float = 30) -> None:
    """Poll with evaluate: the UI's CSP forbids the string eval wait_for_function needs."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(f"() => performance.getEntriesByName('{name}').length > 0"):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the UI never marked {name}")
        time.sleep(0.01)


def bench_ui(sandbox: Sandbox, runs: int) -> dict[str, Any]:
    """Times taken in the page itself (the UI marks each view it has painted), so the
    browser driver's own latency is not counted."""
    from playwright.sync_api import sync_playwright

    Users(Database(sandbox.layout.database)).add("admin", PASSWORD, "admin")
    base = f"https://127.0.0.1:{sandbox.layout.ports.api}"
    first_paint, dashboard, transferred = [], [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        for _ in range(runs + 1):
            context = browser.new_context(ignore_https_errors=True)  # a cold cache each time
            page = context.new_page()
            sizes: list[int] = []
            page.on("response", lambda r, sizes=sizes: sizes.append(len(r.body() or b""))
                    if r.request.resource_type in ("document", "script", "stylesheet") else None)
            page.goto(f"{base}/#/login")
            _wait_mark(page, "view:login")
            first_paint.append(page.evaluate(
                "performance.getEntriesByName('view:login')[0].startTime") / 1000)
            page.evaluate("""() => document.querySelector('form').addEventListener(
                'submit', () => performance.mark('submit'), true)""")
            page.fill("#username", "admin")
            page.fill("#password", PASSWORD)
            page.click("button[type=submit]")
            _wait_mark(page, "view:dashboard")
            dashboard.append(page.evaluate(
                "performance.getEntriesByName('view:dashboard')[0].startTime"
                " - performance.getEntriesByName('submit')[0].startTime") / 1000)
            transferred.append(sum(sizes))
            context.close()
        browser.close()
    # The first round starts Chromium's own caches; it is not counted.
    return {"login form shown": _percentiles(first_paint[1:]),
            "login to dashboard": _percentiles(dashboard[1:]),
            "bytes (html+js+css)": transferred[-1]}


def markdown(result: dict[str, Any]) -> str:
    lines = ["# Control plane", "",
             f"Measured {result['date']} on {result['machine']}; `python -m bench.controlplane "
             f"{result['quarantine']['rows']}`.", "",
             f"## API over a quarantine of {result['quarantine']['rows']:,} messages", "",
             f"(loaded in {result['quarantine']['load_seconds']} s; through the Falcon app, "
             "auth and store included, TLS and gunicorn not)", "",
             "| query | p50 ms | p95 ms | max ms |", "|---|---:|---:|---:|"]
    for name, q in result["quarantine"]["queries"].items():
        lines.append(f"| {name} (`{q['query']}`) | {q['p50_ms']} | {q['p95_ms']} | {q['max_ms']} |")
    lines += ["", "## Applying a state change on running daemons", "",
              "(the whole transaction: validate, render, check with the services' own tools, "
              "swap, reload, probe; the sandbox's controller waits 0.5 s after signalling "
              "Rspamd so that its old workers are gone before the probe)", "",
              "| change | p50 ms | p95 ms | reloaded |", "|---|---:|---:|---|"]
    for name, a in result["apply"].items():
        lines.append(f"| {name} | {a['p50_ms']} | {a['p95_ms']} | {', '.join(a['reloaded'])} |")
    ui = result["ui"]
    lines += ["", "## Web UI first load (headless Chromium, HTTPS, cold cache)", "",
              "| step | p50 ms | p95 ms |", "|---|---:|---:|",
              f"| navigation start -> login form painted | {ui['login form shown']['p50_ms']} | "
              f"{ui['login form shown']['p95_ms']} |",
              f"| 'Log in' pressed -> dashboard painted | {ui['login to dashboard']['p50_ms']} | "
              f"{ui['login to dashboard']['p95_ms']} |", "",
              f"HTML, JavaScript and CSS transferred: {ui['bytes (html+js+css)']:,} bytes "
              "(no framework, no build step).", ""]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    rows = int(argv[0]) if argv else 1_000_000
    root = Path(tempfile.mkdtemp(prefix="mw-bench-cp-", dir="/tmp"))
    root.chmod(0o755)
    sandbox: Sandbox | None = None
    try:
        print(f"==> quarantine with {rows} rows", flush=True)
        quarantine = bench_quarantine(root, rows, runs=20)
        print("==> apply", flush=True)
        apply, sandbox = bench_apply(root, runs=6)
        print("==> web UI first load", flush=True)
        ui = bench_ui(sandbox, runs=5)
    finally:
        if sandbox is not None:
            sandbox.stop()
        shutil.rmtree(root, ignore_errors=True)
    import platform

    import psutil

    result = {"date": time.strftime("%Y-%m-%d"),
              "machine": f"{platform.machine()}, {psutil.cpu_count()} cores, "
                         f"{round(psutil.virtual_memory().total / 2**30)} GiB",
              "quarantine": quarantine, "apply": apply, "ui": ui}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "controlplane.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "controlplane.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
