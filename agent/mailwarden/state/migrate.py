"""Forward migration of state files written by older Mailwarden versions.

A migration turns the data of version N into version N+1 and is registered in MIGRATIONS
under N. Files are migrated in memory when read; the next apply writes the new version.
A migration only reshapes data; validation against the current schema follows, so a
migrated file is refused with the same field errors as a current one would be.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import FieldError, StateError
from .schema import CURRENT_VERSION

Migration = Callable[[dict[str, Any]], dict[str, Any]]



def _v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    """Version 2 drops `quarantine.digest` and `notifications`: version 1 offered them, but
    nothing sent digests or notifications, so a setting there promised mail that never came.
    """
    data.pop("notifications", None)
    quarantine = data.get("quarantine")
    if isinstance(quarantine, dict) and "digest" in quarantine:
        data["quarantine"] = {k: v for k, v in quarantine.items() if k != "digest"}
    return data


def _v2_to_v3(data: dict[str, Any]) -> dict[str, Any]:
    """Version 3 adds quarantine digests (`quarantine.digest`, `domains[].digest`), off unless
    the file turns them on: nothing to reshape. The number changes so that an older
    Mailwarden refuses these keys with "written by a newer Mailwarden" rather than as typos.
    """
    return data


def _v3_to_v4(data: dict[str, Any]) -> dict[str, Any]:
    """Version 4 brings `notifications` back, now sent (virus notices, the daily report,
    service alerts), each off unless the file turns it on: nothing to reshape for them.
    Version 1's keys of that name were dropped by the migration to version 2, so none
    arrives here.

    It drops two settings that never had an effect: `virus.signatures.freshclam` (freshclam
    ran whatever it said) and `dkim.sign[].algorithm` (every key signs rsa-sha256). A key
    that said ed25519-sha256 never signed a message, only failed to: it is refused here
    rather than silently made RSA.
    """
    virus = data.get("virus")
    if isinstance(virus, dict) and isinstance(virus.get("signatures"), dict):
        signatures = {k: v for k, v in virus["signatures"].items() if k != "freshclam"}
        data["virus"] = {**virus, "signatures": signatures}
    dkim = data.get("dkim")
    if isinstance(dkim, dict) and isinstance(dkim.get("sign"), list):
        keys: list[Any] = []
        for index, key in enumerate(dkim["sign"]):
            if isinstance(key, dict) and "algorithm" in key:
                if key["algorithm"] != "rsa-sha256":
                    raise StateError([FieldError(
                        f"dkim.sign[{index}].algorithm",
                        f"{key['algorithm']!r} keys never signed (only rsa-sha256 does): "
                        "make an RSA key for this selector, or remove the entry")])
                key = {k: v for k, v in key.items() if k != "algorithm"}
            keys.append(key)
        data["dkim"] = {**dkim, "sign": keys}
    return data


MIGRATIONS: dict[int, Migration] = {1: _v1_to_v2, 2: _v2_to_v3, 3: _v3_to_v4}


def migrate(
    data: dict[str, Any],
    source: str = "state",
    migrations: dict[int, Migration] | None = None,
    target: int = CURRENT_VERSION,
) -> dict[str, Any]:
    steps = MIGRATIONS if migrations is None else migrations
    version = data.get("version")
    if version is None:
        raise StateError(
            [FieldError("version", f"required (this Mailwarden writes `version: {target}`)")],
            source,
        )
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise StateError([FieldError("version", f"must be a whole number >= 1 (got {version!r})")],
                         source)
    if version > target:
        raise StateError(
            [FieldError("version", f"{version} was written by a newer Mailwarden; this one "
                                   f"understands up to {target}")],
            source,
        )
    while version < target:
        if version not in steps:
            raise StateError([FieldError("version", f"no migration from version {version}")],
                             source)
        try:
            data = steps[version](dict(data))
        except StateError as exc:  # named after the file it came from
            raise StateError(exc.errors, source) from None
        version += 1
        data["version"] = version
    return data
