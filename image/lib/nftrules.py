#!/usr/bin/env python3
"""Who may reach a TCP port, read from a loaded nftables ruleset (`nft -j list ruleset`).

    nftrules.py sources RULESET.json PORT     print the source networks of the input chain's
                                              accept rules for tcp PORT, one a line, sorted;
                                              "any" when a rule accepts it from everywhere
    nftrules.py expect RULESET.json PORT [NET...]
                                              exit 0 when those sources are exactly NET...
                                              (none: the port is closed), else print both

The end-to-end tier runs it on the booted gateway's ruleset, fetched through the guest agent;
the integration tier on a rendered ruleset loaded into a private network namespace. Only the
forms the appliance's rulesets use are understood (`ip[6] saddr` with a named or anonymous
set, a prefix or an address; `tcp dport` with a number or a set); a rule in any other form
that mentions the port is an error, never silently ignored. Standard library only.
"""

from __future__ import annotations

import ipaddress
import json
import sys
from typing import Any

Net = ipaddress.IPv4Network | ipaddress.IPv6Network
ANY = "any"


class Unknown(ValueError):
    """A rule this reader does not understand."""


def _network(value: Any) -> list[Net]:
    if isinstance(value, str):
        return [ipaddress.ip_network(value, strict=False)]
    if isinstance(value, dict) and "prefix" in value:
        prefix = value["prefix"]
        return [ipaddress.ip_network(f"{prefix['addr']}/{prefix['len']}", strict=False)]
    if isinstance(value, dict) and "range" in value:
        low, high = (ipaddress.ip_address(a) for a in value["range"])
        return list(ipaddress.summarize_address_range(low, high))  # type: ignore[arg-type]
    if isinstance(value, dict) and "elem" in value:  # an element with options
        return _network(value["elem"]["val"])
    raise Unknown(f"not a network: {value!r}")


def _networks(right: Any, sets: dict[str, list[Any]]) -> list[Net]:
    if isinstance(right, str) and right.startswith("@"):
        return [n for element in sets[right[1:]] for n in _network(element)]
    if isinstance(right, dict) and "set" in right:
        return [n for element in right["set"] for n in _network(element)]
    return _network(right)


def _ports(right: Any) -> set[int]:
    if isinstance(right, int):
        return {right}
    if isinstance(right, dict) and "set" in right:
        return {p for element in right["set"] for p in _ports(element)}
    if isinstance(right, dict) and "range" in right:
        low, high = right["range"]
        return set(range(int(low), int(high) + 1))
    raise Unknown(f"not a port: {right!r}")


def sources(ruleset: dict[str, Any], port: int, table: str = "mailwarden",
            chain: str = "input") -> set[Net] | str:
    """The networks the input chain accepts tcp `port` from; ANY when it accepts it from all."""
    items = ruleset["nftables"]
    sets: dict[str, list[Any]] = {}
    for item in items:
        if "set" in item and item["set"]["table"] == table:
            sets[item["set"]["name"]] = item["set"].get("elem", [])
    found: set[Net] = set()
    for item in items:
        rule = item.get("rule")
        if not rule or rule["table"] != table or rule["chain"] != chain:
            continue
        expressions = rule["expr"]
        ports: set[int] | None = None
        networks: list[Net] | None = None
        for expr in expressions:
            match = expr.get("match")
            if not match:
                continue
            payload = match["left"].get("payload", {}) if isinstance(match["left"], dict) else {}
            if payload.get("protocol") == "tcp" and payload.get("field") == "dport":
                if match["op"] not in ("==", "in"):
                    raise Unknown(f"port match with {match['op']}: {rule}")
                ports = _ports(match["right"])
            elif payload.get("protocol") in ("ip", "ip6") and payload.get("field") == "saddr":
                if match["op"] not in ("==", "in"):
                    raise Unknown(f"source match with {match['op']}: {rule}")
                networks = _networks(match["right"], sets)
        if ports is None or port not in ports:
            continue
        if "accept" not in expressions[-1]:
            continue
        if networks is None:
            return ANY
        found.update(networks)
    return found


def _collapse(networks: set[Net]) -> list[str]:
    v4 = ipaddress.collapse_addresses(n for n in networks if n.version == 4)
    v6 = ipaddress.collapse_addresses(n for n in networks if n.version == 6)
    return [str(n) for n in [*v4, *v6]]  # type: ignore[has-type]


def describe(found: set[Net] | str) -> list[str]:
    return [ANY] if found == ANY else _collapse(found)  # type: ignore[arg-type]


def main(args: list[str]) -> int:
    if len(args) < 3 or args[0] not in ("sources", "expect"):
        print(__doc__, file=sys.stderr)
        return 2
    with open(args[1], encoding="utf-8") as file:
        ruleset = json.load(file)
    try:
        have = describe(sources(ruleset, int(args[2])))
    except (Unknown, KeyError) as exc:
        print(f"nftrules: {exc}", file=sys.stderr)
        return 2
    if args[0] == "sources":
        print("\n".join(have))
        return 0
    want = [ANY] if args[3:] == [ANY] else _collapse(
        {ipaddress.ip_network(n, strict=False) for n in args[3:]})
    if have == want:
        return 0
    print(f"port {args[2]} accepted from {' '.join(have) or 'nowhere'}, "
          f"expected {' '.join(want) or 'nowhere'}")
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
