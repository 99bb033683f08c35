"""`mailwarden api`: gunicorn serving the API over HTTPS (a self-signed certificate is made
on first start when none is installed)."""

from __future__ import annotations

import os
import sys

from .. import secrets
from ..render.layout import Layout
from ..state.load import load_state_file


def run_api(layout: Layout, workers: int = 2) -> int:
    state = load_state_file(layout.state_file)
    secrets.ensure_self_signed(layout.secrets_dir, "api", state.system.hostname)
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
