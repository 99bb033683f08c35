"""Run a message through the rules and say what would happen, without doing any of it.

Nothing is sent, stored or counted: the engine and the actions are pure, and the BCC copies
and notifications are only listed.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from ..state.schema import State
from . import actions as mail_actions
from .message import parse_message
from .ruleengine import RecipientDecision, UserList, evaluate
from .types import Envelope, ScanResult, SpamResult, VirusResult


@dataclass(frozen=True)
class RecipientReport:
    decision: RecipientDecision
    subject_after: str
    notes: list[str]

    def to_dict(self) -> dict[str, Any]:
        d = self.decision
        return {
            "recipient": d.recipient, "outcome": d.final, "quarantine_kind": d.quarantine_kind,
            "rule": d.rule, "reject_message": d.reject_message,
            "quarantine_original": d.quarantine_original,
            "matches": [{"rule": m.rule, "reasons": list(m.reasons), "parts": list(m.parts)}
                        for m in d.matches],
            "actions": [{"rule": s.rule, "action": describe(s.action), "parts": list(s.parts)}
                        for s in d.steps],
            "subject_after": self.subject_after, "notes": list(self.notes),
        }


@dataclass(frozen=True)
class SimulationReport:
    sender: str
    direction: str
    subject: str
    assumptions: list[str]
    defects: list[str]
    recipients: list[RecipientReport]
    side_effects: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"sender": self.sender, "direction": self.direction, "subject": self.subject,
                "assumptions": list(self.assumptions), "defects": list(self.defects),
                "recipients": [r.to_dict() for r in self.recipients],
                "side_effects": list(self.side_effects)}

    def format_text(self) -> str:
        lines = [f"From {self.sender or '<>'} ({self.direction}), subject {self.subject!r}"]
        lines += [f"  assuming {a}" for a in self.assumptions]
        lines += [f"  defect: {d}" for d in self.defects]
        for report in self.recipients:
            d = report.decision
            kind = f" ({d.quarantine_kind})" if d.quarantine_kind else ""
            lines.append(f"\n{d.recipient}: {d.final.upper()}{kind} by rule {d.rule!r}")
            if d.reject_message:
                lines.append(f"  reply: {d.reject_message}")
            for match in d.matches:
                lines.append(f"  matched {match.rule!r}:")
                lines += [f"    - {reason}" for reason in match.reasons]
            for step in d.steps:
                where = f" parts {', '.join(step.parts)}" if step.parts else ""
                lines.append(f"  action {describe(step.action)} (from {step.rule!r}){where}")
            if d.quarantine_original:
                lines.append("  the original also goes to the attachment quarantine")
            lines.append(f"  subject after: {report.subject_after!r}")
            lines += [f"  note: {n}" for n in report.notes]
        if self.side_effects:
            lines.append("")
            lines += [f"would send: {s}" for s in self.side_effects]
        return "\n".join(lines) + "\n"


def describe(action: Any) -> str:
    """'add_header {"name": "X-Spam-Flag", "value": "YES"}', or just the kind."""
    options = action.model_dump(exclude_none=True, by_alias=True)[action.kind]
    if options in ({}, True):
        return str(action.kind)
    import json

    return f"{action.kind} {json.dumps(options, ensure_ascii=False, sort_keys=True)}"


def simulate(state: State, raw: bytes, envelope: Envelope, scan: ScanResult | None = None,
             now: dt.datetime | None = None,
             user_list: UserList = lambda r, s: None) -> SimulationReport:
    assumptions: list[str] = []
    if scan is None:
        assumptions.append("spam score 0 and no virus (no scan result given)")
        scan = ScanResult(spam=SpamResult(score=0.0), virus=VirusResult(virus=None))
    if now is None:
        now = dt.datetime.now()
        assumptions.append(f"the time is now ({now:%a %H:%M})")
    message = parse_message(raw)
    decisions = evaluate(state, message, envelope, scan, now=now, user_list=user_list)
    reports: list[RecipientReport] = []
    for decision in decisions:
        ctx = mail_actions.ActionContext(state=state, scan=scan, envelope=envelope,
                                         rule=decision.rule, decision=decision)
        result = mail_actions.modify_report(message, decision.steps, ctx)
        after = parse_message(result.raw).subject if result.raw is not raw else message.subject
        reports.append(RecipientReport(decision, after, result.notes))
    effects = []
    for effect in mail_actions.side_effects(decisions, message, envelope, state, scan):
        if isinstance(effect, mail_actions.BccCopy):
            copy = "original" if effect.original else "modified"
            effects.append(f"BCC ({copy}) to {effect.to} (rule {effect.rule!r})")
        else:
            effects.append(f"notification to {', '.join(effect.recipients)}: "
                           f"{effect.subject!r} (rule {effect.rule!r})")
    return SimulationReport(sender=envelope.sender, direction=envelope.direction,
                            subject=message.subject, assumptions=assumptions,
                            defects=list(message.defects), recipients=reports,
                            side_effects=effects)
