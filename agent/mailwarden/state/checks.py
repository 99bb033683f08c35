"""Checks that span several fields: duplicates, references between rules and objects.

They run per section, on sections that validated on their own, so one pass over a broken
file reports its structural and its semantic mistakes together, each with its exact path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from ..errors import FieldError
from .rules import Entry, Rule
from .schema import Dkim, Notifications, RelayDomain, System, Tls

Check = Callable[[Any], Iterator[FieldError]]


def _duplicates(
    items: list[Any], key: Callable[[Any], str], path: str, what: str
) -> Iterator[FieldError]:
    first: dict[str, int] = {}
    for index, item in enumerate(items):
        if item is None:  # invalid on its own; reported already
            continue
        value = key(item)
        if value in first:
            yield FieldError(
                f"{path.format(index)}",
                f"{what} '{value}' is already at {path.format(first[value]).rsplit('.', 1)[0]}",
            )
        else:
            first[value] = index


def check_domains(domains: list[RelayDomain | None]) -> Iterator[FieldError]:
    yield from _duplicates(domains, lambda d: d.name, "domains[{}].name", "domain")
    # Several domains often share one internal server; Postfix keeps one TLS policy per
    # server, so they must agree on it.
    first: dict[tuple[str, int, bool], int] = {}
    for index, domain in enumerate(domains):
        if domain is None or domain.transport.protocol != "smtp":
            continue
        t = domain.transport
        server = (t.host, t.port, t.mx_lookup)  # the schema lower-cases host names
        if server not in first:
            first[server] = index
            continue
        other = domains[first[server]]
        assert other is not None
        if other.transport.tls != t.tls:
            yield FieldError(
                f"domains[{index}].transport.tls",
                f"'{t.tls}' differs from domains[{first[server]}] ({other.name}: "
                f"'{other.transport.tls}'), which delivers to the same server {t.host} port "
                f"{t.port}; one server has one TLS policy",
            )


def check_tls(tls: Tls) -> Iterator[FieldError]:
    yield from _duplicates(
        tls.policies, lambda p: p.destination.lower(), "tls.policies[{}].destination",
        "a policy for",
    )


def check_notifications(notifications: Notifications,
                        system: System | None) -> Iterator[FieldError]:
    """A notification turned on must have somebody to go to: notifications.recipients, or
    system.admin_email when that list is not given."""
    on = notifications.enabled()
    if not on:
        return
    if notifications.recipients == []:
        yield FieldError("notifications.recipients",
                         f"is empty, but notifications.{on[0]} is on: give at least one "
                         "address, or turn it off")
    elif notifications.recipients is None and system is not None and not system.admin_email:
        yield FieldError("notifications.recipients",
                         f"notifications.{on[0]} is on, but there is nobody to send it to: "
                         "give notifications.recipients or system.admin_email")


def check_dkim(dkim: Dkim) -> Iterator[FieldError]:
    yield from _duplicates(dkim.sign, lambda k: k.domain, "dkim.sign[{}].domain", "domain")


def check_rule_objects(objects: dict[str, list[Entry] | None]) -> Iterator[FieldError]:
    """Objects may be None where an object is invalid on its own (reported already)."""
    for name, entries in objects.items():
        if entries is None:
            continue
        families = {entry.family for entry in entries}
        if len(families) > 1:
            yield FieldError(
                f"rule_objects.{name}",
                f"mixes {' and '.join(sorted(families))} entries; an object holds one family",
            )


_GROUP_FAMILY = {"from": "who", "to": "who", "what": "what", "when": "when"}


def check_rules(
    rules: list[Rule | None], objects: dict[str, list[Entry] | None] | None
) -> Iterator[FieldError]:
    """Rules and objects may hold None where one is invalid on its own (reported already)."""
    yield from _duplicates(rules, lambda r: r.name, "rules[{}].name", "rule name")
    for index, rule in enumerate(rules):
        if rule is None:
            continue
        finals = [a.kind for a in rule.actions if a.final]
        if len(finals) > 1:
            yield FieldError(
                f"rules[{index}].actions",
                f"has {len(finals)} final actions ({', '.join(finals)}); at most one",
            )
        if objects is None:  # the objects themselves are broken; reported there
            continue
        for group_name, group in rule.groups().items():
            if group is None:
                continue
            want = _GROUP_FAMILY[group_name]
            for position, ref in enumerate(group.objects):
                path = f"rules[{index}].{group_name}.objects[{position}]"
                if ref not in objects:
                    yield FieldError(path, f"no rule object named '{ref}'")
                    continue
                entries = objects[ref]
                if entries is None:  # broken itself; reported there
                    continue
                families = {entry.family for entry in entries}
                if families and families != {want}:
                    yield FieldError(
                        path,
                        f"'{ref}' holds {'/'.join(sorted(families))} entries; "
                        f"the {group_name} group needs {want} objects",
                    )
