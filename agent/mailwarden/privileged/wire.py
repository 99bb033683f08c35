"""What crosses the helper's socket: one JSON object and a newline each way.

Only what the API could already ask for crosses: a state text, a revision number, first-run
answers. Results and errors travel as plain data and come back as the same classes the API
would have seen had it run the transaction itself, where they matter to its status codes.
"""

from __future__ import annotations

import json
import socket
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..control.apply import ApplyResult, LocallyModified
from ..errors import (
    AlreadySetUp,
    ConflictError,
    FieldError,
    MailwardenError,
    RevisionNotFound,
    ServiceError,
    StateError,
)
from ..state.revisions import Revision

SOCKET = Path("/run/mailwarden/apply.sock")
# A state file is a few kB; anything near this is not a state.
MAX_REQUEST = 4 * 1024 * 1024


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


@dataclass(frozen=True)
class SetupReply:
    """The first-run setup's outcome: the revision it applied, the administrator's name."""

    applied: ApplyResult
    admin: str


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message).encode() + b"\n"


def read_all(sock: socket.socket, limit: int = MAX_REQUEST) -> bytes:
    """Everything until the peer closes its side (the client reads the one reply so)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            raise MailwardenError("message too large")
        chunks.append(chunk)


def read_line(sock: socket.socket, limit: int = MAX_REQUEST) -> bytes:
    """One request: up to its newline (or the peer's end)."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
        if len(data) > limit:
            raise MailwardenError("the request is too large")
    return data


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
        return AlreadySetUp(message)
    if "service" in wire:
        service = str(wire["service"])
        # ServiceError puts "service: " in front of its message; do not say it twice.
        exc = ServiceError(service, message.removeprefix(f"{service}: "))
        exc.code = str(wire.get("code", exc.code))
        return exc
    return HelperError(str(wire.get("code", "error")), message)


__all__ = [
    "MAX_REQUEST", "SOCKET", "HelperError", "HelperUnavailable", "NotAllowed", "SetupReply",
    "encode", "error_from_wire", "error_to_wire", "read_all", "read_line", "result_from_wire",
    "result_to_wire",
]
