"""`mailwarden firstboot`: what the appliance does at boot until it is set up.

mailwarden-firstboot.service runs it at every boot until the appliance is set up (root's
marker, firstboot.configure.is_set_up):

1. machine identity, once (identity.py);
2. Unbound's trust anchor, so that the first apply's unbound-checkconf passes;
3. the seed, once (seed.py): its answers through the same engine the wizards use (a refused
   seed leaves the appliance fresh and says why on the console, as does a cloud-init drive
   without Mailwarden answers, with the keys it lacks), the administrator made by
   the agent running as the API's user in the API's own store, then its ClamAV signatures;
4. still not set up: a new one-time code for the web wizard, shown on the console.

Lines starting with MWFIRSTBOOT are for scripts reading the console (the end-to-end test).
"""

from __future__ import annotations

import grp
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from ..control import health
from ..control.apply import health_timeout_for
from ..control.service import Controller
from ..errors import AlreadySetUp, MailwardenError, StateError
from ..layout import Layout
from ..privileged.permissions import AGENT_GROUP, share_with_agent
from ..process import run, service_user
from ..state.revisions import RevisionStore
from ..store.credentials import CredentialStore, run_as_owner
from ..store.db import Database
from ..store.users import Users, hash_password
from . import identity, seed, setupcode
from .configure import adopt_earlier_setup, apply_answers, is_set_up
from .host import HOST_COMMAND_TIMEOUT

log = logging.getLogger("mailwarden.firstboot")

COMPLETE = "/var/lib/mailwarden/firstboot/complete"
API_USER = "mailwarden-api"
# Rspamd's first start on a new disk compiles its maps and regexps: minutes under emulation.
SCANNER_WARMUP = 900.0


@dataclass
class FirstbootOutcome:
    identity: identity.IdentityReport | None = None
    seed_source: str | None = None
    revision: int | None = None
    setup_code: str | None = None
    signatures: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _say(out: TextIO, text: str) -> None:
    print(text, file=out, flush=True)


def run_firstboot(layout: Layout, *, controller: Controller, host: Any,
                  root: Path = Path("/"), live: bool = True,
                  find: Callable[[], seed.Seed | None] | None = None,
                  out: TextIO | None = None, skip_identity: bool = False) -> FirstbootOutcome:
    out = out if out is not None else _stdout()
    outcome = FirstbootOutcome()
    Database(layout.database)
    _share_store(layout)
    adopt_earlier_setup(layout)

    found: seed.Seed | None = None
    answers = None
    if seed.applied(layout) is None:
        try:
            found = (find or (lambda: seed.find_seed(root)))()
        except MailwardenError as exc:
            outcome.errors.append(exc.message)
        if found is not None:
            outcome.seed_source = found.source
            _say(out, f"MWFIRSTBOOT seed found {found.source}")
            try:
                answers = seed.answers_from_seed(found)
            except seed.NoAnswers as exc:
                # A plain cloud-init drive (host name, address, keys): not enough to set up
                # a gateway unattended; the web wizard below does it.
                outcome.errors.append(exc.message)
                _say(out, f"MWFIRSTBOOT seed incomplete: missing {','.join(exc.missing)}"
                          f" (cloud-init gave {','.join(exc.found) or 'nothing usable'});"
                          " add a 'mailwarden:' section, or set up in the web wizard")
            except MailwardenError as exc:
                _refused(out, outcome, exc)

    if not skip_identity and not identity.done(layout):
        hostname = answers.hostname if answers else (socket.getfqdn() or "mailwarden.invalid")
        report = identity.regenerate(layout, hostname, root=root, live=live)
        outcome.identity = report
        _say(out, f"MWFIRSTBOOT identity machine-id={report.machine_id[:8]}... "
                  f"ssh-host-keys={len(report.ssh_host_keys)} "
                  f"certificates={','.join(report.certificates)} "
                  f"dkim-renewed={len(report.dkim_keys)}")
    identity.seed_unbound_root_key(root)

    if found is not None and answers is not None:
        started = time.monotonic()
        try:
            if is_set_up(layout):
                raise AlreadySetUp("the appliance is set up already")
            _wait_for_scanners(layout, controller)
            first = RevisionStore(layout.revisions_dir).current() is None
            result = apply_answers(answers, layout=layout, controller=controller, host=host,
                                   author="firstboot")
            admin = answers.admin
            try:
                create_admin(layout, result.admin,
                             admin.password_hash or hash_password(admin.password or ""),
                             as_user=API_USER if live and os.geteuid() == 0 else None)
            except MailwardenError as exc:
                # The gateway is set up; only the account is missing, and the console can
                # make it.
                outcome.errors.append(exc.message)
                _say(out, f"MWFIRSTBOOT admin not created: [{exc.code}] "
                          f"{exc.message.splitlines()[0]}; on the console run "
                          f"`mailwarden user add {result.admin}`")
            if first and live:
                open_mail_path(layout)
        except AlreadySetUp as exc:
            seed.mark_applied(layout, found, "skipped: " + exc.message, None)
            _say(out, f"MWFIRSTBOOT seed skipped: {exc.message}")
        except MailwardenError as exc:
            _refused(out, outcome, exc)
        else:
            outcome.revision = result.applied.revision.number
            seed.mark_applied(layout, found, "applied", outcome.revision)
            _say(out, f"MWFIRSTBOOT seed applied revision={outcome.revision} "
                      f"hostname={answers.hostname} admin={result.admin} "
                      f"in {time.monotonic() - started:.1f} s")
        finally:
            _share_store(layout)
    if found is not None:
        # After the apply: clamd (started by mailwarden-clamd.path when signatures appear)
        # then loads them once, with the rendered configuration, instead of starting with
        # Debian's and being restarted by the apply.
        outcome.signatures = seed.install_signatures(found, root)
        if outcome.signatures:
            _say(out, f"MWFIRSTBOOT signatures {','.join(outcome.signatures)}")
    if found is not None and outcome.revision is not None:
        try:
            if seed.consume(found):
                _say(out, f"MWFIRSTBOOT seed removed {found.source}")
        except (MailwardenError, OSError) as exc:
            # Set up all the same; a factory reset would then find these answers again.
            message = exc.message if isinstance(exc, MailwardenError) else str(exc)
            outcome.errors.append(f"{found.source} not removed: {message}")
            _say(out, f"MWFIRSTBOOT seed not removed: {found.source}: {message}")

    if is_set_up(layout):
        complete = layout.path(COMPLETE)
        complete.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
        complete.touch()
        layout.setup_code.unlink(missing_ok=True)
        _say(out, "MWFIRSTBOOT set-up complete")
    else:
        code = setupcode.issue(layout.setup_code, api_owner())
        outcome.setup_code = code
        _say(out, f"MWFIRSTBOOT setup-code {code}")
        _say(out, "Mailwarden is not set up yet. Open https://"
                  f"{default_address() or 'THIS-ADDRESS'}:{layout.ports.api}/ and enter the code "
                  f"{code}, or attach a seed volume and reboot.")
    _say(out, "MWFIRSTBOOT end")
    return outcome


def create_admin(layout: Layout, name: str, password_hash: str, *,
                 as_user: str | None) -> None:
    """The first administrator, in the API's credentials store. as_user: run the agent as
    that user (root at first boot: the store is the API's, never root's); None: here (a
    sandbox, or the API's own user)."""
    if as_user is None:
        Users(CredentialStore.for_layout(layout)).add_hashed(name, password_hash, "admin",
                                                              replace=True)
        return

    run_as_owner(layout, as_user, ["user", "add", name, "--role", "admin",
                                   "--password-hash-stdin", "--replace"],
                 input_text=password_hash + "\n")


def _stdout() -> TextIO:
    import sys

    return sys.stdout


def _refused(out: TextIO, outcome: FirstbootOutcome, exc: MailwardenError) -> None:
    outcome.errors.append(exc.message)
    if isinstance(exc, StateError):
        _say(out, f"MWFIRSTBOOT seed refused: {exc.source}: {len(exc.errors)} error(s)")
        for error in exc.errors:
            _say(out, f"MWFIRSTBOOT   {error}")
    else:
        _say(out, f"MWFIRSTBOOT seed refused: [{exc.code}] "
                  + exc.message.replace("\n", " | "))


def _wait_for_scanners(layout: Layout, controller: Controller) -> None:
    """The first apply restarts Rspamd (its worker sockets change) and probes the scanners;
    if Rspamd is in its first start (compiling its rules), wait for them to answer first: a
    restart in the middle of that start would begin it again. The image starts no mail daemon
    before the first state (mailwarden-mail.target), so this waits only on a host whose
    daemons an earlier version or the admin started."""
    for service in ("rspamd", "redis", "unbound"):
        if controller.is_running(service):
            try:
                health.wait_healthy(service, layout, timeout=SCANNER_WARMUP)
            except MailwardenError as exc:
                log.warning("%s", exc.message)


# What the first state starts (mailwarden-mail.target) and setup waits for. Not the content
# filter or the policy service: they are ordered after mailwarden-firstboot.service, which
# calls this, and start within seconds once it ends.
FIRST_START = ("postfix", "redis", "rspamd")


def open_mail_path(layout: Layout) -> None:
    """The last step of first-run setup: start the mail path (mailwarden-mail.target: Postfix,
    Redis, Rspamd, freshclam, clamd once it has signatures, the filter and the policy
    service), (re)start Postfix and wait until the mail path answers, so that "set up" means
    mail is accepted and scanned. Last, because those daemons' first start fills the CPU for
    minutes under emulation (Rspamd compiles its rules, clamd loads its signatures), and
    setup's other steps then ran past their time-outs. Postfix is restarted because it takes
    a new inet_interfaces only then (a host set up otherwise may have it on loopback); a
    reload (all the apply transaction does) keeps the old sockets."""
    # --no-block: the filter and the policy service are ordered after first boot, which
    # calls this; the daemons waited for are below.
    run(["systemctl", "--no-block", "start", "mailwarden-mail.target"],
        timeout=HOST_COMMAND_TIMEOUT)
    # Postfix gets 10 minutes to start (roles/packages): this waits a little longer.
    run(["systemctl", "restart", "postfix.service"], timeout=900)
    for service in FIRST_START:
        health.wait_healthy(service, layout,
                            timeout=max(120.0, health_timeout_for(service)))


def _share_store(layout: Layout) -> None:
    """The store is written by root here and by the agent's users later."""
    if os.geteuid() != 0 or layout.name != "appliance":
        return
    try:
        grp.getgrnam(AGENT_GROUP)
    except KeyError:
        return
    share_with_agent(layout, AGENT_GROUP)


def api_owner() -> tuple[int, int] | None:
    """The web wizard (the API's user) reads and deletes the setup code; None when this is not
    root or there is no such user (a sandbox)."""
    return service_user(API_USER)


def default_address() -> str | None:
    """This machine's address on its default route (no packet is sent)."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.1", 9))
        address = probe.getsockname()[0]
        return None if address.startswith("0.") else str(address)
    except OSError:
        return None
    finally:
        probe.close()
