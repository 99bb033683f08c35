"""First boot on the appliance: the seed's places and forms, machine identity, the host's
files (into a folder standing in for /), and the whole boot sequence on a fresh sandbox with
the real apply transaction."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailwarden.control.service import NoController
from mailwarden.errors import StateError
from mailwarden.firstboot import identity, seed
from mailwarden.firstboot.answers import validate_answers
from mailwarden.firstboot.boot import run_firstboot
from mailwarden.firstboot.configure import NullHost
from mailwarden.firstboot.host import NETWORK_FILE, ApplianceHost
from mailwarden.layout import sandbox as sandbox_layout
from mailwarden.store.credentials import CredentialStore
from mailwarden.store.users import Users, hash_password
from mailwarden_dev.instance import Sandbox

ANSWERS = """\
version: 1
hostname: mx1.example.org
admin: {password_hash: "HASH"}
domains:
  - {name: example.org, server: 10.0.0.5}
"""


@pytest.fixture(scope="module")
def password_hash() -> str:
    return hash_password("a long password")


# --- the seed --------------------------------------------------------------------------------


def test_answers_as_a_file_or_inside_cloud_config(password_hash: str) -> None:
    plain = ANSWERS.replace("HASH", password_hash)
    assert seed.answers_from_text(plain, "seed").hostname == "mx1.example.org"
    wrapped = "#cloud-config\nhostname: ignored\nmailwarden:\n" + "".join(
        f"  {line}\n" for line in plain.splitlines())
    assert seed.answers_from_text(wrapped, "user-data").domains[0].name == "example.org"
    with pytest.raises(seed.NoAnswers, match="without a 'mailwarden:' section"):
        seed.answers_from_text("#cloud-config\nhostname: mx\n", "user-data")


def test_seed_errors_name_the_file_and_line() -> None:
    with pytest.raises(StateError) as info:
        seed.answers_from_text(ANSWERS.replace("mx1.example.org", "mx1"), "cidata:/dev/sr0")
    assert info.value.source == "cidata:/dev/sr0"
    assert info.value.errors[0].path == "hostname" and info.value.errors[0].line == 2


def test_a_seed_volume_prefers_mailwarden_yaml_and_carries_signatures(tmp_path: Path) -> None:
    (tmp_path / "user-data").write_text("#cloud-config\n")
    (tmp_path / "mailwarden.yaml").write_text(ANSWERS)
    (tmp_path / "clamav").mkdir()
    (tmp_path / "clamav" / "eicar.hdb").write_text("44d88612fea8a8f36de82e1278abb02f:68:Eicar\n")
    (tmp_path / "clamav" / "run-me.sh").write_text("#!/bin/sh\n")  # never copied
    found = seed.read_seed_dir(tmp_path, "cidata:/dev/sr0")
    assert found is not None and found.source == "cidata:/dev/sr0/mailwarden.yaml"
    assert list(found.signatures) == ["eicar.hdb"]

    root = tmp_path / "root"
    assert seed.install_signatures(found, root) == ["eicar.hdb"]
    assert (root / "var/lib/clamav/eicar.hdb").read_text().startswith("44d88612")


def test_seed_places_in_order(tmp_path: Path) -> None:
    volumes = {"/dev/sr0": tmp_path / "cidata", "/dev/sda2": tmp_path / "esp"}
    for folder in volumes.values():
        folder.mkdir()
    (volumes["/dev/sda2"] / "mailwarden.yaml").write_text("from the ESP")
    labels = {"cidata": ["/dev/sr0"], "MW-ESP": ["/dev/sda2"]}

    @contextlib.contextmanager
    def mount(device: str) -> Iterator[Path]:
        yield volumes[device]

    def finder(label: str) -> list[str]:
        return labels.get(label, [])

    # The cidata volume has no answers: the boot partition's are taken.
    found = seed.find_seed(tmp_path, finder=finder, mount=mount)
    assert found is not None and found.source == "MW-ESP:/dev/sda2/mailwarden.yaml"
    (volumes["/dev/sr0"] / "user-data").write_text("from cidata")
    found = seed.find_seed(tmp_path, finder=finder, mount=mount)
    assert found is not None and found.text == "from cidata"
    # No volume at all: /boot/mailwarden.yaml (an installer's).
    (tmp_path / "boot").mkdir()
    (tmp_path / "boot/mailwarden.yaml").write_text("from /boot")
    found = seed.find_seed(tmp_path, finder=lambda label: [], mount=mount)
    assert found is not None and found.text == "from /boot"


def test_a_partition_the_system_mounted_already_is_read_where_it_is(tmp_path: Path) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_text("/dev/sda3 / ext4 rw,relatime 0 0\n"
                      "systemd-1 /efi autofs rw,relatime 0 0\n"
                      "/dev/sda2 /efi vfat rw,fmask=0077,dmask=0077 0 0\n"
                      "/dev/sdb1 /mnt/with\\040space vfat ro 0 0\n")
    assert seed.mount_point("/dev/sda2", mounts) == Path("/efi")
    assert seed.mount_point("/dev/sdb1", mounts) == Path("/mnt/with space")
    assert seed.mount_point("/dev/sr0", mounts) is None
    assert seed.mount_point("/dev/sda2", tmp_path / "absent") is None


def test_answers_written_for_this_machine_are_removed_once_applied(tmp_path: Path) -> None:
    esp, cidata = tmp_path / "esp", tmp_path / "cidata"
    for folder in (esp, cidata):
        folder.mkdir()
        (folder / "mailwarden.yaml").write_text("answers")
    (esp / "clamav").mkdir()
    mounts: list[str] = []

    @contextlib.contextmanager
    def mount(device: str) -> Iterator[Path]:
        mounts.append(device)
        yield {"/dev/sda2": esp, "/dev/sr0": cidata}[device]

    def finder(label: str) -> list[str]:
        return {"MW-ESP": ["/dev/sda2"]}.get(label, [])

    on_esp = seed.find_seed(tmp_path, finder=finder, mount=mount)
    assert on_esp is not None and (on_esp.device, on_esp.own_file) == ("/dev/sda2",
                                                                        "mailwarden.yaml")
    assert seed.consume(on_esp, mount=mount) and mounts[-1] == "/dev/sda2"
    assert not (esp / "mailwarden.yaml").exists() and (esp / "clamav").is_dir()
    # A NoCloud volume is the owner's: left as it is.
    owners = seed.read_seed_dir(cidata, "cidata:/dev/sr0")
    assert owners is not None and not seed.consume(owners, mount=mount)
    assert (cidata / "mailwarden.yaml").exists() and mounts == ["/dev/sda2", "/dev/sda2"]


# --- identity --------------------------------------------------------------------------------


def test_identity_replaces_what_an_image_carries(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc/ssh").mkdir(parents=True)
    (root / "usr/sbin").mkdir(parents=True)
    (root / "usr/sbin/sshd").touch()  # OpenSSH "installed"
    (root / "etc/ssh/ssh_host_rsa_key").write_text("the image's key")
    (root / "etc/machine-id").write_text("uninitialized\n")
    layout = sandbox_layout(tmp_path / "sb")
    layout.secrets_dir.mkdir(parents=True)
    old_dkim = "-----BEGIN RSA PRIVATE KEY-----\nMIIEimage\n-----END RSA PRIVATE KEY-----\n"
    (layout.secrets_dir / "dkim-example.key").write_text(old_dkim)
    (layout.secrets_dir / "dkim-example.key").chmod(0o640)

    report = identity.regenerate(layout, "mx1.example.org", root=root, live=False)
    assert len(report.machine_id) == 32 and int(report.machine_id, 16) >= 0
    assert (root / "etc/machine-id").read_text().strip() == report.machine_id
    assert "ssh_host_ed25519_key.pub" in report.ssh_host_keys
    assert (root / "etc/ssh/ssh_host_rsa_key").read_text() != "the image's key"
    assert report.certificates == ["smtp", "api"]
    subject = subprocess.run(["openssl", "x509", "-noout", "-subject", "-in",
                              str(layout.secrets_dir / "smtp.crt")],
                             capture_output=True, text=True, check=True).stdout
    assert "mx1.example.org" in subject
    assert report.dkim_keys == ["dkim-example.key"]
    renewed = layout.secrets_dir / "dkim-example.key"
    assert renewed.read_text() != old_dkim and "PRIVATE KEY" in renewed.read_text()
    assert renewed.stat().st_mode & 0o777 == 0o640  # the filter's access kept
    assert identity.done(layout)


def test_unbound_trust_anchor_is_seeded_once(tmp_path: Path) -> None:
    (tmp_path / "usr/share/dns").mkdir(parents=True)
    (tmp_path / "usr/share/dns/root.key").write_text(". IN DS 20326 8 2 E06D...\n")
    assert identity.seed_unbound_root_key(tmp_path)
    assert (tmp_path / "var/lib/unbound/root.key").read_text().startswith(". IN DS")
    assert not identity.seed_unbound_root_key(tmp_path)


# --- the host --------------------------------------------------------------------------------


def test_hostname_files(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/hosts").write_text("127.0.0.1\tlocalhost\n127.0.1.1\tdebian\n"
                                        "::1\tlocalhost ip6-localhost\n")
    ApplianceHost(tmp_path, live=False).set_hostname("MX1.Example.org.")
    assert (tmp_path / "etc/hostname").read_text() == "mx1\n"
    assert (tmp_path / "etc/mailname").read_text() == "mx1.example.org\n"
    assert (tmp_path / "etc/hosts").read_text().splitlines() == [
        "127.0.0.1\tlocalhost", "127.0.1.1\tmx1.example.org mx1", "::1\tlocalhost ip6-localhost"]


def _network(**fields: object):  # -> NetworkAnswer
    data = {"version": 1, "hostname": "mx.example.org", "admin": {"password": "long enough pw"},
            "domains": [{"name": "example.org", "server": "10.0.0.5"}], "network": fields}
    return validate_answers(data).network


def test_static_network_for_networkd_and_back_to_dhcp(tmp_path: Path) -> None:
    host = ApplianceHost(tmp_path, live=False)
    host.set_network(_network(mode="static", address="192.0.2.10/24", gateway="192.0.2.1",
                              dns=["192.0.2.53", "2001:db8::53"], interface="ens18"))
    text = (tmp_path / NETWORK_FILE).read_text()
    for line in ("Name=ens18", "Address=192.0.2.10/24", "Gateway=192.0.2.1",
                 "DNS=192.0.2.53", "DNS=2001:db8::53", "DHCP=no"):
        assert line in text.splitlines()
    host.set_network(_network(mode="dhcp"))
    assert not (tmp_path / NETWORK_FILE).exists()  # the image's DHCP default applies


def test_ssh_keys_turn_on_key_only_ssh(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "usr/sbin").mkdir(parents=True)
    (root / "usr/sbin/sshd").touch()
    layout = sandbox_layout(tmp_path / "sb")
    layout.state_dir.mkdir(parents=True)
    layout.state_file.write_text("version: 1\nsystem: {hostname: mx.example.org}\n"
                                 "networks: {trusted: [10.0.0.0/8, 'fd00::/8']}\n"
                                 "domains: [{name: example.org, transport: {host: 10.0.0.5}}]\n")
    host = ApplianceHost(root, live=False, layout=layout)
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGx0ZXN0a2V5 admin@laptop"
    host.set_ssh_keys([key])
    authorized = root / "root/.ssh/authorized_keys"
    assert key in authorized.read_text().splitlines()
    assert authorized.stat().st_mode & 0o777 == 0o600
    assert (root / "root/.ssh").stat().st_mode & 0o777 == 0o700
    sshd = (root / "etc/ssh/sshd_config.d/60-mailwarden.conf").read_text()
    assert "PasswordAuthentication no" in sshd and "AuthenticationMethods publickey" in sshd
    # The firewall rendered from the state opens SSH: nothing of its own beside it.
    assert not (root / "etc/nftables.d").exists()
    host.set_ssh_keys([])
    assert not (root / "etc/nftables.d").exists()


# --- the whole first boot on a fresh sandbox ---------------------------------------------------


def test_first_boot_applies_the_seed_once(fresh: Sandbox, password_hash: str) -> None:
    text = ANSWERS.replace("HASH", password_hash)
    found = seed.Seed("cidata:/dev/sr0/mailwarden.yaml", text)
    out = io.StringIO()
    outcome = run_firstboot(fresh.layout, controller=NoController(), host=NullHost(),
                            find=lambda: found, live=False, skip_identity=True, out=out)
    assert outcome.errors == [] and outcome.revision == 1 and outcome.setup_code is None
    lines = out.getvalue().splitlines()
    assert "MWFIRSTBOOT seed found cidata:/dev/sr0/mailwarden.yaml" in lines
    assert any(line.startswith("MWFIRSTBOOT seed applied revision=1 ") for line in lines)
    assert "MWFIRSTBOOT set-up complete" in lines and lines[-1] == "MWFIRSTBOOT end"
    assert Users(CredentialStore.for_layout(fresh.layout)).count("admin") == 1
    assert seed.applied(fresh.layout)["sha256"] == found.sha256  # type: ignore[index]

    # The next boot finds the seed again and leaves it alone.
    again = run_firstboot(fresh.layout, controller=NoController(), host=NullHost(),
                          find=lambda: found, live=False, skip_identity=True, out=io.StringIO())
    assert again.seed_source is None and again.revision is None


def test_first_boot_removes_the_installers_answers_once_applied(
        fresh: Sandbox, password_hash: str, tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "boot").mkdir(parents=True)
    answers = root / seed.BOOT_FILE
    answers.write_text(ANSWERS.replace("HASH", password_hash))
    out = io.StringIO()
    outcome = run_firstboot(fresh.layout, controller=NoController(), host=NullHost(),
                            root=root, find=lambda: seed.find_seed(root, finder=lambda _: []),
                            live=False, skip_identity=True, out=out)
    assert outcome.errors == [] and outcome.revision == 1
    assert f"MWFIRSTBOOT seed removed {answers}" in out.getvalue().splitlines()
    assert not answers.exists()


def test_a_refused_seed_leaves_the_appliance_fresh_with_a_setup_code(fresh: Sandbox) -> None:
    found = seed.Seed("MW-ESP:/dev/sda2/mailwarden.yaml",
                      ANSWERS.replace("HASH", "not-a-hash").replace("mx1.example.org", "mx1"))
    out = io.StringIO()
    outcome = run_firstboot(fresh.layout, controller=NoController(), host=NullHost(),
                            find=lambda: found, live=False, skip_identity=True, out=out)
    text = out.getvalue()
    assert "MWFIRSTBOOT seed refused: MW-ESP:/dev/sda2/mailwarden.yaml: 2 error(s)" in text
    assert "MWFIRSTBOOT   hostname (line 2):" in text
    assert outcome.setup_code and f"MWFIRSTBOOT setup-code {outcome.setup_code}" in text
    assert fresh.layout.setup_code.exists() and not fresh.layout.state_file.exists()
    assert seed.applied(fresh.layout) is None  # fix the seed, reboot: it is tried again


def test_ipv6_static_or_off_in_the_network_file(tmp_path: Path) -> None:
    host = ApplianceHost(tmp_path, live=False)
    host.set_network(_network(mode="dhcp", ipv6="static", ipv6_address="2001:db8::10/64",
                              ipv6_gateway="2001:db8::1", interface="ens18"))
    lines = (tmp_path / NETWORK_FILE).read_text().splitlines()
    for line in ("Address=2001:db8::10/64", "Gateway=2001:db8::1", "DHCP=ipv4",
                 "IPv6AcceptRA=no"):
        assert line in lines
    host.set_network(_network(mode="static", address="192.0.2.10/24", gateway="192.0.2.1",
                              ipv6="off", interface="ens18"))
    lines = (tmp_path / NETWORK_FILE).read_text().splitlines()
    assert {"DHCP=no", "IPv6AcceptRA=no", "LinkLocalAddressing=ipv4"} <= set(lines)
    with pytest.raises(StateError, match="needs ipv6_address"):
        _network(mode="dhcp", ipv6="static")
    with pytest.raises(StateError, match="not an IPv6 address"):
        _network(mode="dhcp", ipv6="static", ipv6_address="192.0.2.10/24")


def test_keyboard_and_time_zone_files(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    host = ApplianceHost(tmp_path, live=False)
    host.set_keyboard("de:nodeadkeys")
    keyboard = (tmp_path / "etc/default/keyboard").read_text().splitlines()
    assert 'XKBLAYOUT="de"' in keyboard and 'XKBVARIANT="nodeadkeys"' in keyboard
    host.set_timezone("Europe/Berlin")
    assert (tmp_path / "etc/timezone").read_text() == "Europe/Berlin\n"
    assert os.readlink(tmp_path / "etc/localtime") == "../usr/share/zoneinfo/Europe/Berlin"
    data = {"version": 1, "hostname": "mx.example.org", "admin": {"password": "long enough pw"},
            "domains": [{"name": "example.org", "server": "10.0.0.5"}]}
    for field, value, message in (("timezone", "Mars/Olympus", "not a known time zone"),
                                  ("timezone", "../etc/passwd", "not a time zone name"),
                                  ("keyboard", "DE;rm", "has the wrong form")):
        with pytest.raises(StateError, match=message):
            validate_answers({**data, field: value})
