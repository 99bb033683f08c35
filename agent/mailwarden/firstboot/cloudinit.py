"""The usual cloud-init inputs on a NoCloud drive, as answers.

A Proxmox VE cloud-init drive (and most NoCloud seeds) says the host name, the network and
the SSH keys in cloud-init's own files, not in Mailwarden's answers. The appliance runs no
cloud-init; first boot reads these few values itself and fills them into the answers where
the answers leave them out (the answers' own values always win):

- `hostname`: user-data `fqdn:`, else meta-data `local-hostname:`, else user-data `hostname:`,
  the first that is fully qualified (Proxmox VE writes `fqdn:` from the VM name and search
  domain, and no meta-data host name);
- `network`: network-config version 1 (what Proxmox VE writes: the first `physical` entry's
  first IPv4 `dhcp`/`dhcp4` or `static` subnet, its netmask turned into a prefix, the
  `nameserver` entries) or version 2 (the first of `ethernets`: `dhcp4`, or its first
  address with `gateway4` or a default route and `nameservers`). Interface names and MAC
  matches are not used: the appliance configures its first Ethernet interface. Name servers
  are dropped with DHCP (DHCP gives its own);
- `ssh_authorized_keys`: user-data `ssh_authorized_keys:` (Proxmox VE's `--sshkeys`).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Mapping
from typing import Any

from ..state.load import parse_yaml

log = logging.getLogger("mailwarden.firstboot")

CLOUD_FILES = ("meta-data", "network-config", "user-data")
CLOUD_KEYS = ("hostname", "network", "ssh_authorized_keys")


def cloud_config(text: str, source: str) -> dict[str, Any] | None:
    """A user-data file's #cloud-config mapping, None if it is something else."""
    if not text.lstrip().startswith("#cloud-config"):
        return None
    data, _ = parse_yaml(text, source)
    return data if isinstance(data, dict) else None


def cloud_values(files: Mapping[str, str], user: Mapping[str, Any] | None, source: str,
                 wanted: tuple[str, ...] = CLOUD_KEYS) -> dict[str, object]:
    """The answers' keys among `wanted` that these cloud-init files give. files: name on the
    drive -> text (meta-data, network-config); user: the #cloud-config user-data, if any."""
    found: dict[str, object] = {}
    user = user or {}
    if "hostname" in wanted:
        meta = _mapping(files.get("meta-data"), f"{source}/meta-data")
        for value in (user.get("fqdn"), meta.get("local-hostname"), user.get("hostname")):
            if isinstance(value, str) and "." in value.strip().rstrip("."):
                found["hostname"] = value.strip()
                break
    if "network" in wanted and files.get("network-config"):
        doc = _mapping(files["network-config"], f"{source}/network-config")
        network = network_answer(doc)
        if network is not None:
            found["network"] = network
        else:
            log.warning("%s/network-config: no interface setting this appliance can use; "
                        "the network is left as it is", source)
    if "ssh_authorized_keys" in wanted:
        keys = user.get("ssh_authorized_keys")
        if isinstance(keys, str):
            keys = [keys]
        if isinstance(keys, list):
            # Proxmox VE copies every non-blank line of the keys file, comments too.
            lines = [k.strip() for k in keys if isinstance(k, str)]
            lines = [k for k in lines if k and not k.startswith("#")]
            if lines:
                found["ssh_authorized_keys"] = lines
    return found


def _mapping(text: str | None, source: str) -> dict[str, Any]:
    if not text or not text.strip():
        return {}
    data, _ = parse_yaml(text, source)
    return data if isinstance(data, dict) else {}


def network_answer(doc: Mapping[str, Any]) -> dict[str, object] | None:
    """The answers' `network:` from a network-config document (version 1 or 2)."""
    if isinstance(doc.get("network"), dict):  # the form with a top-level `network:` key
        doc = doc["network"]
    version = doc.get("version")
    if version == 1 and isinstance(doc.get("config"), list):
        return _v1(doc["config"])
    if version == 2 and isinstance(doc.get("ethernets"), dict):
        return _v2(doc["ethernets"])
    return None


def _addresses(value: object) -> list[str]:
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list):
        return [str(v) for v in value if isinstance(v, (str, int))]
    return []


def _with_prefix(address: str, netmask: object) -> str:
    if "/" in address or netmask is None:
        return address
    try:
        prefix = int(str(netmask)) if str(netmask).isdigit() else \
            ipaddress.IPv4Network(f"0.0.0.0/{netmask}").prefixlen
    except ValueError:
        return address  # the answers' check then says what is wrong with it
    return f"{address}/{prefix}"


def _is_ipv4(address: str) -> bool:
    try:
        return ipaddress.ip_interface(address).version == 4
    except ValueError:
        return False


def _static(address: str, gateway: object, dns: list[str]) -> dict[str, object]:
    network: dict[str, object] = {"mode": "static", "address": address, "dns": dns}
    if gateway is not None:
        network["gateway"] = str(gateway)
    return network


def _v1(config: list[Any]) -> dict[str, object] | None:
    dns: list[str] = []
    for entry in config:
        if isinstance(entry, dict) and entry.get("type") == "nameserver":
            dns += _addresses(entry.get("address"))
    for entry in config:
        if not (isinstance(entry, dict) and entry.get("type") == "physical"
                and isinstance(entry.get("subnets"), list)):
            continue
        for subnet in entry["subnets"]:
            if not isinstance(subnet, dict):
                continue
            kind = subnet.get("type")
            if kind in ("dhcp", "dhcp4"):
                return {"mode": "dhcp"}
            address = subnet.get("address")
            if kind == "static" and isinstance(address, str) and _is_ipv4(address.split("/")[0]):
                extra = _addresses(subnet.get("dns_nameservers"))
                return _static(_with_prefix(address, subnet.get("netmask")),
                               subnet.get("gateway"), [*extra, *dns])
        return None  # the first interface has no IPv4 setting
    return None


def _v2(ethernets: dict[str, Any]) -> dict[str, object] | None:
    for settings in ethernets.values():
        if not isinstance(settings, dict):
            continue
        if settings.get("dhcp4") in (True, "true", "yes"):
            return {"mode": "dhcp"}
        addresses = [a for a in _addresses(settings.get("addresses")) if _is_ipv4(a)]
        if not addresses:
            return None
        gateway = settings.get("gateway4")
        for route in settings.get("routes") or []:
            if isinstance(route, dict) and route.get("to") in ("default", "0.0.0.0/0"):
                gateway = gateway or route.get("via")
        nameservers = settings.get("nameservers")
        dns = _addresses(nameservers.get("addresses")) if isinstance(nameservers, dict) else []
        return _static(addresses[0], gateway, dns)
    return None
