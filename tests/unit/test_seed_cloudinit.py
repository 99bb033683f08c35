"""Cloud-init's own inputs on a Proxmox VE drive fill what the answers leave out.

The drives are built the way Proxmox VE builds them (tests/e2e/pvecloudinit.py), written to a
real ISO, read back, and found through seed.find_seed as at first boot."""

from __future__ import annotations

import contextlib
import io
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mailwarden.control.service import NoController
from mailwarden.errors import StateError
from mailwarden.firstboot import seed
from mailwarden.firstboot.boot import run_firstboot
from mailwarden.firstboot.cloudinit import network_answer
from mailwarden.firstboot.configure import NullHost
from mailwarden.state.load import parse_yaml
from mailwarden_dev.instance import Sandbox
from tests.e2e.pvecloudinit import build_pve_cidata, read_iso

needs_xorriso = pytest.mark.skipif(shutil.which("xorriso") is None, reason="needs xorriso")

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB3PYGvmD7TErpNxmw0Hn1tf4l4V9q2vRS4H3n4PYm2c me@laptop"
HASH = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaA"
CORE = f"""\
version: 1
admin: {{password_hash: "{HASH}"}}
domains:
  - {{name: example.org, server: 10.0.0.5}}
"""


def _found(tmp_path: Path, **inputs: Any) -> seed.Seed:
    """The drive as a Proxmox host writes it, found on its cidata volume at first boot."""
    built = build_pve_cidata(tmp_path / "cidata.iso", **inputs)
    volume = tmp_path / "volume"
    assert read_iso(built.iso, volume) == "cidata"

    @contextlib.contextmanager
    def mount(device: str) -> Iterator[Path]:
        yield volume

    found = seed.find_seed(tmp_path / "root",
                           finder=lambda label: ["/dev/sr0"] if label == "cidata" else [],
                           mount=mount)
    assert found is not None
    return found


@needs_xorriso
def test_answers_snippet_takes_the_network_from_ipconfig0(tmp_path: Path) -> None:
    # qm set --cicustom user=local:snippets/... --ipconfig0 ... --nameserver ...
    found = _found(tmp_path, user_data=CORE + "hostname: mx1.example.org\n",
                   ipconfig0="ip=192.0.2.10/24,gw=192.0.2.1",
                   nameservers=["192.0.2.53", "192.0.2.54"], searchdomain="example.org")
    assert found.source == "cidata:/dev/sr0/user-data"
    answers = seed.answers_from_seed(found)
    assert answers.hostname == "mx1.example.org"
    assert answers.network is not None and answers.network.model_dump(exclude_none=True) == {
        "mode": "static", "address": "192.0.2.10/24", "gateway": "192.0.2.1",
        "dns": ["192.0.2.53", "192.0.2.54"],
        "ipv6": "auto"}  # the answers' default: ipconfig0 says nothing about IPv6


@needs_xorriso
def test_cloud_config_around_the_section_fills_hostname_and_keys(tmp_path: Path) -> None:
    user = ("#cloud-config\nfqdn: mx2.example.org\nssh_authorized_keys:\n  - "
            f"{KEY}\nmailwarden:\n" + "".join(f"  {line}\n" for line in CORE.splitlines()))
    answers = seed.answers_from_seed(_found(tmp_path, user_data=user, ipconfig0="ip=dhcp",
                                            nameservers=["192.0.2.53"]))
    assert answers.hostname == "mx2.example.org"
    assert answers.ssh_authorized_keys == [KEY]
    # DHCP brings its own name servers: Proxmox's nameserver entry is not carried over.
    assert answers.network is not None and answers.network.mode == "dhcp"
    assert answers.network.dns == []


@needs_xorriso
def test_the_answers_own_values_win(tmp_path: Path) -> None:
    other = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHd1aW4gb3ZlciBjbG91ZC1pbml0IGtleXMgaGVyZQ x"
    user = ("#cloud-config\nfqdn: cloud.example.org\nssh_authorized_keys: ['" + KEY + "']\n"
            "mailwarden:\n" + "".join(f"  {line}\n" for line in CORE.splitlines())
            + "  hostname: mx1.example.org\n  network: {mode: dhcp}\n"
            + f"  ssh_authorized_keys: ['{other}']\n")
    answers = seed.answers_from_seed(_found(tmp_path, user_data=user,
                                            ipconfig0="ip=192.0.2.10/24,gw=192.0.2.1"))
    assert answers.hostname == "mx1.example.org"
    assert answers.network is not None and answers.network.mode == "dhcp"
    assert answers.ssh_authorized_keys == [other]


@needs_xorriso
def test_a_plain_proxmox_drive_sets_nothing_up_and_says_what_is_missing(tmp_path: Path) -> None:
    found = _found(tmp_path, name="mx1", searchdomain="example.org",
                   ipconfig0="ip=192.0.2.10/24,gw=192.0.2.1", sshkeys=f"# laptop\n{KEY}\n")
    with pytest.raises(seed.NoAnswers) as info:
        seed.answers_from_seed(found)
    assert info.value.missing == ["version", "admin", "domains"]
    assert info.value.found == ["hostname", "network", "ssh_authorized_keys"]
    assert "without a 'mailwarden:' section" in info.value.message


@needs_xorriso
def test_a_short_vm_name_gives_no_hostname(tmp_path: Path) -> None:
    # Proxmox's fqdn is then the bare VM name: not a fully qualified one, so not taken.
    found = _found(tmp_path, name="mailwarden")
    with pytest.raises(seed.NoAnswers) as info:
        seed.answers_from_seed(found)
    assert info.value.missing == ["version", "hostname", "admin", "domains"]


@needs_xorriso
def test_a_static_address_without_gateway_is_refused_with_the_answers_message(
        tmp_path: Path) -> None:
    found = _found(tmp_path, user_data=CORE + "hostname: mx1.example.org\n",
                   ipconfig0="ip=192.0.2.10/24")
    with pytest.raises(StateError) as info:
        seed.answers_from_seed(found)
    assert "gateway" in str(info.value.errors[0])


def test_mailwarden_yaml_beside_nocloud_meta_data(tmp_path: Path) -> None:
    # The other NoCloud form: answers in mailwarden.yaml, the host name in meta-data.
    (tmp_path / "mailwarden.yaml").write_text(CORE)
    (tmp_path / "meta-data").write_text("instance-id: x\nlocal-hostname: mx3.example.org\n")
    (tmp_path / "user-data").write_text(f"#cloud-config\nssh_authorized_keys: ['{KEY}']\n")
    found = seed.read_seed_dir(tmp_path, "cidata:/dev/sr0")
    assert found is not None and sorted(found.cloud) == ["meta-data", "user-data"]
    answers = seed.answers_from_seed(found)
    assert answers.hostname == "mx3.example.org" and answers.ssh_authorized_keys == [KEY]


def _network(text: str) -> dict[str, object] | None:
    doc, _ = parse_yaml(text, "network-config")
    assert isinstance(doc, dict)
    return network_answer(doc)


def test_network_config_forms() -> None:
    assert _network("version: 1\nconfig:\n  - type: physical\n    name: eth0\n    subnets:\n"
                    "      - {type: static, address: 10.1.2.3, netmask: 255.255.254.0, "
                    "gateway: 10.1.2.1, dns_nameservers: [10.1.2.53]}\n"
                    "  - {type: nameserver, address: 10.9.9.9}\n") == {
        "mode": "static", "address": "10.1.2.3/23", "gateway": "10.1.2.1",
        "dns": ["10.1.2.53", "10.9.9.9"]}
    assert _network("network:\n  version: 2\n  ethernets:\n    ens18:\n"
                    "      addresses: [192.0.2.10/24]\n"
                    "      routes: [{to: default, via: 192.0.2.1}]\n"
                    "      nameservers: {addresses: [192.0.2.53]}\n") == {
        "mode": "static", "address": "192.0.2.10/24", "gateway": "192.0.2.1",
        "dns": ["192.0.2.53"]}
    assert _network("version: 2\nethernets:\n  net0: {dhcp4: true}\n") == {"mode": "dhcp"}
    # IPv6 only, a bond, or another version: nothing this appliance's answers can say.
    assert _network("version: 1\nconfig:\n  - type: physical\n    subnets:\n"
                    "      - {type: static6, address: '2001:db8::2/64'}\n") is None
    assert _network("version: 1\nconfig:\n  - {type: bond, name: bond0}\n") is None
    assert _network("version: 3\n") is None


# --- the console at first boot -----------------------------------------------------------------


@needs_xorriso
def test_first_boot_names_the_missing_keys_and_keeps_the_wizard(fresh: Sandbox,
                                                                tmp_path: Path) -> None:
    found = _found(tmp_path, name="mx1.example.org", ipconfig0="ip=dhcp")
    out = io.StringIO()
    outcome = run_firstboot(fresh.layout, controller=NoController(), host=NullHost(),
                            find=lambda: found, live=False, skip_identity=True, out=out)
    lines = out.getvalue().splitlines()
    assert ("MWFIRSTBOOT seed incomplete: missing version,admin,domains (cloud-init gave "
            "hostname,network); add a 'mailwarden:' section, or set up in the web wizard"
            ) in lines
    assert outcome.revision is None and outcome.setup_code
    assert f"MWFIRSTBOOT setup-code {outcome.setup_code}" in lines
    assert not fresh.layout.state_file.exists() and seed.applied(fresh.layout) is None
