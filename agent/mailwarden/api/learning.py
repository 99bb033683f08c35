"""Spam learning: what Rspamd's Bayes has learned, and uploads to learn from.

A delivered message the filter let through is no longer on the gateway: to mark it as spam,
an administrator uploads the copy (the recipient forwards it as an attachment, or it is
saved from the mailbox) as message/rfc822, or many at once as an mbox. Messages still in
the quarantine are learned by the quarantine's own actions (release with learn, spam).
Every learning action goes to the audit log (learn.spam, learn.ham) with its result.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import falcon

from ..errors import LearnError, MailwardenError, ScannerError
from ..mail.learning import KINDS, Kind, Learner, split_mbox
from ..mail.types import Learned
from ..state.schema import Bayes
from ..store.users import Audit
from .bodies import RawBody, read_raw
from .errors import BadInput
from .replies import LearningStatus, LearnReport, returns

VIEWERS = ("admin", "qmanager", "helpdesk", "audit")
LEARNERS = ("admin", "qmanager")
LEARN_ACTIONS = tuple(f"learn.{kind}" for kind in KINDS)
# application/octet-stream: a file sent as it is, one message or an mbox (split_mbox tells).
UPLOAD_TYPES = ("message/rfc822", "application/mbox", "application/octet-stream")
MAX_UPLOAD = 50 * 1024 * 1024
MAX_MESSAGES = 1000


def outcome(learned: Learned) -> str:
    return "already_learned" if learned.already else "learned"


def learn_recorded(learner: Learner, audit: Audit, actor: str, raw: bytes, kind: Kind,
                   target: str, source_ip: str | None) -> Learned:
    """Learn one message and record it, refused or not: the one way the quarantine's
    actions learn."""
    try:
        learned = learner.learn(raw, kind)
    except MailwardenError as exc:
        audit.record(actor, f"learn.{kind}", target, {"result": exc.code,
                                                       "message": exc.message}, source_ip)
        raise
    audit.record(actor, f"learn.{kind}", target, {"result": outcome(learned)}, source_ip)
    return learned


def counts_or_error(learner: Learner) -> tuple[dict[str, int] | None, str | None]:
    try:
        return asdict(learner.counts()), None
    except ScannerError as exc:
        return None, exc.message


@dataclass
class LearningResource:
    learner: Learner
    bayes: Callable[[], Bayes]
    audit: Audit
    roles = {"GET": VIEWERS}

    @returns(LearningStatus)
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        limit = req.get_param_as_int("limit", default=20, min_value=1, max_value=500)
        counts, error = counts_or_error(self.learner)
        bayes = self.bayes()
        resp.media = {
            "bayes": {"enabled": bayes.enabled, "autolearn": bayes.autolearn,
                      "min_learns": bayes.min_learns},
            "counts": counts, "error": error,
            "recent": [{k: e[k] for k in ("time", "actor", "action", "target", "detail")}
                       for e in self.audit.list(limit, actions=LEARN_ACTIONS)],
        }


@dataclass
class LearnUploadResource:
    """POST /api/learning/{kind}: the uploaded messages learned one by one, each result on
    its own (one message too short to learn does not hide the others)."""

    learner: Learner
    audit: Audit
    roles = {"POST": LEARNERS}

    @returns(LearnReport)
    def on_post(self, req: falcon.Request, resp: falcon.Response, kind: str) -> None:
        if kind not in KINDS:
            raise falcon.HTTPNotFound(title="Not Found",
                                      description=f"learn spam or ham, not '{kind}'")
        learn_kind: Kind = "spam" if kind == "spam" else "ham"
        data = read_raw(req, UPLOAD_TYPES, MAX_UPLOAD)
        messages = split_mbox(data)
        if len(messages) > MAX_MESSAGES:
            raise BadInput(f"at most {MAX_MESSAGES} messages at a time; this mbox has "
                           f"{len(messages)}", "body")
        results: list[dict[str, Any]] = []
        for index, raw in enumerate(messages):
            try:
                learned = self.learner.learn(raw, learn_kind)
                results.append({"index": index, "result": outcome(learned),
                                "message": learned.message})
            except (LearnError, ScannerError) as exc:
                if exc.code == "bayes_disabled":
                    raise  # the same for every message: one clear error
                # Told per message: those learned before it stay learned, and are reported.
                results.append({"index": index, "result": exc.code, "message": exc.message})
        tally = {name: sum(1 for r in results if r["result"] == name)
                 for name in ("learned", "already_learned")}
        failed = len(results) - sum(tally.values())
        user = req.context.user
        self.audit.record(user.username, f"learn.{learn_kind}", f"{len(messages)} uploaded",
                          {"result": "learned" if not failed else "partly",
                           **tally, "failed": failed}, req.remote_addr)
        counts, _ = counts_or_error(self.learner)
        resp.media = {"kind": learn_kind, "messages": len(messages), **tally,
                      "failed": failed, "results": results, "counts": counts}

    on_post.raw_body = RawBody(UPLOAD_TYPES, MAX_UPLOAD)  # type: ignore[attr-defined]


__all__ = ["LearnUploadResource", "LearningResource", "learn_recorded"]
