"""The privileged apply helper: the one way an unprivileged API changes a live appliance.

The API runs as its own unprivileged user, but applying a state writes /etc/postfix and
friends and reloads daemons, which needs root. A small root service (socket-activated by
systemd on /run/mailwarden/apply.sock) runs the very same transaction (`apply_state`,
`rollback`, and the first-run `apply_answers`) and sends back the result or the error.

Only what the API could already ask for crosses the socket: a state text, a revision number,
first-run answers. The helper validates everything again and trusts only the kernel's word on
who is calling (SO_PEERCRED), never anything the caller says about itself; the socket file is
also 0600 and owned by the API's user, so other users cannot even connect.

One request per connection: a JSON object and a newline, answered by one JSON object.

    client = ApplyHelperClient()            # or privileged_apply / privileged_rollback /
    client.apply(text, author, comment, base)  # privileged_setup, the API's seams
"""

from __future__ import annotations

import contextlib
import grp
import json
import logging
import os
import pwd
import socket
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import (
    ConflictError,
    FieldError,
    MailwardenError,
    RevisionNotFound,
    ServiceError,
    StateError,
)
from ..files import UnsafePath, open_dir, open_regular
from ..layout import Layout
from ..state.revisions import Revision, RevisionStore, migrate_revisions
from .apply import ApplyResult, Controller, LocallyModified, apply_state, rollback

log = logging.getLogger("mailwarden.apply-helper")

SOCKET = Path("/run/mailwarden/apply.sock")
# A state file is a few kB; anything near this is not a state.
MAX_REQUEST = 4 * 1024 * 1024
# The API waits this long: a transaction waits for each reloaded daemon to answer again,
# clamd for up to 420 s and Rspamd for up to 300 s (render.apply.HEALTH_TIMEOUTS).
CLIENT_TIMEOUT = 900.0
# How long the helper waits for the rest of a request once a client connected.
READ_TIMEOUT = 30.0
# systemd passes the listening socket as the first descriptor after stdin/out/err.
SD_LISTEN_FDS_START = 3
# Who may connect on the appliance: the API, and root (scripts, the console).
DEFAULT_ALLOWED = ("mailwarden-api", "root")
# Secrets the content filter must read (DKIM keys) are shared through this group.
SECRETS_GROUP = "mailwarden-secrets"
# The agent's daemons share the store and the state through this group.
AGENT_GROUP = "mailwarden"


class HelperError(MailwardenError):
    """An error from the helper whose class has no richer form here; keeps its code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class HelperUnavailable(MailwardenError):
    """The helper's socket is missing or refused the connection."""

    code = "apply_helper_unavailable"


class NotAllowed(MailwardenError):
    code = "apply_helper_forbidden"


# --- wire format -----------------------------------------------------------------------------


def result_to_wire(result: ApplyResult) -> dict[str, Any]:
    return {"revision": asdict(result.revision), "changed": [str(p) for p in result.changed],
            "reloaded": list(result.reloaded)}


def result_from_wire(data: dict[str, Any]) -> ApplyResult:
    return ApplyResult(Revision(**data["revision"]), [Path(p) for p in data["changed"]],
                       list(data["reloaded"]))


def error_to_wire(exc: MailwardenError) -> dict[str, Any]:
    wire: dict[str, Any] = {"type": type(exc).__name__, "code": exc.code,
                            "message": exc.message}
    if isinstance(exc, StateError):
        wire.update(source=exc.source,
                    errors=[{"path": e.path, "message": e.message, "line": e.line}
                            for e in exc.errors])
    elif isinstance(exc, ConflictError):
        wire.update(base=exc.base, current=exc.current)
    elif isinstance(exc, ServiceError):
        wire.update(service=exc.service)
    return wire


def error_from_wire(wire: dict[str, Any]) -> MailwardenError:
    """The same exception class the API would have seen in-process, where it matters to the
    API's status codes; any other keeps its code and message."""
    kind, message = wire.get("type"), str(wire.get("message", "the apply helper failed"))
    if kind == "StateError":
        errors = [FieldError(e["path"], e["message"], e.get("line"))
                  for e in wire.get("errors", [])]
        return StateError(errors, wire.get("source", "state"))
    if kind == "ConflictError":
        return ConflictError(wire.get("base"), int(wire["current"]), message)
    if kind == "RevisionNotFound":
        return RevisionNotFound(message)
    if kind == "LocallyModified":
        return LocallyModified(message)
    if kind == "AlreadySetUp":
        from ..firstboot.engine import AlreadySetUp

        return AlreadySetUp(message)
    if "service" in wire:
        service = str(wire["service"])
        # ServiceError puts "service: " in front of its message; do not say it twice.
        exc = ServiceError(service, message.removeprefix(f"{service}: "))
        exc.code = str(wire.get("code", exc.code))
        return exc
    return HelperError(str(wire.get("code", "error")), message)


# --- client ----------------------------------------------------------------------------------


class ApplyHelperClient:
    """Talks to the helper; its methods have the shapes of the API's Applier, RollbackFn and
    first-run setup seams."""

    def __init__(self, path: Path = SOCKET, timeout: float = CLIENT_TIMEOUT) -> None:
        self.path = path
        self.timeout = timeout

    def call(self, request: dict[str, Any]) -> dict[str, Any]:
        payload = json.dumps(request).encode() + b"\n"
        if len(payload) > MAX_REQUEST:
            raise MailwardenError("the request is too large for the apply helper")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            try:
                sock.connect(str(self.path))
            except OSError as exc:
                raise HelperUnavailable(
                    f"the apply helper does not answer on {self.path}: {exc.strerror or exc} "
                    "(is mailwarden-apply.socket running?)") from None
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            data = _read_all(sock, MAX_REQUEST)
        except TimeoutError:
            raise HelperUnavailable(
                f"the apply helper gave no answer within {self.timeout:.0f} s") from None
        finally:
            sock.close()
        try:
            reply = json.loads(data)
        except ValueError:
            raise HelperUnavailable("the apply helper closed the connection without an "
                                    "answer (see journalctl -u mailwarden-apply)") from None
        if not isinstance(reply, dict):
            raise HelperUnavailable("the apply helper answered nonsense")
        if "error" in reply:
            raise error_from_wire(reply["error"])
        return reply

    def apply(self, text: str, author: str, comment: str, base: int | None) -> ApplyResult:
        reply = self.call({"op": "apply", "text": text, "author": author,
                           "comment": comment, "base": base})
        return result_from_wire(reply["result"])

    def rollback(self, number: int, author: str, base: int | None) -> ApplyResult:
        reply = self.call({"op": "rollback", "number": number, "author": author,
                           "base": base})
        return result_from_wire(reply["result"])

    def setup(self, answers: Any, author: str = "setup wizard") -> Any:
        """First-run answers (firstboot.answers.Answers) -> firstboot.engine.FirstbootResult."""
        from ..firstboot.engine import FirstbootResult

        data = answers.model_dump(mode="json", exclude_none=True)
        reply = self.call({"op": "setup", "answers": data, "author": author})
        return FirstbootResult(result_from_wire(reply["result"]), reply["admin"])


def privileged_apply(text: str, author: str, comment: str, base: int | None) -> ApplyResult:
    """The API's `Applier` on the appliance."""
    return ApplyHelperClient().apply(text, author, comment, base)


def privileged_rollback(number: int, author: str, base: int | None) -> ApplyResult:
    """The API's `RollbackFn` on the appliance."""
    return ApplyHelperClient().rollback(number, author, base)


def privileged_setup(answers: Any) -> Any:
    """The web wizard's setup on the appliance: Answers -> FirstbootResult."""
    return ApplyHelperClient().setup(answers)


def _read_all(sock: socket.socket, limit: int) -> bytes:
    chunks, size = [], 0
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            raise MailwardenError("message too large")
        chunks.append(chunk)


# --- server ----------------------------------------------------------------------------------


def peer_uid(conn: socket.socket) -> int:
    """The connecting process's user, as the kernel recorded it at connect()."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


def uids_of(names: Iterable[str]) -> set[int]:
    """User names (or numbers) -> uids; unknown names are skipped (a host without the API)."""
    uids = set()
    for name in names:
        if name.isdigit():
            uids.add(int(name))
            continue
        with contextlib.suppress(KeyError):
            uids.add(pwd.getpwnam(name).pw_uid)
    return uids


def _text(request: dict[str, Any], key: str, limit: int = MAX_REQUEST) -> str:
    value = request.get(key)
    if not isinstance(value, str) or len(value) > limit:
        raise MailwardenError(f"'{key}' must be text")
    return value


def _base(request: dict[str, Any]) -> int | None:
    value = request.get("base")
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise MailwardenError("'base' must be a revision number or null")


@dataclass
class Operations:
    """What the helper may do, bound to a layout and the machine's controllers. Tests bind it
    to a sandbox; the appliance to /, systemd and the real host."""

    layout: Layout
    controller: Controller
    # First-run answers change the host (hostname, network, SSH); a sandbox's host is not ours.
    host_factory: Callable[[], Any]
    # Group that makes DKIM keys readable by the content filter; None in a sandbox.
    secrets_group: str | None = None
    # Group that shares the store and state among the agent's users; None in a sandbox.
    agent_group: str | None = None
    # Run once the first state is live (the appliance: Postfix starts listening publicly).
    after_first_state: Callable[[], None] | None = None

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        author = _text(request, "author", 200) if "author" in request else "apply-helper"
        if op == "apply":
            text = _text(request, "text")
            comment = _text(request, "comment", 2000) if "comment" in request else ""
            self._adopt_secrets(text)
            result = apply_state(text, layout=self.layout, controller=self.controller,
                                 author=author, comment=comment, base=_base(request))
            self._share()
            return {"result": result_to_wire(result)}
        if op == "rollback":
            number = request.get("number")
            if not isinstance(number, int) or isinstance(number, bool) or number < 1:
                raise MailwardenError("'number' must be a revision number")
            migrate_revisions(self.layout.legacy_revisions_dir, self.layout.revisions_dir)
            self._adopt_secrets(RevisionStore(self.layout.revisions_dir).text(number))
            result = rollback(number, layout=self.layout, controller=self.controller,
                              author=author, base=_base(request))
            self._share()
            return {"result": result_to_wire(result)}
        if op == "setup":
            from ..firstboot.answers import validate_answers
            from ..firstboot.engine import AlreadySetUp, adopt_earlier_setup, apply_answers

            answers = validate_answers(request.get("answers"), "answers")
            # Decided by root's marker alone; no store the caller can write has a say.
            if adopt_earlier_setup(self.layout):
                raise AlreadySetUp("this appliance is set up already")
            first = RevisionStore(self.layout.revisions_dir).current() is None
            try:
                outcome = apply_answers(answers, layout=self.layout, controller=self.controller,
                                        host=self.host_factory(), author=author)
                if first and self.after_first_state is not None:
                    self.after_first_state()
            finally:
                self._share()
            return {"result": result_to_wire(outcome.applied), "admin": outcome.admin}
        raise MailwardenError(f"unknown operation {op!r}")

    def _adopt_secrets(self, text: str) -> None:
        if self.secrets_group is None:
            return
        from ..state.load import load_state_text

        try:
            state = load_state_text(text, "new state")
        except StateError:
            return  # apply_state reports it, with every error
        adopt_dkim_keys(self.layout, [k.key for k in state.dkim.sign], self.secrets_group)

    def _share(self) -> None:
        if self.agent_group is not None:
            share_with_agent(self.layout, self.agent_group)


def adopt_dkim_keys(layout: Layout, names: Iterable[str], group: str) -> list[Path]:
    """Make the DKIM keys a state signs with readable by the content filter (group, 0640).

    The API writes a new key 0600 as its own user; the filter, another user, signs with it.
    The change happens here, as root, when a state that names the key is applied. The
    secrets folder is the API's: a name there may be a link or a hard link to any file, or
    become one between a check and a change by name. So each key is opened without
    following links, must be a regular file with one link, and is changed by descriptor;
    anything else refuses the apply (UnsafePath). Only keys of the folder's owner (the API's
    user) are adopted: naming a file of root's there (the TLS key Postfix reads) would
    otherwise make it readable to the whole secrets group, the API included."""
    gid = grp.getgrnam(group).gr_gid
    try:
        folder = open_dir(layout.secrets_dir)
    except FileNotFoundError:
        return []  # apply_state names the missing secrets
    adopted = []
    try:
        owner = os.fstat(folder).st_uid
        for name in names:
            path = layout.secrets_dir / name
            fd = open_regular(folder, name, path)
            if fd is None:
                continue  # apply_state names the missing secret
            try:
                info = os.fstat(fd)
                if info.st_uid != owner:
                    raise UnsafePath(
                        f"{path}: a DKIM key must belong to the secrets folder's owner, like "
                        "the keys the API and `mailwarden dkim generate` make; this one "
                        f"belongs to uid {info.st_uid}")
                if info.st_gid != gid:
                    os.fchown(fd, -1, gid)
                if info.st_mode & 0o7777 != 0o640:
                    os.fchmod(fd, 0o640)
            finally:
                os.close(fd)
            adopted.append(path)
    finally:
        os.close(folder)
    return adopted


def share_with_agent(layout: Layout, group: str) -> None:
    """The state file, the revisions and the store belong to the agent's group, whoever (root
    here) created them: the daemons and the API read them as other users.

    The store's folder is writable by every agent user, who may put a link or a hard link
    where SQLite's -wal and -shm files go: each file is opened without following links,
    must be a regular file with one link, and is changed by descriptor; anything else is
    left alone (and logged)."""
    gid = grp.getgrnam(group).gr_gid
    database = layout.database
    store_names = [database.name, database.name + "-wal", database.name + "-shm"]
    places: list[tuple[Path, list[str] | None, bool]] = [
        (layout.state_file.parent, [layout.state_file.name], False),
        (layout.revisions_dir, None, False),  # the folder and every file in it
        (database.parent, store_names, True),
    ]
    for folder_path, names, in_store in places:
        try:
            folder = open_dir(folder_path)
        except FileNotFoundError:
            continue
        try:
            if names is None:
                _share_fd(folder, gid, None)
                names = [n for n in os.listdir(folder) if not n.startswith(".")]
            for name in names:
                try:
                    fd = open_regular(folder, name, folder_path / name)
                except UnsafePath as exc:
                    log.warning("not shared with the agent's group: %s", exc.message)
                    continue
                if fd is None:
                    continue
                try:
                    # SQLite: every user of the store writes it; nobody else reads it.
                    _share_fd(fd, gid, 0o660 if in_store else None)
                finally:
                    os.close(fd)
        finally:
            os.close(folder)


def _share_fd(fd: int, gid: int, mode: int | None) -> None:
    info = os.fstat(fd)
    if info.st_gid != gid:
        os.fchown(fd, -1, gid)
    if mode is not None and info.st_mode & 0o7777 != mode:
        os.fchmod(fd, mode)


def listening_socket(path: Path | None) -> socket.socket:
    """The socket systemd passed (socket activation), or one bound at path (tests, dev)."""
    if path is None:
        if os.environ.get("LISTEN_PID") != str(os.getpid()) or \
                int(os.environ.get("LISTEN_FDS", "0")) < 1:
            raise MailwardenError("no socket from systemd (LISTEN_FDS); pass --socket PATH")
        for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            os.environ.pop(name, None)  # not for the programs the helper runs
        return socket.socket(fileno=SD_LISTEN_FDS_START)
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    os.chmod(path, 0o660)
    sock.listen(8)
    return sock


def serve(listener: socket.socket, operations: Operations, allowed_uids: set[int], *,
          idle_timeout: float | None = 60.0, max_requests: int | None = None) -> int:
    """Answer connections one at a time (the transaction is serialised anyway) until idle for
    idle_timeout seconds; systemd starts the helper again on the next connection."""
    listener.settimeout(idle_timeout)
    served = 0
    while max_requests is None or served < max_requests:
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            break
        except OSError as exc:  # the listener was shut down (tests) or is unusable
            log.info("no more connections: %s", exc)
            break
        with conn:
            _answer(conn, operations, allowed_uids)
        served += 1
    return served


def _answer(conn: socket.socket, operations: Operations, allowed_uids: set[int]) -> None:
    conn.settimeout(READ_TIMEOUT)
    started = time.monotonic()
    uid = peer_uid(conn)
    try:
        # Read the whole request first, even one to refuse: closing with unread data would
        # reset the connection, and the caller would never see why.
        data = b""
        while not data.endswith(b"\n"):
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
            if len(data) > MAX_REQUEST:
                raise MailwardenError("the request is too large")
        if uid not in allowed_uids:
            log.warning("refused a connection from uid %d", uid)
            raise NotAllowed(f"uid {uid} may not use the apply helper")
        request = json.loads(data)
        if not isinstance(request, dict):
            raise MailwardenError("the request must be a JSON object")
    except (ValueError, OSError, MailwardenError) as exc:
        _reply(conn, {"error": error_to_wire(
            exc if isinstance(exc, MailwardenError) else MailwardenError(f"bad request: {exc}"))})
        return
    op = request.get("op")
    try:
        reply = operations.handle(request)
    except MailwardenError as exc:
        log.info("%s for uid %d failed after %.1f s: %s", op, uid, time.monotonic() - started,
                 exc.message.splitlines()[0])
        reply = {"error": error_to_wire(exc)}
    except Exception as exc:  # the caller gets an answer; the journal gets the traceback
        log.exception("%s for uid %d failed", op, uid)
        reply = {"error": {"type": "internal", "code": "apply_helper_failed",
                           "message": f"the apply helper failed: {type(exc).__name__}: {exc}"}}
    else:
        log.info("%s for uid %d done in %.1f s", op, uid, time.monotonic() - started)
    _reply(conn, reply)


def _reply(conn: socket.socket, reply: dict[str, Any]) -> None:
    # The client may have given up (its own timeout); the transaction's outcome stands.
    with contextlib.suppress(OSError):
        conn.settimeout(READ_TIMEOUT)
        conn.sendall(json.dumps(reply).encode() + b"\n")


def appliance_operations(layout: Layout) -> Operations:
    from ..firstboot.host import ApplianceHost
    from .systemd import SystemdController

    def group_or_none(name: str) -> str | None:
        try:
            grp.getgrnam(name)
        except KeyError:
            return None
        return name

    from ..firstboot.boot import listen_publicly

    return Operations(layout=layout, controller=SystemdController(),
                      host_factory=lambda: ApplianceHost(layout=layout),
                      secrets_group=group_or_none(SECRETS_GROUP),
                      agent_group=group_or_none(AGENT_GROUP),
                      after_first_state=lambda: listen_publicly(layout))


def run_helper(layout: Layout, *, socket_path: Path | None, allowed: Iterable[str],
               idle_timeout: float) -> int:
    """`mailwarden apply-helper`: serve until idle."""
    logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s %(message)s")
    if layout.name == "appliance" and os.geteuid() != 0:
        raise MailwardenError("the apply helper must run as root on the appliance")
    operations = appliance_operations(layout) if layout.name == "appliance" else Operations(
        layout=layout, controller=_sandbox_controller(layout),
        host_factory=_null_host)
    allowed_uids = uids_of(allowed)
    try:
        # An appliance from before revisions moved to root's folder: the API reads them there.
        migrate_revisions(layout.legacy_revisions_dir, layout.revisions_dir)
    except (OSError, MailwardenError) as exc:
        log.error("revisions not moved: %s", exc)
    if layout.name == "appliance":
        from ..firstboot.engine import adopt_earlier_setup

        adopt_earlier_setup(layout)  # the API unit did it before its start; never too often
    listener = listening_socket(socket_path)
    with listener:
        serve(listener, operations, allowed_uids, idle_timeout=idle_timeout or None)
    return 0


def _sandbox_controller(layout: Layout) -> Controller:
    from ..sandbox.control import PidfileController

    return PidfileController(layout)


def _null_host() -> Any:
    from ..firstboot.engine import NullHost

    return NullHost()


__all__ = [
    "SOCKET", "ApplyHelperClient", "HelperError", "HelperUnavailable", "NotAllowed",
    "Operations", "adopt_dkim_keys", "listening_socket", "privileged_apply",
    "privileged_rollback", "privileged_setup", "run_helper", "serve", "share_with_agent",
]
