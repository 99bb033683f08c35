"""What gunicorn loads: `gunicorn mailwarden.api.wsgi:application`.

MAILWARDEN_ROOT names a sandbox folder; unset means the appliance.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..control.service import controller_for
from ..firstboot.answers import Answers
from ..firstboot.configure import FirstbootResult
from ..layout import load_layout
from ..privileged.client import ApplyHelperClient, privileged_apply, privileged_rollback
from ..store.credentials import CredentialStore
from ..store.db import Database
from .app import Services, create_app


def _services() -> Services:
    root = os.environ.get("MAILWARDEN_ROOT")
    layout = load_layout(Path(root) if root else None)
    db = Database(layout.database)
    # Users, sessions, tokens and the audit log: the API's own store, which no other daemon
    # can open (its folder is the API user's, 0700).
    credentials = CredentialStore.for_layout(layout)
    webui = os.environ.get("MAILWARDEN_WEBUI")
    webui_path = Path(webui) if webui else _default_webui()
    controller = controller_for(layout)
    if layout.name == "sandbox":
        # A development sandbox: the API runs the transactions itself, with the controller
        # its layout names (the harness's, registered by the development distribution).
        return Services(layout=layout, db=db, controller=controller, webui=webui_path,
                        credentials=credentials)
    # The appliance: this process may not write /etc or signal daemons; the root apply
    # helper runs each transaction (and the first-run setup) for it.
    return Services(layout=layout, db=db, controller=controller, webui=webui_path,
                    credentials=credentials, applier=privileged_apply,
                    rollbacker=privileged_rollback, setup=_privileged_setup)


def _privileged_setup(answers: Answers) -> FirstbootResult:
    """The web wizard's setup on the appliance, through the root helper."""
    reply = ApplyHelperClient().setup(answers)
    return FirstbootResult(reply.applied, reply.admin)


def _default_webui() -> Path | None:
    """webui/ beside the source tree (dev), or the installed copy (the appliance)."""
    for candidate in (Path(__file__).resolve().parents[3] / "webui",
                      Path("/usr/share/mailwarden/webui")):
        if (candidate / "index.html").is_file():
            return candidate
    return None


application = create_app(_services())
