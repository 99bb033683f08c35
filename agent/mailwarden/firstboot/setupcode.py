"""The one-time setup code that guards the web wizard.

A fresh appliance has no admin, so its web UI would belong to whoever reaches it first. The
console shows a code (only someone at the console, or with the hypervisor's console, can read
it); the web wizard asks for it. It is used once: a successful setup deletes it (and the
appliance, set up, takes no other). It expires LIFETIME after it was made: a code photographed
off a screen is no key forever. The console shows a new one when it expired.

The file holds the code and, on a second line, when it expires (seconds since the epoch). A
file without that line (from an earlier version) counts as expired.
"""

from __future__ import annotations

import hmac
import secrets
import time
from pathlib import Path

from ..files import write_atomic

# No 0/O, 1/I/L: read off a console and typed by a person.
_ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"
_GROUPS, _GROUP_LEN = 4, 4  # 16 symbols of 31: about 79 bits
LIFETIME = 3600.0


def _normal(code: str) -> str:
    return "".join(ch for ch in code.upper() if ch.isalnum())


def issue(path: Path, owner: tuple[int, int] | None = None, *, lifetime: float = LIFETIME,
          now: float | None = None) -> str:
    """Make a new code (replacing any earlier one) and return it for the console. `owner`:
    who reads and deletes it (the API's user), given to the new file before it appears: a
    chown by path afterwards could be sent through a link to any file."""
    raw = "".join(secrets.choice(_ALPHABET) for _ in range(_GROUPS * _GROUP_LEN))
    code = "-".join(raw[i:i + _GROUP_LEN] for i in range(0, len(raw), _GROUP_LEN))
    expires = (time.time() if now is None else now) + lifetime
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, f"{code}\n{expires:.0f}\n".encode(), 0o600, owner=owner)
    return code


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="ascii").split()
    except FileNotFoundError:
        return []


def current(path: Path) -> str | None:
    """The code, expired or not."""
    lines = _lines(path)
    return lines[0] if lines else None


def expires(path: Path) -> float | None:
    """When the code expires; None: no code, or no expiry recorded (counts as expired)."""
    lines = _lines(path)
    try:
        return float(lines[1]) if len(lines) > 1 else None
    except ValueError:
        return None


def expired(path: Path, now: float | None = None) -> bool:
    until = expires(path)
    return until is None or (time.time() if now is None else now) >= until


def valid(path: Path, now: float | None = None) -> str | None:
    """The code if there is one that has not expired."""
    code = current(path)
    return code if code is not None and not expired(path, now) else None


def matches(path: Path, given: str) -> bool:
    expected = current(path)
    if expected is None:
        return False
    return hmac.compare_digest(_normal(expected).encode(), _normal(given).encode())


def discard(path: Path) -> None:
    path.unlink(missing_ok=True)
