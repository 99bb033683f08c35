"""The Received-SPF header (RFC 7208 §9.1): written by the policy service, read by the filter.

Both sides live here so that the filter's authentication (mail/auth.py) reads the header
without importing the policy daemon. The policy service prepends one to every message from
an untrusted client (mail/policy.py), so a Received-SPF a sender forged is never the topmost.
"""

from __future__ import annotations

import re

SPF_RESULTS = ("pass", "fail", "softfail", "neutral", "none", "temperror", "permerror")


def one_line(text: str) -> str:
    """Control characters to single spaces: nothing can break out of a header line."""
    return re.sub(r"[\x00-\x1f\x7f]+", " ", text).strip()


_DOT_ATOM = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.@:-]+$")


def _kv_value(value: str) -> str:
    value = one_line(value)
    if value and _DOT_ATOM.match(value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def received_spf(result: str, *, receiver: str, client_ip: str, sender: str, helo: str,
                 identity: str, comment: str) -> str:
    """The header value: `result (comment) key=value; ...` (RFC 7208 §9.1)."""
    comment = re.sub(r"[()\\]", "", one_line(comment))
    pairs = [("receiver", receiver), ("client-ip", client_ip), ("envelope-from", sender),
             ("helo", helo), ("identity", identity)]
    tail = " ".join(f"{k}={_kv_value(v)};" for k, v in pairs)
    return f"{result} ({comment}) {tail}"


def parse_received_spf(value: str) -> tuple[str, str]:
    """(result, domain) from a Received-SPF value; ("none", "") when it is not one.

    The domain is the one SPF checked: envelope-from's, or helo's for identity=helo. The
    filter must read only the topmost Received-SPF (ours; see the module docstring).
    """
    value = " ".join(value.split())  # unfold
    match = re.match(r"^\s*([A-Za-z]+)\b", value)
    if not match or match.group(1).lower() not in SPF_RESULTS:
        return "none", ""
    result = match.group(1).lower()
    rest = _strip_comments(value[match.end():])
    pairs: dict[str, str] = {}
    for key, quoted, plain in re.findall(
            r'([A-Za-z][A-Za-z0-9-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;\s]*))', rest):
        raw = quoted if quoted or plain == "" else plain
        pairs.setdefault(key.lower(), re.sub(r"\\(.)", r"\1", raw))
    identity = pairs.get("identity", "mailfrom").lower()
    sender = pairs.get("envelope-from", "")
    if identity == "helo" or not sender:
        domain = pairs.get("helo", "")
    else:
        domain = sender.rpartition("@")[2]
    return result, domain.strip().strip(".").lower()


def _strip_comments(text: str) -> str:
    # Innermost first, until none is left (comments nest, RFC 5322 §3.2.2).
    while True:
        stripped = re.sub(r"\((?:[^()\\]|\\.)*\)", " ", text)
        if stripped == text:
            return text
        text = stripped
