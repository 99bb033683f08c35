"""The first-run web wizard's endpoint: public until the appliance is set up, then closed.

Whoever reaches a fresh appliance first must not own it, so the wizard needs the one-time
code shown on the console; wrong codes are throttled per address like logins, an expired
one is refused with its own code (setup_code_expired), and a used one finds the appliance
set up (already_set_up). A successful
setup applies the answers (the same engine the seed file and the console wizard use; root's
apply helper on the appliance, which then writes the set-up marker), deletes the code, makes
the administrator here in the API's own credentials store and logs them in.

Whether setup is needed is the marker's word alone (firstboot.configure.is_set_up), the same the
helper goes by; no store anybody but root writes decides it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import falcon

from ..errors import AlreadySetUp
from ..firstboot import setupcode
from ..firstboot.answers import AdminAnswer, Answers, validate_answers
from ..firstboot.configure import FirstbootResult, keep_reachable
from ..store.users import SESSION_LIFETIME, Audit, Users, hash_password
from . import replies
from .auth import set_session_cookie
from .bodies import Setup, accepts
from .replies import returns
from .resources import throttle_guessing

# answers -> result; in-process on a sandbox, the privileged helper on the
# appliance.
SetupFn = Callable[[Answers], FirstbootResult]


class WrongSetupCode(falcon.HTTPForbidden):
    def __init__(self) -> None:
        super().__init__(title="Forbidden", description=(
            "that is not the setup code; it is shown on the appliance's console "
            "(or run `mailwarden setup-code` there for a new one)"))
        self.error_code = "setup_code"
        self.field = "setup_code"


class ExpiredSetupCode(falcon.HTTPForbidden):
    def __init__(self) -> None:
        super().__init__(title="Forbidden", description=(
            "that setup code has expired; the appliance's console shows a new one "
            "(or run `mailwarden setup-code` there)"))
        self.error_code = "setup_code_expired"
        self.field = "setup_code"


@dataclass
class SetupResource:
    users: Users
    audit: Audit
    code_file: Path
    setup: SetupFn
    # Whether the appliance is set up (root's marker).
    set_up: Callable[[], bool]
    clock: Callable[[], float] = time.time
    public = ("GET", "POST")

    @returns(replies.SetupStatus)
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        needed = not self.set_up()
        resp.media = {"needed": needed,
                      "code_issued": needed and setupcode.valid(self.code_file,
                                                                self.clock()) is not None}

    @returns(replies.SetUp, status=201)
    @accepts(Setup)
    def on_post(self, req: falcon.Request, resp: falcon.Response, body: Setup) -> None:
        if self.set_up():
            raise AlreadySetUp("this appliance is set up already; sign in as an administrator")
        now = self.clock()
        throttle_guessing(self.audit, "setup.failed", req.remote_addr, now, "wrong setup codes")
        if not setupcode.matches(self.code_file, body.setup_code):
            self.audit.record("-", "setup.failed", source_ip=req.remote_addr, now=now)
            raise WrongSetupCode()
        if setupcode.expired(self.code_file, now):
            # The right code, only too old: no guess, so not counted as one.
            raise ExpiredSetupCode()
        answers = keep_reachable(validate_answers(body.answers, "answers"), req.remote_addr)
        # The password goes no further than this process: the helper sees its hash, which it
        # does not use either (credentials are this process's to keep).
        password_hash = answers.admin.password_hash or hash_password(answers.admin.password or "")
        answers = answers.model_copy(update={"admin": AdminAnswer(password_hash=password_hash,
                                                                   password=None)})
        result = self.setup(answers)
        setupcode.discard(self.code_file)
        user = self.users.add_hashed(result.admin, password_hash, "admin", replace=True)
        self.audit.record(user.username, "setup.complete",
                          f"revision {result.applied.revision.number}", None, req.remote_addr)
        token, session = self.users.create_session(user)
        set_session_cookie(resp, token, SESSION_LIFETIME)
        resp.status = falcon.HTTP_201
        resp.media = {"username": user.username, "role": user.role,
                      "csrf_token": session.csrf_token, "expires": session.expires,
                      "revision": result.applied.revision.number}
