"""simulate(): the rules' verdict per recipient, with reasons, and no side effects."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import yaml

from mailwarden.mail.simulate import simulate
from mailwarden.mail.types import Envelope, ScanResult, SpamResult, VirusResult
from mailwarden.state.load import load_state_text
from mailwarden.state.schema import State

DATA = Path(__file__).parent.parent / "data" / "mail"
BASE = {"version": 1, "system": {"hostname": "mx.example.test"},
        "domains": [{"name": "example.test", "transport": {"host": "127.0.0.1"}}]}
NOON = dt.datetime(2026, 11, 25, 12, 0)


def state(**extra: Any) -> State:
    return load_state_text(yaml.safe_dump({**BASE, **extra}))


def envelope(*rcpts: str) -> Envelope:
    return Envelope(sender="alice@sender.test", recipients=rcpts or ("bob@example.test",),
                    direction="in")


def test_without_scan_assumes_clean_and_says_so() -> None:
    report = simulate(state(), (DATA / "plain.eml").read_bytes(), envelope(), now=NOON)
    assert report.assumptions == ["spam score 0 and no virus (no scan result given)"]
    [rcpt] = report.recipients
    assert (rcpt.decision.final, rcpt.decision.rule) == ("accept", "default-accept")
    assert rcpt.subject_after == "Lunch tomorrow?"


def test_quarantined_spam_report_text_and_json() -> None:
    result = ScanResult(spam=SpamResult(score=12.3), virus=VirusResult(virus=None))
    report = simulate(state(), (DATA / "plain.eml").read_bytes(), envelope(), result, NOON)
    text = report.format_text()
    assert "bob@example.test: QUARANTINE (spam) by rule 'Quarantine spam'" in text
    assert "spam score 12.3 >= quarantine level 10.0" in text
    assert "subject after: '[SPAM] Lunch tomorrow?'" in text
    data = json.loads(json.dumps(report.to_dict()))
    [rcpt] = data["recipients"]
    assert rcpt["outcome"] == "quarantine" and rcpt["quarantine_kind"] == "spam"
    assert rcpt["actions"] == [{"rule": "Quarantine spam", "action": "tag_subject", "parts": []}]
    assert data["assumptions"] == []


def test_per_recipient_outcomes_and_attachment_parts() -> None:
    st = state(rules=[
        {"name": "Ceo strict", "priority": 95, "to": {"objects": ["ceo"]},
         "what": {"objects": ["exe"]}, "actions": [{"quarantine": {"kind": "attachment"}}]},
        {"name": "Strip exe", "priority": 90, "what": {"objects": ["exe"]},
         "actions": [{"remove_attachments": {"notice": "removed {filename}"}},
                     {"notify": {"to": "admin"}}]}],
        rule_objects={"ceo": [{"email": "ceo@example.test"}], "exe": [{"filename": "*.exe"}]})
    report = simulate(st, (DATA / "attachments.eml").read_bytes(),
                      envelope("ceo@example.test", "bob@example.test"), now=NOON)
    ceo, bob = report.recipients
    assert (ceo.decision.final, ceo.decision.quarantine_kind) == ("quarantine", "attachment")
    assert (bob.decision.final, bob.decision.rule) == ("accept", "default-accept")
    assert bob.notes == ["removed part 3 (Rechnung für Sie.exe)"]
    text = report.format_text()
    assert "action remove_attachments" in text and "parts 3" in text
    assert "would send: notification to postmaster@example.test" in text


def test_side_effects_are_listed_not_performed() -> None:
    st = state(rules=[{"name": "Archive", "priority": 50,
                       "actions": [{"bcc": {"to": "archive@example.test"}},
                                   {"notify": {"to": "recipients"}}]}])
    raw = (DATA / "plain.eml").read_bytes()
    original = bytes(raw)
    lists: list[tuple[str, str]] = []
    report = simulate(st, raw, envelope("a@example.test", "b@example.test"), now=NOON,
                      user_list=lambda r, s: lists.append((r, s)) or None)
    assert raw == original
    assert report.side_effects == [
        "BCC (original) to archive@example.test (rule 'Archive')",
        "notification to a@example.test, b@example.test: 'Mailwarden: Archive matched' "
        "(rule 'Archive')"]
    assert [r.decision.rule for r in report.recipients] == ["default-accept"] * 2
    assert lists == [("a@example.test", "alice@sender.test"), ("b@example.test",
                                                              "alice@sender.test")]


def test_simulate_bad_input_reports_defects() -> None:
    report = simulate(state(), (DATA / "no-headers.eml").read_bytes(), envelope(), now=NOON)
    assert report.defects
    assert "defect:" in report.format_text()
    assert report.recipients[0].decision.final == "accept"


def test_rules_over_budget_are_reported_as_the_filter_would_act() -> None:
    words = [{"body": rf"[a-z]+q{i:03d}[0-9]x"} for i in range(300)]
    st = state(mail={"rules_budget_ms": 10}, rule_objects={"words": words},
               rules=[{"name": "Words", "priority": 50, "what": {"objects": ["words"]},
                       "actions": ["quarantine"]}])
    raw = b"From: a@sender.test\r\nSubject: big\r\n\r\n" + (b"abcdefgh" * 16 + b"\r\n") * 7000
    report = simulate(st, raw, envelope(), now=NOON)
    [rcpt] = report.recipients
    assert (rcpt.decision.final, rcpt.decision.quarantine_kind, rcpt.decision.rule) == (
        "quarantine", "blocked", "rule-budget-exceeded")
    text = report.format_text()
    assert "QUARANTINE (blocked) by rule 'rule-budget-exceeded'" in text
    assert "rule budget exceeded: the rules took" in text
    assert report.side_effects == []
