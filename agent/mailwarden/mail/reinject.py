"""Handing mail back to Postfix on the reinjection port (10025), which applies no filter.

Blocking smtplib in a worker thread: one short loopback conversation per message. A
reinjection that does not end in 250 for every recipient is an error; the caller answers
4xx so that the sending Postfix keeps the message.
"""

from __future__ import annotations

import smtplib
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
    try:
        with smtplib.SMTP("127.0.0.1", port, local_hostname=hostname, timeout=timeout) as smtp:
            smtp.ehlo()
            if xforward and smtp.has_extn("xforward"):
                attrs = " ".join(f"{k}={_xtext(v)}" for k, v in xforward.items() if v)
                if attrs:
                    code, reply = smtp.docmd("XFORWARD", attrs)
                    if code != 250:
                        raise ReinjectError(f"XFORWARD refused: {code} {reply!r}")
            options = []
            if _needs_smtputf8(sender, recipients):
                options.append("SMTPUTF8")
            if not raw.isascii() and smtp.has_extn("8bitmime"):
                options.append("BODY=8BITMIME")
            refused = smtp.sendmail(sender, list(recipients), raw, mail_options=options)
    except smtplib.SMTPRecipientsRefused as exc:
        raise ReinjectError(f"reinjection refused every recipient: {exc.recipients}") from None
    except smtplib.SMTPResponseException as exc:
        raise ReinjectError(f"reinjection failed: {exc.smtp_code} {exc.smtp_error!r}") from None
    except (smtplib.SMTPException, OSError) as exc:
        raise ReinjectError(f"reinjection failed: {exc}") from None
    if refused:
        raise ReinjectError(f"reinjection refused some recipients: {refused}")


def _xtext(value: str) -> str:
    """XFORWARD values are xtext: '+', '=', controls and spaces hex-encoded."""
    out = []
    for ch in value:
        if ch in "+= " or not (33 <= ord(ch) <= 126):
            out.extend(f"+{b:02X}" for b in ch.encode())
        else:
            out.append(ch)
    return "".join(out)
