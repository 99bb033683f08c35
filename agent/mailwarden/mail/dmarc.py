"""DMARC (RFC 7489) for inbound mail: find the From domain's policy, check alignment, decide.

The record is parsed here by a small strict parser, not checkdmarc's: checkdmarc's
parse_dmarc_record resolves the rua/ruf destinations (MX and external-authorisation lookups,
through whatever resolver it is given) and raises when they are unverified, which is a
domain-audit concern, not a per-message one, and it follows RFC 9989 in dropping pct, which
receivers still honour. The organisational domain comes from the public suffix list
(publicsuffixlist, which checkdmarc uses too).

Every evaluation is recorded (store.dmarc) for aggregate reports, whatever the mode.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache

import dns.resolver

from ..errors import MailwardenError
from ..store import dmarc as dmarc_store
from ..store.batch import BatchWriter
from ..store.db import Database
from .resolver import DnsTemporaryError, txt_records

Mode = str  # the state's dkim.dmarc: off, report, enforce
TxtLookup = Callable[[str], Sequence[bytes | str]]
POLICIES = ("none", "quarantine", "reject")
# pct sampling: a message outside the sample gets the next less strict policy (§6.6.4).
_IS_DMARC = re.compile(r'^\s*"?v\s*=\s*DMARC1\s*(;|"?$)')
_WEAKER = {"reject": "quarantine", "quarantine": "none", "none": "none"}


class DmarcRecordError(MailwardenError):
    """A _dmarc TXT record that is not a usable DMARC policy."""

    code = "dmarc_record_invalid"


@dataclass(frozen=True)
class DmarcRecord:
    p: str
    sp: str
    adkim: str = "r"
    aspf: str = "r"
    pct: int = 100
    rua: tuple[str, ...] = ()
    ruf: tuple[str, ...] = ()


def parse_record(text: str) -> DmarcRecord:
    """A DMARC record's tags, strictly: v=DMARC1 first, p required (RFC 7489 §6.3).

    Unknown tags are ignored (§6.3); a bad value of an optional tag falls back to its
    default; a missing or bad p is an error unless rua is present (then p=none, §6.6.3).
    """
    parts = [p.strip() for p in text.strip().strip('"').split(";")]
    parts = [p for p in parts if p]
    tags: dict[str, str] = {}
    for part in parts:
        name, sep, value = part.partition("=")
        if not sep:
            raise DmarcRecordError(f"not a tag=value pair: {part!r}")
        name = name.strip().lower()
        if name not in tags:
            tags[name] = value.strip()
    if not parts or parts[0].partition("=")[0].strip().lower() != "v" \
            or tags.get("v") != "DMARC1":
        raise DmarcRecordError("a DMARC record starts with v=DMARC1")
    p = tags.get("p", "").lower()
    rua = _uris(tags.get("rua", ""))
    if p not in POLICIES:
        if not rua:
            raise DmarcRecordError(f"p={tags.get('p', '')!r} is not none, quarantine or reject")
        p = "none"
    sp = tags.get("sp", "").lower()
    sp = sp if sp in POLICIES else p
    adkim = tags.get("adkim", "r").lower()
    aspf = tags.get("aspf", "r").lower()
    try:
        pct = int(tags.get("pct", "100"))
    except ValueError:
        pct = 100
    return DmarcRecord(p=p, sp=sp, adkim=adkim if adkim in ("r", "s") else "r",
                       aspf=aspf if aspf in ("r", "s") else "r",
                       pct=pct if 0 <= pct <= 100 else 100,
                       rua=rua, ruf=_uris(tags.get("ruf", "")))


def _uris(value: str) -> tuple[str, ...]:
    return tuple(u.strip() for u in value.split(",") if u.strip())


@lru_cache(maxsize=1)
def _psl() -> object:
    from publicsuffixlist import PublicSuffixList

    return PublicSuffixList()


@lru_cache(maxsize=4096)
def organizational_domain(domain: str) -> str:
    """The registered domain (public suffix + one label); the domain itself if it has none."""
    domain = domain.strip().rstrip(".").lower()
    return _psl().privatesuffix(domain) or domain  # type: ignore[attr-defined]


def aligned(a: str, b: str, mode: str) -> bool:
    a, b = a.strip().rstrip(".").lower(), b.strip().rstrip(".").lower()
    if not a or not b:
        return False
    if mode == "s":
        return a == b
    return organizational_domain(a) == organizational_domain(b)


@dataclass(frozen=True)
class DmarcResult:
    from_domain: str
    result: str  # pass, fail, none (no policy), temperror (DNS), permerror (broken record)
    policy: str = ""  # the policy that applies to from_domain (p, or sp for a subdomain)
    applied_policy: str = ""  # policy after pct sampling
    disposition: str = "none"  # what to do in the mode evaluate() was given
    spf_result: str = "none"
    spf_domain: str = ""
    spf_aligned: bool = False
    dkim_result: str = "none"
    dkim_domains: tuple[str, ...] = ()
    dkim_aligned: bool = False
    record_domain: str = ""  # where the record was found (from_domain or its org domain)
    pct: int = 100
    rua: tuple[str, ...] = field(default_factory=tuple)
    detail: str = ""

    def disposition_for(self, mode: Mode) -> str:
        """none, quarantine or reject: only enforce acts; report only records."""
        if mode != "enforce" or self.result != "fail":
            return "none"
        return self.applied_policy or "none"


def _lookup(resolver: dns.resolver.Resolver | TxtLookup, name: str) -> list[str]:
    if isinstance(resolver, dns.resolver.Resolver):
        raw: Sequence[bytes | str] = txt_records(resolver, name)
    else:
        raw = resolver(name)
    return [r.decode("utf-8", errors="replace") if isinstance(r, bytes) else r for r in raw]


def _find_record(resolver: dns.resolver.Resolver | TxtLookup,
                 domain: str) -> tuple[DmarcRecord | None, str]:
    """(record, "") or (None, why not). DnsTemporaryError propagates."""
    # Other TXT records at _dmarc are ignored (§6.6.3); "DMARC1" is case-sensitive.
    found = [t for t in _lookup(resolver, f"_dmarc.{domain}") if _IS_DMARC.match(t)]
    if not found:
        return None, "no record"
    if len(found) > 1:
        raise DmarcRecordError(f"_dmarc.{domain} has {len(found)} DMARC records")
    return parse_record(found[0]), ""


def evaluate(from_domain: str, spf_result: str, spf_domain: str, dkim_result: str,
             dkim_domains: Sequence[str], resolver: dns.resolver.Resolver | TxtLookup, *,
             mode: Mode = "enforce", rand: Callable[[], float] = random.random) -> DmarcResult:
    """Evaluate DMARC for a message whose RFC5322.From domain is from_domain.

    spf_* is the SPF verdict (the MAIL FROM domain, or the HELO name for a null sender);
    dkim_domains the d= of every signature that verified. resolver is our dnspython resolver
    or, in tests, a function name -> TXT strings.
    """
    from_domain = from_domain.strip().rstrip(".").lower()
    base = DmarcResult(from_domain=from_domain, result="none", spf_result=spf_result,
                       spf_domain=spf_domain.lower(), dkim_result=dkim_result,
                       dkim_domains=tuple(d.lower() for d in dkim_domains))
    if not from_domain:
        return replace(base, detail="no From domain")
    org = organizational_domain(from_domain)
    try:
        record, why = _find_record(resolver, from_domain)
        record_domain = from_domain
        if record is None and org != from_domain:
            record, why = _find_record(resolver, org)
            record_domain = org
    except DnsTemporaryError as exc:
        return replace(base, result="temperror", detail=str(exc))
    except DmarcRecordError as exc:
        return replace(base, result="permerror", detail=str(exc))
    if record is None:
        return replace(base, detail=why)
    policy = record.p if record_domain == from_domain else record.sp
    spf_ok = spf_result == "pass" and aligned(spf_domain, from_domain, record.aspf)
    dkim_ok = dkim_result == "pass" and any(
        aligned(d, from_domain, record.adkim) for d in dkim_domains)
    result = "pass" if spf_ok or dkim_ok else "fail"
    applied = policy
    if result == "fail" and record.pct < 100 and rand() * 100 >= record.pct:
        applied = _WEAKER[policy]
    evaluated = replace(base, result=result, policy=policy, applied_policy=applied,
                         spf_aligned=spf_ok, dkim_aligned=dkim_ok, record_domain=record_domain,
                         pct=record.pct, rua=record.rua)
    return replace(evaluated, disposition=evaluated.disposition_for(mode))


def record(db: Database | BatchWriter, evaluation: DmarcResult, *,
           source_ip: str | None = None, mode: Mode | None = None) -> int | None:
    """Store the evaluation (store.dmarc); disposition as in mode when given. Through a
    BatchWriter (the filter) it is queued and written with the next batch: None."""
    disposition = evaluation.disposition if mode is None else evaluation.disposition_for(mode)
    if isinstance(db, BatchWriter):
        db.submit(lambda conn: dmarc_store.insert(
            conn, header_from=evaluation.from_domain, result=evaluation.result,
            disposition=disposition, source_ip=source_ip, spf_domain=evaluation.spf_domain,
            spf_result=evaluation.spf_result, spf_aligned=evaluation.spf_aligned,
            dkim_domains=evaluation.dkim_domains, dkim_result=evaluation.dkim_result,
            dkim_aligned=evaluation.dkim_aligned, policy=evaluation.policy, when=time.time()))
        return None
    return dmarc_store.record(
        db, header_from=evaluation.from_domain, result=evaluation.result,
        disposition=disposition, source_ip=source_ip, spf_domain=evaluation.spf_domain,
        spf_result=evaluation.spf_result, spf_aligned=evaluation.spf_aligned,
        dkim_domains=evaluation.dkim_domains, dkim_result=evaluation.dkim_result,
        dkim_aligned=evaluation.dkim_aligned, policy=evaluation.policy)
