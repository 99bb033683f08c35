"""The first-boot answer file: everything a fresh appliance needs to become a gateway.

One versioned, validated format fed by every front end: an unattended seed (a NoCloud
`cidata` volume or the boot partition), the console wizard and the web wizard. Its errors read
like the state file's: path, line, and what was expected.

    version: 1
    hostname: mx1.example.org
    network: {mode: static, address: 192.0.2.10/24, gateway: 192.0.2.1, dns: [192.0.2.53]}
    admin: {password_hash: "$argon2id$v=19$..."}      # or password: (the web wizard)
    domains:
      - {name: example.org, server: 10.0.0.5, port: 25}
    trusted_networks: [10.0.0.0/8]
    management_networks: [10.0.9.0/24]   # web UI and SSH; default: the trusted ones
    ssh_authorized_keys: ["ssh-ed25519 AAAA... admin@laptop"]
    keyboard: de                         # console keymap; timezone: Europe/Berlin
    install: {disk: auto, wipe: false}   # the installer ISO only; first boot ignores it

A file holding only `version` and `install` is an installer's answer file alone: the disk is
written without asking and the appliance asks its questions at first boot.
"""

from __future__ import annotations

import ipaddress
import re
import zoneinfo
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, ValidationError, model_validator

from ..errors import FieldError, StateError
from ..state.load import field_errors, parse_yaml
from ..state.schema import Section
from ..state.types import Domain, Host, Hostname, IPAddress, Network, Port

ANSWERS_VERSION = 1
MIN_PASSWORD = 10

# fullmatch: `$` would let a trailing newline through, an extra line in authorized_keys.
_SSH_KEY_RE = re.compile(
    r"(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)|sk-ssh-ed25519@openssh\.com|"
    r"sk-ecdsa-sha2-nistp256@openssh\.com) [A-Za-z0-9+/]+={0,3}( [^\x00-\x1f\x7f]*)?")


def _interface_address(value: str) -> str:
    """An address with its prefix length (192.0.2.10/24): the host's own, not a network."""
    try:
        interface = ipaddress.ip_interface(value.strip())
    except ValueError:
        raise ValueError(f"'{value}' is not an address with a prefix (e.g. 192.0.2.10/24)"
                         ) from None
    if "/" not in value:
        raise ValueError(f"'{value}' needs a prefix length (e.g. {value}/24)")
    return str(interface)


def _ssh_key(value: str) -> str:
    value = value.strip()
    if not _SSH_KEY_RE.fullmatch(value):
        raise ValueError("is not an OpenSSH public key line (e.g. 'ssh-ed25519 AAAA... me@host')")
    return value


def _argon2_hash(value: str) -> str:
    if not value.startswith(("$argon2id$", "$argon2i$")):
        raise ValueError("must be an argon2 hash (from `mailwarden user hash-password`)")
    return value


def _ipv6_interface_address(value: str) -> str:
    value = _interface_address(value)
    if ipaddress.ip_interface(value).version != 6:
        raise ValueError(f"'{value}' is not an IPv6 address (e.g. 2001:db8::10/64)")
    return value


def _timezone(value: str) -> str:
    # The name becomes a path under /usr/share/zoneinfo: no '..', no leading '/'.
    if not re.fullmatch(r"[A-Za-z0-9_+-]+(/[A-Za-z0-9_+-]+){0,2}", value):
        raise ValueError(f"'{value}' is not a time zone name (e.g. Europe/Berlin or UTC)")
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"'{value}' is not a known time zone (e.g. Europe/Berlin or UTC)"
                         ) from None
    return value


InterfaceAddress = Annotated[str, AfterValidator(_interface_address)]
IPv6InterfaceAddress = Annotated[str, AfterValidator(_ipv6_interface_address)]
TimeZone = Annotated[str, AfterValidator(_timezone)]
# A console keymap name as Debian's keyboard-configuration knows it (XKBLAYOUT), with an
# optional variant after a colon: "de", "us", "fr:bepo", "de:nodeadkeys".
Keyboard = Annotated[str, Field(pattern=r"^[a-z]{2,8}(:[a-z0-9_-]{1,32})?$")]
SshKey = Annotated[str, AfterValidator(_ssh_key)]
Argon2Hash = Annotated[str, AfterValidator(_argon2_hash)]


class NetworkAnswer(Section):
    mode: Literal["dhcp", "static"] = Field(description="DHCP, or the static settings below.")
    address: InterfaceAddress | None = Field(None, description="Static: address/prefix.")
    gateway: IPAddress | None = Field(None, description="Static: default gateway.")
    dns: list[IPAddress] = Field(default_factory=list, description="Static: name servers.")
    interface: Annotated[str, Field(pattern=r"^[a-zA-Z0-9_.:-]{1,15}$")] | None = Field(
        None, description="The interface to configure; the first Ethernet one if not set.")
    ipv6: Literal["auto", "static", "off"] = Field(
        "auto", description="IPv6: router advertisements (SLAAC) and DHCPv6 when they offer "
        "it, a static address, or off.")
    ipv6_address: IPv6InterfaceAddress | None = Field(
        None, description="IPv6 static: address/prefix.")
    ipv6_gateway: IPAddress | None = Field(None, description="IPv6 static: default gateway.")

    @model_validator(mode="after")
    def _static_complete(self) -> NetworkAnswer:
        if self.mode == "static" and (self.address is None or self.gateway is None):
            missing = [n for n in ("address", "gateway") if getattr(self, n) is None]
            raise ValueError(f"a static network needs {' and '.join(missing)}")
        if self.mode == "dhcp" and (self.address or self.gateway or self.dns):
            raise ValueError("address, gateway and dns are for mode: static only")
        if self.ipv6 == "static" and self.ipv6_address is None:
            raise ValueError("a static IPv6 network needs ipv6_address")
        if self.ipv6 != "static" and (self.ipv6_address or self.ipv6_gateway):
            raise ValueError("ipv6_address and ipv6_gateway are for ipv6: static only")
        if self.ipv6_gateway and ipaddress.ip_address(self.ipv6_gateway).version != 6:
            raise ValueError(f"ipv6_gateway '{self.ipv6_gateway}' is not an IPv6 address")
        return self


class AdminAnswer(Section):
    password_hash: Argon2Hash | None = Field(
        None, description="argon2 hash of the admin password (seed files: never plain text).")
    password: Annotated[str, Field(min_length=MIN_PASSWORD, max_length=1024)] | None = Field(
        None, description="The password itself (the interactive wizards only).")

    @model_validator(mode="after")
    def _exactly_one(self) -> AdminAnswer:
        if (self.password is None) == (self.password_hash is None):
            raise ValueError("give either password_hash or password")
        return self


class DomainAnswer(Section):
    name: Domain = Field(description="A mail domain this gateway accepts mail for.")
    server: Host = Field(description="Its internal mail server (name or IP).")
    port: Port = Field(25, description="The internal server's SMTP port.")


class InstallAnswer(Section):
    disk: Annotated[str, Field(pattern=r"^(auto|(/dev/)?[A-Za-z0-9][A-Za-z0-9/_.:+-]{0,120})$")] \
        = Field("auto", description="The installer ISO's target disk: a device ('/dev/sda', "
                "'nvme0n1', '/dev/disk/by-id/...'), or 'auto': the only empty disk large "
                "enough (with several, the first the kernel lists).")
    wipe: bool = Field(False, description="Overwrite a disk that holds data (a partition "
                       "table or a file system); without it such a disk is refused.")


def install_only(data: object) -> bool:
    """Whether an answer file holds the installer's answers alone (no set-up)."""
    return isinstance(data, dict) and "install" in data and set(data) <= {"version", "install"}


class Answers(Section):
    version: Literal[1] = Field(description="Format version of the answer file.")
    hostname: Hostname = Field(description="Fully qualified name of this gateway.")
    network: NetworkAnswer | None = Field(
        None, description="How the appliance reaches the network; left as it is if absent.")
    admin: AdminAnswer = Field(description="The first administrator (user 'admin').")
    domains: list[DomainAnswer] = Field(
        min_length=1, description="Relay domains and their internal servers.")
    trusted_networks: list[Network] = Field(
        default_factory=list,
        description="Networks that may relay through the gateway (the internal servers').")
    management_networks: list[Network] = Field(
        default_factory=list,
        description="Networks that may reach the web UI and API (port 8006) and SSH; empty: "
        "the trusted networks. The web wizard adds the browser's own address when neither "
        "covers it, so that setting up never locks its own administrator out.")
    ssh_authorized_keys: list[SshKey] = Field(
        default_factory=list,
        description="Public keys for SSH; SSH (key-only) is on only if this is not empty.")
    keyboard: Keyboard | None = Field(
        None, description="Console keyboard layout (Debian's XKBLAYOUT, ':variant' optional: "
        "'de', 'fr:bepo'); left as it is if absent.")
    timezone: TimeZone | None = Field(
        None, description="Time zone (IANA name: 'Europe/Berlin', 'UTC'); left as it is if "
        "absent.")
    install: InstallAnswer | None = Field(
        None, description="Where the installer ISO writes the system (unattended install); "
        "first boot ignores it.")

    @model_validator(mode="after")
    def _unique_domains(self) -> Answers:
        names = [d.name for d in self.domains]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"domain listed twice: {', '.join(duplicates)}")
        return self


def validate_answers(data: object, source: str = "answers",
                     lines: dict[tuple[str | int, ...], int] | None = None) -> Answers:
    if not isinstance(data, dict):
        raise StateError([FieldError("", "the answers must be a mapping (key: value)")], source)
    try:
        return Answers.model_validate(data)
    except ValidationError as exc:
        raise StateError(field_errors(exc, (), lines or {}, Answers), source) from None


def load_answers(text: str, source: str) -> Answers:
    data, lines = parse_yaml(text, source)
    return validate_answers(data, source, lines)


def answers_schema() -> str:
    """The answer file's JSON Schema, generated from the model above: for editors and for
    tools that write answer files (firstboot/answers.schema.json keeps it, checked current by
    the lint tier). Validators written in Python (argon2 hash, SSH key line, address with a
    prefix) are not expressed in it: the appliance's own validation stays the authority."""
    import json

    schema = Answers.model_json_schema()
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"
