"""The rule engine: PMG's evaluation order, the default rule set end to end, reasons."""

from __future__ import annotations

import base64
import datetime as dt
import io
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from mailwarden.mail import ruleengine as engine
from mailwarden.mail.message import parse_message
from mailwarden.mail.ruleengine import ACTION_PRIORITY, RULE_BUDGET, evaluate, group_by_outcome
from mailwarden.mail.types import Envelope, ScanResult, SpamResult, VirusResult
from mailwarden.state.load import load_state_text
from mailwarden.state.schema import State

DATA = Path(__file__).parent.parent / "data" / "mail"
BASE = {"version": 1, "system": {"hostname": "mx.example.test"},
        "domains": [{"name": "example.test", "transport": {"host": "127.0.0.1"}}]}
NOON = dt.datetime(2026, 11, 25, 12, 0)  # a Wednesday
PLAIN = (DATA / "plain.eml").read_bytes()


def state(**extra: Any) -> State:
    return load_state_text(yaml.safe_dump({**BASE, **extra}))


def default_state(welcome: list[Any] | None = None, block: list[Any] | None = None) -> State:
    """The default rules and objects, with the two lists filled."""
    from mailwarden.state.rules import default_rule_objects

    objects = {k: [e.model_dump(exclude_none=True) for e in v]
               for k, v in default_rule_objects().items()}
    objects["welcomelist"] = welcome or []
    objects["blocklist"] = block or []
    return state(rule_objects=objects)


def scan(score: float = 0.0, virus: str | None = None, skipped: str | None = None) -> ScanResult:
    return ScanResult(spam=SpamResult(score=score, skipped=skipped),
                      virus=VirusResult(virus=virus))


def env(*rcpts: str, sender: str = "alice@sender.test", direction: str = "in",
        ip: str | None = "198.51.100.7") -> Envelope:
    return Envelope(sender=sender, recipients=rcpts or ("bob@example.test",),
                    direction=direction, client_ip=ip)  # type: ignore[arg-type]


def run(st: State, raw: bytes = PLAIN, envelope: Envelope | None = None,
        result: ScanResult | None = None, now: dt.datetime = NOON, **kw: Any):
    return evaluate(st, parse_message(raw), envelope or env(), result or scan(), now=now, **kw)


def zip_mail(inner_name: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr(inner_name, b"MZ")
    body = base64.encodebytes(buf.getvalue()).decode()
    return (f"From: a@sender.test\r\nSubject: zip\r\nMIME-Version: 1.0\r\n"
            f"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
            f"Content-Type: text/plain\r\n\r\nhi\r\n--b\r\n"
            f"Content-Type: application/zip; name=docs.zip\r\n"
            f"Content-Transfer-Encoding: base64\r\n\r\n{body}--b--\r\n").encode()


def kinds(decision: Any) -> list[str]:
    return [a.kind for a in decision.actions]


# --- the default rule set, end to end -----------------------------------------------------


def test_clean_mail_is_accepted_by_default_with_the_spam_header() -> None:
    [d] = run(default_state())
    assert (d.final, d.rule, d.quarantine_kind) == ("accept", "default-accept", None)
    assert kinds(d) == ["add_header"]
    assert d.actions[0].add_header.name == "X-Mailwarden-Spam"
    assert [m.rule for m in d.matches] == ["Spam level header"]


def test_virus_is_quarantined_as_virus_and_the_admin_notified() -> None:
    [d] = run(default_state(), result=scan(virus="Eicar-Test-Signature"))
    assert (d.final, d.quarantine_kind, d.rule) == ("quarantine", "virus", "Block viruses")
    assert kinds(d) == ["notify"] and d.actions[0].notify.to == "admin"
    assert d.matches[0].reasons == ["what: object virus: virus Eicar-Test-Signature found"]


def test_outbound_virus_is_blocked_and_sender_and_admin_notified() -> None:
    [d] = run(default_state(), envelope=env("x@far.test", direction="out"),
              result=scan(virus="Eicar"))
    assert (d.final, d.rule) == ("block", "Virus alert")
    assert [a.notify.to for a in d.actions] == ["sender", "admin"]


def test_spam_above_quarantine_level_is_tagged_and_quarantined_as_spam() -> None:
    [d] = run(default_state(), result=scan(12.3))
    assert (d.final, d.quarantine_kind, d.rule) == ("quarantine", "spam", "Quarantine spam")
    assert kinds(d) == ["tag_subject"]
    assert d.matches[0].reasons == [
        "what: object spam_quarantine: spam score 12.3 >= quarantine level 10.0"]


def test_spam_above_reject_level_is_rejected() -> None:
    [d] = run(default_state(), result=scan(20.0))
    assert (d.final, d.rule) == ("reject", "Reject spam")
    assert d.reject_message == "5.7.1 Message rejected by policy"


def test_spam_above_tag_level_is_tagged_with_flag_and_delivered() -> None:
    [d] = run(default_state(), result=scan(7.0))
    assert (d.final, d.rule) == ("accept", "default-accept")
    assert kinds(d) == ["tag_subject", "add_header", "add_header"]
    assert [a.add_header.name for a in d.actions[1:]] == ["X-Spam-Flag", "X-Mailwarden-Spam"]
    assert [m.rule for m in d.matches] == ["Tag spam", "Spam level header"]


def test_level_boundaries_follow_the_state() -> None:
    st = default_state()
    assert run(st, result=scan(5.99))[0].matches[0].rule == "Spam level header"
    assert run(st, result=scan(6.0))[0].matches[0].rule == "Tag spam"
    assert run(st, result=scan(10.0))[0].rule == "Quarantine spam"


def test_skipped_spam_scan_never_matches_spam_entries() -> None:
    [d] = run(default_state(), result=scan(50.0, skipped="too large"))
    assert d.rule == "default-accept"
    assert "Tag spam" not in [m.rule for m in d.matches]


def test_dangerous_attachment_is_removed_and_the_mail_delivered() -> None:
    [d] = run(default_state(), raw=(DATA / "attachments.eml").read_bytes())
    assert (d.final, d.rule) == ("accept", "default-accept")
    assert kinds(d) == ["add_header", "remove_attachments"]  # ModField 10 before 40
    step = next(s for s in d.steps if s.action.kind == "remove_attachments")
    assert step.parts == ("3",)  # the .exe; not the PDF
    assert d.quarantine_original
    assert any("Rechnung für Sie.exe" in r for r in d.matches[0].reasons)


def test_exe_inside_zip_is_matched_by_archive_filename() -> None:
    [d] = run(default_state(), raw=zip_mail("setup.exe"))
    step = next(s for s in d.steps if s.action.kind == "remove_attachments")
    assert step.parts == ("2",)
    assert "archive member 'setup.exe'" in d.matches[0].reasons[0]
    [clean] = run(default_state(), raw=zip_mail("notes.txt"))
    assert "remove_attachments" not in kinds(clean)


def test_welcomelist_accept_beats_spam_rules() -> None:
    st = default_state(welcome=[{"domain": "sender.test"}])
    [d] = run(st, result=scan(15.0))
    assert (d.final, d.rule) == ("accept", "Welcomelist")
    assert d.matches[-1].reasons == ["from: object welcomelist: domain sender.test matches "
                                     "alice@sender.test"]


def test_welcomelist_does_not_beat_the_virus_rule() -> None:
    st = default_state(welcome=[{"domain": "sender.test"}])
    assert run(st, result=scan(virus="Eicar"))[0].rule == "Block viruses"


def test_blocklist_blocks() -> None:
    st = default_state(block=[{"email": "ALICE@sender.test"}])
    [d] = run(st)
    assert (d.final, d.rule) == ("block", "Blocklist")


def test_domain_entries_are_exact_not_subdomains() -> None:
    st = default_state(block=[{"domain": "sender.test"}])
    raw = b"Subject: no From header\r\n\r\nhi\r\n"
    assert run(st, raw=raw, envelope=env(sender="alice@mail.sender.test"))[0].final == "accept"
    assert run(st, raw=raw, envelope=env(sender="alice@notsender.test"))[0].final == "accept"
    assert run(st, raw=raw, envelope=env(sender="Alice@Sender.TEST"))[0].final == "block"


def test_from_matches_the_header_address_too() -> None:
    st = default_state(block=[{"email": "alice@sender.test"}])
    [d] = run(st, envelope=env(sender="bounce-123@mailer.test"))
    assert d.rule == "Blocklist"


def test_inbound_rules_do_not_see_outbound_mail() -> None:
    st = default_state(block=[{"email": "alice@sender.test"}])
    assert run(st, envelope=env("x@far.test", direction="out"))[0].final == "accept"


# --- per recipient, groups, priorities ------------------------------------------------------


def custom(rules: list[dict[str, Any]], objects: dict[str, Any]) -> State:
    return state(rules=rules, rule_objects=objects)


def test_to_group_gives_recipients_different_outcomes_and_groups() -> None:
    st = custom(
        [{"name": "Strict for ceo", "priority": 90, "to": {"objects": ["ceo"]},
          "what": {"objects": ["spammy"]}, "actions": ["quarantine"]},
         {"name": "Tag", "priority": 80, "what": {"objects": ["spammy"]},
          "actions": ["tag_subject"]}],
        {"ceo": [{"email": "ceo@example.test"}], "spammy": [{"spam": {"min": 3}}]})
    decisions = run(st, envelope=env("ceo@example.test", "a@example.test", "b@example.test"),
                    result=scan(4.0))
    assert [(d.recipient, d.final, d.rule) for d in decisions] == [
        ("ceo@example.test", "quarantine", "Strict for ceo"),
        ("a@example.test", "accept", "default-accept"),
        ("b@example.test", "accept", "default-accept")]
    assert decisions[0].quarantine_kind == "spam"
    groups = group_by_outcome(decisions)
    assert [[d.recipient for d in g] for _k, g in groups] == [
        ["ceo@example.test"], ["a@example.test", "b@example.test"]]


def test_network_never_matches_in_to_group_but_does_in_from() -> None:
    objects = {"lan": [{"network": "198.51.100.0/24"}]}
    st = custom([{"name": "To", "priority": 50, "to": {"objects": ["lan"]}, "actions": ["block"]}],
                objects)
    assert run(st)[0].final == "accept"
    st = custom([{"name": "From", "priority": 50, "from": {"objects": ["lan"]},
                  "actions": ["block"]}], objects)
    [d] = run(st)
    assert d.final == "block"
    assert d.matches[0].reasons == ["from: object lan: client 198.51.100.7 is in 198.51.100.0/24"]
    assert run(st, envelope=env(ip="203.0.113.1"))[0].final == "accept"


def test_invert_and_mode_all() -> None:
    objects = {"partner": [{"domain": "sender.test"}], "big": [{"size": {"min_kb": 1}}],
               "lunch": [{"body": "noon"}]}
    inverted = custom([{"name": "Not partner", "priority": 50,
                        "from": {"objects": ["partner"], "invert": True},
                        "actions": ["block"]}], objects)
    assert run(inverted)[0].final == "accept"
    [d] = run(inverted, envelope=env(sender="x@else.test"), raw=b"Subject: x\r\n\r\nhi\r\n")
    assert d.final == "block"
    assert d.matches[0].reasons == ["from: inverted: none of objects partner matched"]

    all_mode = custom([{"name": "Both", "priority": 50,
                        "what": {"objects": ["big", "lunch"], "mode": "all"},
                        "actions": ["block"]}], objects)
    assert run(all_mode)[0].final == "accept"  # lunch matches, big does not
    big_lunch = PLAIN + b"x" * 2048
    assert run(all_mode, raw=big_lunch)[0].final == "block"
    any_mode = custom([{"name": "Either", "priority": 50,
                        "what": {"objects": ["big", "lunch"]}, "actions": ["block"]}], objects)
    assert run(any_mode)[0].final == "block"


def test_priority_order_and_ties_keep_file_order() -> None:
    objects = {"all": [{"size": {"min_kb": 0}}]}
    st = custom([{"name": "Low", "priority": 10, "actions": ["block"]},
                 {"name": "First of 50", "priority": 50, "actions": ["accept"]},
                 {"name": "Second of 50", "priority": 50, "actions": ["block"]},
                 {"name": "Off", "priority": 99, "active": False, "actions": ["block"]}],
                objects)
    assert run(st)[0].rule == "First of 50"


def test_actions_run_in_pmg_priority_order_collected_across_rules() -> None:
    st = custom(
        [{"name": "A", "priority": 90,
          "actions": [{"notify": {"to": "admin"}}, {"bcc": {"to": "archive@example.test"}},
                      {"disclaimer": {"text": "d"}}]},
         {"name": "B", "priority": 80,
          "actions": [{"remove_attachments": {}},
                      {"add_header": {"name": "X-A", "value": "1"}}, "quarantine"]},
         {"name": "C", "priority": 70, "actions": [{"add_header": {"name": "X-C", "value": "1"}}]}],
        {})
    [d] = run(st)
    assert kinds(d) == ["add_header", "remove_attachments", "disclaimer", "bcc", "notify"]
    assert [s.rule for s in d.steps] == ["B", "B", "A", "A", "A"]
    assert d.final == "quarantine" and d.quarantine_kind == "attachment"
    assert ACTION_PRIORITY["accept"] > ACTION_PRIORITY["quarantine"] > ACTION_PRIORITY["notify"]


def test_quarantine_kind_auto_falls_back_to_blocked_and_explicit_wins() -> None:
    objects = {"x": [{"header": {"name": "Subject", "regex": "lunch"}}]}
    auto = custom([{"name": "Q", "priority": 50, "what": {"objects": ["x"]},
                    "actions": ["quarantine"]}], objects)
    [d] = run(auto)
    assert (d.final, d.quarantine_kind) == ("quarantine", "blocked")
    assert d.matches[0].reasons == [
        "what: object x: header Subject 'Lunch tomorrow?' matches /lunch/"]
    explicit = custom([{"name": "Q", "priority": 50, "what": {"objects": ["x"]},
                        "actions": [{"quarantine": {"kind": "spam"}}]}], objects)
    assert run(explicit)[0].quarantine_kind == "spam"


def test_what_entries_content_type_detected_and_regex_who() -> None:
    objects = {"exe": [{"content_type": "application/x-msdownload"}],
               "rx": [{"regex": r"^alice@.*\.TEST$"}]}
    st = custom([{"name": "Exe", "priority": 50, "from": {"objects": ["rx"]},
                  "what": {"objects": ["exe"]}, "actions": ["block"]}], objects)
    [d] = run(st, raw=(DATA / "attachments.eml").read_bytes())
    assert d.final == "block"
    assert d.matches[0].parts == ("3",)  # declared octet-stream, detected PE
    assert run(st)[0].final == "accept"


def test_trailing_dot_filename_still_counts() -> None:
    raw = (b"Subject: x\r\nMIME-Version: 1.0\r\nContent-Type: application/octet-stream\r\n"
           b"Content-Disposition: attachment; filename=\"invoice.EXE. \"\r\n\r\nMZ\r\n")
    [d] = run(default_state(), raw=raw)
    assert "remove_attachments" in kinds(d)


# --- time frames -----------------------------------------------------------------------------


@pytest.mark.parametrize(("when", "expected"), [
    (dt.datetime(2026, 11, 27, 23, 0), True),   # Friday 23:00, in Friday's frame
    (dt.datetime(2026, 11, 28, 5, 59), True),   # Saturday 05:59 belongs to Friday's night
    (dt.datetime(2026, 11, 28, 6, 0), False),   # the end is exclusive
    (dt.datetime(2026, 11, 27, 12, 0), False),  # Friday noon
    (dt.datetime(2026, 11, 28, 23, 0), False),  # Saturday night: not a listed day
    (dt.datetime(2026, 11, 27, 5, 0), True),    # Friday 05:00 belongs to Thursday's night
])
def test_overnight_timeframe(when: dt.datetime, expected: bool) -> None:
    st = custom([{"name": "Night", "priority": 50, "when": {"objects": ["night"]},
                  "actions": ["block"]}],
                {"night": [{"timeframe": {"start": "22:00", "end": "06:00",
                                          "days": ["mon", "tue", "wed", "thu", "fri"]}}]})
    assert (run(st, now=when)[0].final == "block") is expected


def test_office_hours_daytime_frame() -> None:
    st = custom([{"name": "Office", "priority": 50, "when": {"objects": ["office"]},
                  "actions": ["block"]}],
                {"office": [{"timeframe": {"start": "08:00", "end": "16:00",
                                           "days": ["mon", "tue", "wed", "thu", "fri"]}}]})
    [d] = run(st)
    assert d.final == "block"
    assert d.matches[0].reasons == [
        "when: object office: wed 12:00 is in 08:00-16:00 (mon,tue,wed,thu,fri)"]
    assert run(st, now=dt.datetime(2026, 11, 29, 12, 0))[0].final == "accept"  # Sunday


def test_an_inactive_rule_is_skipped() -> None:
    objects = {"any": [{"size": {"min_kb": 0}}]}
    rule = {"name": "Block", "priority": 50, "what": {"objects": ["any"]}, "actions": ["block"]}
    assert run(custom([rule], objects))[0].final == "block"
    assert run(custom([{**rule, "active": False}], objects))[0].final == "accept"


def test_to_and_when_groups_invert_and_need_all_in_mode_all() -> None:
    objects = {"ceo": [{"email": "ceo@example.test"}], "board": [{"domain": "example.test"}],
               "office": [{"timeframe": {"start": "08:00", "end": "16:00",
                                         "days": ["mon", "tue", "wed", "thu", "fri"]}}],
               "weekday": [{"timeframe": {"start": "00:00", "end": "23:59",
                                          "days": ["mon", "tue", "wed", "thu", "fri"]}}]}
    everyone_else = custom([{"name": "Not the CEO", "priority": 50,
                             "to": {"objects": ["ceo"], "invert": True},
                             "actions": ["block"]}], objects)
    decisions = run(everyone_else, envelope=env("ceo@example.test", "a@example.test"))
    assert [(d.recipient, d.final) for d in decisions] == [
        ("ceo@example.test", "accept"), ("a@example.test", "block")]
    both = custom([{"name": "CEO in the company", "priority": 50,
                    "to": {"objects": ["ceo", "board"], "mode": "all"},
                    "actions": ["block"]}], objects)
    decisions = run(both, envelope=env("ceo@example.test", "a@example.test"))
    assert [d.final for d in decisions] == ["block", "accept"]
    after_hours = custom([{"name": "After hours", "priority": 50,
                           "when": {"objects": ["office"], "invert": True},
                           "actions": ["block"]}], objects)
    assert run(after_hours)[0].final == "accept"  # Wednesday noon
    assert run(after_hours, now=dt.datetime(2026, 11, 25, 20, 0))[0].final == "block"
    office_and_weekday = custom([{"name": "Office", "priority": 50,
                                  "when": {"objects": ["office", "weekday"], "mode": "all"},
                                  "actions": ["block"]}], objects)
    assert run(office_and_weekday)[0].final == "block"
    assert run(office_and_weekday, now=dt.datetime(2026, 11, 25, 20, 0))[0].final == "accept"


def test_upper_bounds_of_size_and_spam_score() -> None:
    objects = {"small": [{"size": {"max_kb": 1}}], "grey": [{"spam": {"min": 3, "max": 5}}]}
    small = custom([{"name": "Small", "priority": 50, "what": {"objects": ["small"]},
                     "actions": ["block"]}], objects)
    assert run(small)[0].final == "block"
    assert run(small, raw=PLAIN + b"x" * 2048)[0].final == "accept"
    grey = custom([{"name": "Grey", "priority": 50, "what": {"objects": ["grey"]},
                    "actions": ["block"]}], objects)
    assert run(grey, result=scan(4.0))[0].final == "block"
    assert run(grey, result=scan(6.0))[0].final == "accept"


def test_archive_filename_object_matches_a_member_not_the_archive() -> None:
    objects = {"exe_inside": [{"archive_filename": "*.exe"}]}
    st = custom([{"name": "Exe in archive", "priority": 50,
                  "what": {"objects": ["exe_inside"]}, "actions": ["block"]}], objects)
    assert run(st, raw=zip_mail("setup.exe"))[0].final == "block"
    assert run(st, raw=zip_mail("notes.txt"))[0].final == "accept"


# --- user lists -------------------------------------------------------------------------------


def test_user_allow_list_skips_spam_but_not_virus() -> None:
    def lists(rcpt: str, sender: str) -> Any:
        return "allow" if rcpt == "bob@example.test" and sender == "alice@sender.test" else None

    decisions = run(default_state(), envelope=env("bob@example.test", "carol@example.test"),
                    result=scan(12.0), user_list=lists)
    assert [(d.recipient, d.final) for d in decisions] == [
        ("bob@example.test", "accept"), ("carol@example.test", "quarantine")]
    assert run(default_state(), result=scan(12.0, virus="Eicar"),
               user_list=lists)[0].quarantine_kind == "virus"


def test_user_block_list_quarantines_before_rules() -> None:
    asked: list[tuple[str, str]] = []

    def lists(rcpt: str, sender: str) -> Any:
        asked.append((rcpt, sender))
        return "block" if sender == "alice@sender.test" else None

    st = default_state(welcome=[{"domain": "sender.test"}])
    [d] = run(st, envelope=env(sender="bounces@list.test"), user_list=lists)
    assert (d.final, d.quarantine_kind, d.rule) == ("quarantine", "blocked", "user-blocklist")
    assert asked == [("bob@example.test", "bounces@list.test"),
                     ("bob@example.test", "alice@sender.test")]
    # A virus is never handed to the user's releasable quarantine.
    assert run(st, result=scan(virus="Eicar"), user_list=lists)[0].quarantine_kind == "virus"


def test_garbage_messages_get_a_decision() -> None:
    for name in ("no-headers.eml", "broken-base64.eml", "nested-100.eml", "truncated.eml",
                 "8bit-headers.eml", "bare-lf.eml"):
        [d] = run(default_state(), raw=(DATA / name).read_bytes(), envelope=env(sender=""))
        assert d.final == "accept", name


def test_message_too_complex_to_inspect_fails_closed_on_attachment_rules() -> None:
    lines = ["From: a@sender.test", "Subject: deep", "MIME-Version: 1.0"]
    for i in range(3000):  # beyond what the stdlib parser can take
        lines += [f'Content-Type: multipart/mixed; boundary="b{i}"', "", f"--b{i}"]
    [d] = run(default_state(), raw="\r\n".join(lines).encode())
    step = next(s for s in d.steps if s.action.kind == "remove_attachments")
    assert step.parts == ("*",)
    assert "too complex to inspect" in d.matches[0].reasons[0]


# --- the per-message rule budget (mail.rules_budget_ms) -----------------------------------


def heavy_state(budget_ms: int, entries: int = 300) -> State:
    """Body entries RE2 cannot skip through with a literal search: each one reads the body."""
    words = [{"body": rf"[a-z]+q{i:03d}[0-9]x"} for i in range(entries)]
    rules = [{"name": "Words", "priority": 50, "what": {"objects": ["words"]},
              "actions": ["quarantine"]},
             {"name": "Header", "priority": 40, "actions": [
                 {"add_header": {"name": "X-Seen", "value": "yes"}}]}]
    return state(mail={"rules_budget_ms": budget_ms}, rule_objects={"words": words},
                 rules=rules)


BIG = b"From: a@sender.test\r\nSubject: big\r\n\r\n" + (b"abcdefgh" * 16 + b"\r\n") * 7000


def test_rules_over_budget_quarantine_the_message_for_every_recipient() -> None:
    # About 300 searches of a 900 kB body: well over 10 ms of CPU on any machine.
    decisions = run(heavy_state(10), raw=BIG, envelope=env("bob@example.test",
                                                              "carol@example.test"))
    assert [(d.recipient, d.final, d.quarantine_kind, d.rule) for d in decisions] == [
        ("bob@example.test", "quarantine", "blocked", RULE_BUDGET),
        ("carol@example.test", "quarantine", "blocked", RULE_BUDGET)]
    assert all(d.actions == [] and d.steps == [] for d in decisions)  # the message as it came
    [reason] = decisions[0].matches[0].reasons
    assert reason.startswith("rule budget exceeded: the rules took ")
    assert "more than the 10 ms of mail.rules_budget_ms (stopped at rule 'Words')" in reason


def test_the_same_rules_within_the_budget_decide_normally() -> None:
    [d] = run(heavy_state(60000), raw=BIG)
    assert (d.final, d.rule) == ("accept", "default-accept")
    assert [s.rule for s in d.steps] == ["Header"]


def fake_clock(monkeypatch: pytest.MonkeyPatch, step: float) -> list[float]:
    """engine's CPU clock advancing `step` seconds per reading."""
    now = [0.0]

    def thread_time() -> float:
        now[0] += step
        return now[0]

    monkeypatch.setattr(engine.time, "thread_time", thread_time)
    return now


def test_budget_names_the_rule_where_it_stopped(monkeypatch: pytest.MonkeyPatch) -> None:
    # 10 s per reading: over at the first check, before the first rule (Blocklist) ran.
    fake_clock(monkeypatch, 10.0)
    [d] = run(default_state(block=[{"domain": "spammer.test"}]), budget_ms=1000)
    assert d.rule == RULE_BUDGET
    assert d.matches[0].reasons[0].endswith(
        "took 10000 ms of CPU, more than the 1000 ms of mail.rules_budget_ms "
        "(stopped at rule 'Blocklist')")


def test_budget_reads_the_clock_before_every_body_search_and_samples_the_rest(
        monkeypatch: pytest.MonkeyPatch) -> None:
    readings = [0]
    original = engine.time.thread_time

    def counting() -> float:
        readings[0] += 1
        return original()

    monkeypatch.setattr(engine.time, "thread_time", counting)
    run(heavy_state(60000, entries=40))
    # The start, the first (sampled) check, and one before each of the 40 body searches.
    assert readings[0] == 42
    readings[0] = 0
    run(default_state())  # 9 rules and 44 cheap entries: sampled, every 16th step
    assert readings[0] <= 1 + 1 + (9 + 44) // engine._Budget.EVERY + 1


def test_over_budget_with_a_virus_goes_to_the_virus_quarantine(
        monkeypatch: pytest.MonkeyPatch) -> None:
    fake_clock(monkeypatch, 10.0)
    [d] = run(default_state(), result=scan(virus="Eicar-Test-Signature"))
    assert (d.final, d.quarantine_kind, d.rule) == ("quarantine", "virus", RULE_BUDGET)


def test_the_budget_comes_from_the_state(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_clock(monkeypatch, 0.001)  # 1 ms per reading
    assert run(heavy_state(10, entries=5))[0].rule == "default-accept"
    assert run(heavy_state(10, entries=30))[0].rule == RULE_BUDGET


def test_default_rules_stay_far_below_the_default_budget() -> None:
    st = default_state(welcome=[{"regex": r"^.*@(a|b)\.partner\.test$"}])
    assert st.mail.rules_budget_ms == 2000
    for name in sorted(p.name for p in DATA.glob("*.eml")):
        [d] = run(st, raw=(DATA / name).read_bytes())
        assert d.rule != RULE_BUDGET, name


@pytest.mark.parametrize("value", [9, 60001, "2000", 2000.0])
def test_rules_budget_ms_bounds(value: object) -> None:
    from mailwarden.errors import StateError

    with pytest.raises(StateError) as caught:
        state(mail={"rules_budget_ms": value})
    [error] = caught.value.errors
    assert error.path == "mail.rules_budget_ms"
