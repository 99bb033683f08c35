"""Response bodies the OpenAPI document describes, as pydantic models.

A responder names its reply with `@returns(Model)`; the document takes the schema from the
model and schemathesis holds the live responses to it. Models are open (extra keys allowed):
a reply may grow a field without breaking a client that reads the ones it knows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from ..store.users import Role
from .bodies import documented_as

F = TypeVar("F", bound=Callable[..., None])


class Reply(BaseModel):
    model_config = ConfigDict(extra="allow")


class FieldProblem(Reply):
    field: str | None
    message: str
    line: int | None = None


class ErrorDetail(Reply):
    code: str = Field(description="Stable, for programs: bad_input, state_invalid, conflict, "
                                  "unauthorized, forbidden, csrf, not_found, ...")
    message: str = Field(description="For a person.")
    field: str | None = Field(description="The field at fault, as a path: domains[0].name.")
    errors: list[FieldProblem] | None = Field(
        None, description="Every field at fault, when there are several.")
    current_revision: int | None = Field(None, description="With conflict: the live revision.")


class Error(Reply):
    error: ErrorDetail


class Health(Reply):
    status: str
    uptime: float


class Me(Reply):
    username: str
    role: Role
    totp: bool
    addresses: list[str] = Field(
        default_factory=list, description="The addresses whose quarantine this user sees "
        "(quarantine users: the user name and its aliases).")
    csrf_token: str | None = Field(
        None, description="The session's CSRF token (null for an API token): a page that was "
        "logged in by a digest's link, not by POST /api/session, learns it here.")


class LoggedIn(Reply):
    username: str
    role: Role
    csrf_token: str = Field(description="Echo it in X-CSRF-Token on every change.")
    expires: float


class SetUp(LoggedIn):
    revision: int


class SetupStatus(Reply):
    needed: bool
    code_issued: bool


class StateView(Reply):
    revision: int
    state: Annotated[dict[str, Any], documented_as("State")]


class Applied(Reply):
    revision: int
    reloaded: list[str] = Field(description="Services reloaded for the change.")
    changed: list[str] | None = Field(None, description="Files the change rewrote.")


class RevisionInfo(Reply):
    number: int
    time: str
    author: str
    comment: str


class Revisions(Reply):
    current: int | None
    items: list[RevisionInfo]


class RevisionText(RevisionInfo):
    yaml: str


class Diff(Reply):
    from_: int = Field(alias="from")
    to: int
    diff: str


class UserInfo(Reply):
    username: str
    role: Role
    totp: bool | None = None
    addresses: list[str] | None = Field(
        None, description="A quarantine user's addresses: the user name and its aliases.")


class UserList(Reply):
    items: list[UserInfo]


class TokenIssued(Reply):
    id: int
    secret: str = Field(description="Shown once.")
    expires_days: int


class Proposal(Reply):
    """A new second-factor secret to confirm, or that it is on now."""

    secret: str | None = None
    uri: str | None = None
    totp: bool | None = None


# --- learning -----------------------------------------------------------------------------


class LearnedCounts(Reply):
    spam: int = Field(description="Messages Rspamd's Bayes has learned as spam.")
    ham: int = Field(description="Messages Rspamd's Bayes has learned as ham (not spam).")


class BayesSettings(Reply):
    enabled: bool
    autolearn: bool
    min_learns: int = Field(description="Learned messages of each class before Bayes scores.")


class LearningEvent(Reply):
    time: float
    actor: str
    action: str = Field(description="learn.spam, learn.ham, or quarantine.spam/release.")
    target: str | None = Field(description="The quarantined message's id, or how many were "
                                           "uploaded.")
    detail: dict[str, Any] | None


class LearningStatus(Reply):
    bayes: BayesSettings
    counts: LearnedCounts | None = Field(description="Null when Redis does not answer.")
    error: str | None = Field(None, description="Why there are no counts.")
    recent: list[LearningEvent]


class MessageLearned(Reply):
    index: int = Field(description="The message's place in the upload, from 0.")
    result: str = Field(description="learned, already_learned, or an error code.")
    message: str = ""


class LearnReport(Reply):
    kind: str
    messages: int
    learned: int
    already_learned: int
    failed: int
    results: list[MessageLearned]
    counts: LearnedCounts | None = None


# --- end of learning ----------------------------------------------------------------------


class Returns:
    """What `returns` leaves on a responder for the OpenAPI document."""

    def __init__(self, model: type[BaseModel] | None, status: int,
                 media_types: tuple[str, ...]) -> None:
        self.model = model
        self.status = status
        self.media_types = media_types


def returns(model: type[BaseModel] | None = None, *, status: int = 200,
            media_types: tuple[str, ...] = ("application/json",)) -> Callable[[F], F]:
    """Documents the responder's success reply: its status, and its body as `model` (JSON)
    or as one of `media_types`."""

    def mark(responder: F) -> F:
        responder.returns = Returns(model, status, media_types)  # type: ignore[attr-defined]
        return responder

    return mark


def returned(responder: object) -> Returns | None:
    spec = getattr(responder, "returns", None)
    return spec if isinstance(spec, Returns) else None
