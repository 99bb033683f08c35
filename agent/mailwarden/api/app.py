"""The Falcon application: `create_app(...)` wires resources to the domain; `wsgi.py` is the
thin module gunicorn loads."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import falcon

from ..errors import MailwardenError
from ..firstboot.answers import Answers
from ..firstboot.engine import FirstbootResult, Host, NullHost, apply_answers
from ..mail.reinject import reinject
from ..render.apply import ApplyResult, Controller, apply_state, rollback
from ..render.layout import Layout
from ..state.load import load_state_file
from ..state.revisions import RevisionStore
from ..store.db import Database
from ..store.lists import UserLists
from ..store.quarantine import Quarantine
from ..store.statistics import Statistics
from ..store.tracking import Tracking
from ..store.users import Audit, Users
from . import accounts, errors, resources, system
from .auth import AuthMiddleware
from .dkim import DkimKeysResource
from .metrics import MetricsResource
from .openapi import openapi_document
from .quarantine import (
    QuarantineActionResource,
    QuarantineBulkResource,
    QuarantineEntryResource,
    QuarantineListResource,
    QuarantinePreviewResource,
    QuarantineRawResource,
)
from .resources import Applier, RollbackFn
from .rules import SimulateResource
from .settings import SettingsResource
from .setup import SetupFn, SetupResource


@dataclass
class Services:
    """Side effects as constructor arguments (STYLE §8)."""

    layout: Layout
    db: Database
    controller: Controller
    # Reinjection of released mail; tests may point it at their own sink.
    deliver: Callable[[bytes, str, list[str]], None] | None = None
    # The web UI's static files (webui/ of the source tree, or the installed copy).
    webui: Path | None = None
    clock: Callable[[], float] = time.time
    # The operating system's settings the first-run wizard changes; a sandbox's are not ours.
    host: Host = field(default_factory=NullHost)
    # On the appliance the API runs unprivileged: changes go through the root apply helper
    # (render/privileged.py). Unset: in this process (a sandbox, tests).
    applier: Applier | None = None
    rollbacker: RollbackFn | None = None
    setup: SetupFn | None = None


UI_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
          "frame-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; "
          "form-action 'self'; frame-ancestors 'none'")


class SecurityHeaders:
    """Strict defaults on every response; a resource that sets its own CSP (the preview
    frame) keeps it."""

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource: object,
                         req_succeeded: bool) -> None:
        resp.set_header("X-Content-Type-Options", "nosniff")
        resp.set_header("Referrer-Policy", "no-referrer")
        resp.set_header("Strict-Transport-Security", "max-age=31536000")
        if resp.get_header("Content-Security-Policy") is None:
            resp.set_header("Content-Security-Policy", UI_CSP)
        if resp.get_header("X-Frame-Options") is None and "frame-ancestors 'self'" not in (
                resp.get_header("Content-Security-Policy") or ""):
            resp.set_header("X-Frame-Options", "DENY")
        if req.path.startswith("/api/"):
            resp.set_header("Cache-Control", "no-store")


def create_app(services: Services) -> falcon.App:
    layout, db = services.layout, services.db
    users, audit = Users(db), Audit(db)
    store = RevisionStore(layout.revisions_dir)

    def apply_here(text: str, author: str, comment: str, base: int | None) -> ApplyResult:
        return apply_state(text, layout=layout, controller=services.controller,
                           author=author, comment=comment, base=base)

    def roll_back_here(number: int, author: str, base: int | None) -> ApplyResult:
        return rollback(number, layout=layout, controller=services.controller, author=author,
                        base=base)

    def setup_here(answers: Answers) -> FirstbootResult:
        return apply_answers(answers, layout=layout, controller=services.controller,
                             host=services.host, db=db, author="setup wizard")

    apply: Applier = services.applier or apply_here
    roll_back: RollbackFn = services.rollbacker or roll_back_here
    setup: SetupFn = services.setup or setup_here

    quarantine = Quarantine(db, layout.quarantine_dir)

    def deliver(raw: bytes, sender: str, recipients: list[str]) -> None:
        state = load_state_file(layout.state_file)
        reinject(raw, sender, recipients, port=layout.ports.reinject,
                 hostname=state.system.hostname)

    def users_may_release_viruses() -> bool:
        return load_state_file(layout.state_file).quarantine.user_release_virus

    app = falcon.App(middleware=[AuthMiddleware(users), SecurityHeaders()], cors_enable=False)
    app.req_options.strip_url_path_trailing_slash = True
    routes: dict[str, Any] = {
        "/api/health": resources.HealthResource(),
        "/api/session": resources.SessionResource(users, audit, services.clock),
        "/api/setup": SetupResource(users, audit, layout.setup_code, setup, services.clock),
        "/api/state": resources.StateResource(store, apply, audit, layout.state_file),
        "/api/state/revisions": resources.RevisionsResource(store),
        "/api/state/revisions/{number:int(min=1)}": resources.RevisionResource(store),
        "/api/state/diff": resources.DiffResource(store),
        "/api/state/rollback": resources.RollbackResource(roll_back, audit),
        "/api/audit": resources.AuditResource(audit),
        "/api/settings/{section}": SettingsResource(store, apply, audit),
        "/api/users": accounts.UsersResource(users, audit),
        "/api/users/{username}": accounts.UserResource(users, audit),
        "/api/tokens": accounts.TokensResource(users, audit),
        "/api/tokens/{token_id:int}": accounts.TokenResource(users, audit),
        "/api/session/totp": accounts.TotpResource(users, audit),
        "/api/dkim/keys": DkimKeysResource(layout, audit),
        "/api/rules/simulate": SimulateResource(layout),
        "/api/system/services": system.ServicesResource(layout),
        "/api/system/queue": system.QueueResource(layout, audit),
        "/api/system/queue/{queue_id}": system.QueueEntryResource(layout, audit),
        "/api/system/versions": system.VersionsResource(layout),
        "/api/statistics": resources.StatisticsResource(Statistics(db)),
        "/api/tracking": resources.TrackingResource(Tracking(db)),
        "/api/quarantine": QuarantineListResource(quarantine),
        "/api/quarantine/{entry_id}": QuarantineEntryResource(quarantine),
        "/api/quarantine/bulk": QuarantineBulkResource(quarantine, services.deliver or deliver,
                                                       audit),
        "/api/quarantine/{entry_id}/raw": QuarantineRawResource(quarantine),
        "/api/quarantine/{entry_id}/preview": QuarantinePreviewResource(quarantine),
        "/api/quarantine/{entry_id}/{action}": QuarantineActionResource(
            quarantine, UserLists(db), services.deliver or deliver, audit,
            users_may_release_viruses),
    }
    app.add_route("/metrics", MetricsResource(layout, db))
    for path, resource in routes.items():
        app.add_route(path, resource)
    app.add_route("/api/openapi.json", OpenApiResource(openapi_document(routes)))
    if services.webui is not None and services.webui.is_dir():
        # Checked after the routes: /api/... never reaches the files.
        app.add_static_route("/", str(services.webui.resolve()), fallback_filename="index.html")
    app.add_error_handler(Exception, errors.handle_unexpected)
    app.add_error_handler(falcon.HTTPError, errors.handle_http_error)
    app.add_error_handler(MailwardenError, errors.handle_domain_error)
    return app


class OpenApiResource:
    public = ("GET",)

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = self.document
