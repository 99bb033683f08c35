"""Rule patterns cannot stall the mail path: real Postfix -> our filter -> sink/quarantine.

A body rule of the classic catastrophic form meets its worst case (a long run of 'a' and a
final 'b': with Python's re, 30 characters took over a minute, during which no other message
moved). With RE2 the message gets its outcome within the rule budget (CPU time, so a busy
machine does not change it), and a clean message sent at the same time through another SMTP
session is delivered too. A rule set that does run out of budget quarantines the message,
logs it and tracks it; the same rules meet a small message within the same budget.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from mailwarden_dev.instance import Sandbox
from mailwarden_dev.process import wait_until

from .conftest import state_for
from .test_mail_path import _tracking, build, marker, send, wait_quarantined

pytestmark = pytest.mark.integration

EXTRA = """\
mail:
  reject_unknown_sender_domain: false   # Postfix resolves with the host's resolver here
  rules_budget_ms: 2000
greylisting:
  enabled: false
quarantine:
  lifetimes: {blocked: 2}
rule_objects:
  only_as:
    - body: '^(a+)+$'
rules:
  - name: Only a's
    priority: 50
    what: {objects: [only_as]}
    actions: [quarantine]
"""


@pytest.fixture(scope="module")
def gw(sandbox_root: Path) -> Iterator[Sandbox]:
    sandbox = Sandbox(sandbox_root / "budget", agent_services=True)
    sandbox.start(state_for(sandbox, EXTRA))
    yield sandbox
    sandbox.stop()


def tracked(gw: Sandbox, subject: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = []

    def ready() -> bool:
        found[:] = [r for r in _tracking(gw).search(limit=200) if r["subject"] == subject]
        return bool(found)

    wait_until(f"the tracking record of {subject}", ready, 120)
    return found[0]


def test_worst_case_body_does_not_hold_up_a_clean_message(gw: Sandbox) -> None:
    evil, clean = marker(), marker()
    worst = build(evil, body="a" * 100_000 + "b\n")
    errors: list[BaseException] = []

    def send_worst() -> None:
        try:
            send(gw, worst)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    sender = threading.Thread(target=send_worst)
    sender.start()
    sender.join(60)  # Postfix has it (after-queue): the filter gets it next
    assert not errors and not sender.is_alive()
    send(gw, build(clean))  # another SMTP session, at the same time as the filter's work
    # No clock here: how soon the clean message arrives depends on how busy this machine is
    # (bench/ measures the mail path's speed). The rule budget is CPU time of the rules'
    # thread: the worst case accepted within it is the proof that matching stayed linear,
    # where Python's re would have spent minutes and been stopped by the budget.
    gw.sink.wait_for_marker(clean, timeout=120)

    # The worst case itself: no match (the final 'b'), so the default accept, within budget.
    [delivered] = gw.sink.wait_for_marker(evil, timeout=120)
    assert b"rule=default-accept" in delivered
    record = tracked(gw, evil)
    assert [(d["action"], d["rule"]) for d in record["deliveries"]] == [
        ("accept", "default-accept")]


def test_the_same_rule_matching_quarantines(gw: Sandbox) -> None:
    subject = marker()
    send(gw, build(subject, body="a" * 100_000 + "\n"))
    entry = wait_quarantined(gw, subject, timeout=120)
    assert (entry.kind, entry.rule) == ("blocked", "Only a's")
    assert round(entry.expires - entry.time) == 2 * 86400  # quarantine.lifetimes.blocked
    assert gw.sink.containing(subject) == []


BUDGET_MS = 25


def heavy_state(gw: Sandbox, budget_ms: int) -> str:
    """100 body entries that RE2 cannot skip through with a literal search."""
    rules = {
        "rule_objects": {"words": [{"body": rf"[a-z]+q{i:03d}[0-9]x"} for i in range(100)]},
        "rules": [{"name": "Words", "priority": 50, "what": {"objects": ["words"]},
                   "actions": ["quarantine"]}],
    }
    extra = EXTRA.split("rule_objects:")[0].replace("2000", str(budget_ms))
    return state_for(gw, extra + yaml.safe_dump(rules, sort_keys=False))


def test_rules_over_budget_quarantine_log_and_track(gw: Sandbox) -> None:
    live = gw.layout.state_file.read_text()
    # The budget sits between the two messages' costs with room either way, so that a busy
    # machine (whose caches make CPU time grow too) cannot push one across: measured alone,
    # 100 entries take about 250 ms of CPU on the big body and about 2 ms on a small one.
    gw.apply(heavy_state(gw, BUDGET_MS), comment=f"a {BUDGET_MS} ms rule budget")
    try:
        subject = marker()
        # 900 kB of text: each of the 100 entries reads all of it, ten times the budget.
        send(gw, build(subject, body=("abcdefgh" * 16 + "\n") * 7000))
        entry = wait_quarantined(gw, subject, timeout=60)
        assert (entry.kind, entry.rule) == ("blocked", "rule-budget-exceeded")
        record = tracked(gw, subject)
        assert [(d["action"], d["rule"]) for d in record["deliveries"]] == [
            ("quarantine", "rule-budget-exceeded")]
        log = (gw.root / "logs" / "filter.out").read_text(errors="replace")
        assert "rule budget exceeded: the rules took" in log
        assert (f"more than the {BUDGET_MS} ms of mail.rules_budget_ms (stopped at rule "
                "'Words')") in log
        assert gw.sink.containing(subject) == []
        # A small message meets the same rules within the same budget and is delivered.
        small = marker()
        send(gw, build(small))
        gw.sink.wait_for_marker(small, timeout=120)
    finally:
        gw.apply(live, comment="the default budget again")
