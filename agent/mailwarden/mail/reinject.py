"""Handing mail back to Postfix on the reinjection port (10025), which applies no filter.

Blocking smtplib in a worker thread. A reinjection that does not end in 250 for every
recipient is an error; the caller answers 4xx so that the sending Postfix keeps the message.

`reinject` is one conversation for one message (releases from the quarantine, the CLI).
The content filter uses a `Reinjector`, which keeps each worker thread's connection open
between messages: connect, EHLO and QUIT were three of the seven round trips per message,
and a new smtpd session each time.
"""

from __future__ import annotations

import contextlib
import re
import smtplib
import threading
import time
from collections.abc import Mapping, Sequence

from ..errors import MailwardenError
from . import compat
from .smtpdata import stuff


class ReinjectError(MailwardenError):
    code = "reinject_failed"


class RecipientsRefused(ReinjectError):
    """Postfix refused every recipient; `permanent` when each refusal was a 5xx (a bad
    address, not a busy Postfix)."""

    def __init__(self, message: str, refused: dict[str, tuple[int, bytes]]) -> None:
        super().__init__(message)
        self.permanent = all(500 <= code < 600 for code, _ in refused.values())


def _needs_smtputf8(sender: str, recipients: Sequence[str]) -> bool:
    return not all(a.isascii() for a in (sender, *recipients))


def reinject(
    raw: bytes, sender: str, recipients: Sequence[str], *, port: int, hostname: str,
    xforward: Mapping[str, str] | None = None, timeout: float = 120,
) -> None:
    """One conversation for one message: the same transaction as the filter's, closed after."""
    once = Reinjector(port=port, hostname=hostname, timeout=timeout)
    try:
        once.send(raw, sender, recipients, xforward=xforward)
    finally:
        once.close()


def _xtext(value: str) -> str:
    """XFORWARD values are xtext: '+', '=', controls and spaces hex-encoded."""
    out: list[str] = []
    for ch in value:
        if ch in "+= " or not (33 <= ord(ch) <= 126):
            out.extend(f"+{b:02X}" for b in ch.encode())
        else:
            out.append(ch)
    return "".join(out)


class _Stale(Exception):
    """A kept connection failed at the first command: nothing was sent, retry afresh."""


class Reinjector:
    """Reinjection over kept connections, one per worker thread (smtplib is not shared).

    A connection idle for longer than `idle` seconds is replaced rather than trusted
    (Postfix's smtpd drops idle clients after smtpd_timeout, 300 s by default). A kept
    connection that fails on the transaction's first command is replaced and the message
    sent once more on a new one: nothing of it had reached Postfix. Any later failure closes
    the connection and is an error, as with `reinject`; a message is never sent twice.
    """

    def __init__(self, *, port: int, hostname: str, timeout: float = 120,
                 idle: float = 60) -> None:
        self.port = port
        self.hostname = hostname
        self.timeout = timeout
        self.idle = idle
        self._local = threading.local()

    def close(self) -> None:
        """Close this thread's kept connection, if any."""
        kept: tuple[smtplib.SMTP, float] | None = getattr(self._local, "conn", None)
        self._local.conn = None
        if kept is not None:
            with contextlib.suppress(smtplib.SMTPException, OSError):
                kept[0].quit()
            _close(kept[0])

    def send(self, raw: bytes, sender: str, recipients: Sequence[str], *,
             xforward: Mapping[str, str] | None = None) -> None:
        kept: tuple[smtplib.SMTP, float] | None = getattr(self._local, "conn", None)
        self._local.conn = None
        if kept is not None:
            smtp, last_used = kept
            if time.monotonic() - last_used < self.idle:
                try:
                    self._transaction(smtp, raw, sender, recipients, xforward, kept=True)
                    return
                except _Stale:
                    pass
            _close(smtp)
        try:
            smtp = smtplib.SMTP("127.0.0.1", self.port, local_hostname=self.hostname,
                                timeout=self.timeout)
            smtp.ehlo()
        except (smtplib.SMTPException, OSError) as exc:
            raise ReinjectError(f"reinjection failed: {exc}") from None
        self._transaction(smtp, raw, sender, recipients, xforward, kept=False)

    def _transaction(self, smtp: smtplib.SMTP, raw: bytes, sender: str,
                     recipients: Sequence[str], xforward: Mapping[str, str] | None,
                     *, kept: bool) -> None:
        first = True
        try:
            # XFORWARD holds for one transaction (Postfix resets it after each), so every
            # message sends its own.
            attrs = ""
            if xforward and smtp.has_extn("xforward"):
                attrs = " ".join(f"{k}={_xtext(v)}" for k, v in xforward.items() if v)
            options = []
            if _needs_smtputf8(sender, recipients):
                if not smtp.has_extn("smtputf8"):
                    raise smtplib.SMTPNotSupportedError("SMTPUTF8 not supported by server")
                options.append("SMTPUTF8")
            if not raw.isascii() and smtp.has_extn("8bitmime"):
                options.append("BODY=8BITMIME")
            if not compat.pipelining(smtp):
                first = False  # smtplib's own steps: a failure is an error, never a retry
                self._public(smtp, raw, attrs, sender, recipients, options)
            else:
                self._pipelined(smtp, raw, attrs, sender, recipients, options)
        except ReinjectError:
            _close(smtp)
            raise
        except smtplib.SMTPResponseException as exc:
            _close(smtp)
            raise ReinjectError(
                f"reinjection failed: {exc.smtp_code} {exc.smtp_error!r}") from None
        except (smtplib.SMTPException, OSError) as exc:
            _close(smtp)
            if kept and first:
                raise _Stale from None
            raise ReinjectError(f"reinjection failed: {exc}") from None
        self._local.conn = (smtp, time.monotonic())

    @staticmethod
    def _pipelined(smtp: smtplib.SMTP, raw: bytes, attrs: str, sender: str,
                   recipients: Sequence[str], options: list[str]) -> None:
        """RFC 2920: the envelope and DATA in one write, their replies read in order; two
        round trips instead of four or more. The body goes only after a 354, so a failure
        before it leaves nothing behind."""
        optionlist = "".join(f" {o}" for o in options)
        commands = [f"XFORWARD {attrs}"] if attrs else []
        commands.append(f"MAIL FROM:{_quote(sender)}{optionlist}")
        commands += [f"RCPT TO:{_quote(r)}" for r in recipients]
        commands.append("DATA")
        compat.send_commands(smtp, commands, utf8="SMTPUTF8" in options)
        replies = [compat.read_reply(smtp)]
        try:
            # The kept connection answered: from here on, failures are errors, not stale.
            Reinjector._after_first(smtp, raw, attrs, recipients, commands, replies)
        except smtplib.SMTPResponseException as exc:
            raise ReinjectError(
                f"reinjection failed: {exc.smtp_code} {exc.smtp_error!r}") from None
        except (smtplib.SMTPException, OSError) as exc:
            raise ReinjectError(f"reinjection failed: {exc}") from None

    @staticmethod
    def _after_first(smtp: smtplib.SMTP, raw: bytes, attrs: str, recipients: Sequence[str],
                     commands: list[str], replies: list[tuple[int, bytes]]) -> None:
        replies += [compat.read_reply(smtp) for _ in commands[1:]]
        if attrs:
            code, reply = replies.pop(0)
            if code != 250:
                raise ReinjectError(f"XFORWARD refused: {code} {reply!r}")
        code, reply = replies.pop(0)
        if code != 250:
            raise ReinjectError(f"reinjection failed: {code} {reply!r}")
        refused = {}
        for rcpt in recipients:
            code, reply = replies.pop(0)
            if code not in (250, 251):
                refused[rcpt] = (code, reply)
        if len(refused) == len(recipients):
            # The open DATA is abandoned by closing the connection (the caller): a
            # transaction without its final "." is never queued.
            raise RecipientsRefused(f"reinjection refused every recipient: {refused}", refused)
        code, reply = replies.pop(0)
        if code != 354:
            raise ReinjectError(f"reinjection failed: {code} {reply!r}")
        compat.send_data(smtp, stuff(raw) + b".\r\n")
        code, reply = compat.read_reply(smtp)
        if code != 250:
            raise ReinjectError(f"reinjection failed: {code} {reply!r}")
        if refused:
            raise ReinjectError(f"reinjection refused some recipients: {refused}")

    @staticmethod
    def _public(smtp: smtplib.SMTP, raw: bytes, attrs: str, sender: str,
                recipients: Sequence[str], options: list[str]) -> None:
        """The same transaction through smtplib's public calls, a round trip per command
        (a server without PIPELINING, or a Python outside compat's fence)."""
        if attrs:
            code, reply = smtp.docmd("XFORWARD", attrs)
            if code != 250:
                raise ReinjectError(f"XFORWARD refused: {code} {reply!r}")
        try:
            refused = smtp.sendmail(sender, list(recipients), raw, mail_options=options)
        except smtplib.SMTPRecipientsRefused as exc:
            raise ReinjectError(
                f"reinjection refused every recipient: {exc.recipients}") from None
        if refused:
            raise ReinjectError(f"reinjection refused some recipients: {refused}")


_PLAIN = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
                    r"@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*")


def _quote(address: str) -> str:
    """smtplib.quoteaddr, without its RFC 5322 parser for the plain addresses Postfix
    passes (the same result: tests/unit/test_reinject_quote)."""
    if not address:
        return "<>"
    if _PLAIN.fullmatch(address):
        return f"<{address}>"
    return smtplib.quoteaddr(address)


def _close(smtp: smtplib.SMTP) -> None:
    with contextlib.suppress(OSError):
        smtp.close()
