"""Request bodies as pydantic models, and the one way a resource reads its body.

A responder declares its body with `@accepts(Model)`: the decorator parses `req.media` into
the model before the responder runs, and the OpenAPI document reads the same model off the
responder, so what is documented is what is enforced. Every model forbids unknown keys (a
typo is an error, not a silently ignored setting) and is strict about types (no "3" for 3,
no true for 1).

Payloads that are states or parts of one (PUT /api/state, PATCH /api/state, the settings
sections, the setup wizard's answers) stay opaque here and are documented with the state
schema: the state's own validator checks them (with its semantic checks and its error code
state_invalid), and a second, partial check here would only disagree with it.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, Concatenate, Literal, ParamSpec, TypeVar

import falcon
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
    create_model,
)

from ..firstboot.answers import MIN_PASSWORD
from ..state.load import field_errors
from ..state.schema import State
from ..store.users import TOKEN_DAYS_DEFAULT, TOKEN_DAYS_MAX, Role
from .errors import BadInput

M = TypeVar("M", bound=BaseModel)
R = TypeVar("R")
P = ParamSpec("P")

MAX_MESSAGE = 10 * 1024 * 1024


def documented_as(component: str, section: str | None = None) -> WithJsonSchema:
    """An opaque payload documented as a component of the OpenAPI document (State, Answers)
    or one of the state's sections. A marker, not a $ref: pydantic would try to resolve a
    $ref among the model's own definitions; the document puts the $ref in (openapi.py)."""
    return WithJsonSchema({"x-schema": component, **({"x-section": section} if section else {})})


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


StateObject = Annotated[dict[str, Any], documented_as("State")]
Text = Annotated[str, Field(min_length=1, max_length=1024)]
Name = Annotated[str, Field(min_length=1, max_length=320)]
Comment = Annotated[str, Field(max_length=1000)]
SECTIONS = tuple(name for name in State.model_fields if name != "version")


class SectionsBody(Body):
    """Sections of the state by name; the fields are made from the state schema."""

    def sent(self) -> dict[str, Any]:
        """The sections (and anything else) the client sent, by their names."""
        return self.model_dump(by_alias=True, exclude_unset=True)


def _sections_model(name: str, doc: str, **extra: Any) -> type[SectionsBody]:
    fields: dict[str, Any] = {
        section: (Annotated[Any, documented_as("State", section)], None) for section in SECTIONS}
    return create_model(name, __base__=SectionsBody, __doc__=doc, **fields, **extra)


# --- session and accounts -----------------------------------------------------------------


class Login(Body):
    username: Name
    password: Text
    totp: Annotated[str, Field(min_length=1, max_length=16)] | None = Field(
        None, description="The authenticator's current code, when the second factor is on.")


# A new password: as long as the store demands (the same rule as the setup wizard's).
NewPasswordText = Annotated[str, Field(min_length=MIN_PASSWORD, max_length=1024)]


class NewUser(Body):
    username: Name
    password: NewPasswordText
    role: Role


class NewPassword(Body):
    password: NewPasswordText


class NewToken(Body):
    name: Annotated[str, Field(min_length=1, max_length=100)]
    role: Role = Field(description="No higher than the caller's own.")
    expires_days: int = Field(TOKEN_DAYS_DEFAULT, ge=1, le=TOKEN_DAYS_MAX)


class TotpChange(Body):
    """{} proposes a new secret; with `code` (and `secret`) the second factor is turned on
    or moved to a new device."""

    secret: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    code: Annotated[str, Field(min_length=1, max_length=16)] | None = None
    password: Text | None = None
    current_code: Annotated[str, Field(min_length=1, max_length=16)] | None = Field(
        None, description="A code of the current device, while the second factor is on.")


class TotpRemoval(Body):
    password: Text | None = None
    code: Annotated[str, Field(min_length=1, max_length=16)] | None = None


class Setup(Body):
    setup_code: Annotated[str, Field(min_length=1, max_length=64, pattern=r"\S")] = Field(
        description="The one-time code shown on the appliance's console.")
    answers: Annotated[dict[str, Any], documented_as("Answers")]


# --- the state ----------------------------------------------------------------------------


class StateChange(Body):
    """The new state, as an object (`state`) or as the text of a state file (`yaml`)."""

    state: StateObject | None = None
    yaml: Annotated[str, Field(min_length=1, max_length=4 * 1024 * 1024)] | None = None
    comment: Comment = ""


if TYPE_CHECKING:  # made at run time from the state schema; typed as their base
    Sections = SectionsBody
    SettingsChange = SectionsBody
else:
    Sections = _sections_model("Sections", "Top-level sections of the state, by name.")
    SettingsChange = _sections_model(
        "SettingsChange", "The section named in the path, under its own name, and why.",
        comment=(Comment | None, None))


class StatePatch(Body):
    sections: Sections = Field(
        description="The sections to replace; the others stay as they are.")
    comment: Comment | None = None


class Rollback(Body):
    revision: int = Field(ge=1, description="The revision to apply again.")


# --- mail ---------------------------------------------------------------------------------


class NewDkimKey(Body):
    domain: Annotated[str, Field(min_length=1, max_length=253)]
    selector: Annotated[str, Field(min_length=1, max_length=63)]
    bits: int = Field(2048, ge=1024, le=4096)


Address = Annotated[str, Field(min_length=3, max_length=320, pattern="@")]


class Simulation(Body):
    message: Annotated[str, Field(min_length=1, max_length=MAX_MESSAGE, pattern=r"\S")] = Field(
        description="The raw RFC 5322 source of the message.")
    to: list[Address] = Field(min_length=1, max_length=1000)
    sender: Annotated[str, Field(max_length=320)] = Field(
        "", alias="from", description="The envelope sender; empty for a bounce.")
    direction: Literal["in", "out"] = "in"
    score: float | None = Field(None, description="Assume this spam score.")
    virus: Annotated[str, Field(max_length=200)] | None = Field(
        None, description="Assume this virus was found.")
    client_ip: Annotated[str, Field(max_length=45)] | None = None


class QueueFlush(Body):
    """Nothing to say: flushing takes no options."""


# --- notifications ---
class NotificationTest(Body):
    """Nothing to say: the test goes to notifications.recipients from notifications.sender."""
# --- end of notifications ---


class QuarantineDecision(Body):
    recipients: list[Address] | None = Field(
        None, max_length=1000,
        description="The recipients to act for; all you may act for when left out.")
    learn: bool = Field(
        False, description="release: learn the message as ham (not spam) before it is "
        "released; for messages quarantined as spam.")
    delete: bool = Field(
        False, description="spam: delete the message too, once it is learned as spam.")


# An address, or "@domain" for everyone there: what a list entry names.
_LIST_SENDER = r"^([^@\s]+)?@[A-Za-z0-9.-]+\.[A-Za-z0-9-]+$"


def _list_sender(value: Any) -> Any:
    """The pattern's own message is a regular expression; a person needs the two forms."""
    if isinstance(value, str) and 3 <= len(value) <= 320 and not re.match(_LIST_SENDER, value):
        hint = f" (for the whole domain: @{value})" if "@" not in value else ""
        raise ValueError(f"{value!r} is neither an address nor @domain{hint}")
    return value


ListSender = Annotated[str, Field(min_length=3, max_length=320, pattern=_LIST_SENDER),
                       BeforeValidator(_list_sender)]
ListRecipient = Annotated[str, Field(min_length=3, max_length=320,
                                     pattern=r"^[^@\s]+@[A-Za-z0-9.-]+$")]


class ListEntry(Body):
    sender: ListSender = Field(description="An address, or @domain for all of its senders.")
    kind: Literal["allow", "block"]
    recipient: ListRecipient | None = Field(
        None, description="Whose list (staff only; a quarantine user's is their own).")


class ListRemoval(Body):
    sender: ListSender
    recipient: ListRecipient | None = Field(
        None, description="Whose list (staff only; a quarantine user's is their own).")


# --- global sender lists ---


class GlobalListEntry(Body):
    sender: ListSender = Field(description="An address, or @domain for all of its senders.")
    kind: Literal["allow", "block"]


class GlobalListRemoval(Body):
    sender: ListSender


# --- end of global sender lists ---


class UserAddress(Body):
    address: Annotated[str, Field(min_length=3, max_length=320,
                                  pattern=r"^[^@\s]+@[A-Za-z0-9.-]+$")] = Field(
        description="A mail address (an alias of the user's).")


class PortalLink(Body):
    address: Annotated[str, Field(min_length=3, max_length=320, pattern=r"^[^@\s]+@[^@\s]+$")
                       ] = Field(description="Where the login link goes.")


class DigestSend(Body):
    address: Annotated[str, Field(min_length=3, max_length=320, pattern=r"^[^@\s]+@[^@\s]+$")
                       ] = Field(description="The recipient whose digest goes out now.")


class QuarantineBulk(Body):
    ids: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        min_length=1, max_length=1000)
    action: Literal["release", "delete"]


# --- reading a body -----------------------------------------------------------------------


def _errors(exc: ValidationError, model: type[BaseModel]) -> list[dict[str, Any]]:
    out = []
    for error in field_errors(exc, (), {}, model):
        message = f"{error.path} is required" if error.message == "required" else error.message
        out.append({"field": error.path or None, "message": message})
    return out


def parse_body(req: falcon.Request, model: type[M], *, optional: bool = False) -> M:
    """req.media as `model`; 400 bad_input naming each wrong field otherwise. An `optional`
    body may be left out (as {})."""
    data = req.get_media(default_when_empty={} if optional else None)
    if not isinstance(data, dict):
        raise BadInput("the request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = _errors(exc, model)
        raise BadInput(errors[0]["message"], errors[0]["field"], errors) from None


def accepts(model: type[M], *, optional: bool = False) -> Callable[
        [Callable[Concatenate[R, falcon.Request, falcon.Response, M, P], None]],
        Callable[Concatenate[R, falcon.Request, falcon.Response, P], None]]:
    """The responder's body is `model`, parsed before it runs and handed in after `resp`."""

    def decorate(responder: Callable[Concatenate[R, falcon.Request, falcon.Response, M, P],
                                     None],
                 ) -> Callable[Concatenate[R, falcon.Request, falcon.Response, P], None]:
        @functools.wraps(responder)
        def parsed(self: R, req: falcon.Request, resp: falcon.Response, /,
                   *args: P.args, **kwargs: P.kwargs) -> None:
            responder(self, req, resp, parse_body(req, model, optional=optional),
                      *args, **kwargs)

        parsed.request_body = RequestBody(model, required=not optional)  # type: ignore[attr-defined]
        return parsed

    return decorate


class RequestBody:
    """What `accepts` leaves on a responder for the OpenAPI document."""

    def __init__(self, model: type[BaseModel], required: bool) -> None:
        self.model = model
        self.required = required


def request_body(responder: object) -> RequestBody | None:
    body = getattr(responder, "request_body", None)
    return body if isinstance(body, RequestBody) else None


# --- raw bodies (messages) ----------------------------------------------------------------


class RawBody:
    """What `accepts_raw` leaves on a responder for the OpenAPI document."""

    def __init__(self, media_types: tuple[str, ...], max_bytes: int) -> None:
        self.media_types = media_types
        self.max_bytes = max_bytes


def read_raw(req: falcon.Request, media_types: tuple[str, ...], max_bytes: int) -> bytes:
    """The body as bytes, of one of `media_types` and at most max_bytes; 400 otherwise (a
    413 would carry no field for the form to show)."""
    media = (req.content_type or "").split(";")[0].strip().lower()
    if media not in media_types:
        raise BadInput(f"send the body as {' or '.join(media_types)}, not "
                       f"{media or 'nothing'}", "Content-Type")
    data = req.bounded_stream.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise BadInput(f"the body is larger than {max_bytes // (1024 * 1024)} MiB", "body")
    if not data.strip():
        raise BadInput("the body is empty", "body")
    return bytes(data)


def raw_body(responder: object) -> RawBody | None:
    body = getattr(responder, "raw_body", None)
    return body if isinstance(body, RawBody) else None
