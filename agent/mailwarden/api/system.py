"""System view: services (probed over their protocols), the mail queue, versions."""

from __future__ import annotations

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import falcon
import psutil

from ..control import health
from ..errors import MailwardenError
from ..layout import Layout
from ..process import run
from ..store.users import Audit
from .bodies import QueueFlush, accepts
from .errors import BadInput

STAFF = ("admin", "qmanager", "helpdesk", "audit")
# The agent's own daemons have no pid file; they are found by their command line.
_PROCESS_NAMES = {"filter": ("python",), "policy": ("python",), "api": ("gunicorn", "python")}
QUEUE_ID = re.compile(r"^[0-9A-Za-z]{6,20}$")


def _describe(proc: psutil.Process) -> dict[str, Any]:
    try:
        return {"pid": proc.pid, "rss": proc.memory_info().rss}
    except psutil.Error:
        return {"pid": proc.pid, "rss": None}


def _processes(layout: Layout, service: str) -> list[dict[str, Any]]:
    """The service's main process and its children (workers)."""
    pidfile = layout.pidfile(service)
    if pidfile is not None:
        try:
            main = psutil.Process(int(pidfile.read_text().split()[0]))
            return [_describe(p) for p in [main, *main.children(recursive=True)]]
        except (OSError, ValueError, IndexError, psutil.Error):
            return []
    names = _PROCESS_NAMES.get(service, ())
    # In a sandbox, only this sandbox's processes: its folder is in their command line.
    markers = (str(layout.root),) if layout.name == "sandbox" else ()
    found = []
    for proc in psutil.process_iter(["pid", "name", "cmdline", "memory_info"]):
        info = proc.info
        cmdline = " ".join(info.get("cmdline") or [])
        if not any((info.get("name") or "").startswith(n) for n in names):
            continue
        if service in ("filter", "policy", "api") and f" {service} " not in f"{cmdline} ":
            continue
        if markers and not any(m in cmdline for m in markers):
            continue
        memory = info.get("memory_info")
        found.append({"pid": info["pid"], "rss": memory.rss if memory else None})
    return found


@dataclass
class ServicesResource:
    layout: Layout
    roles = {"GET": STAFF}

    def _check(self, name: str) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            health.PROBES[name](self.layout)
            ok, error = True, None
        except Exception as exc:  # a probe failing is the answer, not an API error
            ok, error = False, str(exc)
        return {"name": name, "healthy": ok, "error": error,
                "probe_ms": round((time.perf_counter() - started) * 1000, 1),
                "processes": _processes(self.layout, name)}

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        names = [name for name in health.PROBES if name != "freshclam"]
        # Side by side: the dashboard waits for the slowest probe, not for their sum.
        with ThreadPoolExecutor(max_workers=len(names)) as pool:
            resp.media = {"items": list(pool.map(self._check, names))}


def _postfix(argv: list[str]) -> str:
    """A Postfix queue command; Postfix being down is a 503, not an API failure."""
    try:
        return run(argv).stdout
    except MailwardenError as exc:
        raise falcon.HTTPServiceUnavailable(
            title="Service Unavailable", description=f"Postfix does not answer: {exc.message}",
        ) from None


@dataclass
class QueueResource:
    layout: Layout
    audit: Audit
    roles = {"GET": STAFF, "POST": ("admin", "qmanager")}

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        out = _postfix(["postqueue", "-c", str(self.layout.path("/etc/postfix")), "-j"])
        items = [json.loads(line) for line in out.splitlines() if line.strip()]
        resp.media = {"items": items, "count": len(items)}

    @accepts(QueueFlush, optional=True)
    def on_post(self, req: falcon.Request, resp: falcon.Response, body: QueueFlush) -> None:
        """Flush: try every deferred message now."""
        _postfix(["postqueue", "-c", str(self.layout.path("/etc/postfix")), "-f"])
        self.audit.record(req.context.user.username, "queue.flush", source_ip=req.remote_addr)
        resp.media = {"flushed": True}


@dataclass
class QueueEntryResource:
    layout: Layout
    audit: Audit
    roles = {"DELETE": ("admin", "qmanager")}

    def on_delete(self, req: falcon.Request, resp: falcon.Response, queue_id: str) -> None:
        if not QUEUE_ID.match(queue_id):
            raise BadInput("not a queue id", "queue_id")
        result = run(["postsuper", "-c", self.layout.path("/etc/postfix"), "-d", queue_id],
                     check=False)
        if "Deleted: 1 message" not in result.stdout:
            raise falcon.HTTPNotFound(title="Not Found",
                                      description=f"no message {queue_id} in the queue")
        self.audit.record(req.context.user.username, "queue.delete", queue_id,
                          source_ip=req.remote_addr)
        resp.status = falcon.HTTP_204


@dataclass
class VersionsResource:
    layout: Layout
    roles = {"GET": STAFF}

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        def version(argv: list[str]) -> str | None:
            try:
                return run(argv, timeout=10).stdout.strip().splitlines()[0]
            except (MailwardenError, IndexError):
                return None

        db_dir = Path(self.layout.path("/var/lib/clamav"))
        signatures = [p for p in db_dir.glob("*") if p.suffix in
                      (".cvd", ".cld", ".hdb", ".ndb", ".cdb", ".ldb")]
        newest = max((p.stat().st_mtime for p in signatures), default=None)
        resp.media = {
            "postfix": version(["postconf", "-c", str(self.layout.path("/etc/postfix")), "-h",
                                "mail_version"]),
            "rspamd": version(["rspamd", "--version"]),
            "clamav": version(["clamd", "--version"]),
            "signature_files": sorted(p.name for p in signatures),
            "signature_age_hours": round((time.time() - newest) / 3600, 1) if newest else None,
        }
