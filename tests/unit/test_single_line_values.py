"""A value that ends up inside a line of a rendered config file or a header must not carry a
newline: ``certificate: "smtp\\n"`` would end a main.cf line early and start another.

Python's ``re`` lets ``^...$`` match before a final newline, so every validator is tested with
exactly that: one test per kind of validator (types.py's fullmatch validators, pydantic's
``pattern=`` constraints, the first-boot answers).
"""

from __future__ import annotations

import copy
import itertools
from typing import Any

import pytest

from mailwarden.errors import StateError
from mailwarden.firstboot.answers import validate_answers
from mailwarden.state.load import validate_data
from mailwarden.state.rules import Rule
from mailwarden.state.schema import Section, State

BASE: dict[str, Any] = {
    "version": 1,
    "system": {"hostname": "mx1.example.org"},
    "domains": [{"name": "example.org", "transport": {"host": "10.0.0.5"}}],
}


def with_value(path: list[str | int], value: Any, base: dict[str, Any] | None = None) -> Any:
    data = copy.deepcopy(base or BASE)
    node = data
    for key, following in itertools.pairwise(path):
        if isinstance(node, dict):
            node = node.setdefault(key, [] if isinstance(following, int) else {})
        else:
            while len(node) <= key:  # type: ignore[operator]
                node.append({})
            node = node[key]  # type: ignore[index]
    node[path[-1]] = value  # type: ignore[index]
    return data


def refused(data: Any) -> list[str]:
    with pytest.raises(StateError) as caught:
        validate_data(data)
    return [e.path for e in caught.value.errors]


# Where each kind of value lives in the state, a good value for it, and its validator.
STATE_FIELDS = [
    # types.py: SecretName (fullmatch)
    (["tls", "inbound", "certificate"], "smtp", "secret name"),
    # types.py: Line (fullmatch): the SMTP banner and a header value
    (["mail", "banner"], "$myhostname ESMTP", "single line"),
    (["spam", "subject_tag"], "[SPAM]", "single line"),
    # pydantic pattern= on the Rust engine
    (["spam", "symbol_scores", 0, "symbol"], "BAYES_SPAM", "pattern"),
    (["postscreen", "dnsbl", 0, "filter"], "127.0.0.2", "pattern"),
    (["tls", "policies", 0, "destination"], "example.net", "pattern"),
    (["dkim", "sign", 0, "selector"], "s1", "pattern"),
]
SIBLINGS: dict[str, dict[str, Any]] = {
    "symbol_scores": {"score": 1.0},
    "dnsbl": {"zone": "zen.example.net"},
    "policies": {"level": "encrypt"},
    "sign": {"domain": "example.org", "key": "dkim.key"},
}


def _fill(path: list[str | int], value: Any) -> Any:
    data = with_value(path, value)
    if isinstance(path[-2], int):  # an item of a list: give it its other required keys
        parent: Any = data
        for key in path[:-1]:
            parent = parent[key]
        parent.update(SIBLINGS[str(path[-3])])
    return data


@pytest.mark.parametrize(("path", "good", "kind"), STATE_FIELDS,
                         ids=[".".join(map(str, p)) for p, _, _ in STATE_FIELDS])
def test_state_values_refuse_a_trailing_newline(path: list[str | int], good: str,
                                                kind: str) -> None:
    validate_data(_fill(path, good))  # the same value without the newline is fine
    dotted = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")
    assert refused(_fill(path, good + "\n")) == [dotted], kind
    assert refused(_fill(path, good + "\nextra line")) == [dotted], kind


def test_header_name_and_value_of_a_rule_refuse_a_trailing_newline() -> None:
    def rules(name: str, value: str) -> Any:
        return {**BASE, "rules": [{"name": "H", "priority": 1, "actions": [
            {"add_header": {"name": name, "value": value}}]}]}

    validate_data(rules("X-Checked", "yes"))
    assert refused(rules("X-Checked\n", "yes")) == ["rules[0].actions[0].add_header.name"]
    assert refused(rules("X-Checked", "yes\n")) == ["rules[0].actions[0].add_header.value"]


def test_time_of_day_refuses_a_trailing_newline() -> None:
    # types.py: TimeOfDay (fullmatch), used by the rules' timeframes
    base = {**BASE, "rules": [],
            "rule_objects": {"hours": [{"timeframe": {"start": "07:00", "end": "18:00"}}]}}
    validate_data(base)
    start = ["rule_objects", "hours", 0, "timeframe", "start"]
    (path,) = refused(with_value(start, "07:00\n", base))
    assert path.endswith("timeframe.start")


def test_rule_object_names_refuse_a_trailing_newline() -> None:
    data = {**BASE, "rule_objects": {"words\n": [{"body": "x"}]}}
    assert "rule_objects" in refused(data)[0]


def test_address_local_part_refuses_a_newline_and_outer_whitespace_is_trimmed() -> None:
    # Addresses, domains and hosts are trimmed of surrounding whitespace (a newline at the
    # very end is dropped, never kept); inside they refuse it.
    assert refused(with_value(["system", "admin_email"], "a\n@example.org")) == [
        "system.admin_email"]
    state = validate_data(with_value(["system", "admin_email"], "a@example.org\n"))
    assert state.system.admin_email == "a@example.org"
    state = validate_data(with_value(["domains", 0, "name"], "example.org\n"))
    assert state.domains[0].name == "example.org"
    assert refused(with_value(["domains", 0, "name"], "exa\nmple.org")) == ["domains[0].name"]


def test_every_model_runs_its_patterns_on_the_rust_engine() -> None:
    """Python's re engine would bring back `$` before a final newline."""
    assert Section.model_config.get("regex_engine") == "rust-regex"
    assert State.model_config.get("regex_engine") == "rust-regex"
    assert Rule.model_config.get("regex_engine") == "rust-regex"


# --- the first-boot answers --------------------------------------------------------------

ANSWERS: dict[str, Any] = {
    "version": 1, "hostname": "mx1.example.org",
    "admin": {"password_hash": "$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA"},
    "domains": [{"name": "example.org", "server": "10.0.0.5"}],
}
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGx0ZXN0a2V5 admin@laptop"


def answers_refused(data: Any) -> list[str]:
    with pytest.raises(StateError) as caught:
        validate_answers(data)
    return [e.path for e in caught.value.errors]


def test_answers_interface_refuses_a_trailing_newline() -> None:
    network = {"mode": "dhcp", "interface": "eth0"}
    validate_answers({**ANSWERS, "network": network})
    assert answers_refused({**ANSWERS, "network": {**network, "interface": "eth0\n"}}) == [
        "network.interface"]


def test_answers_ssh_key_refuses_a_second_line() -> None:
    validate_answers({**ANSWERS, "ssh_authorized_keys": [KEY]})
    for bad in (f"{KEY}\ncommand=\"sh\" {KEY}", f"{KEY}\n\n{KEY}"):
        assert answers_refused({**ANSWERS, "ssh_authorized_keys": [bad]}) == [
            "ssh_authorized_keys[0]"]
