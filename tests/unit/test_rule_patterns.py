"""Rule patterns run on RE2 (state/patterns.py): what is refused and how, what they mean,
and that a pattern that backtracks forever in Python's re costs RE2 next to nothing."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from mailwarden.errors import StateError
from mailwarden.mail.message import parse_message
from mailwarden.mail.ruleengine import RULE_BUDGET, evaluate
from mailwarden.mail.types import Envelope, ScanResult, SpamResult, VirusResult
from mailwarden.state.load import load_state_text
from mailwarden.state.patterns import compile_pattern
from mailwarden.state.schema import State

ROOT = Path(__file__).parent.parent.parent
NOON = dt.datetime(2026, 11, 25, 12, 0)
BASE = """\
version: 1
system: {hostname: mx.example.test}
domains:
  - name: example.test
    transport: {host: 127.0.0.1}
"""


def with_rules(objects: dict[str, list[Any]], rules: list[dict[str, Any]] | None = None) -> str:
    return BASE + yaml.safe_dump({"rule_objects": objects, "rules": rules or []},
                                 sort_keys=False)


def errors_of(text: str) -> list[tuple[str, int | None, str]]:
    with pytest.raises(StateError) as caught:
        load_state_text(text, "state.yaml")
    return [(e.path, e.line, e.message) for e in caught.value.errors]


# --- refused constructs: a clear error with the path and the line --------------------------


@pytest.mark.parametrize(("pattern", "words"), [
    (r"(a)\1", r"a backreference (\1) is not supported"),
    (r"(?P<w>a)(?P=w)", "a named backreference (?P=name) is not supported"),
    (r"invoice(?=\.exe)", "lookahead (?=...) is not supported"),
    (r"invoice(?!\.pdf)", "negative lookahead (?!...) is not supported"),
    (r"(?<=wire )transfer", "lookbehind (?<=...) is not supported"),
    (r"(?<!no )transfer", "negative lookbehind (?<!...) is not supported"),
    (r"(?x) wire \s transfer", "verbose mode (?x) is not supported"),
    (r"wire[", "not a valid regular expression (RE2 syntax, docs/rules.md): missing ]"),
    (r"a{1001}", "invalid repetition size"),
])
def test_constructs_re2_lacks_are_refused_with_path_and_line(pattern: str, words: str) -> None:
    text = with_rules({"words": [{"body": "fine"}, {"body": pattern}]})
    [(path, line, message)] = errors_of(text)
    assert path == "rule_objects.words[1].body"
    assert line == 9  # 5 lines of BASE, rule_objects:, words:, the fine entry, this one
    assert words in message
    if "not supported" in words:
        assert "RE2" in message and "docs/rules.md" in message


def test_every_regex_field_is_checked_with_re2() -> None:
    text = with_rules({"who": [{"regex": r"(?<=x)@a\.test"}],
                       "hdr": [{"header": {"name": "Subject", "regex": r"(\w)\1"}}]})
    found = {path: message for path, _, message in errors_of(text)}
    assert set(found) == {"rule_objects.who[0].regex", "rule_objects.hdr[0].header.regex"}
    assert "lookbehind" in found["rule_objects.who[0].regex"]
    assert "backreference" in found["rule_objects.hdr[0].header.regex"]


def test_the_error_text_reads_like_other_state_errors() -> None:
    with pytest.raises(StateError) as caught:
        load_state_text(with_rules({"words": [{"body": "(?=x)y"}]}), "state.yaml")
    assert str(caught.value).splitlines()[1:] == [
        "  rule_objects.words[0].body (line 8): lookahead (?=...) is not supported: rule "
        "patterns use RE2, which matches in linear time and has no lookaround or "
        "backreferences (docs/rules.md)"]


def test_a_stray_parenthesis_is_refused_although_the_body_wrapper_would_close_it() -> None:
    # Bodies are compiled as (?m:PATTERN); 'a)(b' must not become the valid (?m:a)(b).
    with pytest.raises(ValueError, match="RE2 syntax"):
        compile_pattern("a)(?:b", multiline=True)


# --- meaning ---------------------------------------------------------------------------


def test_case_insensitive_and_unicode_case_folding() -> None:
    assert compile_pattern("INVOICE").search("your invoice") == "invoice"
    assert compile_pattern("straße").search("STRASSE und STRAẞE") == "STRAẞE"


def test_body_patterns_are_multi_line_others_are_not() -> None:
    assert compile_pattern("^transfer$", multiline=True).search("hi\ntransfer\nbye") == "transfer"
    assert compile_pattern("^transfer$").search("hi\ntransfer\nbye") is None


def test_dollar_is_the_end_of_the_text_and_python_backslash_z_is_accepted() -> None:
    # Unlike Python's re, RE2's $ (without multi-line) does not match before a final newline.
    assert compile_pattern(r"@evil\.test$").search("a@evil.test\n") is None
    assert compile_pattern(r"@evil\.test$").search("a@evil.test") == "@evil.test"
    assert compile_pattern(r"@evil\.test\Z").search("a@evil.test") == "@evil.test"
    assert compile_pattern(r"@evil\.test\Z").search("a@evil.test\n") is None
    assert compile_pattern(r"a\\Z").search("xa\\Z") == "a\\Z"  # an escaped backslash stays


def test_perl_classes_are_ascii() -> None:
    assert compile_pattern(r"\d+").search("order ٣٤ or 34") == "34"
    assert compile_pattern(r"\p{Nd}+").search("order ٣٤") == "٣٤"


def test_text_with_lone_surrogates_does_not_raise() -> None:
    assert compile_pattern("b").search("a\udcffb") == "b"


# --- cost ------------------------------------------------------------------------------


def test_the_same_pattern_on_re2_meets_a_100_kb_body_within_the_budget() -> None:
    rules = [{"name": "Only a's", "priority": 50, "what": {"objects": ["aaa"]},
              "actions": ["quarantine"]}]
    st: State = load_state_text(with_rules({"aaa": [{"body": "^(a+)+$"}]}, rules))
    raw = b"From: x@sender.test\r\nSubject: a's\r\n\r\n" + b"a" * 100_000 + b"b\r\n"
    scan = ScanResult(spam=SpamResult(score=0.0), virus=VirusResult(virus=None))
    envelope = Envelope(sender="x@sender.test", recipients=("bob@example.test",),
                        direction="in")
    [decision] = evaluate(st, parse_message(raw), envelope, scan,
                          now=NOON)
    assert decision.rule != RULE_BUDGET
    assert (decision.final, decision.rule) == ("accept", "default-accept")
    only_as = b"From: x@sender.test\r\nSubject: a's\r\n\r\n" + b"a" * 100_000 + b"\r\n"
    [decision] = evaluate(st, parse_message(only_as), envelope, scan,
                          now=NOON)
    assert (decision.final, decision.rule) == ("quarantine", "Only a's")


# --- the library is fenced and pinned ---------------------------------------------------


def test_only_the_patterns_module_imports_re2() -> None:
    found = subprocess.run(["grep", "-rlE", r"^\s*(import re2|from re2)", "agent"], cwd=ROOT,
                           capture_output=True, text=True, check=False).stdout.split()
    assert found == ["agent/mailwarden/state/patterns.py"]


def test_installed_google_re2_is_the_pinned_one() -> None:
    with (ROOT / "pyproject.toml").open("rb") as file:
        deps = tomllib.load(file)["project"]["dependencies"]
    [pin] = [d for d in deps if d.startswith("google-re2==")]
    assert importlib.metadata.version("google-re2") == pin.split("==")[1]
