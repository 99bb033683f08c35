"""modify() and side_effects(): byte-exact when untouched, valid MIME when changed."""

from __future__ import annotations

import datetime as dt
import email
from email import policy
from pathlib import Path
from typing import Any

import yaml

from mailwarden.mail.actions import (
    ActionContext,
    BccCopy,
    Notification,
    modify,
    modify_report,
    side_effects,
)
from mailwarden.mail.message import parse_message
from mailwarden.mail.ruleengine import Step, evaluate
from mailwarden.mail.types import Envelope, ScanResult, SpamResult, VirusResult
from mailwarden.state.load import load_state_text
from mailwarden.state.rules import Action
from mailwarden.state.schema import State

DATA = Path(__file__).parent.parent / "data" / "mail"
BASE = {"version": 1, "system": {"hostname": "mx.example.test"},
        "domains": [{"name": "example.test", "transport": {"host": "127.0.0.1"}}]}
ENV = Envelope(sender="alice@sender.test", recipients=("bob@example.test",), direction="in")


def load(name: str) -> bytes:
    return (DATA / name).read_bytes()


def state(**extra: Any) -> State:
    return load_state_text(yaml.safe_dump({**BASE, **extra}))


def act(data: Any) -> Action:
    return Action.model_validate(data, strict=False)


def ctx(st: State | None = None, score: float = 7.5, virus: str | None = None,
        **kw: Any) -> ActionContext:
    result = ScanResult(spam=SpamResult(score=score, symbols={"BAYES_SPAM": 3.0, "X": 0.5}),
                        virus=VirusResult(virus=virus))
    return ActionContext(state=st or state(rules=[{"name": "r", "priority": 1,
                                                   "actions": ["accept"]}]),
                         scan=result, envelope=ENV, rule="Tag spam", **kw)


def reparse(raw: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(raw, policy=policy.default)  # type: ignore[return-value]


def test_no_modifying_action_returns_the_very_same_bytes() -> None:
    msg = parse_message(load("attachments.eml"))
    assert modify(msg, [], ctx()) is msg.raw
    assert modify(msg, [act({"bcc": {"to": "a@example.test"}})], ctx()) is msg.raw


def test_tag_subject_once_keeping_other_bytes() -> None:
    raw = load("plain.eml")
    msg = parse_message(raw)
    out = modify(msg, [act("tag_subject")], ctx())
    assert b"Subject: [SPAM] Lunch tomorrow?\r\n" in out
    assert out.replace(b"[SPAM] ", b"") == raw  # nothing else changed
    again = modify(parse_message(out), [act("tag_subject")], ctx())
    assert again == out  # never double-tagged


def test_tag_subject_with_encoded_and_8bit_subjects() -> None:
    raw = b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n\r\nx\r\n"
    out = modify(parse_message(raw), [act({"tag_subject": {"text": "[Werbung]"}})], ctx())
    assert reparse(out)["Subject"] == "[Werbung] Grüße"
    out = modify(parse_message(load("8bit-headers.eml")), [act("tag_subject")], ctx())
    assert reparse(out)["Subject"] == "[SPAM] Grüße aus Köln"
    subject_line = next(line for line in out.split(b"\r\n") if line.startswith(b"Subject:"))
    assert subject_line.isascii()  # re-encoded as RFC 2047, not raw 8-bit
    assert b"X-Latin: \xe9t\xe9\r\n" in out  # other 8-bit fields copied byte for byte


def test_missing_subject_gets_one() -> None:
    out = modify(parse_message(load("no-headers.eml")), [act("tag_subject")], ctx())
    parsed = reparse(out)
    assert parsed["Subject"] == "[SPAM]"
    assert b"just a body line" in out


def test_add_header_macros_spam_bar_and_sanitising() -> None:
    msg = parse_message(load("plain.eml"))
    out = modify(msg, [act({"add_header": {"name": "X-Spam-Info",
                                           "value": "{score} {spam_bar} {symbols} {rule} "
                                                    "{virus}{unknown}"}})], ctx(score=7.5))
    value = reparse(out)["X-Spam-Info"]
    assert value == "7.50 ******* BAYES_SPAM, X Tag spam {unknown}"
    many = modify(msg, [act({"add_header": {"name": "X-Bar", "value": "{spam_bar}"}})],
                  ctx(score=300))
    assert reparse(many)["X-Bar"] == "*" * 50
    evil = modify(msg, [act({"add_header": {"name": "X-V", "value": "{virus}"}})],
                  ctx(virus="Evil\r\nBcc: victim@example.test"))
    assert reparse(evil)["Bcc"] is None  # no header injection through a scanner string


def test_forged_headers_our_rules_write_are_removed() -> None:
    raw = b"X-Spam-Flag: NO\r\nSubject: hi\r\n\r\nbody\r\n"
    st = state(rules=[{"name": "Tag", "priority": 1,
                       "actions": [{"add_header": {"name": "X-Spam-Flag", "value": "YES"}}]}])
    out = modify(parse_message(raw), [], ctx(st))
    assert b"X-Spam-Flag" not in out


def test_remove_header_every_occurrence_with_folding() -> None:
    raw = b"Received: a\r\n\tfolded\r\nSubject: s\r\nreceived: b\r\n\r\nbody\r\n"
    out = modify(parse_message(raw), [act({"remove_header": {"name": "Received"}})], ctx())
    assert out == b"Subject: s\r\n\r\nbody\r\n"


def test_bare_lf_input_gives_bare_lf_output() -> None:
    raw = load("bare-lf.eml")
    out = modify(parse_message(raw), [act({"add_header": {"name": "X-A", "value": "1"}}),
                                      act({"disclaimer": {"text": "Sent via gateway"}})], ctx())
    assert b"\r\n" not in out
    assert b"X-A: 1\n" in out and b"Sent via gateway" in out


def test_remove_matched_attachment_only_with_notice() -> None:
    st = state()  # default rules
    raw = load("attachments.eml")
    msg = parse_message(raw)
    [decision] = evaluate(st, msg, ENV, ScanResult(spam=SpamResult(score=0),
                                                   virus=VirusResult(virus=None)),
                          now=dt.datetime(2026, 11, 25, 12))
    out = modify(msg, decision.actions, ctx(st, decision=decision))
    parsed = reparse(out)
    names = [p.get_filename() for p in parsed.walk() if p.get_filename()]
    assert names == ["report.pdf"]
    notices = [p.get_content() for p in parsed.walk() if "removed by" in str(p.get_payload())
               or (p.get_content_type() == "text/plain" and "removed" in p.get_content())]
    assert any("Rechnung für Sie.exe" in n for n in notices)
    assert b"TVqQAA" not in out  # the PE's base64 is gone
    assert parse_message(out).part("2").detected_type == "application/pdf"  # untouched


def test_remove_all_attachments() -> None:
    msg = parse_message(load("attachments.eml"))
    out = modify(msg, [Step(act({"remove_attachments": {"matched_only": False,
                                                        "notice": "gone: {filename}"}}),
                            "r", ())], ctx())
    parsed = parse_message(out)
    assert [p.filename for p in parsed.parts if p.filename] == []
    assert parsed.text.count("gone: ") == 2
    assert "documents attached" in parsed.text  # the body stays


def test_plain_action_without_decision_fails_closed() -> None:
    msg = parse_message(load("attachments.eml"))
    out = modify(msg, [act("remove_attachments")], ctx())
    assert [p.filename for p in parse_message(out).parts if p.filename] == []


def test_disclaimer_plain_and_html_escaped() -> None:
    msg = parse_message(load("attachments.eml"))
    out = modify(msg, [act({"disclaimer": {"text": "Confidential <b>&</b>"}})], ctx())
    parsed = reparse(out)
    plain = next(p for p in parsed.walk() if p.get_content_type() == "text/plain")
    html_part = next(p for p in parsed.walk() if p.get_content_type() == "text/html")
    assert plain.get_content().rstrip().endswith("Confidential <b>&</b>")
    assert "Confidential &lt;b&gt;&amp;&lt;/b&gt;</div></body>" in html_part.get_content()
    start = modify(parse_message(load("html-script.eml")),
                   [act({"disclaimer": {"text": "Top", "position": "start"}})], ctx())
    assert "<body><div class=\"mailwarden-disclaimer\">Top</div><p>" in \
        reparse(start).get_content()


def test_disclaimer_skips_signed_mail_and_says_so() -> None:
    raw = load("signed.eml")
    result = modify_report(parse_message(raw), [act({"disclaimer": {"text": "x"}})], ctx())
    assert result.raw is raw
    assert any("signed" in n for n in result.notes)


def test_deep_nesting_removal_fails_closed_without_raising() -> None:
    lines = ["From: a@sender.test", "Subject: deep", "MIME-Version: 1.0"]
    for i in range(600):
        lines += [f'Content-Type: multipart/mixed; boundary="b{i}"', "", f"--b{i}"]
    lines += ["Content-Type: application/octet-stream; name=x.exe", "", "MZ"]
    raw = "\r\n".join(lines).encode()
    result = modify_report(parse_message(raw), [Step(act({"remove_attachments": {
        "matched_only": False}}), "r", ())], ctx())
    assert b"MZ" not in result.raw.split(b"\r\n\r\n", 1)[1]
    assert reparse(result.raw)["Subject"] == "deep"


def test_authentication_results_and_extra_headers() -> None:
    raw = (b"Authentication-Results: mx.example.test; spf=pass\r\n"
           b"Authentication-Results: other.test; dkim=pass\r\nSubject: s\r\n\r\nb\r\n")
    out = modify(parse_message(raw), [], ctx(auth_results_host="mx.example.test",
                                             extra_headers=(("X-Mailwarden", "rule=x"),),
                                             strip_headers=("X-Mailwarden",)))
    parsed = reparse(out)
    assert parsed.get_all("Authentication-Results") == [
        "mx.example.test; spf=none; dkim=none; dmarc=none",
        "other.test; dkim=pass"]
    assert parsed.get_all("X-Mailwarden") == ["rule=x"]


def test_side_effects_notify_once_per_rule_and_bcc() -> None:
    st = state(rules=[
        {"name": "Virus", "priority": 90, "what": {"objects": ["virus"]},
         "actions": [{"notify": {"to": "admin", "subject": "{virus} in {subject}"}},
                     {"notify": {"to": "sender"}},
                     {"bcc": {"to": "archive@example.test", "original": False}},
                     {"add_header": {"name": "X-Virus", "value": "{virus}"}}, "block"]}],
        rule_objects={"virus": [{"virus": True}]})
    envelope = Envelope(sender="alice@sender.test", recipients=("a@example.test",
                                                                "b@example.test"),
                        direction="in")
    result = ScanResult(spam=SpamResult(score=1), virus=VirusResult(virus="Eicar"))
    msg = parse_message(load("plain.eml"))
    decisions = evaluate(st, msg, envelope, result, now=dt.datetime(2026, 11, 25, 12))
    effects = side_effects(decisions, msg, envelope, st, result)
    notes = [e for e in effects if isinstance(e, Notification)]
    bccs = [e for e in effects if isinstance(e, BccCopy)]
    assert [(n.to, n.recipients, n.subject) for n in notes] == [
        ("admin", ("postmaster@example.test",), "Eicar in Lunch tomorrow?"),
        ("sender", ("alice@sender.test",), "Mailwarden: Virus matched")]
    assert all(n.sender == "" for n in notes)
    body = reparse(notes[1].raw)
    assert body["Auto-Submitted"] == "auto-generated"
    assert "a@example.test, b@example.test" in body.get_content()
    assert len(bccs) == 1 and bccs[0].recipients == ("archive@example.test",)
    assert b"X-Virus: Eicar" in bccs[0].raw  # the modified copy
    null = Envelope(sender="", recipients=("a@example.test",), direction="in")
    effects = side_effects(evaluate(st, msg, null, result, now=dt.datetime(2026, 11, 25)),
                           msg, null, st, result)
    assert [e.to for e in effects if isinstance(e, Notification)] == ["admin"]


def test_admin_notices_go_to_the_admin_email_and_come_from_it() -> None:
    rules = [{"name": "Virus", "priority": 90, "what": {"objects": ["virus"]},
              "actions": [{"notify": {"to": "admin"}}, "block"]}]
    objects = {"virus": [{"virus": True}]}
    envelope = Envelope(sender="alice@sender.test", recipients=("a@example.test",),
                        direction="in")
    result = ScanResult(spam=SpamResult(score=1), virus=VirusResult(virus="Eicar"))
    msg = parse_message(load("plain.eml"))

    def notice(st: State) -> Any:
        decisions = evaluate(st, msg, envelope, result, now=dt.datetime(2026, 11, 25, 12))
        [note] = [e for e in side_effects(decisions, msg, envelope, st, result)
                  if isinstance(e, Notification)]
        return note

    unset = notice(state(rules=rules, rule_objects=objects))
    assert unset.recipients == ("postmaster@example.test",)  # the first domain's postmaster
    st = state(rules=rules, rule_objects=objects,
               system={"hostname": "mx.example.test", "admin_email": "it@example.test"})
    note = notice(st)
    assert note.recipients == ("it@example.test",)
    assert reparse(note.raw)["From"] == "Mailwarden <it@example.test>"


def test_non_ascii_header_value_is_rfc2047_encoded() -> None:
    out = modify(parse_message(load("plain.eml")),
                 [act({"add_header": {"name": "X-Note", "value": "geprüft von {rule}"}})], ctx())
    line = next(x for x in out.split(b"\r\n") if x.startswith(b"X-Note:"))
    assert line.isascii() and b"=?utf-8?" in line
    assert reparse(out)["X-Note"] == "geprüft von Tag spam"
