"""Handing mail back to Postfix on the reinjection port (10025), which applies no filter.

Blocking smtplib in a worker thread. A reinjection that does not end in 250 for every
recipient is an error; the caller answers 4xx so that the sending Postfix keeps the message.

`reinject` is one conversation for one message (releases from the quarantine, the CLI).
The content filter uses a `Reinjector`, which keeps each worker thread's connection open
between messages: connect, EHLO and QUIT were three of the seven round trips per message,
and a new smtpd session each time (issue 7's profile).
"""

from __future__ import annotations

import contextlib
import smtplib
import threading
import time
from collections.abc import Mapping, Sequence

from ..errors import MailwardenError


class ReinjectError(MailwardenError):
    code = "reinject_failed"


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
    out = []
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
            if xforward and smtp.has_extn("xforward"):
                attrs = " ".join(f"{k}={_xtext(v)}" for k, v in xforward.items() if v)
                if attrs:
                    code, reply = smtp.docmd("XFORWARD", attrs)
                    first = False
                    if code != 250:
                        raise ReinjectError(f"XFORWARD refused: {code} {reply!r}")
            options = []
            if _needs_smtputf8(sender, recipients):
                options.append("SMTPUTF8")
            if not raw.isascii() and smtp.has_extn("8bitmime"):
                options.append("BODY=8BITMIME")
            code, reply = smtp.mail(sender, options)
            first = False
            if code != 250:
                raise ReinjectError(f"reinjection failed: {code} {reply!r}")
            refused = {}
            for rcpt in recipients:
                code, reply = smtp.rcpt(rcpt)
                if code not in (250, 251):
                    refused[rcpt] = (code, reply)
            if len(refused) == len(recipients):
                raise ReinjectError(f"reinjection refused every recipient: {refused}")
            code, reply = smtp.data(raw)
            if code != 250:
                raise ReinjectError(f"reinjection failed: {code} {reply!r}")
            if refused:
                raise ReinjectError(f"reinjection refused some recipients: {refused}")
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


def _close(smtp: smtplib.SMTP) -> None:
    with contextlib.suppress(OSError):
        smtp.close()
