"""`mailwarden api`: gunicorn serving the API over HTTPS (a self-signed certificate is made
on first start when none is installed)."""

from __future__ import annotations

import os
import socket
import sys

from .. import secrets
from ..render.layout import Layout
from ..state.load import load_state_file


def _hostname(layout: Layout) -> str:
    """The state's host name; before the first-run wizard there is no state yet, and the
    wizard must be served all the same."""
    if layout.state_file.exists():
        return load_state_file(layout.state_file).system.hostname
    return socket.getfqdn()


def run_api(layout: Layout, workers: int = 2) -> int:
    secrets.ensure_self_signed(layout.secrets_dir, "api", _hostname(layout))
    host = "127.0.0.1" if layout.name == "sandbox" else "0.0.0.0"  # noqa: S104 - nftables filters
    env = {**os.environ}
    if layout.name == "sandbox":
        env["MAILWARDEN_ROOT"] = str(layout.root)
    argv = [
        sys.executable, "-m", "gunicorn", "mailwarden.api.wsgi:application",
        "--bind", f"{host}:{layout.ports.api}",
        "--workers", str(workers),
        "--certfile", str(layout.secrets_dir / "api.crt"),
        "--keyfile", str(layout.secrets_dir / "api.key"),
        "--access-logfile", "-",
        "--forwarded-allow-ips", "",
    ]
    os.execve(sys.executable, argv, env)  # noqa: S606 - replace this process with gunicorn
    return 0  # not reached
