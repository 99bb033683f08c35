"""The Falcon application: `create_app(...)` wires resources to the domain; `wsgi.py` is the
thin module gunicorn loads."""

from __future__ import annotations

import functools
import json
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import falcon

from ..control.apply import ApplyResult, apply_state, rollback
from ..control.service import Controller, service_status
from ..errors import MailwardenError
from ..firstboot.answers import Answers
from ..firstboot.configure import FirstbootResult, Host, NullHost, apply_answers, is_set_up
from ..layout import Layout
from ..mail.digest import Digests
from ..mail.learning import Learner
from ..mail.notify import Notifier, Sources
from ..mail.reinject import reinject
from ..state.load import load_state_file
from ..state.revisions import RevisionStore
from ..state.schema import Bayes
from ..state.schema import Quarantine as QuarantineSettings
from ..store.credentials import CredentialStore
from ..store.db import Database
from ..store.lists import GlobalLists, UserLists
from ..store.quarantine import Quarantine
from ..store.statistics import Statistics
from ..store.tickets import Tickets
from ..store.tracking import Tracking
from ..store.users import Audit, User, Users
from . import accounts, errors, resources, system
from .auth import AuthMiddleware, Forbidden
from .digests import DigestResource
from .dkim import DkimKeysResource
from .learning import LearningResource, LearnUploadResource
from .lists import GlobalListsResource, ListsResource
from .metrics import MetricsResource
from .notify import (
    NotificationAlertsResource,
    NotificationReportResource,
    NotificationTestResource,
)
from .openapi import openapi_document
from .portal import PortalLinkResource
from .quarantine import (
    QuarantineActionResource,
    QuarantineBulkResource,
    QuarantineEntryResource,
    QuarantineListResource,
    QuarantinePreviewResource,
    QuarantineRawResource,
)
from .replies import returns
from .resources import Applier, RollbackFn
from .rules import SimulateResource
from .settings import SettingsResource
from .setup import SetupFn, SetupResource
from .tickets import TicketPage


@dataclass
class Services:
    """Side effects (store, clock, mail sink, host, apply helper) as constructor arguments,
    so a sandbox or a test hands in its own instead of patching."""

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
    # (privileged/). Unset: in this process (a sandbox, tests).
    applier: Applier | None = None
    rollbacker: RollbackFn | None = None
    setup: SetupFn | None = None
    # The API's own credentials store (users, sessions, tokens, audit log); unset: the
    # layout's (layout.auth_database), its rows moved out of the shared store on first open.
    credentials: CredentialStore | None = None


# The API's paths: /api and everything under /api/. One that no route serves is a JSON 404,
# never the web UI's page.
API_PATHS = re.compile(r"/api(?:/|$)")

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
        if API_PATHS.match(req.path):
            resp.set_header("Cache-Control", "no-store")


class QuarantineSettingsFile:
    """The state's quarantine section, read again only when the state file changes (an
    apply writes a new file, hence a new inode): quarantine users' requests ask for it on
    every call. Before the first-run wizard there is no state: the schema's defaults."""

    def __init__(self, state_file: Path) -> None:
        self.state_file = state_file
        self._lock = threading.Lock()
        self._key: tuple[int, int, int] | None = None
        self._value = QuarantineSettings.model_validate({})

    def __call__(self) -> QuarantineSettings:
        try:
            info = os.stat(self.state_file)
        except FileNotFoundError:
            return QuarantineSettings.model_validate({})  # the schema's defaults
        key = (info.st_ino, info.st_mtime_ns, info.st_size)
        with self._lock:
            if key != self._key:
                self._value = load_state_file(self.state_file).quarantine
                self._key = key
            return self._value


PORTAL_DISABLED = ("the quarantine portal is turned off: quarantine users cannot log in; "
                   "ask your administrator")


class UserPortal:
    """quarantine.user_portal: false shuts quarantine users out of the API and the web UI.

    Runs after AuthMiddleware (which names the user): a quarantine user's session or token
    then gets 403 portal_disabled for everything but logging out, and on public resources
    counts for nothing. Logging in is refused by SessionResource through `admit`.
    """

    def __init__(self, settings: Callable[[], QuarantineSettings]) -> None:
        self.settings = settings

    def admit(self, user: User) -> None:
        if user.role == "quser" and not self.settings().user_portal:
            raise Forbidden(PORTAL_DISABLED, code="portal_disabled")

    def process_resource(self, req: falcon.Request, resp: falcon.Response, resource: object,
                         params: dict[str, Any]) -> None:
        user: User | None = getattr(req.context, "user", None)
        if user is None or user.role != "quser" or self.settings().user_portal:
            return
        if isinstance(resource, resources.SessionResource) and req.method == "DELETE":
            return  # ending the session is always allowed
        if req.method in getattr(resource, "public", ()):
            req.context.user = None
            return
        raise Forbidden(PORTAL_DISABLED, code="portal_disabled")



def no_such_api_path(req: falcon.Request, resp: falcon.Response, **params: Any) -> None:
    raise falcon.HTTPNotFound(title="Not Found", description=f"no API path {req.path}")


def create_app(services: Services) -> falcon.App[falcon.Request, falcon.Response]:
    layout, db = services.layout, services.db
    credentials = services.credentials or CredentialStore.for_layout(layout)
    users, audit = Users(credentials), Audit(credentials)
    store = RevisionStore(layout.revisions_dir)

    def apply_here(text: str, author: str, comment: str, base: int | None) -> ApplyResult:
        return apply_state(text, layout=layout, controller=services.controller,
                           author=author, comment=comment, base=base)

    def roll_back_here(number: int, author: str, base: int | None) -> ApplyResult:
        return rollback(number, layout=layout, controller=services.controller, author=author,
                        base=base)

    def setup_here(answers: Answers) -> FirstbootResult:
        return apply_answers(answers, layout=layout, controller=services.controller,
                             host=services.host, author="setup wizard")

    apply: Applier = services.applier or apply_here
    roll_back: RollbackFn = services.rollbacker or roll_back_here
    setup: SetupFn = services.setup or setup_here

    quarantine = Quarantine(db, layout.quarantine_dir)

    def deliver(raw: bytes, sender: str, recipients: list[str]) -> None:
        state = load_state_file(layout.state_file)
        reinject(raw, sender, recipients, port=layout.ports.reinject,
                 hostname=state.system.hostname)

    tickets = Tickets(layout.ticket_key)
    quarantine_settings = QuarantineSettingsFile(layout.state_file)
    portal = UserPortal(quarantine_settings)

    def users_may_release_viruses() -> bool:
        return quarantine_settings().user_release_virus

    # --- learning ---
    def bayes_settings() -> Bayes:
        if not layout.state_file.exists():
            return Bayes.model_validate({})  # before the first-run wizard: the defaults
        return load_state_file(layout.state_file).spam.bayes

    learner = Learner(layout.ports.rspamd_controller, layout.ports.redis, bayes_settings)
    # --- end of learning ---

    app: falcon.App[falcon.Request, falcon.Response] = falcon.App(
        middleware=(AuthMiddleware(users), portal, SecurityHeaders()), cors_enable=False)
    app.req_options.strip_url_path_trailing_slash = True
    # JSON may carry lone surrogates ("\udabb"), which have no UTF-8 form: an error that
    # names such a key, or any reply echoing one, would fail to encode. Escaped, it goes out.
    app.resp_options.media_handlers[falcon.MEDIA_JSON] = falcon.media.JSONHandler(
        dumps=functools.partial(json.dumps, ensure_ascii=True))
    routes: dict[str, Any] = {
        "/api/health": resources.HealthResource(),
        "/api/session": resources.SessionResource(users, audit, services.clock,
                                                  admit=portal.admit),
        "/api/setup": SetupResource(users, audit, layout.setup_code, setup,
                                    set_up=lambda: is_set_up(layout), clock=services.clock),
        "/api/state": resources.StateResource(store, apply, audit, layout.state_file),
        "/api/state/revisions": resources.RevisionsResource(store),
        "/api/state/revisions/{number:int(min=1)}": resources.RevisionResource(store),
        "/api/state/diff": resources.DiffResource(store),
        "/api/state/rollback": resources.RollbackResource(roll_back, audit),
        "/api/audit": resources.AuditResource(audit),
        "/api/settings/{section}": SettingsResource(store, apply, audit),
        "/api/users": accounts.UsersResource(users, audit),
        "/api/users/{username}": accounts.UserResource(users, audit),
        "/api/users/{username}/addresses": accounts.UserAddressesResource(users, audit),
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
        "/api/quarantine": QuarantineListResource(quarantine, users_may_release_viruses),
        "/api/quarantine/{entry_id}": QuarantineEntryResource(quarantine,
                                                              users_may_release_viruses),
        "/api/lists": ListsResource(UserLists(db), audit),
        # global sender lists
        "/api/lists/global": GlobalListsResource(GlobalLists(db), audit),
        "/api/portal/link": PortalLinkResource(
            users, audit, quarantine, tickets, services.deliver or deliver,
            lambda: load_state_file(layout.state_file), quarantine_settings, services.clock),
        "/api/quarantine/digest": DigestResource(
            Digests(db, quarantine, tickets), lambda: load_state_file(layout.state_file),
            services.deliver or deliver, audit),
        "/api/quarantine/bulk": QuarantineBulkResource(quarantine, services.deliver or deliver,
                                                       audit, users_may_release_viruses),
        "/api/quarantine/{entry_id}/raw": QuarantineRawResource(quarantine),
        "/api/quarantine/{entry_id}/preview": QuarantinePreviewResource(quarantine),
        "/api/quarantine/{entry_id}/{action}": QuarantineActionResource(
            quarantine, UserLists(db), services.deliver or deliver, audit,
            users_may_release_viruses, learner),
        # --- learning ---
        "/api/learning": LearningResource(learner, bayes_settings, audit),
        "/api/learning/{kind}": LearnUploadResource(learner, audit),
        # --- end of learning ---
    }
    # --- notifications (mail/notify.py) ---
    notifier = Notifier(db, Sources(
        clamav_dir=layout.path("/var/lib/clamav"),
        disks=(layout.database.parent, layout.quarantine_dir, layout.path("/var/spool/postfix"))))
    routes["/api/notifications/test"] = NotificationTestResource(
        notifier, lambda: load_state_file(layout.state_file), services.deliver or deliver, audit)
    routes["/api/notifications/report"] = NotificationReportResource(
        notifier, lambda: load_state_file(layout.state_file))
    routes["/api/notifications/alerts"] = NotificationAlertsResource(
        notifier, lambda: load_state_file(layout.state_file), lambda: service_status(layout))
    # --- end of notifications ---
    # Prometheus' path, outside /api; documented with the rest all the same.
    routes["/metrics"] = MetricsResource(layout, Statistics(db))
    document = routes["/api/openapi.json"] = OpenApiResource()
    for path, resource in routes.items():
        app.add_route(path, resource)
    document.document = openapi_document(routes)
    # Web pages for people (the links of a digest), not API resources: not in the document.
    app.add_route("/ticket/{action}", TicketPage(
        tickets, quarantine, UserLists(db), services.deliver or deliver, users, audit,
        quarantine_settings))
    # Sinks are tried before static routes: an unknown /api/ path never gets the UI's page.
    app.add_sink(no_such_api_path, API_PATHS)
    if services.webui is not None and services.webui.is_dir():
        app.add_static_route("/", str(services.webui.resolve()), fallback_filename="index.html")
    app.add_error_handler(Exception, errors.handle_unexpected)
    app.add_error_handler(falcon.HTTPError, errors.handle_http_error)
    app.add_error_handler(MailwardenError, errors.handle_domain_error)
    return app


class OpenApiResource:
    """The document describes itself too: every route the app serves is in it."""

    public = ("GET",)

    def __init__(self) -> None:
        self.document: dict[str, Any] = {}

    @returns(media_types=("application/json",))
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = self.document
