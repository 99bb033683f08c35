"""Sender authentication in the filter: SPF (from the policy service), DKIM, DMARC.

SPF is computed once, by the policy service at RCPT time, and reaches the filter as the
Received-SPF header Postfix prepended; the filter only reads it. DKIM is verified here with
dkimpy (DMARC needs the d= domains, and the agent controls the resolver), DMARC evaluated from
both, and its result recorded for aggregate reports. Outbound mail is signed here.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Sequence
from dataclasses import replace

from ..layout import Layout
from ..state.schema import State
from ..store.batch import BatchWriter
from ..store.db import Database
from . import cpu
from . import dkim as mail_dkim
from . import dmarc as mail_dmarc
from .message import ParsedMessage
from .receivedspf import parse_received_spf
from .resolver import make_resolver
from .ruleengine import RecipientDecision
from .types import AuthResult, Envelope, ScanResult


def _trusted(state: State, envelope: Envelope) -> bool:
    if not envelope.client_ip:
        return True  # locally submitted (no XFORWARD address)
    try:
        ip = ipaddress.ip_address(envelope.client_ip)
    except ValueError:
        return False
    if ip.is_loopback:
        return True
    networks = [*state.networks.trusted, *state.networks.backup_mx]
    return any(ip in ipaddress.ip_network(n) for n in networks)


class Authenticator:
    def __init__(self, layout: Layout, db: Database,
                 writer: BatchWriter | None = None) -> None:
        self.layout = layout
        self.db = db
        self.writer = writer  # DMARC results go with the filter's batches when given
        self.resolver = make_resolver(layout)

    async def check(self, state: State, raw: bytes, message: ParsedMessage,
                    envelope: Envelope) -> AuthResult:
        if envelope.direction == "out":
            return AuthResult(from_domain=message.from_domain)
        spf, spf_domain = "none", envelope.sender.rpartition("@")[2].lower()
        received_spf = message.header("Received-SPF")
        if received_spf:
            spf, parsed_domain = parse_received_spf(received_spf)
            spf_domain = parsed_domain or spf_domain
        dkim_result, domains = "none", tuple[str, ...]()
        if state.dkim.verify:
            loop = asyncio.get_running_loop()
            dkim_result, found = await loop.run_in_executor(
                None, cpu.in_thread(lambda: mail_dkim.verify(raw, self.resolver)))
            domains = tuple(found)
        result = AuthResult(spf=spf, spf_domain=spf_domain, dkim=dkim_result,
                            dkim_domains=domains, from_domain=message.from_domain)
        if state.dkim.dmarc == "off" or not message.from_domain or _trusted(state, envelope):
            # Our own networks are not judged by other domains' DMARC policies, just as the
            # policy service does not check their SPF.
            return result
        loop = asyncio.get_running_loop()
        evaluation = await loop.run_in_executor(None, cpu.in_thread(lambda: mail_dmarc.evaluate(
            message.from_domain, spf, spf_domain, dkim_result, list(domains), self.resolver)))
        mail_dmarc.record(self.writer or self.db, evaluation, source_ip=envelope.client_ip,
                          mode=state.dkim.dmarc)
        # The policy after pct sampling: what enforcement acts on.
        return replace(result, dmarc=evaluation.result,
                       dmarc_policy=evaluation.disposition_for(state.dkim.dmarc))

    def enforce(self, state: State, decisions: Sequence[RecipientDecision],
                scan: ScanResult) -> list[RecipientDecision]:
        """DMARC enforcement overrides the rules: a forged From is not welcome anywhere."""
        auth = scan.auth
        if state.dkim.dmarc != "enforce" or auth.dmarc != "fail":
            return list(decisions)
        if auth.dmarc_policy == "reject":
            reason = f"5.7.1 DMARC policy of {auth.from_domain} rejects this message"
            if state.mail.filter_mode == "before_queue":
                return [replace(d, final="reject", rule="dmarc", reject_message=reason)
                        for d in decisions]
        if auth.dmarc_policy in ("reject", "quarantine"):
            return [replace(d, final="quarantine", quarantine_kind="spam", rule="dmarc")
                    for d in decisions]
        return list(decisions)

    def sign(self, state: State, raw: bytes) -> bytes:
        return mail_dkim.sign(raw, state, self.layout)
