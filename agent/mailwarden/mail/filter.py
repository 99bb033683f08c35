"""The content filter: Postfix hands each message over SMTP, the agent decides.

Inbound mail arrives on filter_in (10024), outbound on filter_out (10023), from Postfix's
`scan` transport (after-queue) or its smtpd_proxy_filter (before-queue). For each message:
parse once; ask ClamAV, Rspamd and the DKIM/DMARC checks concurrently; evaluate the rules per
recipient; carry out the outcome of each group of recipients (reinject to 10025, write to the
quarantine, drop); record the decision. The answer is 250 only when every recipient's
outcome is safe: reinjection answered 250, or the quarantine file is on disk. Anything else
is 4xx and Postfix keeps the message.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import re
import time
from collections.abc import Awaitable, Coroutine, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from aiosmtpd.smtp import SMTP, Session
from aiosmtpd.smtp import Envelope as SmtpEnvelope

from ..errors import MailwardenError, ScannerError
from ..layout import Layout
from ..state.schema import State, Virus
from ..store.batch import BatchWriter
from ..store.db import Database
from ..store.lists import GlobalLists, UserLists
from ..store.quarantine import Quarantine
from ..store.tracking import Delivery, MessageRecord, Tracking
from ..store.tracking import insert as tracking_insert
from . import actions as mail_actions
from . import compat, cpu, notify
from . import ruleengine as engine
from .auth import Authenticator
from .message import ParsedMessage, Part, parse_message, scan_targets
from .reinject import Reinjector
from .scanners import clamd_scan, rspamd_check
from .types import Direction, Envelope, ScanResult, SpamResult, VirusResult

log = logging.getLogger("mailwarden.filter")

TEMPFAIL = "451 4.3.0 Temporary failure in the content filter, please try again later"
RESULT_HEADERS = ("X-Mailwarden", "X-Mailwarden-Spam-Scan", "X-Mailwarden-Virus-Scan")


class FilterSMTP(compat.FastSMTP):
    """aiosmtpd's server plus XFORWARD, so the filter sees the original client."""

    def run_session(self, coro: Coroutine[Any, Any, None]) -> Awaitable[None]:
        # One task per connection: metering it measures the session's own CPU, DATA
        # handling included (mail/cpu.py).
        self.cpu_meter = cpu.CpuMeter()
        return cpu.session(coro, self.cpu_meter)

    async def smtp_XFORWARD(self, arg: str) -> None:
        attrs: dict[str, str] = getattr(self.session, "xforward", {})
        for item in (arg or "").split():
            key, sep, value = item.partition("=")
            if sep:
                attrs[key.upper()] = _unxtext(value)
        setattr(self.session, "xforward", attrs)  # noqa: B010 - aiosmtpd's Session has no slot
        await self.push("250 2.0.0 Ok")


compat.install_inspect_cache()


def _unxtext(value: str) -> str:
    """XFORWARD values are xtext: '+' and two hex digits stand for one byte."""
    decoded = re.sub(rb"\+([0-9A-Fa-f]{2})", lambda m: bytes([int(m.group(1), 16)]),
                     value.encode("ascii", "replace"))
    return decoded.decode("utf-8", "replace")


@dataclass
class FilterContext:
    """What the filter needs, shared by both listeners; `state` is swapped on reload."""

    state: State
    layout: Layout
    db: Database
    stats: cpu.FilterStats = field(default_factory=cpu.FilterStats)
    quarantine: Quarantine = field(init=False)
    tracking: Tracking = field(init=False)
    lists: UserLists = field(init=False)
    global_lists: GlobalLists = field(init=False)
    auth: Authenticator = field(init=False)
    reinjector: Reinjector = field(init=False)
    # Tracking, statistics and DMARC rows: batched off the event loop (store/batch.py).
    writer: BatchWriter = field(init=False)

    def __post_init__(self) -> None:
        self.writer = BatchWriter(self.db)
        self.reinjector = Reinjector(port=self.layout.ports.reinject,
                                     hostname=self.state.system.hostname)
        self.quarantine = Quarantine(self.db, self.layout.quarantine_dir)
        self.tracking = Tracking(self.db)
        self.lists = UserLists(self.db)
        self.global_lists = GlobalLists(self.db)
        self.auth = Authenticator(self.layout, self.db, self.writer)


class ContentFilter:
    """The aiosmtpd handler of one listener (inbound or outbound)."""

    def __init__(self, ctx: FilterContext, direction: Direction) -> None:
        self.ctx = ctx
        self.direction = direction

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: SmtpEnvelope,
                          hostname: str, responses: list[str]) -> list[str]:
        session.host_name = hostname
        session.xforward = {}  # type: ignore[attr-defined]
        return [*responses[:-1], "250-XFORWARD NAME ADDR PROTO HELO SOURCE IDENT",
                responses[-1]]

    async def handle_DATA(self, server: SMTP, session: Session, envelope: SmtpEnvelope) -> str:
        xforward: dict[str, str] = dict(getattr(session, "xforward", {}))
        started = time.perf_counter()
        try:
            return await process(self.ctx, self.direction, envelope.original_content or b"",
                                 envelope.mail_from or "", list(envelope.rcpt_tos), xforward)
        except Exception:
            # Never lose mail: whatever went wrong, Postfix keeps the message and retries.
            log.exception("filter failed for a message from %r; answered 451",
                          envelope.mail_from)
            return TEMPFAIL
        finally:
            meter: cpu.CpuMeter | None = getattr(server, "cpu_meter", None)
            if meter is not None:
                # Since the previous message of this session: its commands, DATA, the work.
                self.ctx.stats.add(meter.lap(), time.perf_counter() - started)

    async def handle_exception(self, error: Exception) -> str:
        log.error("SMTP session error: %r", error)
        return "451 4.3.0 Internal error in the content filter"


# --- the work on one message ------------------------------------------------------------


async def _scan(ctx: FilterContext, state: State, raw: bytes, envelope: Envelope,
                message: ParsedMessage) -> tuple[ScanResult, list[tuple[str, str]]]:
    """Both scanners at once; a failure is tempfail or a header, per the state."""
    ports = ctx.layout.ports
    notes: list[tuple[str, str]] = []

    async def spam() -> SpamResult:
        if not state.spam.enabled:
            return SpamResult(score=0.0, skipped="disabled")
        if len(raw) > state.spam.max_scan_size_kb * 1024:
            return SpamResult(score=0.0, skipped="too large")
        try:
            return await rspamd_check(raw, envelope, port=ports.rspamd_normal,
                                      timeout=state.spam.timeout_seconds,
                                      hostname=state.system.hostname)
        except ScannerError:
            if state.spam.on_failure == "tempfail":
                raise
            notes.append(("X-Mailwarden-Spam-Scan", "failed"))
            return SpamResult(score=0.0, skipped="failed")

    async def virus() -> VirusResult:
        if not state.virus.enabled:
            return VirusResult(virus=None, skipped="disabled")
        targets = scan_targets(message)
        if state.virus.skip_plain_text and targets == []:
            # Nothing here clamd could find (decision in docs/architecture.md): saves its
            # round trip and scan for most mail. Recorded in the header and tracking.
            return VirusResult(virus=None, plain_text=True)
        timeout = state.virus.timeout_seconds
        try:
            if targets and _parts_will_do(state.virus, targets):
                result = await clamd_scan([p.payload for p in targets], port=ports.clamd,
                                          timeout=timeout)
                return dataclasses.replace(result, parts=len(targets))
            return await clamd_scan([raw], port=ports.clamd, timeout=timeout)
        except ScannerError:
            if state.virus.on_failure == "tempfail":
                raise
            notes.append(("X-Mailwarden-Virus-Scan", "failed"))
            return VirusResult(virus=None, skipped="failed")

    spam_result, virus_result, auth = await asyncio.gather(
        cpu.metered(spam()), cpu.metered(virus()),
        cpu.metered(ctx.auth.check(state, raw, message, envelope)))
    return ScanResult(spam=spam_result, virus=virus_result, auth=auth), notes


def _parts_will_do(settings: Virus, targets: list[Part]) -> bool:
    """Whether clamd may get the decoded parts instead of the message (virus.scan): not when
    its phishing heuristics are on and there is HTML, since clamd checks links only in the
    mail it parses itself."""
    if settings.scan != "parts":
        return False
    return not (settings.heuristic_phishing
                and any(t.content_type == "text/html" for t in targets))


def _result_header(scan: ScanResult, rule: str) -> str:
    parts = [f"score={scan.spam.score:.2f}" if not scan.spam.skipped
             else f"score=unscanned ({scan.spam.skipped})"]
    if scan.virus.plain_text:
        parts.append("virus=none (plain text, not sent to clamd)")
    elif scan.virus.skipped:
        parts.append(f"virus=unscanned ({scan.virus.skipped})")
    else:
        parts.append(f"virus={scan.virus.virus or 'none'}")
    parts.append(f"rule={rule}")
    return "; ".join(parts)


async def process(ctx: FilterContext, direction: Direction, raw: bytes, sender: str,
                  recipients: list[str], xforward: Mapping[str, str]) -> str:
    started = time.perf_counter()
    state = ctx.state
    loop = asyncio.get_running_loop()
    envelope = Envelope(
        sender=sender, recipients=tuple(recipients), direction=direction,
        client_ip=_clean_addr(xforward.get("ADDR")), client_name=xforward.get("NAME"),
        helo=xforward.get("HELO"), queue_id=xforward.get("IDENT"),
    )
    message = parse_message(raw)
    try:
        scan, notes = await _scan(ctx, state, raw, envelope, message)
    except ScannerError as exc:
        log.warning("tempfail for %s: %s", envelope.queue_id or "?", exc)
        return f"451 4.7.1 {exc.scanner} is unavailable, please try again later"

    # In a worker thread: the rules' CPU (bounded by mail.rules_budget_ms, measured on that
    # thread) must not hold up the other SMTP sessions on this event loop. RE2 releases the
    # GIL while it matches, so a long body search does not either.
    now = dt.datetime.now()
    decisions = await loop.run_in_executor(None, cpu.in_thread(
        lambda: engine.evaluate(state, message, envelope, scan, now=now,
                                user_list=ctx.lists.lookup,
                                global_list=ctx.global_lists.lookup)))
    if decisions and decisions[0].rule == engine.RULE_BUDGET:
        log.warning("quarantined %s from %r: %s", envelope.queue_id or "a message",
                    envelope.sender, decisions[0].matches[0].reasons[0])
    decisions = ctx.auth.enforce(state, decisions, scan)
    before_queue = state.mail.filter_mode == "before_queue"
    if before_queue and decisions and all(d.final == "reject" for d in decisions):
        reply = decisions[0].reject_message or "5.7.1 Message rejected by policy"
        _record(ctx, envelope, message, scan, [Delivery(d.recipient, "reject", d.rule)
                                               for d in decisions], started)
        return f"550 {reply}"

    deliveries: list[Delivery] = []
    viruses: list[tuple[str, list[str]]] = []  # (quarantine id, its recipients)
    hostname = state.system.hostname
    xf = {"NAME": envelope.client_name or "", "ADDR": envelope.client_ip or "",
          "HELO": envelope.helo or "", "IDENT": envelope.queue_id or ""}
    for _key, group in engine.group_by_outcome(decisions):
        first = group[0]
        rcpts = [d.recipient for d in group]
        extra = [*notes, ("X-Mailwarden", _result_header(scan, first.rule))]
        ctx_actions = mail_actions.ActionContext(
            state=state, scan=scan, envelope=envelope, rule=first.rule,
            extra_headers=tuple(extra), strip_headers=RESULT_HEADERS,
            auth_results_host=hostname, decision=first)
        if first.final == "accept":
            body = mail_actions.modify(message, first.actions, ctx_actions)
            if direction == "out":
                body = await loop.run_in_executor(
                    None, cpu.in_thread(partial(ctx.auth.sign, state, body)))
            original_id = None
            if first.quarantine_original:
                # Attachments were removed: the untouched original waits in the attachment
                # quarantine, written before the stripped copy goes out.
                original_id = await loop.run_in_executor(None, cpu.in_thread(partial(
                    ctx.quarantine.put, raw, kind="attachment", sender=sender,
                    recipients=rcpts, lifetime_days=state.quarantine.lifetimes.attachment,
                    subject=message.subject, message_id=message.message_id,
                    spam_score=None if scan.spam.skipped else scan.spam.score,
                    virus=scan.virus.virus, rule=first.rule)))
            await loop.run_in_executor(None, cpu.in_thread(
                partial(ctx.reinjector.send, body, sender, rcpts, xforward=xf)))
            deliveries += [Delivery(r, "accept", first.rule, original_id) for r in rcpts]
        elif first.final in ("quarantine", "reject"):
            # A reject that cannot be said during the SMTP dialogue (after-queue mode, or a
            # message whose other recipients accept it) is quarantined: a bounce would be
            # backscatter, and silently dropping could lose mail someone wanted.
            body = mail_actions.modify(message, first.actions, ctx_actions)
            kind = first.quarantine_kind or _kind_of(first, scan)
            qid = await loop.run_in_executor(None, cpu.in_thread(partial(
                    ctx.quarantine.put, body, kind=kind, sender=sender, recipients=rcpts,
                    lifetime_days=getattr(state.quarantine.lifetimes, kind),
                    subject=message.subject, message_id=message.message_id,
                    spam_score=None if scan.spam.skipped else scan.spam.score,
                    virus=scan.virus.virus, rule=first.rule)))
            deliveries += [Delivery(r, "quarantine", first.rule, qid) for r in rcpts]
            if kind == "virus":
                viruses.append((qid, rcpts))
        else:  # block: discarded on purpose, recorded
            deliveries += [Delivery(r, first.final, first.rule) for r in rcpts]

    await _side_effects(ctx, state, message, envelope, decisions, scan)
    if viruses and state.notifications.virus_to_admin:
        await _virus_notices(ctx, state, message, envelope, scan, viruses)
    _record(ctx, envelope, message, scan, deliveries, started)
    return "250 2.0.0 Ok: filtered"


async def _side_effects(ctx: FilterContext, state: State, message: ParsedMessage,
                        envelope: Envelope, decisions: list[Any], scan: ScanResult) -> None:
    """BCC copies and notifications: after the mail itself is safe; failures are logged
    and counted, never turned into a 4xx (that would deliver the message twice)."""
    loop = asyncio.get_running_loop()
    for effect in mail_actions.side_effects(decisions, message, envelope, state, scan):
        try:
            await loop.run_in_executor(None, cpu.in_thread(
                partial(ctx.reinjector.send, effect.raw, effect.sender, list(effect.recipients))))
        except MailwardenError:
            log.exception("could not send %s to %s", type(effect).__name__, effect.recipients)


async def _virus_notices(ctx: FilterContext, state: State, message: ParsedMessage,
                         envelope: Envelope, scan: ScanResult,
                         viruses: list[tuple[str, list[str]]]) -> None:
    """notifications.virus_to_admin: a notice per quarantined copy, once the message is safe
    in the quarantine. Like the BCC copies, a failure is logged with the quarantine id and
    never turns into a 4xx (the message is held already; a retry would hold it twice)."""
    loop = asyncio.get_running_loop()
    for qid, rcpts in viruses:
        try:
            notice = notify.virus_notice(
                state, quarantine_id=qid, virus=scan.virus.virus or "unknown",
                sender=envelope.sender, recipients=rcpts, subject=message.subject,
                queue_id=envelope.queue_id, client_ip=envelope.client_ip)
            await loop.run_in_executor(None, cpu.in_thread(partial(
                ctx.reinjector.send, notice.message.as_bytes(), state.notification_sender,
                list(notice.recipients))))
        except MailwardenError:
            log.exception("could not send the virus notice for quarantined message %s", qid)


def _record(ctx: FilterContext, envelope: Envelope, message: ParsedMessage, scan: ScanResult,
            deliveries: list[Delivery], started: float) -> None:
    record = MessageRecord(
        direction=envelope.direction, sender=envelope.sender, size=message.size,
        deliveries=deliveries, queue_id=envelope.queue_id, message_id=message.message_id,
        client_ip=envelope.client_ip, helo=envelope.helo, subject=message.subject,
        spam_score=None if scan.spam.skipped else scan.spam.score,
        spam_symbols=scan.spam.symbols, virus=scan.virus.virus,
        virus_scan=_virus_scan(scan.virus), spf=scan.auth.spf,
        dkim=scan.auth.dkim, dmarc=scan.auth.dmarc,
        filter_ms=(time.perf_counter() - started) * 1000)
    now = time.time()
    ctx.writer.submit(lambda conn: tracking_insert(conn, record, now))


def _virus_scan(result: VirusResult) -> str:
    if result.plain_text:
        return "skipped: plain text"
    if result.skipped:
        return f"skipped: {result.skipped}"
    if not result.parts:
        return "clamd: whole message"
    return f"clamd: {result.parts} part{'s' if result.parts > 1 else ''}"


def _kind_of(decision: engine.RecipientDecision, scan: ScanResult) -> str:
    if scan.virus.virus:
        return "virus"
    if any(m.spam for m in decision.matches if m.rule == decision.rule):
        return "spam"
    return "blocked"


def _clean_addr(value: str | None) -> str | None:
    if not value or value.upper() in ("[UNAVAILABLE]", "[TEMPUNAVAIL]"):
        return None
    return value.removeprefix("IPV6:")
