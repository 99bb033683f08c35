"""tests/e2e/pvecloudinit.py writes the drive Proxmox VE writes, read back from the ISO."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from tests.e2e.pvecloudinit import build_pve_cidata, pve_files, read_iso

pytestmark = pytest.mark.skipif(shutil.which("xorriso") is None, reason="needs xorriso")

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB3PYGvmD7TErpNxmw0Hn1tf4l4V9q2vRS4H3n4PYm2c me@laptop"

# Transcribed by hand from Cloudinit.pm's cloudinit_userdata and nocloud_network for
#   qm set 9000 --name mx1 --searchdomain example.org --nameserver 192.0.2.53
#     --ipconfig0 ip=192.0.2.10/24,gw=192.0.2.1 --sshkeys keys.pub --ciuser admin
USER_DATA = f"""\
#cloud-config
hostname: mx1
manage_etc_hosts: true
fqdn: mx1.example.org
user: admin
ssh_authorized_keys:
  - {KEY}
chpasswd:
  expire: False
users:
  - default
package_upgrade: true
"""
NETWORK_STATIC = """\
version: 1
config:
    - type: physical
      name: eth0
      mac_address: 'bc:24:11:4d:57:01'
      subnets:
        - type: static
          address: '192.0.2.10'
          netmask: '255.255.255.0'
          gateway: '192.0.2.1'
    - type: nameserver
      address:
      - '192.0.2.53'
      search:
      - 'example.org'
"""


def test_drive_files_and_label_as_proxmox_writes_them(tmp_path: Path) -> None:
    built = build_pve_cidata(tmp_path / "ci.iso", name="mx1", searchdomain="example.org",
                             nameservers=["192.0.2.53"], ciuser="admin",
                             ipconfig0="ip=192.0.2.10/24,gw=192.0.2.1",
                             sshkeys=f"{KEY}\n\n")
    out = tmp_path / "out"
    assert read_iso(built.iso, out) == "cidata"
    assert sorted(p.name for p in out.iterdir()) == ["meta-data", "network-config",
                                                     "user-data", "vendor-data"]
    assert (out / "user-data").read_text() == USER_DATA
    assert (out / "network-config").read_text() == NETWORK_STATIC
    instance = hashlib.sha1((USER_DATA + NETWORK_STATIC).encode(),
                            usedforsecurity=False).hexdigest()
    assert (out / "meta-data").read_text() == f"instance-id: {instance}\n"
    assert (out / "vendor-data").read_text() == ""


def test_dhcp_and_no_dns_still_write_the_nameserver_entry() -> None:
    files = pve_files(name="mx1.example.org", ipconfig0="ip=dhcp", ciupgrade=False)
    assert files["network-config"] == (
        "version: 1\nconfig:\n    - type: physical\n      name: eth0\n"
        "      mac_address: 'bc:24:11:4d:57:01'\n      subnets:\n        - type: dhcp4\n"
        "    - type: nameserver\n")
    assert files["user-data"] == ("#cloud-config\nhostname: mx1\nmanage_etc_hosts: true\n"
                                  "fqdn: mx1.example.org\nchpasswd:\n  expire: False\n"
                                  "users:\n  - default\n")


def test_empty_ipconfig_means_dhcp_for_both_families() -> None:
    network = pve_files(ipconfig0="ip6=auto")["network-config"]
    assert "- type: ipv6_slaac" in network and "dhcp4" not in network
    both = pve_files(ipconfig0=",")["network-config"]
    assert "- type: dhcp4\n" in both and "- type: dhcp6\n" in both


def test_no_name_is_vm_and_the_vmid() -> None:
    assert "hostname: VM123\n" in pve_files(name=None, vmid=123)["user-data"]


def test_cicustom_user_replaces_the_user_data_whole(tmp_path: Path) -> None:
    answers = "version: 1\nhostname: mx1.example.org\n"
    built = build_pve_cidata(tmp_path / "ci.iso", name="ignored", user_data=answers,
                             sshkeys=KEY, ipconfig0="ip=dhcp")
    out = tmp_path / "out"
    read_iso(built.iso, out)
    assert (out / "user-data").read_text() == answers
    instance = hashlib.sha1((answers + built.files["network-config"]).encode(),
                            usedforsecurity=False).hexdigest()
    assert (out / "meta-data").read_text() == f"instance-id: {instance}\n"


def test_extra_files_land_beside_and_cannot_escape(tmp_path: Path) -> None:
    built = build_pve_cidata(tmp_path / "ci.iso", extra_files={"clamav/e2e.hdb": b"sig\n"})
    out = tmp_path / "out"
    read_iso(built.iso, out)
    assert (out / "clamav" / "e2e.hdb").read_bytes() == b"sig\n"
    with pytest.raises(ValueError, match="outside the drive"):
        build_pve_cidata(tmp_path / "bad.iso", extra_files={"../x": b""})
    with pytest.raises(ValueError, match="replaces"):
        build_pve_cidata(tmp_path / "bad.iso", extra_files={"user-data": b""})


def test_gateway_with_dhcp_is_refused_like_proxmox() -> None:
    with pytest.raises(ValueError, match="gw needs a static ip"):
        pve_files(ipconfig0="ip=dhcp,gw=192.0.2.1")
