"""Regular expressions of the rules, compiled by RE2 (the google-re2 package).

Admins write these patterns and the content filter runs them on mail from the internet, so
their cost must not depend on what the pattern or the mail is: RE2 matches in time linear in
the text, whatever the pattern (no backtracking, so ``^(a+)+$`` is as cheap as ``^a+$``),
and releases the GIL while it matches. The price is the constructs that need backtracking:
backreferences and lookaround are refused when the state is validated, with a message that
says so. docs/rules.md gives the syntax and how it differs from Python's ``re``.

This is the only module that imports ``re2``; the validator (state/types.py) and the rule
engine (mail/ruleengine.py) both come through here, so a pattern that validated is exactly the
pattern that runs. Only the package's public API is used (compile, Options, error and the
match object's group).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import re2

# RE2's own limit on the memory of one compiled pattern (its DFA cache included); a pattern
# whose program does not fit is refused when the state is validated, not in the mail path.
MAX_MEM = 8 << 20

_PYTHON_ONLY = (
    ("(?=", "lookahead (?=...)"),
    ("(?!", "negative lookahead (?!...)"),
    ("(?<=", "lookbehind (?<=...)"),
    ("(?<!", "negative lookbehind (?<!...)"),
    ("(?P=", "a named backreference (?P=name)"),
    ("(?#", "a comment group (?#...)"),
    ("(?x", "verbose mode (?x)"),
)


def _options() -> re2.Options:
    options = re2.Options()
    options.case_sensitive = False  # like PMG's who regexes and header/body matches
    options.never_capture = True  # only the whole match is ever used (for the reason text)
    options.log_errors = False  # errors reach the admin as validation errors instead
    options.max_mem = MAX_MEM
    return options


def _translate(pattern: str) -> str:
    """Python's ``\\Z`` (end of text) is RE2's ``\\z``: the one spelling that means the same
    in both but that RE2 does not accept, so existing patterns keep working."""
    out: list[str] = []
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if char == "\\" and index + 1 < len(pattern):
            pair = pattern[index:index + 2]
            out.append("\\z" if pair == "\\Z" else pair)
            index += 2
            continue
        out.append(char)
        index += 1
    return "".join(out)


def _explain(pattern: str, error: re2.error) -> str:
    detail = error.args[0] if error.args else ""
    if isinstance(detail, bytes):
        detail = detail.decode("utf-8", "replace")
    for token, what in _PYTHON_ONLY:
        if token in pattern:
            return (f"{what} is not supported: rule patterns use RE2, which matches in linear "
                    "time and has no lookaround or backreferences (docs/rules.md)")
    if detail.startswith("invalid escape sequence: \\") and detail[-1:].isdigit():
        return (f"a backreference ({detail.rpartition(' ')[2]}) is not supported: rule "
                "patterns use RE2, which matches in linear time and has no backreferences "
                "(docs/rules.md)")
    if "pattern too large" in detail:
        return "the pattern is too large for RE2's memory limit; split it into several entries"
    return f"not a valid regular expression (RE2 syntax, docs/rules.md): {detail}"


@dataclass(frozen=True)
class Pattern:
    """One compiled rule pattern: case-insensitive, and for bodies multi-line."""

    source: str
    multiline: bool
    _regexp: object  # re2's compiled pattern; its type is private to the package

    def search(self, text: str | bytes) -> str | None:
        """The first match's text, or None. ``text`` may be UTF-8 bytes already (a body
        searched by several patterns is encoded once)."""
        data = text if isinstance(text, bytes) else text.encode("utf-8", "replace")
        found = self._regexp.search(data)  # type: ignore[attr-defined]
        if found is None:
            return None
        return bytes(found.group(0)).decode("utf-8", "replace")


@lru_cache(maxsize=1024)
def compile_pattern(pattern: str, multiline: bool = False) -> Pattern:
    """The pattern compiled for matching; raises ValueError (the admin's words) when RE2
    refuses it. Compiled once per process and pattern."""
    translated = _translate(pattern)
    options = _options()
    try:
        # On its own first: wrapped in a group, a stray ')' could pair with ours.
        regexp = re2.compile(translated, options)
        if multiline:
            regexp = re2.compile(f"(?m:{translated})", options)
    except re2.error as exc:
        raise ValueError(_explain(pattern, exc)) from None
    return Pattern(pattern, multiline, regexp)


def check(pattern: str) -> str:
    """The validator of rule patterns: the pattern itself, or ValueError."""
    compile_pattern(pattern, multiline=False)
    compile_pattern(pattern, multiline=True)
    return pattern
