"""The one-time setup code that guards the web wizard.

A fresh appliance has no admin, so its web UI would belong to whoever reaches it first. The
console shows a code (only someone at the console, or with the hypervisor's console, can read
it); the web wizard asks for it. It is used once: a successful setup deletes it.
"""

from __future__ import annotations

import hmac
import secrets
from pathlib import Path

from ..files import write_atomic

# No 0/O, 1/I/L: read off a console and typed by a person.
_ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"
_GROUPS, _GROUP_LEN = 4, 4  # 16 symbols of 31: about 79 bits


def _normal(code: str) -> str:
    return "".join(ch for ch in code.upper() if ch.isalnum())


def issue(path: Path, owner: tuple[int, int] | None = None) -> str:
    """Make a new code (replacing any earlier one) and return it for the console. `owner`:
    who reads and deletes it (the API's user), given to the new file before it appears: a
    chown by path afterwards could be sent through a link to any file."""
    raw = "".join(secrets.choice(_ALPHABET) for _ in range(_GROUPS * _GROUP_LEN))
    code = "-".join(raw[i:i + _GROUP_LEN] for i in range(0, len(raw), _GROUP_LEN))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, (code + "\n").encode(), 0o600, owner=owner)
    return code


def current(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii").strip() or None
    except FileNotFoundError:
        return None


def matches(path: Path, given: str) -> bool:
    expected = current(path)
    if expected is None:
        return False
    return hmac.compare_digest(_normal(expected).encode(), _normal(given).encode())


def discard(path: Path) -> None:
    path.unlink(missing_ok=True)
