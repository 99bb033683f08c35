"""docs/state.md is generated from the schema, documents every field and is up to date."""

from __future__ import annotations

import re
import typing
from pathlib import Path

from pydantic import BaseModel

from mailwarden.state.docs import MINIMAL_EXAMPLE, state_reference
from mailwarden.state.load import load_state_text
from mailwarden.state.rules import Action, Entry
from mailwarden.state.schema import State

DOC = Path(__file__).parent.parent.parent / "docs" / "state.md"


def _paths(model: type[BaseModel], prefix: str) -> list[str]:
    """Every documented path, computed independently of docs.py's walker."""
    out = []
    for name, field in model.model_fields.items():
        path = f"{prefix}.{field.alias or name}" if prefix else (field.alias or name)
        out.append(path)
        annotation = field.annotation
        suffix = ""
        for _ in range(3):  # Optional[...] / list[...] / dict[..., list[...]]
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            origin = typing.get_origin(annotation)
            if origin is list:
                suffix += "[]"
            elif origin is dict:
                suffix += ".<name>"
                args = args[1:]
            if args:
                annotation = args[0]
        if typing.get_origin(annotation) is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        if (isinstance(annotation, type) and issubclass(annotation, BaseModel)
                and annotation not in (Entry, Action)):
            out += _paths(annotation, path + suffix)
    return out


def test_committed_docs_are_current() -> None:
    assert DOC.read_text() == state_reference(), "run: mailwarden docs state > docs/state.md"


def test_deterministic() -> None:
    assert state_reference() == state_reference()


def test_every_field_has_a_heading() -> None:
    text = state_reference()
    headings = set(re.findall(r"^#### `([^`]+)`$", text, re.MULTILINE))
    expected = _paths(State, "")
    assert "domains[].transport.port" in expected
    assert "rules[].from.objects" in expected
    assert "postscreen.dnsbl[].weight" in expected
    missing = [p for p in expected if p not in headings]
    assert not missing


def test_entry_and_action_kinds_are_documented() -> None:
    text = state_reference()
    section = text.split("## Rule object entries", 1)[1]
    entries, actions = section.split("## Rule actions", 1)
    for kind in Entry.model_fields:
        assert f"#### `{kind}`" in entries
    assert "#### `header.regex`" in entries
    for kind in Action.model_fields:
        assert f"#### `{kind}`" in actions
    assert "#### `notify.to`" in actions


def test_field_details() -> None:
    text = state_reference()
    port = text.split("#### `domains[].transport.port`", 1)[1].split("####", 1)[0]
    assert "- Type: whole number, 1..65535" in port
    assert "- Default: `25`" in port
    assert "Its SMTP port." in port
    tls = text.split("#### `domains[].transport.tls`", 1)[1].split("####", 1)[0]
    assert "- Allowed values: `none`, `may`, `encrypt`, `dane`, `verify`, `secure`" in tls
    hostname = text.split("#### `system.hostname`", 1)[1].split("####", 1)[0]
    assert "**required**" in hostname
    dnsbl = text.split("#### `postscreen.dnsbl`", 1)[1].split("####", 1)[0]
    assert "zone: zen.spamhaus.org, weight: 3" in dnsbl  # a default_factory, called
    rules = text.split("#### `rules`", 1)[1].split("####", 1)[0]
    assert "PMG-equivalent default rule set" in rules
    assert "Blocklist" not in rules  # not dumped


def test_minimal_example_in_the_docs_is_valid() -> None:
    assert f"```yaml\n{MINIMAL_EXAMPLE}```" in state_reference()
    state = load_state_text(MINIMAL_EXAMPLE)
    assert state.networks.trusted == ["192.168.0.0/16"]
