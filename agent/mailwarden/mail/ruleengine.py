"""The rule engine: Proxmox Mail Gateway's evaluation, per recipient, with reasons.

Admins moving from PMG know its rule model, so the engine keeps it. Evaluation, as PMG's
``apply_rules`` does it:

* rules by priority, highest first (ties keep the order of the state file); inactive rules
  and rules of the other direction are skipped;
* from, what and when are matched once per message, to once per recipient;
* inside a group the objects combine by ``mode`` (any/all), then ``invert`` applies; an object
  matches when any of its entries does; groups are AND-combined; an absent group matches;
* the first matching rule with a final action decides for that recipient; the non-final
  actions of every matching rule up to and including it are collected and ordered by PMG's
  action priority (header changes 10, remove attachments 40, disclaimer 49, BCC 80,
  notify 89; the final action last);
* recipients no final rule matched are accepted by ``default-accept``.

Choices where PMG is silent or differs:

* who/domain is an exact match of the address domain (subdomains need a regex entry), so a
  welcomelisted ``example.com`` does not silently welcome ``evil.example.com``;
* a from-group tests the envelope sender and the From header address (either may match),
  and the client IP for network entries; in a to-group network entries never match;
* a user's allow list entry stops spam entries matching for that recipient (virus entries
  still match); a block list entry quarantines as ``blocked`` before any rule runs, unless
  the scan found a virus: then the rules decide, so a virus never lands where the user can
  release it;
* time frames use ``now`` in local time; ``end`` before ``start`` is overnight and belongs to
  the day it starts on; ``start == end`` is the whole day.

Which MIME parts each rule's what-group matched travels with every collected action (see
``Step``), so ``remove_attachments`` with ``matched_only`` strips exactly those parts.

Regexes are RE2 (state/patterns.py): linear in the text, whatever the pattern. What is left
to bound is the sum: many rules, many entries, many recipients, a large body. The rules of one
message get ``mail.rules_budget_ms`` of the evaluating thread's CPU time, checked as the rules
run (``_Budget``); past it the whole message is quarantined by ``rule-budget-exceeded``
(``budget_exceeded``). CPU time rather than wall time, so that a busy machine does not push
messages over the budget that alone would pass.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import ipaddress
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from ..state.patterns import Pattern, compile_pattern
from ..state.rules import Action, Entry, Group, Rule
from ..state.schema import State
from .message import ParsedMessage, Part
from .types import Envelope, ScanResult

Final = Literal["accept", "block", "reject", "quarantine"]
QuarantineKind = Literal["spam", "virus", "attachment", "blocked"]
UserList = Callable[[str, str], Literal["allow", "block"] | None]
# The administrators' lists for every recipient: the sender's entry, if any.
GlobalList = Callable[[str], Literal["allow", "block"] | None]

# PMG's execution priority of each action kind (RuleDB/<Action>.pm `sub priority`).
ACTION_PRIORITY: dict[str, int] = {
    "tag_subject": 10, "add_header": 10, "remove_header": 10,  # ModField
    "remove_attachments": 40,
    "disclaimer": 49,
    "bcc": 80,
    "notify": 89,
    "quarantine": 90, "reject": 97, "block": 98, "accept": 99,
}
DEFAULT_ACCEPT = "default-accept"
USER_BLOCKLIST = "user-blocklist"
GLOBAL_BLOCKLIST = "global-blocklist"
RULE_BUDGET = "rule-budget-exceeded"
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True)
class RuleMatch:
    """One rule that matched for a recipient, and why, in words."""

    rule: str
    reasons: list[str]
    parts: tuple[str, ...] = ()  # indexes of MIME parts its what-group matched
    spam: bool = False  # a spam entry contributed to the match


@dataclass(frozen=True)
class Step:
    """A collected non-final action with the rule it came from and the parts it concerns."""

    action: Action
    rule: str
    parts: tuple[str, ...] = ()


@dataclass(frozen=True)
class RecipientDecision:
    recipient: str
    final: Final
    quarantine_kind: QuarantineKind | None
    rule: str
    reject_message: str | None
    actions: list[Action]  # non-final, in execution order
    matches: list[RuleMatch]
    steps: list[Step] = field(default_factory=list)  # the same actions with rule and parts
    # A remove_attachments step wants the original in the attachment quarantine too.
    quarantine_original: bool = False

    def outcome_key(self) -> tuple[object, ...]:
        """Equal keys get the very same message and fate (one copy per group)."""
        return (self.final, self.quarantine_kind, self.rule, self.reject_message,
                self.quarantine_original,
                tuple((s.rule, s.parts, _action_key(s.action)) for s in self.steps))


def group_by_outcome(
    decisions: Sequence[RecipientDecision],
) -> list[tuple[tuple[object, ...], list[RecipientDecision]]]:
    """Recipients with the same outcome and actions, in the order they first appear."""
    groups: dict[tuple[object, ...], list[RecipientDecision]] = {}
    for decision in decisions:
        groups.setdefault(decision.outcome_key(), []).append(decision)
    return list(groups.items())


class BudgetExceeded(Exception):
    """The rules of one message used up mail.rules_budget_ms; raised inside the engine."""

    def __init__(self, rule: str, spent_ms: float) -> None:
        super().__init__(rule)
        self.rule = rule
        self.spent_ms = spent_ms


class _Budget:
    """CPU time of the calling thread since evaluation began, against the limit.

    Reading a thread's CPU clock is a system call (about 0.6 µs, as much as a cheap entry;
    read at every step it doubled the default rules' time): before a body search, whose
    cost grows with the text (up to 1 MiB), it is always read; before the other steps
    (rules, entries, header values) every EVERY-th time, so the budget is overshot by at
    most that many of them."""

    __slots__ = ("countdown", "limit", "started")
    EVERY = 16

    def __init__(self, limit_ms: int) -> None:
        self.limit = limit_ms / 1000
        self.started = time.thread_time()
        self.countdown = 1

    def check(self, rule: str, search: bool = False) -> None:
        if not search:
            self.countdown -= 1
            if self.countdown > 0:
                return
        self.countdown = self.EVERY
        spent = time.thread_time() - self.started
        if spent > self.limit:
            raise BudgetExceeded(rule, spent * 1000)


def evaluate(state: State, message: ParsedMessage, envelope: Envelope, scan: ScanResult, *,
             now: dt.datetime,
             user_list: UserList = lambda r, s: None,
             global_list: GlobalList = lambda s: None,
             budget_ms: int | None = None) -> list[RecipientDecision]:
    """One decision per envelope recipient, in envelope order. ``budget_ms`` overrides
    mail.rules_budget_ms (the CPU time the rules of this message may take).

    Sender lists, inbound only: a recipient's own entry for the sender (user_list) decides
    for that recipient; the global lists (global_list) only where their own says nothing.
    Block holds the copy in the quarantine before any rule; allow turns the rules' spam
    entries off. Neither lets a virus through."""
    budget = _Budget(state.mail.rules_budget_ms if budget_ms is None else budget_ms)
    ctx = _Context(state, message, envelope, scan, now, budget)
    rules = sorted((r for r in state.rules if r.active and _direction_ok(r, envelope)),
                   key=lambda r: -r.priority)  # sorted() is stable: ties keep file order
    try:
        return [_decide(ctx, rules, rcpt, user_list, global_list)
                for rcpt in envelope.recipients]
    except BudgetExceeded as exc:
        limit = round(budget.limit * 1000)
        return budget_exceeded(envelope, scan, limit, exc.rule, exc.spent_ms)


def budget_exceeded(envelope: Envelope, scan: ScanResult, limit_ms: int, rule: str,
                    spent_ms: float) -> list[RecipientDecision]:
    """The outcome of a message whose rules ran out of time: every recipient's copy goes
    to the quarantine as it arrived. Delivering it would let unchecked mail through, and a
    tempfail would only bring the same message back to the same rules; from the quarantine
    an admin can look at it and release it. A virus stays a virus (users cannot release
    those)."""
    kind: QuarantineKind = "virus" if scan.virus.virus is not None else "blocked"
    reason = (f"rule budget exceeded: the rules took {spent_ms:.0f} ms of CPU, more than "
              f"the {limit_ms} ms of mail.rules_budget_ms (stopped at rule {rule!r})")
    return [RecipientDecision(recipient=rcpt, final="quarantine", quarantine_kind=kind,
                              rule=RULE_BUDGET, reject_message=None, actions=[], steps=[],
                              matches=[RuleMatch(RULE_BUDGET, [reason])])
            for rcpt in envelope.recipients]


# --- per recipient -------------------------------------------------------------------------


def _decide(ctx: _Context, rules: list[Rule], recipient: str,
            user_list: UserList, global_list: GlobalList) -> RecipientDecision:
    listed = _user_listing(ctx, recipient, user_list)
    whose, name = f"{recipient}'s", USER_BLOCKLIST
    if listed is None:
        listed = ctx.global_listing(global_list)
        whose, name = "the global", GLOBAL_BLOCKLIST
    if listed == "block" and ctx.scan.virus.virus is None:
        who = ctx.envelope.sender or ctx.message.from_address or "(null sender)"
        return RecipientDecision(
            recipient=recipient, final="quarantine", quarantine_kind="blocked",
            rule=name, reject_message=None, actions=[], steps=[],
            matches=[RuleMatch(name, [f"{whose} block list holds {who}"])])
    allow_spam = listed != "allow"
    steps: list[Step] = []
    matches: list[RuleMatch] = []
    for rule in rules:
        ctx.rule = rule.name
        ctx.budget.check(rule.name)
        match = ctx.rule_match(rule, recipient, allow_spam)
        if match is None:
            continue
        if listed == "allow" and _has_spam_entries(ctx, rule):
            match.reasons.append(f"(spam entries ignored: {whose} allow list holds this "
                                 "sender)")
        matches.append(match)
        steps += [Step(a, rule.name, match.parts) for a in rule.actions if not a.final]
        final = rule.final_action
        if final is not None:
            return _finish(ctx, recipient, rule.name, final, rule, match, steps, matches)
    return _finish(ctx, recipient, DEFAULT_ACCEPT, None, None, None, steps, matches)


def _has_spam_entries(ctx: _Context, rule: Rule) -> bool:
    """Whether the rule's what-group has spam entries (the allow list silenced them)."""
    names = rule.what.objects if rule.what is not None else []
    return any(e.spam is not None for n in names for e in ctx.state.rule_objects.get(n, []))


def _finish(ctx: _Context, recipient: str, name: str, final: Action | None, rule: Rule | None,
            match: RuleMatch | None, steps: list[Step],
            matches: list[RuleMatch]) -> RecipientDecision:
    ordered = sorted(steps, key=lambda s: ACTION_PRIORITY[s.action.kind])
    kind: QuarantineKind | None = None
    reject_message: str | None = None
    outcome: Final = "accept"
    if final is not None:
        outcome = final.kind  # type: ignore[assignment]
        if final.quarantine is not None:
            kind = _quarantine_kind(final.quarantine.kind, ctx.scan, rule, match)
        if final.reject is not None:
            reject_message = final.reject.message
    keep = any(s.action.remove_attachments is not None and s.action.remove_attachments.quarantine
               and (s.parts or not s.action.remove_attachments.matched_only)
               for s in ordered)
    return RecipientDecision(
        recipient=recipient, final=outcome, quarantine_kind=kind, rule=name,
        reject_message=reject_message, actions=[s.action for s in ordered], matches=matches,
        steps=ordered, quarantine_original=keep and outcome == "accept")


def _quarantine_kind(kind: str, scan: ScanResult, rule: Rule | None,
                     match: RuleMatch | None) -> QuarantineKind:
    if kind != "auto":
        return kind  # type: ignore[return-value]
    if scan.virus.virus is not None:
        return "virus"
    if match is not None and match.spam:
        return "spam"
    if rule is not None and any(a.remove_attachments is not None
                                and a.remove_attachments.quarantine for a in rule.actions):
        return "attachment"
    return "blocked"


def _user_listing(ctx: _Context, recipient: str, user_list: UserList) -> str | None:
    """The recipient's own list, for the envelope sender, else the From address."""
    if ctx.envelope.direction != "in":
        return None  # user lists belong to local recipients, i.e. inbound mail
    seen: list[str] = []
    for sender in (ctx.envelope.sender, ctx.message.from_address):
        if sender and sender.lower() not in seen:
            seen.append(sender.lower())
            kind = user_list(recipient, sender)
            if kind is not None:
                return kind
    return None


def _direction_ok(rule: Rule, envelope: Envelope) -> bool:
    return rule.direction == "both" or rule.direction == envelope.direction


def _action_key(action: Action) -> str:
    return action.model_dump_json(exclude_none=True, by_alias=True)


# --- matching ------------------------------------------------------------------------------


@dataclass
class _GroupResult:
    matched: bool
    reasons: list[str]
    parts: set[str]
    spam: bool


class _Context:
    """One message's facts, with the per-message group results cached."""

    def __init__(self, state: State, message: ParsedMessage, envelope: Envelope,
                 scan: ScanResult, now: dt.datetime, budget: _Budget) -> None:
        self.state, self.message, self.envelope, self.scan = state, message, envelope, scan
        self.budget = budget
        self.rule = ""  # the rule being evaluated, for the budget's message
        self._body: bytes | None = None
        self.now = now.astimezone() if now.tzinfo is not None else now
        self._cache: dict[tuple[int, str, bool], _GroupResult] = {}
        self._by_kind: dict[str, list[Part]] = {}
        self.senders = [a for a in dict.fromkeys(
            (envelope.sender.lower(), message.from_address.lower())) if a]
        self._global: tuple[str | None] | None = None

    def global_listing(self, global_list: GlobalList) -> str | None:
        """The global lists' entry for the envelope sender, else the From address; asked
        once per message, whatever the number of recipients."""
        if self._global is None:
            found: str | None = None
            if self.envelope.direction == "in":
                for sender in self.senders:
                    found = global_list(sender)
                    if found is not None:
                        break
            self._global = (found,)
        return self._global[0]

    def rule_match(self, rule: Rule, recipient: str, spam_ok: bool) -> RuleMatch | None:
        reasons: list[str] = []
        parts: set[str] = set()
        spam = False
        for label, group in (("from", rule.from_), ("when", rule.when), ("what", rule.what),
                             ("to", rule.to)):
            if group is None:
                continue
            if label == "to":
                result = self._group(group, "to", [recipient.lower()], spam_ok)
            else:
                key = (id(rule), label, spam_ok if label == "what" else True)
                cached = self._cache.get(key)
                if cached is None:
                    cached = self._cache[key] = self._group(group, label, self.senders,
                                                            spam_ok)
                result = cached
            if not result.matched:
                return None
            reasons += [f"{label}: {r}" for r in result.reasons]
            parts |= result.parts
            spam = spam or result.spam
        if not reasons:
            reasons = ["no conditions: matches every message"]
        return RuleMatch(rule.name, reasons, tuple(sorted(parts, key=_part_order)), spam)

    def _group(self, group: Group, label: str, addresses: list[str],
               spam_ok: bool) -> _GroupResult:
        results = [(name, self._object(name, label, addresses, spam_ok))
                   for name in group.objects]
        hits = [(name, r) for name, r in results if r.matched]
        matched = bool(hits) if group.mode == "any" else len(hits) == len(results)
        if group.invert:
            if matched:
                return _GroupResult(False, [], set(), False)
            names = ", ".join(group.objects)
            word = "none of" if group.mode == "any" else "not all of"
            return _GroupResult(True, [f"inverted: {word} objects {names} matched"], set(), False)
        if not matched:
            return _GroupResult(False, [], set(), False)
        reasons = [f"object {name}: {reason}" for name, r in hits for reason in r.reasons]
        parts = set().union(*(r.parts for _, r in hits))
        return _GroupResult(True, reasons, parts, any(r.spam for _, r in hits))

    def _object(self, name: str, label: str, addresses: list[str],
                spam_ok: bool) -> _GroupResult:
        entries = self.state.rule_objects.get(name, [])
        reasons: list[str] = []
        parts: set[str] = set()
        spam = False
        # Every entry is tried (no short cut): remove_attachments needs all matching parts.
        for entry in entries:
            self.budget.check(self.rule, search=entry.kind == "body")
            hit = self._entry(entry, label, addresses, spam_ok)
            if hit is None:
                continue
            reason, hit_parts = hit
            reasons.append(reason)
            parts |= hit_parts
            spam = spam or entry.spam is not None
        return _GroupResult(bool(reasons), reasons, parts, spam)

    def _entry(self, entry: Entry, label: str, addresses: list[str],
               spam_ok: bool) -> tuple[str, set[str]] | None:
        kind, value = entry.kind, entry.value
        if kind in ("email", "domain", "regex"):
            address = _who_match(kind, value, addresses)
            return None if address is None else (f"{kind} {value} matches {address}", set())
        if kind == "network":
            ip = self.envelope.client_ip
            if label == "to" or not ip or not _in_network(ip, value):
                return None
            return f"client {ip} is in {value}", set()
        if kind == "spam":
            return self._spam(value, spam_ok)
        if kind == "virus":
            found = self.scan.virus.virus
            if value and found is not None:
                return f"virus {found} found", set()
            if not value and found is None and self.scan.virus.skipped is None:
                return "no virus found", set()
            return None
        if kind in ("filename", "archive_filename", "content_type"):
            return self._parts(kind, value)
        if kind == "header":
            pattern = _regex(value.regex)
            for text in self.message.header_all(value.name):
                self.budget.check(self.rule)  # a message may carry thousands of fields
                if pattern.search(text) is not None:
                    return f"header {value.name} {_short(text)!r} matches /{value.regex}/", set()
            return None
        if kind == "body":
            if self._body is None:  # encoded once for every body entry of the message
                # Lines end in LF, so a multi-line `$` also matches at the end of CRLF lines.
                text = self.message.text.replace("\r\n", "\n")
                self._body = text.encode("utf-8", "replace")
            found_text = _regex(value, multiline=True).search(self._body)
            if found_text is None:
                return None
            return f"body text {_short(found_text)!r} matches /{value}/", set()
        if kind == "size":
            size = self.message.size
            if value.min_kb is not None and size < value.min_kb * 1024:
                return None
            if value.max_kb is not None and size >= value.max_kb * 1024:
                return None
            return f"size {size / 1024:.1f} KiB in {_range(value.min_kb, value.max_kb)} KiB", set()
        if kind == "timeframe":
            if not _in_timeframe(self.now, value.start, value.end, value.days):
                return None
            when = f"{_DAYS[self.now.weekday()]} {self.now:%H:%M}"
            return f"{when} is in {value.start}-{value.end} ({','.join(value.days)})", set()
        return None

    def _spam(self, value: object, spam_ok: bool) -> tuple[str, set[str]] | None:
        spam = self.scan.spam
        if spam.skipped is not None or not spam_ok:
            return None
        score = spam.score
        level = getattr(value, "level", None)
        low = getattr(self.state.spam.levels, level) if level else getattr(value, "min", None)
        high = getattr(value, "max", None)
        if low is not None and score < low:
            return None
        if high is not None and score >= high:
            return None
        words = []
        if low is not None:
            words.append(f">= {level + ' level ' if level else 'min '}{low:.1f}")
        if high is not None:
            words.append(f"< max {high:.1f}")
        return f"spam score {score:.1f} {' and '.join(words)}", set()

    def _candidates(self, kind: str) -> list[Part]:
        """The parts `_part_hit` can match for `kind`: parts without a file name never match
        a file name entry, nor parts without members an archive entry. Computed once per
        message, not once per entry of the dangerous-files object (it showed in profiles)."""
        found = self._by_kind.get(kind)
        if found is None:
            parts = self.message.parts
            if kind == "filename":
                found = [p for p in parts if getattr(p, "filename", "")]
            elif kind == "archive_filename":
                found = [p for p in parts if getattr(p, "archive_members", None)]
            else:
                found = list(parts)
            self._by_kind[kind] = found
        return found

    def _parts(self, kind: str, glob: str) -> tuple[str, set[str]] | None:
        if self.message.incomplete:
            # Parts we could not inspect may hold anything: fail closed, so the rule acts
            # and remove_attachments strips the whole body ("*").
            return f"{kind} {glob}: message too complex to inspect every part", {"*"}
        reasons: list[str] = []
        parts: set[str] = set()
        for part in self._candidates(kind):
            hit = _part_hit(kind, glob, part)
            if hit is not None:
                parts.add(part.index)
                reasons.append(f"part {part.index or '0'} {hit}")
        if not reasons:
            return None
        more = f" (+{len(reasons) - 3} more)" if len(reasons) > 3 else ""
        return f"{kind} {glob}: " + "; ".join(reasons[:3]) + more, parts


def _part_hit(kind: str, glob: str, part: object) -> str | None:
    pattern = glob.lower()
    if kind == "filename":
        original = getattr(part, "filename", "")
        name = _clean_name(original)
        return f"file name {original!r}" if name and fnmatch.fnmatchcase(name, pattern) else None
    if kind == "archive_filename":
        for member in getattr(part, "archive_members", []):
            name = _clean_name(member)
            if name and fnmatch.fnmatchcase(name, pattern):
                return f"archive member {member!r}"
        return None
    for ctype in (getattr(part, "content_type", ""), getattr(part, "detected_type", None)):
        if ctype and fnmatch.fnmatchcase(ctype, pattern):
            return f"content type {ctype}"
    return None


def _clean_name(name: str) -> str:
    """The last path element, lowercased, without the trailing dots and spaces that Windows
    drops (so 'invoice.exe.' still counts as an .exe)."""
    return re.split(r"[/\\]", name)[-1].rstrip(". ").lower()


def _who_match(kind: str, value: str, addresses: Iterable[str]) -> str | None:
    for address in addresses:
        if kind == "email" and address == value.lower():
            return address
        if kind == "domain" and address.rpartition("@")[2] == value.lower().rstrip("."):
            return address
        if kind == "regex" and _regex(value).search(address) is not None:
            return address
    return None


def _in_network(ip: str, network: str) -> bool:
    try:
        return ipaddress.ip_address(ip) in ipaddress.ip_network(network, strict=False)
    except ValueError:
        return False


def _in_timeframe(now: dt.datetime, start: str, end: str, days: Sequence[str]) -> bool:
    minute = now.hour * 60 + now.minute
    begin, finish = _minutes(start), _minutes(end)
    today = _DAYS[now.weekday()]
    yesterday = _DAYS[(now.weekday() - 1) % 7]
    if begin == finish:
        return today in days
    if begin < finish:
        return today in days and begin <= minute < finish
    # Overnight: the evening belongs to today's frame, the early morning to yesterday's.
    return (minute >= begin and today in days) or (minute < finish and yesterday in days)


def _minutes(hhmm: str) -> int:
    hours, _, minutes = hhmm.partition(":")
    return int(hours) * 60 + int(minutes)


def _regex(pattern: str, multiline: bool = False) -> Pattern:
    # RE2, case-insensitive like PMG's matchfield and who regexes, compiled once per process
    # (state/patterns.py caches); the state validated every pattern, so this cannot fail.
    return compile_pattern(pattern, multiline)


def _part_order(index: str) -> tuple[int, ...]:
    if index == "*":
        return (-1,)
    return tuple(int(n) for n in index.split(".")) if index else ()


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _range(low: int | None, high: int | None) -> str:
    return f"[{'' if low is None else low}, {'' if high is None else high})"
