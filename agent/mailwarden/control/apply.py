"""The apply transaction: a new state goes live completely, or not at all.

1. validate the state and check that the secrets it names exist;
2. render every file; refuse if a file we wrote earlier was edited by hand (unless forced);
3. write the files into a staging folder (root's own) and run each changed service's own
   checker there;
4. swap the changed files in atomically (rename), reload only the services they belong to,
   and probe each one until it answers;
5. if anything fails after the swap, put the previous files back and reload again;
6. record the revision and write the live state file.

Writers serialise on the revision store's lock and name the revision they started from.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import FieldError, MailwardenError, ServiceError, StateError
from ..files import UnsafePath, private_dir, read_regular, remove, write_atomic
from ..layout import Layout
from ..render.configs import SERVICES, RenderedFile, render
from ..state.load import load_state_text
from ..state.revisions import Revision, RevisionStore, migrate_revisions
from ..state.schema import State
from .checks import CHECKERS
from .health import wait_healthy
from .service import Controller

AGENT_SERVICES = ("filter", "policy")

# How long a reloaded service may take to answer again. clamd loads its whole signature
# database on restart (about 1 GB: tens of seconds on real hardware, minutes on a slow or
# emulated one; Debian gives it 420 s to start); Rspamd recompiles its regexps on a reload
# and loads its whole configuration again on a restart. Its first start with the appliance's
# configuration, at setup, is the slowest: under TCG beside another guest it had not
# answered after 375 s (while busy all along), and the first setup failed and was rolled
# back at 300 s. These bounds only decide when a service that never answers is given up;
# configuration errors are caught before the swap (control/checks.py).
HEALTH_TIMEOUTS = {"clamav": 420.0, "rspamd": 900.0}
DEFAULT_HEALTH_TIMEOUT = 30.0


def health_timeout_for(service: str, override: float | None = None) -> float:
    if override is not None:
        return override
    return HEALTH_TIMEOUTS.get(service, DEFAULT_HEALTH_TIMEOUT)


class LocallyModified(MailwardenError):
    code = "locally_modified"


@dataclass(frozen=True)
class ApplyResult:
    revision: Revision
    changed: list[Path] = field(default_factory=list)
    reloaded: list[str] = field(default_factory=list)


def missing_secrets(state: State, layout: Layout) -> list[FieldError]:
    secrets = layout.secrets_dir
    errors = []
    if state.tls.inbound.enabled:
        name = state.tls.inbound.certificate
        for suffix in (".crt", ".key"):
            if not (secrets / f"{name}{suffix}").is_file():
                errors.append(FieldError("tls.inbound.certificate",
                                         f"secret file {secrets / (name + suffix)} is missing"))
    for index, key in enumerate(state.dkim.sign):
        if not (secrets / key.key).is_file():
            errors.append(FieldError(f"dkim.sign[{index}].key",
                                     f"secret file {secrets / key.key} is missing "
                                     f"(mailwarden dkim generate {key.domain} {key.selector})"))
    return errors


def _read(path: Path) -> bytes | None:
    """The live file, never what a link there points to: its bytes would be compared and
    written back on a rollback, readable by whoever may read the rendered file."""
    try:
        return read_regular(path)
    except UnsafePath as exc:
        raise LocallyModified(f"{exc.message}; Mailwarden writes a regular file there, "
                              "remove what is there now") from None


def _sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def apply_state(
    text: str,
    *,
    layout: Layout,
    controller: Controller,
    author: str,
    comment: str,
    base: int | None,
    force: bool = False,
    health_timeout: float | None = None,
) -> ApplyResult:
    state = load_state_text(text, "new state")
    missing = missing_secrets(state, layout)
    if missing:
        raise StateError(missing, "new state")
    files = render(state, layout, layout.templates_dir)
    migrate_revisions(layout.legacy_revisions_dir, layout.revisions_dir)
    store = RevisionStore(layout.revisions_dir)

    with store.lock():
        store.check_base(base)
        current = store.current()
        written = store.get(current).files if current else {}
        on_disk = {f.path: _read(f.path) for f in files}

        edited = [f.path for f in files
                  if str(f.path) in written and on_disk[f.path] is not None
                  and _sha(on_disk[f.path] or b"") != written[str(f.path)]]
        if edited and not force:
            raise LocallyModified(
                "these files were edited by hand since Mailwarden wrote them; move the "
                "changes into the state or a template override, or apply with --force to "
                "overwrite them:\n" + "\n".join(f"  {p}" for p in edited)
            )

        changed = [f for f in files if on_disk[f.path] != f.content.encode()]
        services = [s for s in SERVICES if any(f.target.service == s for f in changed)]
        if changed:
            _check_staged(files, services, layout)
            reloaded = _swap_and_reload(changed, on_disk, services, layout, controller,
                                        health_timeout)
        else:
            reloaded = []

        previous_text = store.text(current) if current else None
        revision = store.record(text, author, comment, {str(f.path): f.sha256 for f in files})
        write_atomic(layout.state_file, text.encode(), 0o640)
        if text != previous_text:
            # Rules, levels, lists: the agent's own daemons read the state file itself.
            for service in AGENT_SERVICES:
                if controller.is_running(service):
                    controller.reload(service)
                    wait_healthy(service, layout,
                                 timeout=health_timeout_for(service, health_timeout))
                    reloaded.append(service)
        return ApplyResult(revision, [f.path for f in changed], reloaded)


def _settled(path: Path) -> None:
    """Date a file we just wrote 2 s back. Postfix treats a table or main.cf modified within
    the current second as still being written: it sleeps 300 ms and reads again, up to seconds
    per command (measured: `postconf -n` 2.4 s, `postfix reload` 1.8 s on a fresh file). Our
    files are complete the moment they appear (written beside, renamed over), so the wait
    protects nothing here."""
    past = time.time() - 2
    os.utime(path, (past, past), follow_symlinks=False)


def _check_staged(files: list[RenderedFile], services: list[str], layout: Layout) -> None:
    # Root's own folder: the checkers (postfix check, redis-server...) read what is here, so
    # nobody else may put anything in it. Checkers that drop privileges (clamconf,
    # unbound-checkconf, redis-server) must still reach it: searchable, not listable.
    os.close(private_dir(layout.staging_dir, mode=0o711))
    stage = Path(tempfile.mkdtemp(prefix="apply-", dir=layout.staging_dir))
    try:
        stage.chmod(0o755)
        for f in files:
            target = stage / f.path.relative_to(layout.root)
            target.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, f.target.mode)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(f.content)
            _settled(target)
        for service in services:
            CHECKERS[service](stage, layout)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _swap_and_reload(
    changed: list[RenderedFile],
    previous: dict[Path, bytes | None],
    services: list[str],
    layout: Layout,
    controller: Controller,
    health_timeout: float | None,
) -> list[str]:
    reloaded: list[str] = []
    # The previous files need the same kind of reload as the new ones if they come back.
    restart = {f.target.service for f in changed if f.target.restart}
    try:
        for f in changed:
            write_atomic(f.path, f.content.encode(), f.target.mode)
            _settled(f.path)
        for service in services:
            if controller.is_running(service):
                controller.reload(service, restart=service in restart)
                reloaded.append(service)
        for service in reloaded:
            wait_healthy(service, layout, timeout=health_timeout_for(service, health_timeout))
    except MailwardenError as exc:
        _restore(changed, previous)
        problems = []
        for service in reloaded:
            try:
                controller.reload(service, restart=service in restart)
                wait_healthy(service, layout, timeout=health_timeout_for(service))
            except MailwardenError as again:
                problems.append(str(again))
        note = ("; the previous configuration is back in place"
                if not problems else "; restoring the previous configuration ALSO failed: "
                + "; ".join(problems))
        raise ServiceError(getattr(exc, "service", "apply"), f"{exc.message}{note}") from exc
    return reloaded


def _restore(changed: list[RenderedFile], previous: dict[Path, bytes | None]) -> None:
    for f in changed:
        old = previous[f.path]
        if old is None:
            remove(f.path)
        else:
            write_atomic(f.path, old, f.target.mode)
            _settled(f.path)


def rollback(
    number: int, *, layout: Layout, controller: Controller, author: str, base: int | None,
) -> ApplyResult:
    """Apply the text of an earlier revision as a new revision."""
    migrate_revisions(layout.legacy_revisions_dir, layout.revisions_dir)
    store = RevisionStore(layout.revisions_dir)
    text = store.text(number)
    return apply_state(text, layout=layout, controller=controller, author=author,
                       comment=f"rollback to revision {number}", base=base)
