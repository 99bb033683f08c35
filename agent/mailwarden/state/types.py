"""Validated scalar types of the state file.

Each type checks one kind of value and, when it refuses it, says what was expected in words
an admin understands (``must be 1..65535``), because these messages reach the CLI and the API
unchanged, prefixed by the path of the field.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated

from pydantic import AfterValidator

from . import patterns

_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
# Used with fullmatch only: `$` would also accept a trailing newline, which splits a line of
# a rendered config file or a header in two.
_DOMAIN_RE = re.compile(rf"(?:{_LABEL}\.)+[a-z][a-z0-9-]*[a-z0-9]|(?:{_LABEL}\.)+[a-z]{{2,63}}")
_LOCAL_RE = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}")
_SECRET_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_HEADER_NAME_RE = re.compile(r"[\x21-\x39\x3b-\x7e]{1,76}")
_SAFE_LINE_RE = re.compile(r"[^\x00-\x08\x0a-\x1f\x7f]*")


def _domain(value: str) -> str:
    value = value.strip().lower().rstrip(".")
    if len(value) > 253 or not _DOMAIN_RE.fullmatch(value):
        raise ValueError(f"'{value}' is not a valid domain name")
    return value


def _hostname(value: str) -> str:
    value = value.strip().lower().rstrip(".")
    if "." not in value:
        raise ValueError(f"'{value}' must be a fully qualified name (e.g. mx1.example.org)")
    return _domain(value)


def _host(value: str) -> str:
    """A host name or an IP address literal (what a transport or resolver points at)."""
    value = value.strip()
    try:
        return str(ipaddress.ip_address(value.strip("[]")))
    except ValueError:
        pass
    try:
        return _domain(value)
    except ValueError:
        raise ValueError(f"'{value}' is neither a host name nor an IP address") from None


def _ip(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        raise ValueError(f"'{value}' is not an IP address") from None


def _network(value: str) -> str:
    """A CIDR network; a bare address means that one host."""
    value = value.strip()
    try:
        return str(ipaddress.ip_network(value, strict=True))
    except ValueError as exc:
        if "host bits set" in str(exc):
            fixed = ipaddress.ip_network(value, strict=False)
            raise ValueError(f"'{value}' has host bits set; did you mean {fixed}?") from None
        raise ValueError(f"'{value}' is not an IP network (e.g. 192.0.2.0/24)") from None


def _email(value: str) -> str:
    value = value.strip()
    local, sep, domain = value.rpartition("@")
    if not sep or not _LOCAL_RE.fullmatch(local) or ".." in local:
        raise ValueError(f"'{value}' is not an email address")
    return f"{local}@{_domain(domain)}"


def _regex(value: str) -> str:
    # RE2, the engine the rules run with (state/patterns.py), not Python's re.
    return patterns.check(value)


def _secret_name(value: str) -> str:
    if not _SECRET_RE.fullmatch(value):
        raise ValueError(
            f"'{value}' is not a secret name (lowercase letters, digits, '.', '_', '-'; "
            "the file lives in the secrets folder)"
        )
    return value


def _header_name(value: str) -> str:
    if not _HEADER_NAME_RE.fullmatch(value):
        raise ValueError(f"'{value}' is not a valid header field name")
    return value


def _single_line(value: str) -> str:
    """Text that ends up inside a config line or a header: no control characters."""
    if not _SAFE_LINE_RE.fullmatch(value):
        raise ValueError("must be a single line without control characters")
    return value


def _hhmm(value: str) -> str:
    match = re.fullmatch(r"([01]\d|2[0-3]):([0-5]\d)", value)
    if not match:
        raise ValueError(f"'{value}' is not a time of day as HH:MM (00:00..23:59)")
    return value


def _int_range(low: int, high: int) -> AfterValidator:
    def check(value: int) -> int:
        if not low <= value <= high:
            raise ValueError(f"must be {low}..{high}")
        return value

    return AfterValidator(check)


Domain = Annotated[str, AfterValidator(_domain)]
Hostname = Annotated[str, AfterValidator(_hostname)]
Host = Annotated[str, AfterValidator(_host)]
IPAddress = Annotated[str, AfterValidator(_ip)]
Network = Annotated[str, AfterValidator(_network)]
Email = Annotated[str, AfterValidator(_email)]
Regex = Annotated[str, AfterValidator(_regex)]
SecretName = Annotated[str, AfterValidator(_secret_name)]
HeaderName = Annotated[str, AfterValidator(_header_name)]
Line = Annotated[str, AfterValidator(_single_line)]
TimeOfDay = Annotated[str, AfterValidator(_hhmm)]
Port = Annotated[int, _int_range(1, 65535)]
Seconds = Annotated[int, _int_range(1, 86400)]
Days = Annotated[int, _int_range(1, 3650)]
