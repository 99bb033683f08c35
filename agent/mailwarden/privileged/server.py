"""The root side of the helper: who may connect, what a request may ask, one at a time.

The helper validates everything again and trusts only the kernel's word on who is calling
(SO_PEERCRED), never anything the caller says about itself; the socket file is also 0600 and
owned by the API's user, so other users cannot even connect.

What the operations do is composed by the caller (the command line): the transactions of
control.apply, and the first-run setup, which belongs to firstboot, a layer above this one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pwd
import socket
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..control.apply import apply_state, rollback
from ..control.service import Controller
from ..errors import MailwardenError, StateError
from ..layout import Layout
from ..state.load import load_state_text
from ..state.revisions import RevisionStore, migrate_revisions
from .permissions import adopt_dkim_keys, share_with_agent
from .wire import (
    MAX_REQUEST,
    NotAllowed,
    SetupReply,
    encode,
    error_to_wire,
    read_line,
    result_to_wire,
)

log = logging.getLogger("mailwarden.apply-helper")

# How long the helper waits for the rest of a request once a client connected.
READ_TIMEOUT = 30.0
# systemd passes the listening socket as the first descriptor after stdin/out/err.
SD_LISTEN_FDS_START = 3
# Who may connect on the appliance: the API, and root (scripts, the console).
DEFAULT_ALLOWED = ("mailwarden-api", "root")

# First-run answers as the client sent them (checked again there), and the author.
SetupFn = Callable[[Any, str], SetupReply]


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
    """What the helper may do, bound to a layout and the machine's controller. Tests bind it
    to a sandbox; the appliance to /, systemd and the real host."""

    layout: Layout
    controller: Controller
    # The first-run setup; None: the helper refuses it.
    setup: SetupFn | None = None
    # Group that makes DKIM keys readable by the content filter; None in a sandbox.
    secrets_group: str | None = None
    # Group that shares the store and state among the agent's users; None in a sandbox.
    agent_group: str | None = None

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
        if op == "setup" and self.setup is not None:
            try:
                outcome = self.setup(request.get("answers"), author)
            finally:
                self._share()
            return {"result": result_to_wire(outcome.applied), "admin": outcome.admin}
        raise MailwardenError(f"unknown operation {op!r}")

    def _adopt_secrets(self, text: str) -> None:
        if self.secrets_group is None:
            return
        try:
            state = load_state_text(text, "new state")
        except StateError:
            return  # apply_state reports it, with every error
        adopt_dkim_keys(self.layout, [k.key for k in state.dkim.sign], self.secrets_group)

    def _share(self) -> None:
        if self.agent_group is not None:
            share_with_agent(self.layout, self.agent_group)


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
        data = read_line(conn)
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
        conn.sendall(encode(reply))


def run_helper(operations: Operations, *, socket_path: Path | None, allowed: Iterable[str],
               idle_timeout: float) -> int:
    """`mailwarden apply-helper`: serve until idle."""
    logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s %(message)s")
    layout = operations.layout
    if layout.name == "appliance" and os.geteuid() != 0:
        raise MailwardenError("the apply helper must run as root on the appliance")
    allowed_uids = uids_of(allowed)
    try:
        # An appliance from before revisions moved to root's folder: the API reads them there.
        migrate_revisions(layout.legacy_revisions_dir, layout.revisions_dir)
    except (OSError, MailwardenError) as exc:
        log.error("revisions not moved: %s", exc)
    listener = listening_socket(socket_path)
    with listener:
        serve(listener, operations, allowed_uids, idle_timeout=idle_timeout or None)
    return 0


__all__ = [
    "DEFAULT_ALLOWED", "Operations", "SetupFn", "listening_socket", "peer_uid", "run_helper",
    "serve", "uids_of",
]
