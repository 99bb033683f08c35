"""Data that crosses the mail path's modules: the envelope, scan and authentication results.

Plain frozen dataclasses, no behaviour: the filter fills them, the rule engine reads them,
the store records them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Direction = Literal["in", "out"]


@dataclass(frozen=True)
class Envelope:
    sender: str  # "" for the null sender (bounces)
    recipients: tuple[str, ...]
    direction: Direction
    client_ip: str | None = None  # the original client (XFORWARD), not Postfix
    client_name: str | None = None
    helo: str | None = None
    queue_id: str | None = None


@dataclass(frozen=True)
class SpamResult:
    score: float
    symbols: dict[str, float] = field(default_factory=dict)
    action: str = ""  # Rspamd's own opinion, for the record only
    skipped: str | None = None  # why it was not scanned ("too large", "disabled", "failed")


@dataclass(frozen=True)
class Learned:
    """Rspamd's answer to learning one message: learned now, or already learned as that
    class before (then nothing changed)."""

    kind: str  # "spam" or "ham"
    already: bool = False
    message: str = ""


@dataclass(frozen=True)
class BayesCounts:
    """How many messages Rspamd's Bayes has learned as each class."""

    spam: int
    ham: int


@dataclass(frozen=True)
class VirusResult:
    virus: str | None  # signature name, or None when clean
    skipped: str | None = None  # not scanned though it should have been ("disabled", "failed")
    # clamd was not asked because the message cannot carry malware (plain text only,
    # virus.skip_plain_text): clean for the rules, and recorded as such.
    plain_text: bool = False
    parts: int = 0  # how many decoded parts clamd was sent; 0 when the whole message


@dataclass(frozen=True)
class AuthResult:
    spf: str = "none"  # pass, fail, softfail, neutral, none, temperror, permerror
    spf_domain: str = ""
    dkim: str = "none"  # pass, fail, none (best signature)
    dkim_domains: tuple[str, ...] = ()  # d= of every valid signature
    dmarc: str = "none"  # pass, fail, none, temperror
    dmarc_policy: str = ""  # what enforcement acts on: none, quarantine, reject (after pct)
    from_domain: str = ""


@dataclass(frozen=True)
class ScanResult:
    spam: SpamResult
    virus: VirusResult
    auth: AuthResult = field(default_factory=AuthResult)
