"""The filter daemon: both listeners in one asyncio process, state reloaded on SIGHUP."""

from __future__ import annotations

import asyncio
import logging
import signal
from concurrent.futures import ThreadPoolExecutor

from ..layout import Layout
from ..state.load import load_state_file
from ..store.db import Database
from .filter import ContentFilter, FilterContext, FilterSMTP
from .scanners import close_pools

log = logging.getLogger("mailwarden.filter")
WORKER_THREADS = 24


async def serve_filter(layout: Layout) -> None:
    state = load_state_file(layout.state_file)
    ctx = FilterContext(state=state, layout=layout, db=Database(layout.database))
    loop = asyncio.get_running_loop()
    # Worker threads do the blocking work: reinjection (each keeps its own connection to
    # port 10025), quarantine files, DKIM and DMARC lookups. asyncio's default pool has
    # cpu + 4 threads (6 on the appliance's 2 cores), fewer than the messages in flight
    # (20 scan connections after-queue, one per waiting smtpd before-queue): messages then
    # queue for a thread while each one waits on Postfix.
    loop.set_default_executor(ThreadPoolExecutor(max_workers=WORKER_THREADS,
                                                 thread_name_prefix="mailwarden-filter"))
    # Postfix may send up to twice the size limit after reinjection headers; the size
    # limit itself is enforced by Postfix, with a clear 552.
    size_limit = state.mail.max_size_mb * 1024 * 1024 * 2

    def factory(direction: str) -> FilterSMTP:
        return FilterSMTP(ContentFilter(ctx, direction),  # type: ignore[arg-type]
                          hostname=state.system.hostname, ident="Mailwarden filter",
                          data_size_limit=size_limit, enable_SMTPUTF8=True,
                          decode_data=False, timeout=600)

    servers = [
        await loop.create_server(lambda: factory("in"), "127.0.0.1", layout.ports.filter_in),
        await loop.create_server(lambda: factory("out"), "127.0.0.1", layout.ports.filter_out),
    ]
    stop = asyncio.Event()

    def reload() -> None:
        try:
            ctx.state = load_state_file(layout.state_file)
            ctx.reinjector.hostname = ctx.state.system.hostname  # for its next connections
            log.info("state reloaded")
        except Exception:
            log.exception("state reload failed; keeping the previous state")

    def write_stats() -> None:
        # For the benchmark and for an admin asking what the filter costs (mail/cpu.py).
        try:
            ctx.stats.write(layout.run_dir / "filter-stats.json")
        except OSError:
            log.exception("could not write the filter's statistics")

    loop.add_signal_handler(signal.SIGHUP, reload)
    loop.add_signal_handler(signal.SIGUSR1, write_stats)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    log.info("content filter listening on 127.0.0.1:%d (in) and :%d (out)",
             layout.ports.filter_in, layout.ports.filter_out)
    await stop.wait()
    for server in servers:
        server.close()
    for server in servers:
        await server.wait_closed()
    # The rows still queued (tracking, statistics, DMARC) are written before the exit.
    await loop.run_in_executor(None, ctx.writer.close)
    close_pools()


def run_filter(layout: Layout) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # aiosmtpd logs every command and connection at INFO: about eight lines per message,
    # a measurable share of the filter's CPU. Postfix logs the same.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    asyncio.run(serve_filter(layout))
    return 0
