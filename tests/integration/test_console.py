"""The appliance console, run as the program it is (`mailwarden console`) on a pty, on a
fresh sandbox: the wizard sets the appliance up through the first-run engine, then the
menu's changes show in the revision history."""

from __future__ import annotations

import os
import pty
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from mailwarden.errors import StateError
from mailwarden.firstboot.answers import validate_answers
from mailwarden.firstboot.host import NETWORK_FILE
from mailwarden.state.revisions import RevisionStore
from mailwarden.store.credentials import CredentialStore
from mailwarden.store.users import Users
from mailwarden_dev.instance import Sandbox

from ..console_driver import ConsoleDriver

pytestmark = pytest.mark.integration

PASSWORD = "a console password"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGx0ZXN0a2V5 admin@laptop"


class Console:
    """`mailwarden console` for the sandbox, its terminal a pty."""

    def __init__(self, sandbox: Sandbox) -> None:
        master, slave = pty.openpty()
        self.master = master
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mailwarden.cli", "console", "--root", str(sandbox.root)],
            stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
        os.close(slave)
        self.driver = ConsoleDriver.over_fd(master)

    def close(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=30)
        os.close(self.master)


@pytest.fixture(scope="module")
def fresh(sandbox_root: Path) -> Sandbox:
    sandbox = Sandbox(sandbox_root / "console")
    sandbox.prepare(None)
    return sandbox


@pytest.fixture
def console(fresh: Sandbox) -> Iterator[Console]:
    running = Console(fresh)
    yield running
    running.close()


def _web_wizard_message(network: dict[str, object]) -> str:
    """What the web wizard answers for the same network (its 400 lists these errors)."""
    answers = {"version": 1, "hostname": "mx.example.org", "admin": {"password": PASSWORD},
               "domains": [{"name": "example.org", "server": "10.0.0.5"}], "network": network}
    with pytest.raises(StateError) as refused:
        validate_answers(answers, "answers")
    [error] = refused.value.errors
    return error.message


def test_the_wizard_sets_a_fresh_appliance_up(fresh: Sandbox, console: Console) -> None:
    driver = console.driver
    driver.expect("MWCONSOLE wizard")
    driver.answer_all([("how", "console"), ("keyboard", "de"), ("ipv4", "static"),
                       ("ipv4-address", "192.0.2.10")], optional=["interface"])
    # The one wrong answer: refused with the web wizard's own words, and asked again.
    expected = _web_wizard_message({"mode": "static", "address": "192.0.2.10",
                                    "gateway": "192.0.2.1"})
    refused = driver.expect(r"MWCONSOLE refused ipv4-address: ([^\r\n]*)")
    assert refused.group(1).decode() == expected
    driver.answer_all([("ipv4-address", "192.0.2.10/24"), ("ipv4-gateway", "192.0.2.1"),
                       ("ipv6", "off"), ("dns", "192.0.2.53 192.0.2.54"),
                       ("hostname", "mx.console.test"), ("timezone", "Europe/Berlin"),
                       ("admin-password", PASSWORD), ("admin-password-again", PASSWORD),
                       ("domain", "example.test"), ("server", "127.0.0.1"), ("port", "2525"),
                       ("apply", "yes")])
    done = driver.expect(r"MWCONSOLE set-up complete revision=(\d+) hostname=(\S+)",
                         timeout=300)
    assert done.group(1) == b"1" and done.group(2) == b"mx.console.test"
    driver.expect("MWCONSOLE menu")
    assert PASSWORD.encode() not in driver.transcript  # the terminal did not echo it

    layout = fresh.layout
    revision = RevisionStore(layout.revisions_dir).get(1)
    assert revision.author == "console wizard" and revision.comment == "first-run setup"
    state = yaml.safe_load(layout.state_file.read_text())
    assert state["system"]["hostname"] == "mx.console.test"
    assert state["domains"][0]["transport"] == {"host": "127.0.0.1", "port": 2525}
    network = (fresh.root / NETWORK_FILE).read_text().splitlines()
    assert {"Address=192.0.2.10/24", "Gateway=192.0.2.1", "DNS=192.0.2.53", "DHCP=no",
            "LinkLocalAddressing=ipv4"} <= set(network)
    assert (fresh.root / "etc/hostname").read_text() == "mx\n"
    assert (fresh.root / "etc/timezone").read_text() == "Europe/Berlin\n"
    assert 'XKBLAYOUT="de"' in (fresh.root / "etc/default/keyboard").read_text()
    user = Users(CredentialStore.for_layout(layout)).authenticate("admin", PASSWORD)
    assert user.role == "admin"
    assert not layout.setup_code.exists()


def test_menu_changes_are_revisions(fresh: Sandbox, console: Console) -> None:
    layout = fresh.layout
    store = RevisionStore(layout.revisions_dir)
    before = store.current()
    assert before is not None, "runs after the wizard's test"
    (fresh.root / "usr/sbin").mkdir(parents=True, exist_ok=True)
    (fresh.root / "usr/sbin/sshd").touch()  # SSH keys need OpenSSH installed
    driver = console.driver
    new_password = "another long password"
    driver.answer_all([("choice", "4"), ("admin-password", new_password),
                       ("admin-password-again", new_password)])
    reset = driver.expect(r"MWCONSOLE admin password reset revision=(\d+)", timeout=120)
    assert int(reset.group(1)) == before + 1
    driver.answer_all([("choice", "5"), ("ssh-key", "not a key")])
    driver.expect("MWCONSOLE refused ssh-key: ")
    driver.answer("ssh-key", KEY)
    enabled = driver.expect(r"MWCONSOLE ssh on revision=(\d+)", timeout=120)
    assert int(enabled.group(1)) == before + 2

    history = store.history()[-2:]
    assert [(r.author, r.comment) for r in history] == [
        ("console", "admin password reset on the console"), ("console", "SSH on (console)")]
    assert yaml.safe_load(layout.state_file.read_text())["networks"]["ssh"] is True
    assert KEY in (fresh.root / "root/.ssh/authorized_keys").read_text()
    users = Users(CredentialStore.for_layout(layout))
    assert users.authenticate("admin", new_password).username == "admin"

    driver.answer_all([("choice", "5"), ("ssh-off", "yes")])
    driver.expect(r"MWCONSOLE ssh off revision=(\d+)", timeout=120)
    assert yaml.safe_load(layout.state_file.read_text())["networks"]["ssh"] is False
    assert store.get(before + 3).comment == "SSH off (console)"
