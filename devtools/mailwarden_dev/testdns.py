"""The sandbox's authoritative name server (NSD) with test zones.

Sandboxes have no internet, and DNSBLs, SPF, DKIM and DMARC all need answers. NSD serves
zones we write; the sandbox's Unbound forwards every query to it, so Rspamd and the agent
resolve exactly as on the appliance, against data the tests control.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from mailwarden.process import run

from .process import Supervised


@dataclass(frozen=True)
class Record:
    name: str  # relative to the zone ("@" for the apex)
    type: str
    data: str

    def line(self) -> str:
        data = self.data
        if self.type == "TXT" and not data.startswith('"'):
            # TXT strings are at most 255 bytes each; long ones (DKIM keys) are split.
            chunks = [data[i:i + 255] for i in range(0, len(data), 255)] or [""]
            data = " ".join(f'"{c}"' for c in chunks)
        return f"{self.name}\t300\tIN\t{self.type}\t{data}"


@dataclass
class Zone:
    name: str
    records: list[Record] = field(default_factory=list)

    def add(self, name: str, rtype: str, data: str) -> Zone:
        self.records.append(Record(name, rtype, data))
        return self

    def text(self, serial: int) -> str:
        head = [
            f"$ORIGIN {self.name}.",
            "$TTL 300",
            f"@\tIN\tSOA\tns.{self.name}. hostmaster.{self.name}. "
            f"({serial} 3600 600 86400 300)",
            f"@\tIN\tNS\tns.{self.name}.",
            "ns\tIN\tA\t127.0.0.1",
        ]
        return "\n".join(head + [r.line() for r in self.records]) + "\n"


def default_zones() -> list[Zone]:
    """What every sandbox resolves: its mail domain, a sender domain, a test DNSBL."""
    example = Zone("example.test")
    example.add("@", "MX", "10 mx.example.test.").add("mx", "A", "127.0.0.1")
    example.add("@", "TXT", "v=spf1 ip4:127.0.0.0/8 -all")
    sender = Zone("sender.test")
    sender.add("@", "MX", "10 mail.sender.test.").add("mail", "A", "192.0.2.25")
    sender.add("@", "TXT", "v=spf1 ip4:192.0.2.0/24 -all")
    sender.add("_dmarc", "TXT", "v=DMARC1; p=reject")
    # A DNS blocklist that lists 203.0.113.66 (queried as 66.113.0.203.dnsbl.test).
    dnsbl = Zone("dnsbl.test")
    dnsbl.add("66.113.0.203", "A", "127.0.0.2").add("2.0.0.127", "A", "127.0.0.2")
    return [example, sender, dnsbl]


class TestDns:
    """NSD on a loopback port serving zones written into `folder`."""

    def __init__(self, folder: Path, port: int, zones: Iterable[Zone]) -> None:
        self.folder = folder
        self.port = port
        self.zones = {z.name: z for z in zones}
        self.serial = 1
        self.daemon = Supervised("nsd", ["nsd", "-d", "-c", self.conf], folder / "nsd.log")

    @property
    def conf(self) -> Path:
        return self.folder / "nsd.conf"

    @property
    def address(self) -> str:
        """As Unbound's forward-addr wants it."""
        return f"127.0.0.1@{self.port}"

    def write(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.folder.chmod(0o755)
        lines = [
            "server:",
            "    ip-address: 127.0.0.1",
            f"    port: {self.port}",
            "    do-ip6: no",
            f'    zonesdir: "{self.folder}"',
            f'    pidfile: "{self.folder}/nsd.pid"',
            '    database: ""',
            f'    xfrdfile: "{self.folder}/xfrd.state"',
            f'    zonelistfile: "{self.folder}/zone.list"',
            '    username: ""',
            "    server-count: 1",
            "    verbosity: 1",
            "remote-control:",
            "    control-enable: no",
        ]
        for zone in self.zones.values():
            (self.folder / f"{zone.name}.zone").write_text(zone.text(self.serial))
            lines += ["zone:", f"    name: {zone.name}", f"    zonefile: {zone.name}.zone"]
        self.conf.write_text("\n".join(lines) + "\n")
        run(["nsd-checkconf", self.conf])
        for zone in self.zones.values():
            run(["nsd-checkzone", zone.name, self.folder / f"{zone.name}.zone"])

    def start(self) -> None:
        self.write()
        self.daemon.start()

    def update(self, zone: Zone) -> None:
        """Add or replace a zone and make NSD serve it (tests add SPF/DKIM records)."""
        self.zones[zone.name] = zone
        self.serial += 1
        self.daemon.stop()
        self.start()

    def stop(self) -> None:
        self.daemon.stop()
