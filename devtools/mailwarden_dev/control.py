"""Reloading a running sandbox from another process (the CLI or the API beside
`mailwarden-dev`).

The process that runs the sandbox supervises its daemons and restarts any that exit; this
controller signals them through their pid files, as an init system would. The product finds
it by the name a sandbox's layout gives (SERVICE_CONTROL) in the `mailwarden.service_control`
entry point group, which this distribution's pyproject.toml fills; the product never imports
this package.
"""

from __future__ import annotations

import os
import signal

from mailwarden.layout import Layout
from mailwarden.process import run

SERVICE_CONTROL = "pidfile"


class PidfileController:
    def __init__(self, layout: Layout) -> None:
        self.layout = layout

    def _pid(self, service: str) -> int | None:
        path = self.layout.pidfile(service)
        if path is None:
            return None
        try:
            return int(path.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def is_running(self, service: str) -> bool:
        if service == "postfix":
            config = self.layout.path("/etc/postfix")
            return run(["postfix", "-c", config, "status"], check=False).returncode == 0
        pid = self._pid(service)
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True

    def reload(self, service: str, *, restart: bool = False) -> None:
        if service == "postfix":
            run(["postfix", "-c", self.layout.path("/etc/postfix"), "reload"])
            return
        pid = self._pid(service)
        if pid is None:
            return
        # rspamd and unbound re-read their configuration on SIGHUP; clamd and Redis are
        # stopped and the supervising process starts them again with the new files.
        # The agent's daemons re-read the state file on SIGHUP.
        # A restart is a stop the supervisor follows with a start.
        sig = (signal.SIGHUP
               if service in ("rspamd", "unbound", "filter", "policy") and not restart
               else signal.SIGTERM)
        os.kill(pid, sig)
