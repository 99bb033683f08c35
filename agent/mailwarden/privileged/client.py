"""The API's side of the helper: one connection per request.

    client = ApplyHelperClient()            # or privileged_apply / privileged_rollback,
    client.apply(text, author, comment, base)  # the API's seams
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from ..control.apply import ApplyResult
from ..errors import MailwardenError
from .wire import (
    MAX_REQUEST,
    SOCKET,
    HelperUnavailable,
    SetupReply,
    encode,
    error_from_wire,
    read_all,
    result_from_wire,
)

# The API waits this long: a transaction waits for each reloaded daemon to answer again,
# clamd for up to 420 s and Rspamd for up to 900 s (control.apply.HEALTH_TIMEOUTS), one
# after the other at worst.
CLIENT_TIMEOUT = 1500.0


class ApplyHelperClient:
    """Talks to the helper; its methods have the shapes of the API's Applier and RollbackFn
    seams, and of the first-run setup's."""

    def __init__(self, path: Path = SOCKET, timeout: float = CLIENT_TIMEOUT) -> None:
        self.path = path
        self.timeout = timeout

    def call(self, request: dict[str, Any]) -> dict[str, Any]:
        payload = encode(request)
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
            data = read_all(sock, MAX_REQUEST)
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

    def setup(self, answers: BaseModel, author: str = "setup wizard") -> SetupReply:
        """First-run answers (firstboot.answers.Answers), checked again on the other side."""
        data = answers.model_dump(mode="json", exclude_none=True)
        reply = self.call({"op": "setup", "answers": data, "author": author})
        return SetupReply(result_from_wire(reply["result"]), str(reply["admin"]))


def privileged_apply(text: str, author: str, comment: str, base: int | None) -> ApplyResult:
    """The API's `Applier` on the appliance."""
    return ApplyHelperClient().apply(text, author, comment, base)


def privileged_rollback(number: int, author: str, base: int | None) -> ApplyResult:
    """The API's `RollbackFn` on the appliance."""
    return ApplyHelperClient().rollback(number, author, base)


__all__ = ["CLIENT_TIMEOUT", "ApplyHelperClient", "privileged_apply", "privileged_rollback"]
