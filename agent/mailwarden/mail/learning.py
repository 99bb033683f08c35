"""Teaching Rspamd's Bayes classifier: a message learned as spam or as ham (not spam).

The API (quarantine actions, bulk uploads) and the CLI learn through `Learner`; it asks the
state first, so a gateway with Bayes turned off says so (`bayes_disabled`) instead of
Rspamd's own less telling refusal. Rspamd's controller worker does the learning and keeps
the counts in Redis, where they are read; both are in mail/scanners.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Literal, TypeVar

from ..errors import LearnError
from ..state.schema import Bayes
from .scanners import bayes_counts, close_pools, rspamd_learn
from .types import BayesCounts, Learned

Kind = Literal["spam", "ham"]
KINDS: tuple[Kind, ...] = ("spam", "ham")
T = TypeVar("T")

# Learning tokenises the whole message and writes to Redis: slower than a scan.
TIMEOUT = 30.0


class Learner:
    """Learning through the controller on `port`, and the learned counts from Redis on
    `redis_port`; `bayes` gives the state's spam.bayes section at the time of the call."""

    def __init__(self, port: int, redis_port: int, bayes: Callable[[], Bayes],
                 timeout: float = TIMEOUT) -> None:
        self.port, self.redis_port, self.bayes, self.timeout = port, redis_port, bayes, timeout

    def learn(self, raw: bytes, kind: Kind) -> Learned:
        self._enabled()
        if not raw.strip():
            raise LearnError("an empty message cannot be learned", "learn_empty")
        return _run(lambda: rspamd_learn(raw, kind, port=self.port, timeout=self.timeout))

    def counts(self) -> BayesCounts:
        return _run(lambda: bayes_counts(port=self.redis_port, timeout=self.timeout))

    def _enabled(self) -> None:
        if not self.bayes().enabled:
            raise LearnError("the Bayes classifier is turned off (spam.bayes.enabled): "
                             "there is nothing to learn into", "bayes_disabled")


def _run(call: Callable[[], Awaitable[T]]) -> T:
    """One call on a loop of its own (the API's workers and the CLI are synchronous), its
    controller connection closed with it."""
    async def once() -> T:
        try:
            return await call()
        finally:
            close_pools()

    return asyncio.run(once())


def split_mbox(data: bytes) -> list[bytes]:
    """The messages of an mbox file (mboxrd or mboxo): each starts at a "From " line after a
    blank line (or at the start); ">From " quoting is undone. Data that does not start with
    "From " is one message."""
    if not data.startswith(b"From "):
        return [data]
    messages: list[bytes] = []
    current: list[bytes] = []
    previous_blank = True
    for line in data.splitlines(keepends=True):
        if line.startswith(b"From ") and previous_blank:
            if current:
                messages.append(_unquote(current))
            current = []
            previous_blank = False
            continue
        current.append(line)
        previous_blank = line.strip() == b""
    if current:
        messages.append(_unquote(current))
    return [m for m in messages if m.strip()]


def _unquote(lines: list[bytes]) -> bytes:
    out = [line[1:] if line.lstrip(b">").startswith(b"From ") and line.startswith(b">")
           else line for line in lines]
    # The blank line that separated this message from the next "From " line is the mbox's.
    if out and out[-1].strip() == b"":
        out.pop()
    return b"".join(out)


__all__ = ["KINDS", "BayesCounts", "Kind", "Learned", "Learner", "split_mbox"]
