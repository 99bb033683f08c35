"""The console wizard and menu, in-process on a fresh sandbox (scripted answers, the real
answer model, the real apply transaction with nothing running); the same dialogue through a
pty is in tests/integration/test_console.py."""

from __future__ import annotations

import io
import shutil
import tempfile
import time
from pathlib import Path

import pytest
from falcon import testing

from mailwarden.api.app import Services, create_app
from mailwarden.console.menu import Menu, run_console
from mailwarden.console.system import fingerprint
from mailwarden.console.terminal import Hangup, Terminal
from mailwarden.console.wizard import Wizard, checker
from mailwarden.control.service import NoController
from mailwarden.firstboot import setupcode
from mailwarden.firstboot.configure import is_set_up
from mailwarden.firstboot.host import NETWORK_FILE, ApplianceHost
from mailwarden.state.revisions import RevisionStore
from mailwarden.store.credentials import CredentialStore
from mailwarden.store.db import Database
from mailwarden.store.users import Users
from mailwarden_dev.instance import Sandbox

from .test_api import STATE

PASSWORD = "a console password"


def _console(sandbox: Sandbox, lines: list[str]) -> tuple[Terminal, io.StringIO]:
    out = io.StringIO()
    return Terminal(io.StringIO("".join(line + "\n" for line in lines)), out), out


def _host(sandbox: Sandbox) -> ApplianceHost:
    return ApplianceHost(sandbox.root, live=False, layout=sandbox.layout)


WIZARD = ["console", "us", "static", "192.0.2.10/24", "192.0.2.1", "auto", "192.0.2.53",
          "mx.console.test", "UTC", PASSWORD, PASSWORD, "example.test", "10.0.0.5", "25", "yes"]


# --- the same checks and words as the web wizard ---------------------------------------------


@pytest.mark.parametrize(("path", "value", "answers"), [
    ("hostname", "mailhost", {}),
    ("admin.password", "short", {}),
    ("domains[0].name", "example", {}),
    ("domains[0].server", "not a host!", {}),
    ("timezone", "Mars/Olympus", {}),
    ("network.address", "192.0.2.10",
     {"network": {"mode": "static", "address": "192.0.2.10", "gateway": "192.0.2.1"}}),
])
def test_console_refuses_with_the_web_wizards_message(path: str, value: str,
                                                       answers: dict[str, object]) -> None:
    root = Path(tempfile.mkdtemp(prefix="mw-console-", dir="/tmp"))
    try:
        sandbox = Sandbox(root / "sb")
        sandbox.prepare(STATE)
        code = setupcode.issue(sandbox.layout.setup_code)
        client = testing.TestClient(create_app(Services(sandbox.layout,
                                                        Database(sandbox.layout.database),
                                                        NoController())))
        body: dict[str, object] = {"version": 1, "hostname": "gw.example.org",
                                   "admin": {"password": "a long password"},
                                   "domains": [{"name": "example.org", "server": "10.0.0.5"}]}
        body.update(answers)
        head, _, tail = path.partition(".")
        if path == "domains[0].name":
            body["domains"] = [{"name": value, "server": "10.0.0.5"}]
        elif path == "domains[0].server":
            body["domains"] = [{"name": "example.org", "server": value}]
        elif head == "admin":
            body["admin"] = {tail: value}
        elif not tail:
            body[head] = value
        result = client.simulate_post("/api/setup", json={"setup_code": code, "answers": body})
        assert result.status_code == 400
        web = {e["field"]: e["message"] for e in result.json["error"]["errors"]}
        known = (lambda: answers) if answers else None
        assert checker(path, known=known)(value) == web[path]
        good = {"hostname": "mx.example.org", "admin.password": "long enough pw",
                "domains[0].name": "example.org", "domains[0].server": "10.0.0.5",
                "timezone": "Europe/Berlin", "network.address": "192.0.2.10/24"}[path]
        assert checker(path, known=known)(good) is None
    finally:
        shutil.rmtree(root, ignore_errors=True)


# --- the wizard --------------------------------------------------------------------------


def test_wizard_asks_refuses_and_applies_through_the_engine(fresh: Sandbox) -> None:
    answers = list(WIZARD)
    answers[7:8] = ["mailhost", "mx.console.test"]  # one wrong host name first
    term, out = _console(fresh, answers)
    result = Wizard(term, fresh.layout, NoController(), _host(fresh), live=False,
                    sys_net=fresh.root / "no-sys").run()
    assert result is not None and result.applied.revision.number == 1
    text = out.getvalue()
    assert "MWCONSOLE refused hostname: " in text
    assert text.count("MWCONSOLE prompt hostname") == 2
    assert PASSWORD not in text  # never echoed, never in a message
    assert RevisionStore(fresh.layout.revisions_dir).get(1).author == "console wizard"
    assert is_set_up(fresh.layout)
    Users(CredentialStore.for_layout(fresh.layout)).authenticate("admin", PASSWORD)
    assert "Address=192.0.2.10/24" in (fresh.root / "etc/systemd/network/10-mailwarden.network"
                                       ).read_text()


def test_wizard_lists_the_interfaces_with_mac_and_link(fresh: Sandbox) -> None:
    net = fresh.root / "sys-net"
    for name, mac, state in (("ens18", "52:54:00:12:34:56", "up"), ("ens19", "52:54:00:aa:bb:cc",
                                                                      "down")):
        (net / name / "device").mkdir(parents=True)
        (net / name / "address").write_text(mac + "\n")
        (net / name / "operstate").write_text(state + "\n")
        (net / name / "type").write_text("1\n")
    term, out = _console(fresh, ["3", "ens19", "dhcp", "off"])
    network = Wizard(term, fresh.layout, NoController(), _host(fresh), live=False,
                     sys_net=net).ask_network()
    assert network == {"interface": "ens19", "mode": "dhcp", "ipv6": "off"}
    text = out.getvalue()
    assert "1) ens18        52:54:00:12:34:56 link up" in text
    assert "2) ens19        52:54:00:aa:bb:cc link down" in text
    assert "MWCONSOLE refused interface: answer a number from 1 to 2" in text


def test_web_wizard_screen_shows_a_live_code_and_a_new_one_on_request(fresh: Sandbox) -> None:
    fresh.layout.secrets_dir.mkdir(parents=True, exist_ok=True)
    from mailwarden import secrets

    secrets.ensure_self_signed(fresh.layout.secrets_dir, "api", "mailwarden.invalid")
    old = setupcode.issue(fresh.layout.setup_code, now=time.time() - setupcode.LIFETIME - 1)
    term, out = _console(fresh, ["web", "n", "c"])
    with pytest.raises(Hangup):
        Wizard(term, fresh.layout, NoController(), _host(fresh), live=False).run()
    shown = [line.split()[-1] for line in out.getvalue().splitlines()
             if line.startswith("MWCONSOLE setup-code ")]
    assert len(shown) == 2 and old not in shown and shown[0] != shown[1]
    assert setupcode.valid(fresh.layout.setup_code) == shown[1]
    fp = fingerprint(fresh.layout)
    assert fp is not None and len(fp) == 95
    assert f"Certificate   SHA-256 {fp}" in out.getvalue()
    assert "https://" in out.getvalue() and f":{fresh.layout.ports.api}/" in out.getvalue()


# --- the menu ----------------------------------------------------------------------------


def _set_up(sandbox: Sandbox) -> None:
    term, _ = _console(sandbox, WIZARD)
    Wizard(term, sandbox.layout, NoController(), _host(sandbox), live=False,
           sys_net=sandbox.root / "no-sys").run()


def test_menu_password_reset_is_a_revision(fresh: Sandbox) -> None:
    _set_up(fresh)
    term, out = _console(fresh, ["4", "another password", "different password",
                                 "another password", "another password"])
    Menu(term, fresh.layout, NoController(), _host(fresh), live=False).run_once()
    assert "MWCONSOLE refused admin-password-again: the passwords differ" in out.getvalue()
    assert "MWCONSOLE admin password reset revision=2" in out.getvalue()
    revision = RevisionStore(fresh.layout.revisions_dir).get(2)
    assert (revision.author, revision.comment) == ("console",
                                                   "admin password reset on the console")
    users = Users(CredentialStore.for_layout(fresh.layout))
    users.authenticate("admin", "another password")


def test_factory_reset_keeps_the_identity_and_returns_to_the_wizard(fresh: Sandbox) -> None:
    _set_up(fresh)
    layout = fresh.layout
    (layout.secrets_dir / "example.test.dkim.key").write_text("-----BEGIN RSA PRIVATE KEY-----")
    certificate = (layout.secrets_dir / "smtp.crt").read_bytes()
    (layout.quarantine_dir / "ab").mkdir(parents=True)
    (layout.quarantine_dir / "ab" / "message.eml").write_text("quarantined")
    rendered = layout.path("/etc/nftables.conf").read_text()
    assert "Managed by Mailwarden from" in rendered
    layout.factory_firewall.parent.mkdir(parents=True)
    layout.factory_firewall.write_text("# the image's boot-time default\n")
    term, out = _console(fresh, ["6", "wrong.name", "6", "mx.console.test"])
    menu = Menu(term, layout, NoController(), _host(fresh), live=False)
    assert menu.run_once() is True
    assert "MWCONSOLE reset cancelled" in out.getvalue() and is_set_up(layout)
    assert layout.path("/etc/nftables.conf").read_text() == rendered
    assert menu.run_once() is False
    assert "MWCONSOLE factory reset done" in out.getvalue()
    assert not is_set_up(layout) and not layout.state_file.exists()
    assert RevisionStore(layout.revisions_dir).current() is None
    assert not layout.auth_database.exists() and not layout.database.exists()
    assert not (layout.secrets_dir / "example.test.dkim.key").exists()
    assert (layout.secrets_dir / "smtp.crt").read_bytes() == certificate
    assert layout.quarantine_dir.is_dir() and not any(layout.quarantine_dir.iterdir())
    # The firewall a fresh appliance has: the last state's management networks are gone.
    assert layout.path("/etc/nftables.conf").read_text() == "# the image's boot-time default\n"
    # Back to the wizard: the next round asks how to set up.
    term, out = _console(fresh, [])
    with pytest.raises(Hangup):
        run_console(layout, controller=NoController(), host=_host(fresh), term=term,
                    live=False)
    assert "MWCONSOLE wizard" in out.getvalue()


def test_menu_network_change_is_written_and_recorded(fresh: Sandbox) -> None:
    _set_up(fresh)
    term, out = _console(fresh, ["3", "static", "198.51.100.7/24", "198.51.100.1", "off",
                                 "198.51.100.53", "yes"])
    Menu(term, fresh.layout, NoController(), _host(fresh), live=False,
         sys_net=fresh.root / "no-sys").run_once()
    assert "MWCONSOLE network changed revision=2" in out.getvalue()
    lines = (fresh.root / NETWORK_FILE).read_text().splitlines()
    assert {"Address=198.51.100.7/24", "DNS=198.51.100.53", "IPv6AcceptRA=no"} <= set(lines)
    revision = RevisionStore(fresh.layout.revisions_dir).get(2)
    assert revision.author == "console"
    assert revision.comment == ("network: IPv4 static 198.51.100.7/24, IPv6 off on the first "
                                "Ethernet (console)")
    # The state is the live one again: nothing rendered changed.
    store = RevisionStore(fresh.layout.revisions_dir)
    assert store.text(2) == store.text(1) and revision.files == store.get(1).files


def test_a_check_on_the_holding_object_refuses_the_field() -> None:
    def known() -> dict[str, object]:
        return {"network": {"mode": "dhcp", "ipv6": "static", "ipv6_address": "2001:db8::5/64"}}

    check = checker("network.ipv6_gateway", known=known)
    assert check("192.0.2.1") == "ipv6_gateway '192.0.2.1' is not an IPv6 address"
    assert check("2001:db8::1") is None


def test_ssh_without_openssh_is_refused_and_no_revision_claims_it(fresh: Sandbox) -> None:
    _set_up(fresh)
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGx0ZXN0a2V5 admin@laptop"
    term, out = _console(fresh, ["5", key])
    Menu(term, fresh.layout, NoController(), _host(fresh), live=False).run_once()
    assert "MWCONSOLE failed: [error] SSH keys were given, but OpenSSH is not " \
           "installed here" in out.getvalue()
    assert RevisionStore(fresh.layout.revisions_dir).current() == 1


def test_a_no_at_the_summary_asks_again_with_the_answers_as_defaults(fresh: Sandbox) -> None:
    again = ["console", "", "", "", "", "", "", "mx2.console.test", "", PASSWORD, PASSWORD,
             "", "", "", "yes"]
    term, out = _console(fresh, [*WIZARD[:-1], "no", *again])
    result = Wizard(term, fresh.layout, NoController(), _host(fresh), live=False,
                    sys_net=fresh.root / "no-sys").run()
    assert result is not None
    text = out.getvalue()
    assert "Host name (fully qualified, mx1.example.org) [mx.console.test]: " in text
    assert "IPv4 address with prefix (192.0.2.10/24) [192.0.2.10/24]: " in text
    store = RevisionStore(fresh.layout.revisions_dir)
    assert store.current() == 1 and "hostname: mx2.console.test" in store.text(1)
    assert "host: 10.0.0.5" in store.text(1)
