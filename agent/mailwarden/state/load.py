"""Reading a state file: YAML -> migrated data -> validated State, or every error at once.

Errors name the path of the field (``domains[1].transport.port``), its line in the file, and
what was expected. Duplicate keys are errors (YAML would silently keep the last one).

The reader's cost is linear in the file, whoever wrote it (root's apply helper reads files
the API hands it): anchors and aliases are refused (an alias repeats a whole subtree, so a
few hundred bytes of nested aliases expand to gigabytes), as are files over MAX_BYTES and
nesting deeper than MAX_DEPTH.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic_core import ErrorDetails

from ..errors import FieldError, StateError
from . import checks
from .migrate import migrate
from .rules import Entry, default_rule_objects
from .schema import State

Loc = tuple[str | int, ...]

# A state with thousands of rule objects is well under a MiB; files are read whole.
MAX_BYTES = 4 * 1024 * 1024
# The state's deepest path is six levels (rule_objects.NAME[0].spam.level); lists of lists
# are not part of any format read here.
MAX_DEPTH = 32


# --- YAML with positions ----------------------------------------------------------------


class _Refused(yaml.YAMLError):
    """Valid YAML that this reader does not accept, with the line it is on."""

    def __init__(self, message: str, event: yaml.Event) -> None:
        super().__init__(message)
        self.message = message
        mark = event.start_mark
        self.line = mark.line + 1 if mark is not None else None


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses anchors, aliases and deep nesting; the walk below remembers
    where each value is and refuses duplicate keys."""

    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        # types-PyYAML leaves Parser.peek_event unannotated; it returns the next Event.
        event: yaml.Event = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, yaml.AliasEvent):
            raise _Refused(f"aliases (*{event.anchor}) are not allowed: write the value out",
                           event)
        if isinstance(event, yaml.NodeEvent) and event.anchor is not None:
            raise _Refused(f"anchors (&{event.anchor}) are not allowed: write each value out",
                           event)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Refused(f"nested deeper than {MAX_DEPTH} levels", event)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _walk_nodes(
    node: yaml.Node, loc: Loc, lines: dict[Loc, int], errors: list[FieldError]
) -> None:
    lines[loc] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            # A key that is itself a list or mapping cannot be a state key: the constructor
            # refuses it later; here it only needs a place in the path.
            key: str = key_node.value if isinstance(key_node, yaml.ScalarNode) else "?"
            line = key_node.start_mark.line + 1
            if key in seen:
                errors.append(
                    FieldError(
                        format_loc((*loc, key)), f"duplicate key (first at line {seen[key]})", line
                    )
                )
                continue
            seen[key] = line
            lines[(*loc, key)] = line
            _walk_nodes(value_node, (*loc, key), lines, errors)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _walk_nodes(item, (*loc, index), lines, errors)


def parse_yaml(text: str, source: str) -> tuple[Any, dict[Loc, int]]:
    if len(text) > MAX_BYTES:
        raise StateError([FieldError("", f"the file is larger than {MAX_BYTES // 1024 // 1024} "
                                         "MiB")], source)
    try:
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
            if node is None:
                raise StateError([FieldError("", "the file is empty")], source)
            lines: dict[Loc, int] = {}
            dup_errors: list[FieldError] = []
            _walk_nodes(node, (), lines, dup_errors)
            if dup_errors:
                raise StateError(dup_errors, source)
            data = loader.construct_document(node)
        finally:
            loader.dispose()
    except _Refused as exc:
        raise StateError([FieldError("", exc.message, exc.line)], source) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        raise StateError(
            [FieldError("", f"not valid YAML: {problem}", mark.line + 1 if mark else None)],
            source,
        ) from None
    return data, lines


# --- error translation ------------------------------------------------------------------


def format_loc(loc: Loc) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _clean_loc(loc: tuple[Any, ...]) -> Loc:
    """Drop the union-member and validator tags pydantic puts into locations."""
    out: list[str | int] = []
    for part in loc:
        if isinstance(part, str) and ("[" in part or part in _TAGS):
            continue
        out.append(part)
    return tuple(out)


_TAGS = {"str", "int", "float", "bool", "none", "literal", "function-after", "dict", "list"}


def _unwrap(annotation: Any) -> list[Any]:
    """The model/containers inside Annotated, Optional and unions."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [t for arg in typing.get_args(annotation) for t in _unwrap(arg)]
    return [annotation]


def _allowed_keys(loc: Loc, root: type[BaseModel]) -> list[str]:
    """Key names accepted at loc (a path into root), for 'did you mean' hints."""
    current: list[Any] = [root]
    for part in loc:
        following: list[Any] = []
        for annotation in current:
            origin = typing.get_origin(annotation)
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                for name, field in annotation.model_fields.items():
                    if part in (name, field.alias):
                        following.extend(_unwrap(field.annotation))
            elif origin is list and isinstance(part, int):
                following.extend(_unwrap(typing.get_args(annotation)[0]))
            elif origin is dict and isinstance(part, str):
                following.extend(_unwrap(typing.get_args(annotation)[1]))
        current = following
    names: list[str] = []
    for annotation in current:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names.extend(f.alias or n for n, f in annotation.model_fields.items())
    return names


def _describe(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _message(error: ErrorDetails, loc: Loc, root: type[BaseModel]) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    got = error.get("input")
    if kind == "missing":
        return "required"
    if kind == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1], root)
        # A key that looks like one of pydantic's location tags was dropped from loc.
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1) if loc else []
        hint = f"; did you mean '{close[0]}'?" if close else ""
        listing = f" (allowed: {', '.join(allowed)})" if allowed and not close else ""
        return f"unknown key{hint}{listing}"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    if kind == "literal_error":
        return f"must be {ctx.get('expected')} (got {_describe(got)})"
    if kind in ("greater_than_equal", "greater_than"):
        return f"must be at least {ctx.get('ge', ctx.get('gt'))} (got {_describe(got)})"
    if kind in ("less_than_equal", "less_than"):
        return f"must be at most {ctx.get('le', ctx.get('lt'))} (got {_describe(got)})"
    if kind == "too_short":
        need = ctx.get("min_length", 1)
        return "must not be empty" if need == 1 else f"needs at least {need} items"
    if kind == "too_long":
        return f"must have at most {ctx.get('max_length')} items or characters"
    if kind == "string_too_short":
        need = ctx.get("min_length", 1)
        return "must not be empty" if need == 1 else f"must be at least {need} characters"
    if kind == "string_too_long":
        return f"must be at most {ctx.get('max_length')} characters"
    if kind == "string_pattern_mismatch":
        return f"{_describe(got)} has the wrong form (expected {ctx.get('pattern')})"
    expected = {
        "string_type": "text",
        "int_type": "a whole number",
        "int_from_float": "a whole number",
        "float_type": "a number",
        "bool_type": "true or false",
        "list_type": "a list",
        "dict_type": "a mapping (key: value)",
        "model_type": "a mapping (key: value)",
        "model_attributes_type": "a mapping (key: value)",
    }.get(kind)
    if expected:
        return f"must be {expected} (got {_describe(got)})"
    return str(error["msg"])


def field_errors(exc: ValidationError, prefix: Loc, lines: dict[Loc, int],
                 root: type[BaseModel] = State) -> list[FieldError]:
    """pydantic's errors of a model (State, or another file format such as the first-boot
    answers) in the admin's words, one per path, with the line it came from."""
    by_path: dict[Loc, list[ErrorDetails]] = {}
    for error in exc.errors():
        loc = (*prefix, *_clean_loc(tuple(error["loc"])))
        by_path.setdefault(loc, []).append(error)
    result: list[FieldError] = []
    for loc, errors in by_path.items():
        # A union reports one error per member; the validator's own words say most.
        best = next((e for e in errors if e["type"] == "value_error"), errors[0])
        line = next((lines[loc[:n]] for n in range(len(loc), -1, -1) if loc[:n] in lines), None)
        result.append(FieldError(format_loc(loc), _message(best, loc, root), line))
    return result


# --- validation -------------------------------------------------------------------------

_SECTION_CHECKS: dict[str, checks.Check] = {
    "domains": checks.check_domains,
    "tls": checks.check_tls,
    "dkim": checks.check_dkim,
    "rule_objects": checks.check_rule_objects,
}


def _semantic(sections: dict[str, Any]) -> Iterator[FieldError]:
    for name, check in _SECTION_CHECKS.items():
        if name in sections:
            yield from check(sections[name])
    if "rules" in sections:
        objects: dict[str, list[Entry] | None] | None = sections.get("rule_objects")
        yield from checks.check_rules(sections["rules"], objects)
    if sections.get("notifications") is not None:
        yield from checks.check_notifications(sections["notifications"], sections.get("system"))


def _located(errors: Iterator[FieldError], lines: dict[Loc, int]) -> list[FieldError]:
    """Give semantic errors the line of their path, or of its nearest parent."""
    by_path = {format_loc(loc): line for loc, line in lines.items()}
    out = []
    for error in errors:
        path = error.path
        while path and path not in by_path:
            path = path[: max(path.rfind("."), path.rfind("["), 0)]
        out.append(FieldError(error.path, error.message, by_path.get(path)))
    return out


def _valid_part(annotation: Any, value: Any) -> Any:
    """The value validated on its own; for a list or a mapping, its valid items (None for
    the others)."""
    if typing.get_origin(annotation) is list and isinstance(value, list):
        item = TypeAdapter(typing.get_args(annotation)[0])
        items = []
        for raw in value:
            try:
                items.append(item.validate_python(raw))
            except ValidationError:
                items.append(None)
        return items
    if typing.get_origin(annotation) is dict and isinstance(value, dict):
        # Per value too: one broken rule object must not hide the rules' references.
        key_type, value_type = typing.get_args(annotation)
        keys, values = TypeAdapter(key_type), TypeAdapter(value_type)
        entries: dict[Any, Any] = {}
        for key, raw in value.items():
            try:
                keys.validate_python(key)
                entries[key] = values.validate_python(raw)
            except ValidationError:
                entries[key] = None
        return entries
    try:
        return TypeAdapter(annotation).validate_python(value)
    except ValidationError:
        return None


def validate_data(data: Any, lines: dict[Loc, int] | None = None, source: str = "state") -> State:
    """Validate already-parsed data (from YAML or from the API); raise StateError with all."""
    lines = lines or {}
    if not isinstance(data, dict):
        raise StateError([FieldError("", "the state must be a mapping (key: value)")], source)
    data = migrate(data, source)
    try:
        state = State.model_validate(data)
    except ValidationError as exc:
        errors = field_errors(exc, (), lines)
        # Run the cross-field checks on every section that is valid on its own, so that
        # one pass reports everything that is wrong.
        valid: dict[str, Any] = {}
        for name, field in State.model_fields.items():
            if name not in data:
                if name == "rule_objects":
                    valid[name] = default_rule_objects()
                continue
            valid[name] = _valid_part(field.annotation, data[name])
            if valid[name] is None:
                del valid[name]
        errors.extend(_located(_semantic(valid), lines))
        raise StateError(errors, source) from None
    semantic = _located(
        _semantic({name: getattr(state, name) for name in State.model_fields}), lines
    )
    if semantic:
        raise StateError(semantic, source)
    return state


def load_state_text(text: str, source: str = "state") -> State:
    data, lines = parse_yaml(text, source)
    return validate_data(data, lines, source)


def load_state_file(path: Path) -> State:
    try:
        with path.open("rb") as file:
            data = file.read(MAX_BYTES + 1)  # no more than that is ever read into memory
    except FileNotFoundError:
        raise StateError([FieldError("", "file not found")], str(path)) from None
    if len(data) > MAX_BYTES:
        raise StateError([FieldError("", f"the file is larger than {MAX_BYTES // 1024 // 1024} "
                                         "MiB")], str(path))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StateError([FieldError("", f"not UTF-8 text: {exc.reason}")], str(path)) from None
    return load_state_text(text, str(path))


def dump_state(state: State) -> str:
    """The state as YAML, only the keys that were set (defaults stay implicit)."""
    data = state.model_dump(mode="json", exclude_unset=True, by_alias=True)
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)


class _Dumper(yaml.SafeDumper):
    """Writes a repeated object out again instead of as an alias, which the reader
    refuses."""

    def ignore_aliases(self, data: Any) -> bool:
        return True
