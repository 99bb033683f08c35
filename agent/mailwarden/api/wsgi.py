"""What gunicorn loads: `gunicorn mailwarden.api.wsgi:application`.

MAILWARDEN_ROOT names a sandbox folder; unset means the appliance.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..render.layout import load_layout
from ..store.db import Database
from .app import Services, create_app


def _services() -> Services:
    root = os.environ.get("MAILWARDEN_ROOT")
    layout = load_layout(Path(root) if root else None)
    if layout.name == "sandbox":
        from ..sandbox.control import PidfileController

        controller = PidfileController(layout)
    else:
        from ..render.systemd import SystemdController

        controller = SystemdController()  # type: ignore[assignment]
    db = Database(layout.database)
    webui = os.environ.get("MAILWARDEN_WEBUI")
    return Services(layout=layout, db=db, controller=controller,
                    webui=Path(webui) if webui else _default_webui())


def _default_webui() -> Path | None:
    """webui/ beside the source tree (dev), or the installed copy (the appliance)."""
    for candidate in (Path(__file__).resolve().parents[3] / "webui",
                      Path("/usr/share/mailwarden/webui")):
        if (candidate / "index.html").is_file():
            return candidate
    return None


application = create_app(_services())
