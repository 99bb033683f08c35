"""DMARC: record parsing, alignment, policy and pct, the org-domain fallback, and the store."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailwarden.mail import dmarc
from mailwarden.mail.dmarc import DmarcRecordError, parse_record
from mailwarden.mail.resolver import DnsTemporaryError
from mailwarden.store import dmarc as dmarc_store
from mailwarden.store.db import Database


def dns(records: dict[str, list[str]]) -> dmarc.TxtLookup:
    asked: list[str] = []

    def lookup(name: str) -> list[str]:
        asked.append(name)
        return records.get(name, [])

    lookup.asked = asked  # type: ignore[attr-defined]
    return lookup


REJECT = {"_dmarc.example.test": ["v=DMARC1; p=reject; rua=mailto:d@example.test"]}


# --- the record ---------------------------------------------------------------------------


def test_parse_record_with_defaults() -> None:
    record = parse_record("v=DMARC1; p=quarantine")
    assert (record.p, record.sp, record.adkim, record.aspf, record.pct) == (
        "quarantine", "quarantine", "r", "r", 100)


def test_parse_record_all_tags_and_lenient_optional_values() -> None:
    record = parse_record('"v=DMARC1;p=REJECT; sp=none; adkim=s; aspf=x; pct=25; '
                          'rua=mailto:a@x.test, mailto:b@y.test; future=1;"')
    assert (record.p, record.sp, record.adkim, record.aspf, record.pct) == (
        "reject", "none", "s", "r", 25)
    assert record.rua == ("mailto:a@x.test", "mailto:b@y.test")
    assert parse_record("v=DMARC1; p=none; pct=500").pct == 100


@pytest.mark.parametrize("text", ["p=reject; v=DMARC1", "v=DMARC2; p=reject",
                                  "v=DMARC1; p=maybe", "v=DMARC1", "v=DMARC1; junk"])
def test_invalid_records(text: str) -> None:
    with pytest.raises(DmarcRecordError):
        parse_record(text)


def test_bad_p_with_rua_means_none() -> None:
    assert parse_record("v=DMARC1; p=bogus; rua=mailto:a@x.test").p == "none"


# --- alignment ----------------------------------------------------------------------------


@pytest.mark.parametrize(("a", "b", "mode", "expected"), [
    ("example.test", "example.test", "s", True),
    ("mail.example.test", "example.test", "s", False),
    ("mail.example.test", "example.test", "r", True),
    ("a.example.co.uk", "b.example.co.uk", "r", True),
    ("example.co.uk", "other.co.uk", "r", False),
    ("", "example.test", "r", False),
])
def test_alignment(a: str, b: str, mode: str, expected: bool) -> None:
    assert dmarc.aligned(a, b, mode) is expected


def test_organizational_domain() -> None:
    assert dmarc.organizational_domain("a.b.example.co.uk") == "example.co.uk"
    assert dmarc.organizational_domain("Mail.Sender.TEST.") == "sender.test"


# --- evaluate -----------------------------------------------------------------------------


def test_spf_aligned_pass() -> None:
    result = dmarc.evaluate("example.test", "pass", "bounces.example.test", "none", [],
                            dns(REJECT))
    assert (result.result, result.spf_aligned, result.dkim_aligned) == ("pass", True, False)
    assert (result.policy, result.disposition) == ("reject", "none")


def test_dkim_aligned_pass_despite_spf_fail() -> None:
    result = dmarc.evaluate("example.test", "fail", "other.test", "pass",
                            ["other.test", "example.test"], dns(REJECT))
    assert (result.result, result.spf_aligned, result.dkim_aligned) == ("pass", False, True)


def test_strict_alignment_refuses_subdomains() -> None:
    records = {"_dmarc.example.test": ["v=DMARC1; p=reject; adkim=s; aspf=s"]}
    result = dmarc.evaluate("example.test", "pass", "mail.example.test", "pass",
                            ["mail.example.test"], dns(records))
    assert result.result == "fail" and result.disposition == "reject"


@pytest.mark.parametrize(("policy", "disposition"), [
    ("reject", "reject"), ("quarantine", "quarantine"), ("none", "none")])
def test_spoofed_from_gets_the_domain_policy(policy: str, disposition: str) -> None:
    records = {"_dmarc.example.test": [f"v=DMARC1; p={policy}"]}
    result = dmarc.evaluate("example.test", "pass", "spammer.test", "pass", ["spammer.test"],
                            dns(records))
    assert (result.result, result.policy, result.disposition) == ("fail", policy, disposition)


def test_modes_off_and_report_never_act() -> None:
    for mode in ("off", "report"):
        result = dmarc.evaluate("example.test", "fail", "x.test", "none", [], dns(REJECT),
                                mode=mode)
        assert (result.result, result.disposition) == ("fail", "none")
    result = dmarc.evaluate("example.test", "fail", "x.test", "none", [], dns(REJECT))
    assert result.disposition_for("report") == "none"
    assert result.disposition_for("enforce") == "reject"


def test_pct_samples_and_weakens_the_rest() -> None:
    records = {"_dmarc.example.test": ["v=DMARC1; p=reject; pct=30"]}
    inside = dmarc.evaluate("example.test", "fail", "x.test", "none", [], dns(records),
                            rand=lambda: 0.29)
    outside = dmarc.evaluate("example.test", "fail", "x.test", "none", [], dns(records),
                             rand=lambda: 0.30)
    assert (inside.applied_policy, inside.disposition) == ("reject", "reject")
    assert (outside.applied_policy, outside.disposition) == ("quarantine", "quarantine")
    q = {"_dmarc.example.test": ["v=DMARC1; p=quarantine; pct=0"]}
    assert dmarc.evaluate("example.test", "fail", "x.test", "none", [], dns(q),
                          rand=lambda: 0.0).disposition == "none"


def test_org_domain_fallback_uses_sp() -> None:
    records = {"_dmarc.example.test": ["v=DMARC1; p=reject; sp=quarantine"]}
    lookup = dns(records)
    result = dmarc.evaluate("news.example.test", "fail", "x.test", "none", [], lookup)
    assert lookup.asked == ["_dmarc.news.example.test", "_dmarc.example.test"]  # type: ignore[attr-defined]
    assert (result.record_domain, result.policy, result.disposition) == (
        "example.test", "quarantine", "quarantine")
    # Relaxed alignment of the subdomain with the org domain's SPF pass.
    ok = dmarc.evaluate("news.example.test", "pass", "example.test", "none", [], lookup)
    assert ok.result == "pass"


def test_subdomain_with_its_own_record_uses_p() -> None:
    records = {"_dmarc.news.example.test": ["v=DMARC1; p=none"],
               "_dmarc.example.test": ["v=DMARC1; p=reject"]}
    result = dmarc.evaluate("news.example.test", "fail", "x.test", "none", [], dns(records))
    assert (result.record_domain, result.policy) == ("news.example.test", "none")


def test_no_record_temperror_and_permerror() -> None:
    assert dmarc.evaluate("example.test", "fail", "x.test", "none", [], dns({})).result == "none"
    other_txt = {"_dmarc.example.test": ["v=spf1 -all", "hello", "v=dmarc1; p=reject"]}
    assert dmarc.evaluate("example.test", "fail", "", "none", [], dns(other_txt)).result == "none"
    two = {"_dmarc.example.test": ["v=DMARC1; p=reject", "v=DMARC1; p=none"]}
    assert dmarc.evaluate("example.test", "fail", "", "none", [], dns(two)).result == "permerror"
    bad = {"_dmarc.example.test": ["v=DMARC1; p=sometimes"]}
    assert dmarc.evaluate("example.test", "fail", "", "none", [], dns(bad)).result == "permerror"

    def down(name: str) -> list[str]:
        raise DnsTemporaryError("timeout")

    result = dmarc.evaluate("example.test", "fail", "", "none", [], down)
    assert (result.result, result.disposition) == ("temperror", "none")
    assert dmarc.evaluate("", "pass", "x.test", "none", [], dns({})).result == "none"


# --- the store ----------------------------------------------------------------------------


def test_record_and_read_back(tmp_path: Path) -> None:
    db = Database(tmp_path / "mw.db")
    spoofed = dmarc.evaluate("Example.test", "pass", "spammer.test", "pass", ["spammer.test"],
                             dns(REJECT))
    fine = dmarc.evaluate("example.test", "pass", "example.test", "pass", ["example.test"],
                          dns(REJECT))
    dmarc.record(db, spoofed, source_ip="203.0.113.5", mode="report")
    dmarc.record(db, fine, source_ip="192.0.2.25")
    rows = dmarc_store.results(db, header_from="example.test")
    assert [(r["result"], r["disposition"], r["source_ip"]) for r in rows] == [
        ("fail", "none", "203.0.113.5"), ("pass", "none", "192.0.2.25")]
    assert rows[0]["dkim_domains"] == ["spammer.test"] and rows[1]["dkim_aligned"] is True
    assert rows[0]["policy"] == "reject"
    assert dmarc_store.results(db, since=rows[1]["time"] + 1) == []
