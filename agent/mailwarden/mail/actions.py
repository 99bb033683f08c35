"""Carry out the non-final actions on a message, and plan its BCC copies and notifications.

Two layers, so untouched bytes stay untouched:

* header actions (tag_subject, add_header, remove_header, the filter's own result headers)
  edit the header block as bytes: the body, and every field we do not touch, are copied
  exactly, which keeps DKIM body hashes and multipart/signed content intact;
* body actions (remove_attachments, disclaimer) re-parse ``message.raw`` with compat32 (the
  ParsedMessage is frozen; re-parsing is deterministic, so the part indexes the engine
  recorded address the same parts) and write it back with ``maxheaderlen=0``, which never
  re-folds headers, and the input's line separator.

When no action changes anything, ``modify`` returns ``message.raw`` itself.
"""

from __future__ import annotations

import email
import email.utils
import html
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from email import policy as email_policy
from email.charset import QP, Charset
from email.generator import BytesGenerator
from email.header import Header
from email.message import Message
from functools import lru_cache

from ..state.rules import Action, Disclaimer, RemoveAttachments
from ..state.schema import State
from .message import ParsedMessage, decode_header_value
from .ruleengine import RecipientDecision, Step
from .types import Envelope, ScanResult

MAX_HEADER_VALUE = 900  # one generated header value, before folding
_FIELD = re.compile(rb"^([\x21-\x39\x3b-\x7e]+)[ \t]*:")


@dataclass(frozen=True)
class ActionContext:
    state: State
    scan: ScanResult
    envelope: Envelope
    rule: str = ""  # the deciding rule, for {rule} when a step does not say
    extra_headers: tuple[tuple[str, str], ...] = ()  # the filter's result headers, added
    strip_headers: tuple[str, ...] = ()  # removed first (forged copies of our headers)
    auth_results_host: str | None = None  # add Authentication-Results under this authserv-id
    decision: RecipientDecision | None = None  # supplies each action's rule and parts


@dataclass(frozen=True)
class ModifyResult:
    raw: bytes
    notes: list[str] = field(default_factory=list)  # what was skipped and why


@dataclass(frozen=True)
class BccCopy:
    """Send ``raw`` to ``recipients`` (the BCC address) from ``sender``."""

    to: str
    original: bool  # the message as received, or as the actions left it
    rule: str
    raw: bytes
    sender: str
    recipients: tuple[str, ...]


@dataclass(frozen=True)
class Notification:
    to: str  # as configured: admin, sender, recipients or an address
    subject: str
    body: str
    rule: str
    raw: bytes  # a complete message, ready to reinject
    sender: str  # "" (null sender): a notification must never bounce back
    recipients: tuple[str, ...]


def modify(message: ParsedMessage, actions: Sequence[Action | Step],
           ctx: ActionContext) -> bytes:
    """The message after ``actions`` (non-final, in order); ``message.raw`` if unchanged."""
    return modify_report(message, actions, ctx).raw


def modify_report(message: ParsedMessage, actions: Sequence[Action | Step],
                  ctx: ActionContext) -> ModifyResult:
    steps = _steps(actions, ctx)
    notes: list[str] = []
    raw = message.raw
    body_steps = [s for s in steps if s.action.remove_attachments or s.action.disclaimer]
    if body_steps:
        raw = _body_actions(message, body_steps, notes)
    edits = _HeaderEdits(ctx, message)
    for step in steps:
        edits.plan(step)
    if edits.empty():
        return ModifyResult(raw, notes)
    return ModifyResult(edits.apply(raw, message.linesep), notes)


def _steps(actions: Sequence[Action | Step], ctx: ActionContext) -> list[Step]:
    """Steps carry rule and parts; plain Actions take them from ctx.decision by position."""
    decision = ctx.decision
    aligned = (decision is not None and len(decision.steps) == len(actions)
               and all(isinstance(a, Action) and s.action == a
                       for a, s in zip(actions, decision.steps, strict=True)))
    steps: list[Step] = []
    for i, item in enumerate(actions):
        if isinstance(item, Step):
            steps.append(item)
        elif aligned and decision is not None:
            steps.append(decision.steps[i])
        else:
            # No record of matched parts: matched_only cannot be honoured, so fail closed
            # (remove every attachment) rather than deliver what a rule meant to strip.
            steps.append(Step(item, ctx.rule, ("*",)))
    return [s for s in steps if not s.action.final]


# --- header edits (bytes) ------------------------------------------------------------------


class _HeaderEdits:
    def __init__(self, ctx: ActionContext, message: ParsedMessage) -> None:
        self.ctx, self.message = ctx, message
        self.remove: set[str] = {h.lower() for h in ctx.strip_headers}
        self.add: list[tuple[str, str]] = list(ctx.extra_headers)
        self.tag: str | None = None
        self.auth = ctx.auth_results_host
        # Like PMG: whatever an add_header of any rule could write is removed from incoming
        # mail first, so a sender cannot forge "X-Spam-Flag: NO" past our own header.
        forgeable = {a.add_header.name.lower() for r in ctx.state.rules for a in r.actions
                     if a.add_header is not None}
        present = {n.lower() for n, _ in message.headers}
        self.remove |= forgeable & present

    def plan(self, step: Step) -> None:
        action = step.action
        if action.tag_subject is not None:
            self.tag = action.tag_subject.text or self.ctx.state.spam.subject_tag
        elif action.add_header is not None:
            value = _format(action.add_header.value, self.ctx, step.rule or self.ctx.rule)
            self.add.append((action.add_header.name, value))
        elif action.remove_header is not None:
            self.remove.add(action.remove_header.name.lower())

    def empty(self) -> bool:
        return not (self.remove or self.add or self.tag or self.auth)

    def apply(self, raw: bytes, linesep: str) -> bytes:
        eol = linesep.encode()
        fields, body = split_header_block(raw)
        out: list[bytes] = []
        tagged = False
        for name, data in fields:
            low = name.lower()
            if low in self.remove:
                continue
            if low == "authentication-results" and self.auth and _authserv(data) == \
                    self.auth.lower():
                continue  # RFC 8601 §5: drop results claiming to be ours
            if low == "subject" and self.tag is not None and not tagged:
                tagged = True
                data = _tag_subject(data, self.tag, eol)
            out.append(data)
        if self.tag is not None and not tagged:
            out.append(_field("Subject", self.tag, eol))
        if self.auth:
            out.insert(0, _field("Authentication-Results", _auth_results(self.auth,
                                                                         self.ctx.scan), eol))
        out += [_field(name, value, eol) for name, value in self.add]
        return b"".join(out) + body


def split_header_block(raw: bytes) -> tuple[list[tuple[str, bytes]], bytes]:
    """(name, field bytes with folding and line end) pairs, and the rest from the blank
    line on. A message without a separator gets one, so a field added stays a field."""
    fields: list[tuple[str, bytes]] = []
    pos = 0
    while pos < len(raw):
        end = raw.find(b"\n", pos)
        end = len(raw) if end < 0 else end + 1
        line = raw[pos:end]
        if line[:1] in (b" ", b"\t") and fields:
            name, data = fields[-1]
            fields[-1] = (name, data + line)
        elif (match := _FIELD.match(line)) is not None:
            fields.append((match.group(1).decode("ascii"), line))
        else:
            break
        pos = end
    rest = raw[pos:]
    if fields and not fields[-1][1].endswith(b"\n"):
        fields[-1] = (fields[-1][0], fields[-1][1] + (b"\r\n" if b"\r\n" in raw else b"\n"))
    if rest and rest.strip(b"\r\n") and not rest.startswith((b"\r\n", b"\n")):
        rest = (b"\r\n" if raw.find(b"\r\n") >= 0 else b"\n") + rest
    elif not rest:
        rest = b"\r\n" if b"\r\n" in raw else b"\n"
    return fields, rest


def _field(name: str, value: str, eol: bytes) -> bytes:
    value = _one_line(value)
    if value.isascii() and len(name) + 2 + len(value) <= 78:
        # Fits on one line: Header.encode would return it unchanged, at a cost of a fifth
        # of the filter's time for small mail in a profile of the filter under load.
        return f"{name}: {value}".encode("ascii") + eol
    return _folded(name, value, eol)


@lru_cache(maxsize=4096)
def _folded(name: str, value: str, eol: bytes) -> bytes:
    # Cached: our result headers repeat (the same scores, rules and Authentication-Results
    # for a sender's domain), and folding is the email package's slowest path.
    try:
        value.encode("ascii")
        header = Header(value, "us-ascii", header_name=name)
    except UnicodeEncodeError:
        header = Header(value, "utf-8", header_name=name)
    return f"{name}: {header.encode(linesep=eol.decode())}".encode("ascii") + eol


def _tag_subject(data: bytes, tag: str, eol: bytes) -> bytes:
    current = decode_header_value(data.split(b":", 1)[1].decode("ascii", "surrogateescape"))
    if tag.lower() in current.lower():
        return data  # never tag twice (replies to tagged mail, a second pass)
    value = data.split(b":", 1)[1]
    plain = b"=?" not in value and all(b < 0x80 for b in value) and tag.isascii()
    if plain:
        return b"Subject: " + tag.encode("ascii") + b" " + value.lstrip(b" \t")
    return _field("Subject", f"{tag} {current}", eol)


def _authserv(data: bytes) -> str:
    value = data.split(b":", 1)[1].decode("ascii", "replace")
    return value.strip().split(";", 1)[0].strip().split()[0].lower() if value.strip() else ""


def _auth_results(host: str, scan: ScanResult) -> str:
    auth = scan.auth
    parts = [host, f"spf={auth.spf}" + (f" smtp.mailfrom={auth.spf_domain}"
                                         if auth.spf_domain else "")]
    parts.append(f"dkim={auth.dkim}" + (f" header.d={auth.dkim_domains[0]}"
                                        if auth.dkim_domains else ""))
    parts.append(f"dmarc={auth.dmarc}" + (f" header.from={auth.from_domain}"
                                          if auth.from_domain else ""))
    return "; ".join(parts)


def _format(template: str, ctx: ActionContext, rule: str, extra: dict[str, str] | None = None,
            one_line: bool = True) -> str:
    values = _macros(ctx, rule)
    values.update(extra or {})
    # Replace only our names: a brace an admin wrote stays literal, and nothing is evaluated.
    text = re.sub(r"\{(\w+)\}", lambda m: values.get(m.group(1), m.group(0)), template)
    return _one_line(text) if one_line else text


def _macros(ctx: ActionContext, rule: str) -> dict[str, str]:
    spam = ctx.scan.spam
    score = "unscanned" if spam.skipped else f"{spam.score:.2f}"
    symbols = ", ".join(sorted(spam.symbols, key=lambda s: -abs(spam.symbols[s])))
    bar = "" if spam.skipped else "*" * max(0, min(50, int(spam.score)))
    return {"score": score, "symbols": symbols, "rule": rule,
            "virus": ctx.scan.virus.virus or "", "spam_bar": bar}


def _one_line(value: str) -> str:
    """Header values from templates and scanners: no CR/LF or other controls, bounded."""
    value = re.sub(r"[\x00-\x1f\x7f]+", " ", value).strip()
    return value[:MAX_HEADER_VALUE]


# --- body edits (MIME tree) ------------------------------------------------------------------


def _body_actions(message: ParsedMessage, steps: list[Step], notes: list[str]) -> bytes:
    if message.incomplete and any(
            s.action.remove_attachments is not None
            and (not s.action.remove_attachments.matched_only or "*" in s.parts)
            for s in steps):
        return _fail_closed(message, steps, notes)  # attachments may hide where we cannot see
    try:
        tree = email.message_from_bytes(message.raw, policy=email_policy.compat32)
    except RecursionError:
        return _fail_closed(message, steps, notes)
    changed = False
    for step in steps:
        if step.action.remove_attachments is not None:
            changed |= _remove(tree, message, step, step.action.remove_attachments, notes)
        elif step.action.disclaimer is not None:
            changed |= _disclaim(tree, step.action.disclaimer, notes)
    if not changed:
        return message.raw
    try:
        out = io.BytesIO()
        policy = email_policy.compat32.clone(linesep=message.linesep)
        BytesGenerator(out, mangle_from_=False, maxheaderlen=0, policy=policy).flatten(tree)
        return out.getvalue()
    except RecursionError:
        return _fail_closed(message, steps, notes)


def _fail_closed(message: ParsedMessage, steps: list[Step], notes: list[str]) -> bytes:
    """Nesting too deep for the stdlib to rewrite: if attachments had to go, the whole body
    goes (never deliver what a rule meant to strip); a disclaimer is simply skipped."""
    if not any(s.action.remove_attachments for s in steps):
        notes.append("disclaimer skipped: message too deeply nested to rewrite")
        return message.raw
    notes.append("message too deeply nested to rewrite: whole body replaced by the notice")
    fields, _body = split_header_block(message.raw)
    eol = message.linesep.encode()
    keep = [data for name, data in fields
            if name.lower() not in ("content-type", "content-transfer-encoding",
                                    "content-disposition", "mime-version")]
    text = "The content of this message was removed by the mail gateway (it could not be " \
           "processed safely)."
    return (b"".join(keep) + b"MIME-Version: 1.0" + eol
            + b"Content-Type: text/plain; charset=us-ascii" + eol + eol
            + text.encode("ascii") + eol)


def _indexed(tree: Message) -> list[tuple[str, Message, Message | None]]:
    """(index, part, parent) in the numbering message.py uses."""
    out: list[tuple[str, Message, Message | None]] = []
    stack: list[tuple[Message, str, Message | None]] = [(tree, "", None)]
    while stack:
        node, index, parent = stack.pop()
        out.append((index, node, parent))
        children = node.get_payload() if node.is_multipart() else None
        if isinstance(children, list):
            prefix = f"{index}." if index else ""
            for number in range(len(children), 0, -1):
                child = children[number - 1]
                if isinstance(child, Message):
                    stack.append((child, f"{prefix}{number}", node))
    return out


def _remove(tree: Message, message: ParsedMessage, step: Step, options: RemoveAttachments,
            notes: list[str]) -> bool:
    everything = not options.matched_only or "*" in step.parts
    wanted = {p.index for p in message.parts
              if (p.is_attachment or (p.is_container and p.index in step.parts))
              and (everything or p.index in step.parts)}
    if not wanted:
        return False
    changed = False
    done: list[str] = []
    for index, node, _parent in _indexed(tree):
        # A removed container takes its children with it; skip those.
        if index not in wanted or any(index.startswith(d + ".") for d in done if d):
            continue
        info = message.part(index)
        name = info.filename if info and info.filename else "unnamed"
        _replace_with_notice(node, options.notice.replace("{filename}", name))
        notes.append(f"removed part {index or '0'} ({name})")
        done.append(index)
        changed = True
    return changed


def _replace_with_notice(node: Message, text: str) -> None:
    for name in ("Content-Type", "Content-Transfer-Encoding", "Content-Disposition",
                 "Content-Description", "Content-ID"):
        del node[name]
    node.set_payload(None)  # type: ignore[call-overload]  # typeshed omits None, which clears
    node.preamble = node.epilogue = None
    charset = Charset("utf-8")
    charset.body_encoding = QP
    node.set_payload(text + "\n", charset)  # sets Content-Type and CTE


def _disclaim(tree: Message, options: Disclaimer, notes: list[str]) -> bool:
    parts = _indexed(tree)
    if any(node.get_content_type() in ("multipart/signed", "multipart/encrypted",
                                       "application/pkcs7-mime", "application/x-pkcs7-mime")
           for _, node, _ in parts):
        notes.append("disclaimer skipped: the message is signed or encrypted "
                     "(changing it would break the signature)")
        return False
    changed = False
    for _index, node, _parent in parts:
        ctype = node.get_content_type()
        if node.is_multipart() or ctype not in ("text/plain", "text/html") \
                or (node.get_content_disposition() or "") == "attachment" \
                or node.get_filename():
            continue
        payload = node.get_payload(decode=True)
        if not isinstance(payload, bytes):
            continue
        try:
            text = payload.decode(node.get_content_charset() or "us-ascii")
        except (LookupError, UnicodeDecodeError):
            text = payload.decode("utf-8", "replace")
        text = _with_disclaimer(text, options, html_part=ctype == "text/html")
        del node["Content-Transfer-Encoding"]
        charset = Charset("utf-8")
        charset.body_encoding = QP
        node.set_payload(text, charset)
        changed = True
    if not changed:
        notes.append("disclaimer skipped: no inline text part")
    return changed


def _with_disclaimer(text: str, options: Disclaimer, html_part: bool) -> str:
    nl = "\r\n" if "\r\n" in text else "\n"
    if not html_part:
        addition = options.text.replace("\r\n", "\n").replace("\n", nl)
        if options.position == "start":
            return addition + nl + nl + text
        return text.rstrip("\r\n") + nl + nl + addition + nl
    block = "<div class=\"mailwarden-disclaimer\">" + \
        html.escape(options.text).replace("\n", "<br>") + "</div>"
    if options.position == "start":
        match = re.search(r"<body[^>]*>", text, re.IGNORECASE)
        return text[:match.end()] + block + text[match.end():] if match else block + text
    closing = list(re.finditer(r"</body\s*>", text, re.IGNORECASE))
    if not closing:
        return text + block
    at = closing[-1].start()
    return text[:at] + block + text[at:]


# --- side effects --------------------------------------------------------------------------


def side_effects(decisions: Sequence[RecipientDecision], message: ParsedMessage,
                 envelope: Envelope, state: State, scan: ScanResult | None = None,
                 ) -> list[BccCopy | Notification]:
    """BCC copies and notifications the decisions ask for, each once per rule and target."""
    from .types import SpamResult, VirusResult

    scan = scan or ScanResult(spam=SpamResult(score=0.0, skipped="not given"),
                              virus=VirusResult(virus=None, skipped="not given"))
    effects: list[BccCopy | Notification] = []
    seen: dict[tuple[str, str, str], int] = {}
    notify_rcpts: dict[int, list[str]] = {}
    for decision in decisions:
        for step in decision.steps:
            action = step.action
            if action.bcc is not None:
                key = ("bcc", step.rule, action.bcc.to.lower())
                if key in seen:
                    continue
                if action.bcc.original:
                    raw = message.raw
                else:
                    ctx = ActionContext(state=state, scan=scan, envelope=envelope,
                                        rule=decision.rule, decision=decision)
                    raw = modify(message, decision.steps, ctx)
                seen[key] = len(effects)
                effects.append(BccCopy(to=action.bcc.to, original=action.bcc.original,
                                       rule=step.rule, raw=raw, sender=envelope.sender,
                                       recipients=(action.bcc.to,)))
            elif action.notify is not None:
                target = _notify_target(action.notify.to, state, envelope, decision)
                if target is None:
                    continue
                key = ("notify", step.rule, f"{action.notify.to}|{action.notify.subject}")
                if key not in seen:
                    seen[key] = len(effects)
                    effects.append(Notification(
                        to=action.notify.to,
                        subject=action.notify.subject, body=action.notify.body, rule=step.rule,
                        raw=b"", sender="", recipients=()))
                notify_rcpts.setdefault(seen[key], [])
                for addr in target.split(","):
                    if addr not in notify_rcpts[seen[key]]:
                        notify_rcpts[seen[key]].append(addr)
    return [_render_notification(e, notify_rcpts[i], message, envelope, state, scan)
            if isinstance(e, Notification) else e for i, e in enumerate(effects)]


def _notify_target(to: str, state: State, envelope: Envelope,
                   decision: RecipientDecision) -> str | None:
    if to == "admin":
        return state.admin_email
    if to == "sender":
        return envelope.sender or None  # never notify the null sender (bounce loops)
    if to == "recipients":
        return decision.recipient
    return to


def _render_notification(effect: Notification, targets: list[str], message: ParsedMessage,
                         envelope: Envelope, state: State, scan: ScanResult) -> Notification:
    ctx = ActionContext(state=state, scan=scan, envelope=envelope, rule=effect.rule)
    extra = {"sender": envelope.sender or "<>", "recipients": ", ".join(envelope.recipients),
             "subject": message.subject}
    subject = _format(effect.subject, ctx, effect.rule, extra)
    body = _format(effect.body, ctx, effect.rule, extra, one_line=False)
    mail = Message()
    mail["From"] = f"Mailwarden <{state.admin_email}>"
    mail["To"] = ", ".join(targets)
    mail["Subject"] = Header(subject, "utf-8").encode()
    mail["Auto-Submitted"] = "auto-generated"  # RFC 3834: no auto-replies to this
    mail["Date"] = email.utils.formatdate(localtime=True)
    mail["Message-ID"] = email.utils.make_msgid(domain=state.system.hostname)
    mail["MIME-Version"] = "1.0"
    charset = Charset("utf-8")
    charset.body_encoding = QP
    mail.set_payload(body + "\n", charset)
    out = io.BytesIO()
    BytesGenerator(out, mangle_from_=False, maxheaderlen=0,
                   policy=email_policy.compat32.clone(linesep="\r\n")).flatten(mail)
    return Notification(to=effect.to, subject=subject, body=body, rule=effect.rule,
                        raw=out.getvalue(), sender="", recipients=tuple(targets))
