"""A quarantined message made safe to look at: headers, text, and sanitised HTML.

The HTML goes through nh3 (ammonia): no script, no event handlers, no style sheets, no
forms, and no remote content (an image keeps its src only when it is a data: URL), links get
rel="noopener noreferrer nofollow". The web UI shows it in a sandboxed frame served with a
Content-Security-Policy that forbids everything else, so a sanitiser bug alone is not enough.
"""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage, Message
from typing import Any

import nh3

MAX_TEXT = 512 * 1024
_CSP_BODY = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; "
             "form-action 'none'")
# The header also limits who may frame it; a <meta> policy cannot say that (browsers
# ignore frame-ancestors there), so the page carries the rest as a second line of defence.
PREVIEW_CSP = _CSP_BODY + "; frame-ancestors 'self'"


def _keep_attribute(tag: str, attribute: str, value: str) -> str | None:
    if attribute == "src" and not value.startswith("data:"):
        return None  # remote images would tell the sender the mail was opened
    return value


def sanitise_html(html: str) -> str:
    return nh3.clean(
        html[:MAX_TEXT],
        url_schemes={"http", "https", "mailto", "data"},
        attribute_filter=_keep_attribute,
        link_rel="noopener noreferrer nofollow",
    )


def _decoded(part: Message) -> str:
    try:
        content = part.get_content() if isinstance(part, EmailMessage) else None
    except (LookupError, ValueError, AssertionError):
        content = None
    if isinstance(content, str):
        return content[:MAX_TEXT]
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    charset = part.get_content_charset() or "utf-8"
    try:
        return payload.decode(charset, errors="replace")[:MAX_TEXT]
    except LookupError:
        return payload.decode("utf-8", errors="replace")[:MAX_TEXT]


def preview(raw: bytes) -> dict[str, Any]:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    text = html = None
    attachments = []
    for part in message.walk():
        if part.is_multipart():
            continue
        filename = part.get_filename()
        ctype = part.get_content_type()
        if filename or part.get_content_disposition() == "attachment":
            payload = part.get_payload(decode=True)
            attachments.append({"filename": filename, "content_type": ctype,
                                "size": len(payload) if isinstance(payload, bytes) else 0})
        elif ctype == "text/plain" and text is None:
            text = _decoded(part)
        elif ctype == "text/html" and html is None:
            html = sanitise_html(_decoded(part))
    headers = []
    for name, value in message.items():
        try:
            headers.append([name, str(value)])
        except (ValueError, IndexError):  # a header broken beyond decoding: show it raw
            headers.append([name, repr(value)])
    return {"headers": headers, "subject": str(message.get("Subject", "")),
            "from": str(message.get("From", "")), "to": str(message.get("To", "")),
            "date": str(message.get("Date", "")), "text": text, "html": html,
            "attachments": attachments, "defects": [type(d).__name__ for d in message.defects]}


def preview_document(html: str | None, text: str | None) -> str:
    """A complete page for the UI's sandboxed frame."""
    import html as html_module

    body = html if html is not None else f"<pre>{html_module.escape(text or '')}</pre>"
    return ("<!doctype html><html><head><meta charset=\"utf-8\">"
            f"<meta http-equiv=\"Content-Security-Policy\" content=\"{_CSP_BODY}\">"
            f"</head><body>{body}</body></html>")
