"""Rules and rule objects: the shape Proxmox Mail Gateway admins know, written as data.

An *object* is a named list of entries of one family: who (addresses, domains, regexes,
networks), what (spam level, virus, content type, file names, headers, body, size) or when
(time frames). A *rule* points at objects in four groups (from, to, what, when) and lists its
actions. The engine that evaluates them belongs to the mail path; this module only says what
a valid rule set is.

Entries and actions are one-key mappings so the YAML reads naturally::

    rule_objects:
      blocklist:
        - domain: spammer.example
        - network: 203.0.113.0/24
    rules:
      - name: Blocklist
        priority: 98
        from: {objects: [blocklist]}
        actions: [block]
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, TypeAdapter, model_validator

from .types import Domain, Email, HeaderName, Line, Network, Regex, TimeOfDay

Family = Literal["who", "what", "when"]


class _Strict(BaseModel):
    # regex_engine: as in schema.Section (`$` must not accept a trailing newline).
    model_config = ConfigDict(extra="forbid", strict=True, validate_default=True, frozen=True,
                              regex_engine="rust-regex")


class _OneOf(_Strict):
    """A mapping with exactly one of its optional keys set."""

    _kind: str = PrivateAttr(default="")

    @model_validator(mode="before")
    @classmethod
    def _bare_word(cls, value: Any) -> Any:
        # `- block` is shorthand for `- block: {}`; `- virus` for `- virus: true`.
        if isinstance(value, str) and value in cls.model_fields:
            annotation = str(cls.model_fields[value].annotation)
            return {value: True if "bool" in annotation else {}}
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> _OneOf:
        present = [name for name in type(self).model_fields if getattr(self, name) is not None]
        if len(present) != 1:
            choices = ", ".join(type(self).model_fields)
            got = ", ".join(present) or "nothing"
            raise ValueError(f"needs exactly one of: {choices} (got {got})")
        # Known once: the rule engine asks for every entry of every rule, for every message
        # (found in the filter's profile).
        self._kind = present[0]
        return self

    @property
    def kind(self) -> str:
        # From pydantic's private dict directly: `self._kind` goes through
        # BaseModel.__getattr__, a tenth of the rule engine's time in a profile.
        private = self.__pydantic_private__
        return private["_kind"] if private else self._kind

    @property
    def value(self) -> Any:
        return getattr(self, self.kind)


# --- entries ----------------------------------------------------------------------------


class ScoreRange(_Strict):
    min: float | None = Field(None, description="Lowest score that matches.")
    max: float | None = Field(None, description="Score from which it no longer matches.")
    level: Literal["tag", "quarantine", "reject"] | None = Field(
        None, description="Use the spam level of that name (spam.levels) as min."
    )

    @model_validator(mode="after")
    def _something(self) -> ScoreRange:
        if self.min is None and self.max is None and self.level is None:
            raise ValueError("give min, max or level")
        if self.level is not None and self.min is not None:
            raise ValueError("give either min or level, not both")
        return self


class HeaderMatch(_Strict):
    name: HeaderName = Field(description="Header field name (case-insensitive).")
    regex: Regex = Field(description="Regular expression searched in its decoded value.")


class SizeRange(_Strict):
    min_kb: Annotated[int, Field(ge=0)] | None = Field(None, description="At least this size.")
    max_kb: Annotated[int, Field(ge=0)] | None = Field(None, description="Below this size.")


Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEK: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class TimeFrame(_Strict):
    start: TimeOfDay = Field(description="From (HH:MM, local time).")
    end: TimeOfDay = Field(description="Until (HH:MM); before start means overnight.")
    days: list[Weekday] = Field(
        default_factory=lambda: list(WEEK),
        description="Days of the week.",
    )


WHO = ("email", "domain", "regex", "network")
WHAT = ("spam", "virus", "content_type", "filename", "archive_filename", "header", "body", "size")
WHEN = ("timeframe",)

Glob = Annotated[str, Field(min_length=1, max_length=255)]


class Entry(_OneOf):
    """One entry of an object: exactly one key."""

    email: Email | None = Field(None, description="who: an exact address.")
    domain: Domain | None = Field(
        None, description="who: an address domain; '*.example.com' would be a regex."
    )
    regex: Regex | None = Field(None, description="who: regular expression on the address.")
    network: Network | None = Field(None, description="who: client IP network (or one IP).")
    spam: ScoreRange | None = Field(None, description="what: spam score range.")
    virus: bool | None = Field(None, description="what: a virus was found (true).")
    content_type: Glob | None = Field(
        None, description="what: MIME type of a part, glob (image/*), detected or declared."
    )
    filename: Glob | None = Field(None, description="what: attachment file name, glob (*.exe).")
    archive_filename: Glob | None = Field(
        None, description="what: file name inside zip/tar/7z attachments, glob."
    )
    header: HeaderMatch | None = Field(None, description="what: header regex.")
    body: Regex | None = Field(None, description="what: regex on the decoded text parts.")
    size: SizeRange | None = Field(None, description="what: message size range.")
    timeframe: TimeFrame | None = Field(None, description="when: days and hours.")

    @property
    def family(self) -> Family:
        kind = self.kind
        return "who" if kind in WHO else "what" if kind in WHAT else "when"


# --- actions ----------------------------------------------------------------------------


class Empty(_Strict):
    pass


class QuarantineAction(_Strict):
    kind: Literal["auto", "spam", "virus", "attachment", "blocked"] = Field(
        "auto", description="Which quarantine: auto picks virus, then spam, then blocked."
    )


class RejectAction(_Strict):
    message: Line = Field(
        "5.7.1 Message rejected by policy",
        description="Text of the 5xx reply (before_queue mode; after_queue blocks instead).",
    )


class TagSubject(_Strict):
    text: Line | None = Field(None, description="Prefix; default: spam.subject_tag.")


class AddHeader(_Strict):
    name: HeaderName = Field(description="Header to add.")
    value: Line = Field(
        description="Its value; may use {score}, {symbols}, {rule}, {virus}, {spam_bar}."
    )


class RemoveHeader(_Strict):
    name: HeaderName = Field(description="Header to remove (every occurrence).")


class RemoveAttachments(_Strict):
    matched_only: bool = Field(True, description="Only the parts the what-objects matched.")
    quarantine: bool = Field(True, description="Keep the original in the attachment quarantine.")
    notice: str = Field(
        "An attachment ({filename}) was removed by the mail gateway.",
        description="Text part that replaces each removed attachment.",
    )


class Bcc(_Strict):
    to: Email = Field(description="Address that gets a copy.")
    original: bool = Field(True, description="Send the message as received (before actions).")


class Notify(_Strict):
    to: Literal["admin", "sender", "recipients"] | Email = Field(
        description="admin, sender, recipients or an address."
    )
    subject: Line = Field("Mailwarden: {rule} matched", description="Subject template.")
    body: str = Field(
        "Rule {rule} matched a message from {sender} to {recipients}.",
        description="Body template.",
    )


class Disclaimer(_Strict):
    text: str = Field(min_length=1, description="Text appended (and its HTML version).")
    position: Literal["end", "start"] = Field("end", description="Where.")


FINAL_ACTIONS = ("accept", "block", "reject", "quarantine")


class Action(_OneOf):
    """One action: exactly one key. accept, block, reject and quarantine are final."""

    accept: Empty | None = Field(None, description="Deliver; final.")
    block: Empty | None = Field(None, description="Discard silently; final.")
    reject: RejectAction | None = Field(None, description="Refuse with 5xx; final.")
    quarantine: QuarantineAction | None = Field(None, description="Quarantine; final.")
    tag_subject: TagSubject | None = Field(None, description="Prefix the subject.")
    add_header: AddHeader | None = Field(None, description="Add a header.")
    remove_header: RemoveHeader | None = Field(None, description="Remove a header.")
    remove_attachments: RemoveAttachments | None = Field(None, description="Strip attachments.")
    bcc: Bcc | None = Field(None, description="Send a copy.")
    notify: Notify | None = Field(None, description="Send a notification.")
    disclaimer: Disclaimer | None = Field(None, description="Add a disclaimer.")

    @property
    def final(self) -> bool:
        return self.kind in FINAL_ACTIONS


# --- rules ------------------------------------------------------------------------------

ObjectName = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]


class Group(_Strict):
    objects: list[ObjectName] = Field(
        min_length=1, description="Names of objects; any of them matching is enough."
    )
    mode: Literal["any", "all"] = Field(
        "any", description="any: one object must match; all: every object must match."
    )
    invert: bool = Field(False, description="Match when the objects do NOT match.")


class Rule(_Strict):
    name: Annotated[str, Field(min_length=1, max_length=80)] = Field(description="Rule name.")
    priority: Annotated[int, Field(ge=0, le=100)] = Field(
        description="Higher runs first (0..100, like PMG)."
    )
    direction: Literal["in", "out", "both"] = Field("in", description="Which mail it sees.")
    active: bool = Field(True, description="Inactive rules are skipped.")
    from_: Group | None = Field(None, alias="from", description="Sender (who objects).")
    to: Group | None = Field(None, description="Recipient, per recipient (who objects).")
    what: Group | None = Field(None, description="Content (what objects).")
    when: Group | None = Field(None, description="Time (when objects).")
    actions: list[Action] = Field(min_length=1, description="What to do, in order.")

    model_config = ConfigDict(
        extra="forbid", strict=True, validate_default=True, frozen=True, populate_by_name=True,
        regex_engine="rust-regex",
    )

    @property
    def final_action(self) -> Action | None:
        return next((a for a in self.actions if a.final), None)

    def groups(self) -> dict[str, Group | None]:
        return {"from": self.from_, "to": self.to, "what": self.what, "when": self.when}


RuleObjects = dict[ObjectName, list[Entry]]


DANGEROUS_EXTENSIONS = (
    "exe", "scr", "com", "pif", "bat", "cmd", "vbs", "vbe", "js", "jse", "wsf", "wsh", "hta",
    "lnk", "shs", "shb", "cpl", "msi", "msp", "jar", "ps1", "reg", "iso", "img", "vhd",
)


def default_rule_objects() -> RuleObjects:
    """The objects PMG ships, with the spam levels of the state instead of fixed numbers."""
    data: dict[str, Any] = {
        "blocklist": [],
        "welcomelist": [],
        "virus": [{"virus": True}],
        "spam_tag": [{"spam": {"level": "tag"}}],
        "spam_quarantine": [{"spam": {"level": "quarantine"}}],
        "spam_reject": [{"spam": {"level": "reject"}}],
        "dangerous_files": [{"filename": f"*.{ext}"} for ext in DANGEROUS_EXTENSIONS]
        + [{"archive_filename": f"*.{ext}"} for ext in DANGEROUS_EXTENSIONS[:14]]
        + [{"content_type": "application/x-msdownload"}],
        "office_hours": [{"timeframe": {"start": "08:00", "end": "16:00",
                                        "days": ["mon", "tue", "wed", "thu", "fri"]}}],
    }
    return _OBJECTS.validate_python(data, strict=False)


def default_rules() -> list[Rule]:
    """The rules a fresh PMG installation ships, referring to default_rule_objects()."""
    data: list[dict[str, Any]] = [
        {"name": "Blocklist", "priority": 98, "from": {"objects": ["blocklist"]},
         "actions": ["block"]},
        {"name": "Block viruses", "priority": 96, "what": {"objects": ["virus"]},
         "actions": [{"notify": {"to": "admin"}}, "quarantine"]},
        {"name": "Virus alert", "priority": 96, "direction": "out",
         "what": {"objects": ["virus"]},
         "actions": [{"notify": {"to": "sender"}}, {"notify": {"to": "admin"}}, "block"]},
        {"name": "Block dangerous files", "priority": 93,
         "what": {"objects": ["dangerous_files"]}, "actions": ["remove_attachments"]},
        {"name": "Welcomelist", "priority": 85, "from": {"objects": ["welcomelist"]},
         "actions": ["accept"]},
        {"name": "Reject spam", "priority": 82, "what": {"objects": ["spam_reject"]},
         "actions": ["reject"]},
        {"name": "Quarantine spam", "priority": 81, "what": {"objects": ["spam_quarantine"]},
         "actions": ["tag_subject", "quarantine"]},
        {"name": "Tag spam", "priority": 80, "what": {"objects": ["spam_tag"]},
         "actions": ["tag_subject",
                     {"add_header": {"name": "X-Spam-Flag", "value": "YES"}}]},
        {"name": "Spam level header", "priority": 10,
         "actions": [{"add_header": {"name": "X-Mailwarden-Spam",
                                     "value": "score={score} {spam_bar}"}}]},
    ]
    return _RULES.validate_python(data, strict=False)


# The defaults are validated by the very models they default: one source of truth.
_OBJECTS: TypeAdapter[RuleObjects] = TypeAdapter(RuleObjects)
_RULES: TypeAdapter[list[Rule]] = TypeAdapter(list[Rule])
