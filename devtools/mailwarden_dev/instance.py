"""A private gateway on this machine: every daemon from our own rendered configs.

`Sandbox` renders a state into a sandbox layout under one folder (through the same apply
transaction as the appliance), starts Postfix, Rspamd, clamd, Redis, Unbound, a test name
server (NSD) and an SMTP sink, waits until each answers, and stops them all again. It is
also the apply transaction's controller for that folder: it knows how to reload each daemon.

Used by the pytest fixtures, the benchmarks and `mailwarden-dev`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from mailwarden import secrets
from mailwarden.control import health
from mailwarden.control.apply import ApplyResult, apply_state, rollback
from mailwarden.control.service import NoController
from mailwarden.layout import LAYOUT_FILE, Layout, free_ports, sandbox
from mailwarden.process import run
from mailwarden.state.load import load_state_text
from mailwarden.state.revisions import RevisionStore

from .control import SERVICE_CONTROL
from .errors import HarnessError
from .process import Supervised, wait_until
from .testdns import TestDns, Zone, default_zones

CACHE = Path(os.environ.get("MAILWARDEN_CACHE", "/var/cache/mailwarden"))
EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
RSPAMD_CONF = "/etc/rspamd/rspamd.conf"


def eicar_database(folder: Path) -> Path:
    """A one-line ClamAV hash database that detects EICAR (freshclam has no internet here).

    Same line `sigtool --md5` prints for the file: MD5:size:name.
    """
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "mailwarden-test.hdb"
    path.write_text(f"{hashlib.md5(EICAR).hexdigest()}:{len(EICAR)}:Eicar-Test\n")  # noqa: S324
    return path


def runtime_dirs(layout: Layout) -> dict[Path, str]:
    """Every folder the rendered configs expect to exist in a sandbox, and its owner (what
    the Debian packages create on the appliance)."""
    u = layout.users
    owned = {
        "/var/spool/postfix": "root", "/var/lib/postfix": u.postfix, "/var/log/postfix": "root",
        "/var/lib/rspamd": u.rspamd, "/run/rspamd": u.rspamd, "/var/log/rspamd": u.rspamd,
        "/var/lib/clamav": u.clamav, "/run/clamav": u.clamav, "/var/log/clamav": u.clamav,
        "/var/lib/redis": u.redis, "/run/redis": u.redis, "/var/log/redis": u.redis,
        "/etc/unbound": "root", "/var/lib/unbound": u.unbound, "/run": "root",
        "/var/lib/mailwarden": "root", "/var/lib/mailwarden-root": "root",
        "/var/lib/mailwarden-root/staging": "root",
    }
    return {layout.path(path): user for path, user in owned.items()}


def make_runtime_dirs(layout: Layout) -> None:
    for folder, user in runtime_dirs(layout).items():
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o755)
        shutil.chown(folder, user=user)


@dataclass(frozen=True)
class Sink:
    """Postfix's smtp-sink, keeping each message as a file."""

    folder: Path
    port: int

    def messages(self) -> list[bytes]:
        return [p.read_bytes() for p in sorted(self.folder.glob("*")) if p.is_file()]

    def wait_for(self, count: int, timeout: float = 30.0) -> list[bytes]:
        wait_until(f"{count} message(s) at the sink", lambda: len(self.messages()) >= count,
                   timeout)
        return self.messages()

    def containing(self, marker: str) -> list[bytes]:
        return [m for m in self.messages() if marker.encode() in m]

    def wait_for_marker(self, marker: str, count: int = 1, timeout: float = 60.0) -> list[bytes]:
        wait_until(f"{count} message(s) with {marker} at the sink",
                   lambda: len(self.containing(marker)) >= count, timeout)
        return self.containing(marker)


class Sandbox:
    """One private instance of the gateway under `root`."""

    DAEMONS = ("unbound", "redis", "clamav", "rspamd", "postfix")
    AGENT = ("filter", "policy")

    def __init__(self, root: Path, *, agent_services: bool = False, api: bool = False,
                 zones: Iterable[Zone] | None = None) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        # Every parent must be searchable by postfix, _rspamd, clamav (pytest's tmp_path is
        # 0700 at every level).
        for parent in [self.root, *self.root.parents]:
            if parent != Path("/") and parent.stat().st_mode & 0o011 != 0o011:
                parent.chmod(parent.stat().st_mode | 0o011)
        dns_port, sink_port = free_ports(2)
        self.dns = TestDns(self.root / "testdns", dns_port,
                           default_zones() if zones is None else zones)
        # Other processes (the CLI, the API beside `mailwarden-dev`) reload these daemons
        # through the pid-file controller the layout names.
        self.layout: Layout = sandbox(self.root, agent_services=agent_services,
                                      dns_upstream=(self.dns.address,),
                                      service_control=SERVICE_CONTROL)
        self.sink = Sink(self.root / "sink", sink_port)
        # Start order: what a service depends on comes first; Postfix last, so mail only
        # arrives once the filter can take it.
        self.services: tuple[str, ...] = (
            ("unbound", "redis", "clamav", "rspamd", "filter", "policy", "postfix")
            if agent_services else self.DAEMONS) + (("api",) if api else ())
        self.daemons: dict[str, Supervised] = {}
        self.extra: list[Supervised] = []
        (self.root / LAYOUT_FILE).write_text(self.layout.to_json())

    # --- set-up -------------------------------------------------------------------------

    def _dirs(self) -> None:
        make_runtime_dirs(self.layout)
        self.sink.folder.mkdir(exist_ok=True)
        shutil.chown(self.sink.folder, user=self.layout.users.postfix)

    def _warm_rspamd(self) -> None:
        """Rspamd's first start compiles maps for ~10 s; a warm DBDIR answers in 0.7 s."""
        cache = CACHE / "rspamd-dbdir"
        target = self.layout.path("/var/lib/rspamd")
        if cache.is_dir() and not any(target.iterdir()):
            shutil.copytree(cache, target, dirs_exist_ok=True)
            run(["chown", "-R", self.layout.users.rspamd, target])

    def _save_warm_rspamd(self) -> None:
        cache = CACHE / "rspamd-dbdir"
        source = self.layout.path("/var/lib/rspamd")
        if not cache.exists() and source.is_dir() and any(source.iterdir()):
            try:
                cache.parent.mkdir(parents=True, exist_ok=True)
                shutil.copytree(source, cache, ignore=shutil.ignore_patterns("*.sock", "*.pid"))
            except OSError:
                shutil.rmtree(cache, ignore_errors=True)  # a cache is an optimisation only

    def prepare(self, state_text: str | None, author: str = "sandbox") -> ApplyResult | None:
        """Directories, secrets, test signatures, and revision 1 rendered into place; with
        no state, what a fresh appliance has before its first-run wizard: the machine's own
        certificate and nothing rendered."""
        self._dirs()
        state = load_state_text(state_text, "sandbox state") if state_text else None
        secrets.ensure_self_signed(
            self.layout.secrets_dir, state.tls.inbound.certificate if state else "smtp",
            state.system.hostname if state else "mailwarden.invalid")
        db = eicar_database(self.layout.path("/var/lib/clamav"))
        shutil.chown(db, user=self.layout.users.clamav)
        self._warm_rspamd()
        if state_text is None:
            return None
        return apply_state(state_text, layout=self.layout, controller=NoController(),
                           author=author, comment="sandbox created", base=None)

    # --- daemons ------------------------------------------------------------------------

    def _postfix_dir(self) -> Path:
        return self.layout.path("/etc/postfix")

    def _make(self, service: str) -> Supervised:
        p, u, logs = self.layout.path, self.layout.users, self.root / "logs"
        if service == "postfix":
            config = self._postfix_dir()

            def stop_postfix() -> None:
                run(["postfix", "-c", config, "stop"], check=False)

            return Supervised(
                "postfix", ["postfix", "-c", config, "start-fg"], logs / "postfix.out",
                stop_command=stop_postfix,
            )
        if service == "rspamd":
            return Supervised("rspamd", [
                "rspamd", "-f", "-u", u.rspamd, "-g", u.rspamd, "-c", RSPAMD_CONF,
                f"--var=LOCAL_CONFDIR={p('/etc/rspamd')}", f"--var=RUNDIR={p('/run/rspamd')}",
                f"--var=DBDIR={p('/var/lib/rspamd')}", f"--var=LOGDIR={p('/var/log/rspamd')}",
            ], logs / "rspamd.out")
        if service == "clamav":
            return Supervised("clamd", ["clamd", "-c", p("/etc/clamav/clamd.conf")],
                              logs / "clamd.out")
        if service == "redis":
            return Supervised("redis", ["redis-server", p("/etc/redis/redis.conf")],
                              logs / "redis.out", user=u.redis)
        if service in (*self.AGENT, "api"):
            return Supervised(service, [sys.executable, "-m", "mailwarden.cli", service,
                                        "--root", self.root], logs / f"{service}.out")
        if service == "unbound":
            return Supervised("unbound", ["unbound", "-d", "-c", p("/etc/unbound/unbound.conf")],
                              logs / "unbound.out")
        raise HarnessError(f"no such sandbox service: {service}")

    def launch(self, service: str) -> None:
        """Start (or restart) a daemon and record its pid where the layout says.

        Rspamd in the foreground, and the agent's own daemons, write no pid file; the API's
        controller (another process) finds them to reload them, and its service view to
        show them.
        """
        daemon = self.daemons[service]
        daemon.start()
        pidfile = self.layout.pidfile(service)
        if (service in ("rspamd", *self.AGENT, "api") and pidfile is not None
                and daemon.process is not None):
            pidfile.parent.mkdir(parents=True, exist_ok=True)
            pidfile.write_text(f"{daemon.process.pid}\n")

    def _start_service(self, service: str, timeout: float) -> None:
        daemon = self._make(service)
        self.daemons[service] = daemon
        self.launch(service)
        try:
            health.wait_healthy(service, self.layout, timeout=timeout)
        except Exception as exc:
            daemon.check_alive()
            raise HarnessError(f"{service} did not become healthy: {exc}\n{daemon.tail()}") from exc

    def start(self, state_text: str | None, timeout: float = 90.0) -> None:
        """Every daemon, from state_text; with None a fresh appliance: only the API runs
        (its first-run wizard applies the first state), then start_remaining()."""
        started = time.monotonic()
        try:
            self.dns.start()
            sink = Supervised("smtp-sink", [
                "smtp-sink", "-u", self.layout.users.postfix, "-d", f"{self.sink.folder}/%M.",
                f"127.0.0.1:{self.sink.port}", "100",
            ], self.root / "logs" / "smtp-sink.out")
            sink.start()
            self.extra = [self.dns.daemon, sink]
            self.prepare(state_text)
            for service in self.services:
                if state_text is not None or service == "api":
                    self._start_service(service, timeout)
            wait_until("the SMTP sink", lambda: _listening(self.sink.port), 10, sink.check_alive)
        except BaseException:
            self.stop()
            raise
        self._save_warm_rspamd()
        self.started_in = time.monotonic() - started
        self.write_endpoints()

    def start_remaining(self, timeout: float = 90.0) -> None:
        """The daemons a fresh start left out, once a state has been applied."""
        for service in self.services:
            if service not in self.daemons:
                self._start_service(service, timeout)
        self._save_warm_rspamd()
        self.write_endpoints()

    def stop(self) -> None:
        for service in reversed(self.services):
            daemon = self.daemons.pop(service, None)
            if daemon is not None:
                daemon.stop()
        for daemon in self.extra:
            daemon.stop()
        self.extra = []

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- the apply transaction's controller ---------------------------------------------

    def is_running(self, service: str) -> bool:
        daemon = self.daemons.get(service)
        return daemon is not None and daemon.running

    def reload(self, service: str, *, restart: bool = False) -> None:
        daemon = self.daemons[service]
        if service == "postfix":
            run(["postfix", "-c", self._postfix_dir(), "reload"])
        elif service in ("rspamd", "unbound", *self.AGENT) and not restart:
            daemon.signal(signal.SIGHUP)
            if service == "rspamd":
                time.sleep(0.5)  # the old workers keep answering until the new ones are up
        else:
            # clamd and Redis read their configuration only at start; restart is asked for.
            daemon.stop()
            self.launch(service)

    # --- conveniences -------------------------------------------------------------------

    def apply(self, state_text: str, *, comment: str = "", author: str = "test",
              base: int | None = None, force: bool = False,
              health_timeout: float = 30.0) -> ApplyResult:
        store = RevisionStore(self.layout.revisions_dir)
        return apply_state(state_text, layout=self.layout, controller=self, author=author,
                           comment=comment, base=store.current() if base is None else base,
                           force=force, health_timeout=health_timeout)

    def rollback(self, number: int, author: str = "test") -> ApplyResult:
        store = RevisionStore(self.layout.revisions_dir)
        return rollback(number, layout=self.layout, controller=self, author=author,
                        base=store.current())

    def endpoints(self) -> dict[str, object]:
        ports = self.layout.ports
        return {
            "root": str(self.root),
            "smtp": f"127.0.0.1:{ports.smtp}",
            "submission": f"127.0.0.1:{ports.submission}",
            "reinject": f"127.0.0.1:{ports.reinject}",
            "rspamd": f"http://127.0.0.1:{ports.rspamd_normal}",
            "rspamd_controller": f"http://127.0.0.1:{ports.rspamd_controller}",
            "clamd": f"127.0.0.1:{ports.clamd}",
            "redis": f"127.0.0.1:{ports.redis}",
            "dns": f"127.0.0.1:{ports.dns}",
            "test_dns": f"127.0.0.1:{self.dns.port}",
            "sink": f"127.0.0.1:{self.sink.port}",
            "sink_folder": str(self.sink.folder),
            "logs": str(self.root / "logs"),
            "state": str(self.layout.state_file),
            **({"api": f"https://127.0.0.1:{ports.api}/api/"} if "api" in self.services
               else {}),
        }

    def write_endpoints(self) -> Path:
        path = self.root / "endpoints.json"
        path.write_text(json.dumps(self.endpoints(), indent=2) + "\n")
        return path


def _listening(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False
