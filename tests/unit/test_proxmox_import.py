"""image/proxmox-import.sh against recording, option-checking stand-ins for qm and pvesm."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "image" / "proxmox-import.sh"
FAKE = Path(__file__).with_name("fake_pve.py")
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB3PYGvmD7TErpNxmw0Hn1tf4l4V9q2vRS4H3n4PYm2c me@laptop"
ANSWERS = """\
version: 1
hostname: mx1.example.org
admin: {password_hash: "$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA"}
domains:
  - {name: example.org, server: 10.0.0.5}
"""


@dataclass
class Host:
    state: Path
    bin: Path
    work: Path
    image: Path

    def run(self, *args: str, snippets: str = "local",
            inactive: str = "") -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PATH": f"{self.bin}:{os.environ['PATH']}",
               "FAKE_PVE_DIR": str(self.state), "FAKE_PVE_SNIPPETS": snippets,
               "FAKE_PVE_INACTIVE": inactive}
        return subprocess.run(["bash", str(SCRIPT), *args], cwd=self.work, env=env,
                              capture_output=True, text=True, timeout=60)

    def fake(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "FAKE_PVE_DIR": str(self.state)}
        return subprocess.run([sys.executable, str(FAKE), *args], env=env,
                              capture_output=True, text=True, timeout=60)

    def calls(self) -> list[list[str]]:
        log = self.state / "calls.jsonl"
        if not log.exists():
            return []
        return [json.loads(line) for line in log.read_text().splitlines()]


@pytest.fixture()
def host(tmp_path: Path) -> Host:
    state, bin_dir, work = tmp_path / "pve", tmp_path / "bin", tmp_path / "work"
    for folder in (state, bin_dir, work):
        folder.mkdir()
    for program in ("qm", "pvesm"):
        wrapper = bin_dir / program
        wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE}" {program} "$@"\n')
        wrapper.chmod(0o755)
    image = work / "mailwarden-0.1.0-amd64.qcow2"
    image.write_bytes(b"QFI\xfb\x00\x00\x00\x03" + bytes(504))
    return Host(state, bin_dir, work, image)


def _create(image: Path, storage: str = "local-lvm", name: str = "mailwarden",
            cores: str = "2", memory: str = "4096", bridge: str = "vmbr0") -> list[str]:
    return ["qm", "create", "9000", "--name", name, "--ostype", "l26", "--machine", "q35",
            "--bios", "ovmf", "--efidisk0", f"{storage}:1,efitype=4m,pre-enrolled-keys=1",
            "--scsihw", "virtio-scsi-single",
            "--scsi0", f"{storage}:0,import-from={image},discard=on,iothread=1",
            "--ide2", f"{storage}:cloudinit", "--boot", "order=scsi0",
            "--cores", cores, "--memory", memory, "--net0", f"virtio,bridge={bridge}",
            "--agent", "enabled=1", "--serial0", "socket", "--vga", "serial0"]


def test_import_with_answers_records_the_whole_sequence(host: Host) -> None:
    answers = host.work / "answers.yaml"
    answers.write_text(ANSWERS)
    result = host.run("--vmid", "9000", "--storage", "fast", "--bridge", "vmbr1",
                      "--memory", "8192", "--cores", "4", "--disk-size", "32G",
                      "--answers", str(answers), "--snippet-storage", "snip",
                      "--ipconfig0", "ip=192.0.2.10/24,gw=192.0.2.1",
                      "--nameserver", "192.0.2.53 192.0.2.54", "--start", host.image.name,
                      snippets="local,snip")
    assert result.returncode == 0, result.stderr
    assert host.calls() == [
        ["pvesm", "status", "--content", "snippets"],
        ["pvesm", "path", "snip:snippets/mailwarden-9000-user.yaml"],
        _create(host.image, "fast", cores="4", memory="8192", bridge="vmbr1"),
        ["qm", "set", "9000", "--citype", "nocloud",
         "--cicustom", "user=snip:snippets/mailwarden-9000-user.yaml",
         "--ipconfig0", "ip=192.0.2.10/24,gw=192.0.2.1",
         "--nameserver", "192.0.2.53 192.0.2.54"],
        ["qm", "disk", "resize", "9000", "scsi0", "32G"],
        ["qm", "start", "9000"],
    ]
    stored = host.state / "snippets/snip/snippets/mailwarden-9000-user.yaml"
    assert stored.read_text() == ANSWERS
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    assert "no SHA256SUMS" in result.stderr


def test_import_with_plain_cloud_init_inputs(host: Host) -> None:
    keys = host.work / "keys.pub"
    keys.write_text(f"# mine\n{KEY}\n")
    result = host.run("--vmid", "9000", "--hostname", "mx1.example.org",
                      "--ipconfig0", "ip=dhcp", "--searchdomain", "example.org",
                      "--sshkeys", str(keys), str(host.image))
    assert result.returncode == 0, result.stderr
    assert host.calls() == [
        _create(host.image, name="mx1.example.org"),
        ["qm", "set", "9000", "--citype", "nocloud", "--ipconfig0", "ip=dhcp",
         "--searchdomain", "example.org", "--sshkeys", str(keys)],
    ]


def test_checksum_verified_when_sha256sums_is_there(host: Host) -> None:
    digest = hashlib.sha256(host.image.read_bytes()).hexdigest()
    (host.work / "SHA256SUMS").write_text(f"{digest}  {host.image.name}\n"
                                          f"{'0' * 64}  other.raw\n")
    result = host.run("--vmid", "9000", host.image.name)
    assert result.returncode == 0, result.stderr
    assert "checking mailwarden-0.1.0-amd64.qcow2 against SHA256SUMS" in result.stderr
    assert host.calls()[0][:2] == ["qm", "create"]


def test_dry_run_calls_nothing(host: Host) -> None:
    answers = host.work / "answers.yaml"
    answers.write_text(ANSWERS)
    result = host.run("--vmid", "9000", "--answers", str(answers), "--dry-run",
                      str(host.image))
    assert result.returncode == 0, result.stderr
    assert host.calls() == []
    assert "+ qm create 9000 --name mailwarden" in result.stderr


@pytest.mark.parametrize(("snippets", "inactive"), [("other", ""), ("local", "local")])
def test_snippet_storage_without_snippets_stops_before_qm(host: Host, snippets: str,
                                                         inactive: str) -> None:
    answers = host.work / "answers.yaml"
    answers.write_text(ANSWERS)
    result = host.run("--vmid", "9000", "--answers", str(answers), str(host.image),
                      snippets=snippets, inactive=inactive)
    assert result.returncode != 0
    assert "storage 'local' does not hold snippets" in result.stderr
    assert [c[0] for c in host.calls()] == ["pvesm"]


@pytest.mark.parametrize(("args", "message"), [
    ([], "--vmid is required"),
    (["--vmid", "42"], "a number from 100 to 999999999"),
    (["--vmid", "9000", "--memory", "1024"], "at least 2048"),
    (["--vmid", "9000", "--cores", "0"], "a number from 1 to 128"),
    (["--vmid", "9000", "--storage", "Local LVM"], "is not a storage ID"),
    (["--vmid", "9000", "--bridge", "vmbr0,tag=5"], "is not a bridge name"),
    (["--vmid", "9000", "--name", "mail_warden"], "is not a DNS name"),
    (["--vmid", "9000", "--hostname", "bad-.example"], "is not a host name"),
    (["--vmid", "9000", "--name", "a", "--hostname", "b.example.org"], "differ"),
    (["--vmid", "9000", "--disk-size", "4G"], "the image is 8G already"),
    (["--vmid", "9000", "--disk-size", "+24G"], "a size like 32G"),
    (["--vmid", "9000", "--ipconfig0", "ip=192.0.2.10"], "ip=dhcp or ip=ADDRESS/PREFIX"),
    (["--vmid", "9000", "--ipconfig0", "ip=dhcp,gw=192.0.2.1"], "ip=dhcp or"),
    (["--vmid", "9000", "--nameserver", "dns.example"], "is not an IP address"),
    (["--vmid", "9000", "--sshkeys", "missing.pub"], "no such readable file"),
    (["--vmid", "9000", "--frobnicate", "1"], "unknown option --frobnicate"),
    (["--vmid", "9000", "--name", "--cores", "2"], "--name needs a value"),
])
def test_bad_option_refused_before_any_call(host: Host, args: list[str], message: str) -> None:
    result = host.run(*args, str(host.image))
    assert result.returncode == 2
    assert message in result.stderr
    assert host.calls() == []


@pytest.mark.parametrize(("setup", "message"), [
    ("cloud-config", "a #cloud-config without a 'mailwarden:' section"),
    ("plain-password", "in plain text"),
    ("not-answers", "not an answer file"),
    ("keys-and-answers", "put the keys in the answers"),
    ("bad-key", "not an OpenSSH public key line"),
    ("not-qcow2", "not a qcow2 file"),
    ("checksum", "checksum mismatch"),
    ("checksum-missing-line", "SHA256SUMS has no line for"),
    ("two-images", "one image only"),
])
def test_bad_input_file_refused_before_any_call(host: Host, setup: str, message: str) -> None:
    answers, keys = host.work / "answers.yaml", host.work / "keys.pub"
    answers.write_text(ANSWERS)
    keys.write_text(KEY + "\n")
    args = ["--vmid", "9000", "--answers", str(answers)]
    images = [str(host.image)]
    if setup == "cloud-config":
        answers.write_text("#cloud-config\nhostname: mx1\n")
    elif setup == "plain-password":
        answers.write_text(ANSWERS.replace("password_hash: \"$argon2id$v=19$m=65536,t=3,p=4"
                                           "$c2FsdA$aGFzaA\"", "\n    password: hunter2hunter"))
    elif setup == "not-answers":
        answers.write_text("hello: world\n")
    elif setup == "keys-and-answers":
        args += ["--sshkeys", str(keys)]
    elif setup == "bad-key":
        keys.write_text("ssh-ed25519 AAAA me\nrm -rf /\n")
        args = ["--vmid", "9000", "--sshkeys", str(keys)]
    elif setup == "not-qcow2":
        host.image.write_bytes(b"\x00" * 512)
    elif setup == "checksum":
        (host.work / "SHA256SUMS").write_text(f"{'0' * 64}  {host.image.name}\n")
    elif setup == "checksum-missing-line":
        (host.work / "SHA256SUMS").write_text(f"{'0' * 64}  other.qcow2\n")
    elif setup == "two-images":
        images.append(str(host.image))
    result = host.run(*args, *images)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert host.calls() == []


@pytest.mark.parametrize(("args", "reason"), [
    (["create", "9001", "--efidisk0", "local-lvm:1,efitype=8m"], "efitype"),
    (["create", "9001", "--efidisk0", "local-lvm:1,efitype=2m,pre-enrolled-keys=1"],
     "needs efitype=4m"),
    (["create", "9001", "--scsi0", "local-lvm:8,import-from=/etc/hostname"], "special syntax"),
    (["create", "9001", "--scsi0", "local-lvm:0,import-from=/nonexistent.qcow2"],
     "import-from"),
    (["create", "9001", "--net0", "virtio,bridge=vmbr0,speed=10"], "unknown key 'speed'"),
    (["create", "9001", "--net0", "virtio-net,bridge=vmbr0"], "not a network card model"),
    (["create", "9001", "--scsihw", "virtio-scsi"], "bad value"),
    (["create", "9001", "--vga", "serial4"], "bad value"),
    (["create", "9001", "--hostname", "mx1"], "unknown option 'hostname'"),
    (["create", "9001", "--cicustom", "user=local:mailwarden.yaml"], "bad value"),
    (["create", "9001", "--ipconfig0", "ip=dhcp,gw=192.0.2.1"], "gw needs a static ip"),
    (["create", "9001", "--ipconfig0", "ip=192.0.2.10"], "bad value"),
    (["create", "9001", "--sshkeys", "ssh-ed25519 AAAA"], "no such file"),
    (["set", "9001", "--citype", "nocloud"], "does not exist"),
    (["disk", "resize", "9001", "scsi0", "32G"], "does not exist"),
])
def test_the_fake_refuses_what_qm_refuses(host: Host, args: list[str], reason: str) -> None:
    result = host.fake("qm", *args)
    assert result.returncode == 2
    assert reason in result.stderr


def test_the_fake_accepts_the_documented_forms(host: Host) -> None:
    image = host.image
    assert host.fake("qm", *_create(image)[1:]).returncode == 0
    assert host.fake("qm", "create", "9000").returncode == 2  # exists now
    assert host.fake("qm", "disk", "resize", "9000", "scsi0", "+24G").returncode == 0
    assert host.fake("qm", "disk", "resize", "9000", "scsi1", "+24G").returncode == 2
    assert host.fake("pvesm", "path", "nosnip:snippets/a.yaml").returncode == 2


def test_off_a_proxmox_node_it_says_so(host: Host) -> None:
    env = {"PATH": "/usr/bin:/bin", "FAKE_PVE_DIR": str(host.state)}
    result = subprocess.run(["bash", str(SCRIPT), "--vmid", "9000", str(host.image)],
                            cwd=host.work, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "run this on a Proxmox VE node" in result.stderr
    assert host.calls() == []
