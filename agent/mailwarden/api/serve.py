"""`mailwarden api`: gunicorn serving the API over HTTPS (a self-signed certificate is made
on first start when none is installed)."""

from __future__ import annotations

import os
import socket
import sys

from .. import secrets
from ..render.layout import Layout
from ..render.privileged import CLIENT_TIMEOUT
from ..state.load import load_state_file

# gunicorn kills a sync worker whose request runs longer than its timeout (30 s by default)
# and the client gets a 500 while the change goes on in the apply helper. A state change
# waits for the helper, which may restart clamd or Rspamd (minutes on slow hardware): the
# worker must outlast the helper's own limit.
REQUEST_TIMEOUT = int(CLIENT_TIMEOUT) + 60


def _hostname(layout: Layout) -> str:
    """The state's host name; before the first-run wizard there is no state yet, and the
    wizard must be served all the same."""
    if layout.state_file.exists():
        return load_state_file(layout.state_file).system.hostname
    return socket.getfqdn()


def gunicorn_argv(layout: Layout, workers: int) -> list[str]:
    host = "127.0.0.1" if layout.name == "sandbox" else "0.0.0.0"  # noqa: S104 - nftables filters
    return [
        sys.executable, "-m", "gunicorn", "mailwarden.api.wsgi:application",
        "--bind", f"{host}:{layout.ports.api}",
        "--workers", str(workers),
        "--timeout", str(REQUEST_TIMEOUT),
        "--certfile", str(layout.secrets_dir / "api.crt"),
        "--keyfile", str(layout.secrets_dir / "api.key"),
        "--access-logfile", "-",
        "--forwarded-allow-ips", "",
    ]


def run_api(layout: Layout, workers: int = 2) -> int:
    secrets.ensure_self_signed(layout.secrets_dir, "api", _hostname(layout))
    env = {**os.environ}
    if layout.name == "sandbox":
        env["MAILWARDEN_ROOT"] = str(layout.root)
    # Replace this process with gunicorn.
    os.execve(sys.executable, gunicorn_argv(layout, workers), env)  # noqa: S606
    return 0  # not reached
