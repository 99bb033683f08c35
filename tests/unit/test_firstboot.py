"""First boot: the answer file's validation, the state built from it, the one-time setup code
and the web wizard's endpoint (falcon.testing on a real store and a real sandbox render)."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from falcon import testing

from mailwarden.api.app import Services, create_app
from mailwarden.control.service import NoController
from mailwarden.errors import StateError
from mailwarden.firstboot import setupcode
from mailwarden.firstboot.answers import load_answers, validate_answers
from mailwarden.firstboot.configure import keep_reachable, state_from_answers
from mailwarden.state.load import load_state_text
from mailwarden.state.schema import CURRENT_VERSION
from mailwarden.store.credentials import CredentialStore
from mailwarden.store.db import Database
from mailwarden.store.users import Users, hash_password
from mailwarden_dev.instance import Sandbox

from .test_api import STATE

SEED = """\
version: 1
hostname: mx1.example.org
network: {mode: static, address: 192.0.2.10/24, gateway: 192.0.2.1, dns: [192.0.2.53]}
admin: {password_hash: "HASH"}
domains:
  - {name: example.org, server: 10.0.0.5}
  - {name: example.net, server: mail.example.net, port: 2525}
trusted_networks: [10.1.0.0/16]
ssh_authorized_keys: ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGx0ZXN0a2V5 admin@laptop"]
"""


def test_a_complete_seed_file_validates() -> None:
    answers = load_answers(SEED.replace("HASH", hash_password("a long password")), "seed")
    assert answers.hostname == "mx1.example.org"
    assert answers.network is not None and answers.network.address == "192.0.2.10/24"
    assert [d.port for d in answers.domains] == [25, 2525]


def test_every_mistake_is_reported_with_path_and_line() -> None:
    text = """\
version: 1
hostname: mailhost
network: {mode: static, address: 192.0.2.10}
admin: {password: short}
domains:
  - {name: example.org, server: 10.0.0.5, prot: 25}
trusted_networks: [10.0.0.1/8]
ssh_authorized_keys: [hello]
"""
    with pytest.raises(StateError) as info:
        load_answers(text, "seed")
    found = {e.path: (e.line, e.message) for e in info.value.errors}
    assert "fully qualified" in found["hostname"][1] and found["hostname"][0] == 2
    assert "prefix length" in found["network.address"][1]
    assert "did you mean 'port'" in found["domains[0].prot"][1]
    assert found["domains[0].prot"][0] == 6
    assert "did you mean 10.0.0.0/8" in found["trusted_networks[0]"][1]
    assert "OpenSSH public key" in found["ssh_authorized_keys[0]"][1]
    assert found["admin.password"][1] == "must be at least 10 characters"


@pytest.mark.parametrize(("admin", "message"), [
    ({}, "either password_hash or password"),
    ({"password": "long enough pw", "password_hash": "$argon2id$x"}, "either"),
    ({"password_hash": "$6$sha512crypt"}, "argon2 hash"),
])
def test_admin_needs_exactly_one_argon2_secret(admin: dict[str, str], message: str) -> None:
    data = {"version": 1, "hostname": "mx.example.org", "admin": admin,
            "domains": [{"name": "example.org", "server": "10.0.0.5"}]}
    with pytest.raises(StateError) as info:
        validate_answers(data)
    assert message in str(info.value)


def test_static_network_needs_address_and_gateway() -> None:
    data = {"version": 1, "hostname": "mx.example.org", "admin": {"password": "long enough pw"},
            "domains": [{"name": "example.org", "server": "10.0.0.5"}],
            "network": {"mode": "static", "address": "192.0.2.10/24"}}
    with pytest.raises(StateError, match="needs gateway"):
        validate_answers(data)


def test_state_from_answers_keeps_other_settings_and_trusts_internal_servers() -> None:
    answers = load_answers(SEED.replace("HASH", hash_password("a long password")), "seed")
    current = """\
version: 1
system: {hostname: old.example.org, admin_email: postmaster@example.org}
domains:
  - name: example.org
    transport: {host: 10.9.9.9, tls: encrypt}
spam: {levels: {tag: 5.0}}
"""
    state = load_state_text(state_from_answers(answers, current))
    assert state.system.hostname == "mx1.example.org"
    assert state.system.admin_email == "postmaster@example.org"
    first = state.domains[0]
    assert (first.transport.host, first.transport.tls) == ("10.0.0.5", "encrypt")
    assert state.domains[1].transport.port == 2525
    # 10.0.0.5 relays outbound mail; the name mail.example.net is left to the admin.
    assert state.networks.trusted == ["10.1.0.0/16", "10.0.0.5/32"]
    assert state.networks.ssh is True
    assert state.spam.levels.tag == 5.0


def test_state_from_answers_on_an_empty_appliance() -> None:
    answers = validate_answers({"version": 1, "hostname": "mx.example.org",
                                "admin": {"password": "long enough pw"},
                                "domains": [{"name": "example.org", "server": "10.0.0.0"}],
                                "trusted_networks": ["10.0.0.0/8"]})
    state = load_state_text(state_from_answers(answers, None))
    assert state.networks.trusted == ["10.0.0.0/8"] and state.networks.ssh is False


def test_state_from_answers_writes_the_state_format_not_the_answers_one() -> None:
    answers = load_answers(SEED.replace("HASH", hash_password("a long password")), "seed")
    assert answers.version == 1
    current = """\
version: 1
system: {hostname: old.example.org}
domains: [{name: example.org, transport: {host: 10.9.9.9}}]
quarantine: {digest: {enabled: true}, user_portal: false}
notifications: {daily_report: true}
"""
    for text in (None, current):
        written = yaml.safe_load(state_from_answers(answers, text))
        assert written["version"] == CURRENT_VERSION
        assert "notifications" not in written
        load_state_text(yaml.safe_dump(written))
    assert written["quarantine"] == {"user_portal": False}


def test_management_networks_from_the_answers() -> None:
    base = {"version": 1, "hostname": "mx.example.org", "admin": {"password": "long enough pw"},
            "domains": [{"name": "example.org", "server": "10.0.0.5"}]}
    given = validate_answers({**base, "management_networks": ["192.168.7.0/24"]})
    state = load_state_text(state_from_answers(given, None))
    assert state.networks.management == ["192.168.7.0/24"]
    # Not given: management stays empty, which the firewall reads as the trusted networks.
    state = load_state_text(state_from_answers(validate_answers(base), None))
    assert state.networks.management == []


def test_the_web_wizard_never_locks_out_the_browser_that_sets_it_up() -> None:
    answers = validate_answers({"version": 1, "hostname": "mx.example.org",
                                "admin": {"password": "long enough pw"},
                                "domains": [{"name": "example.org", "server": "10.0.0.5"}],
                                "trusted_networks": ["10.1.0.0/16"]})
    # From outside the trusted networks: the browser's address joins them for the web UI.
    outside = keep_reachable(answers, "192.168.1.50")
    assert outside.management_networks == ["10.1.0.0/16", "10.0.0.5/32", "192.168.1.50/32"]
    state = load_state_text(state_from_answers(outside, None))
    assert "192.168.1.50/32" in state.networks.management
    assert "192.168.1.50/32" not in state.networks.trusted  # it may manage, not relay
    # Inside the trusted networks, from loopback, or with management chosen: as given.
    assert keep_reachable(answers, "10.1.2.3") is answers
    assert keep_reachable(answers, "127.0.0.1") is answers
    chosen = answers.model_copy(update={"management_networks": ["172.16.0.0/12"]})
    assert keep_reachable(chosen, "192.168.1.50") is chosen


def test_setup_code_is_single_use_and_forgiving_about_case(tmp_path: Path) -> None:
    path = tmp_path / "setup-code"
    code = setupcode.issue(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert setupcode.matches(path, code.lower().replace("-", " "))
    assert not setupcode.matches(path, "AAAA-BBBB-CCCC-DDDD")
    setupcode.discard(path)
    assert not setupcode.matches(path, code)


# --- the web wizard's endpoint ---------------------------------------------------------------

@pytest.fixture
def fresh() -> Iterator[tuple[testing.TestClient, Sandbox, str]]:
    root = Path(tempfile.mkdtemp(prefix="mw-setup-", dir="/tmp"))
    root.chmod(0o755)
    sandbox = Sandbox(root / "sb")
    sandbox.prepare(STATE)
    code = setupcode.issue(sandbox.layout.setup_code)
    db = Database(sandbox.layout.database)
    client = testing.TestClient(create_app(Services(sandbox.layout, db, NoController())))
    yield client, sandbox, code
    shutil.rmtree(root, ignore_errors=True)


def _wizard(code: str, **answers: object) -> dict[str, object]:
    body: dict[str, object] = {"version": 1, "hostname": "gw.example.org",
                               "admin": {"password": "a long password"},
                               "domains": [{"name": "example.org", "server": "10.0.0.5"}]}
    body.update(answers)
    return {"setup_code": code, "answers": body}


def test_wizard_sets_up_once_and_logs_the_admin_in(fresh) -> None:
    client, sandbox, code = fresh
    assert client.simulate_get("/api/setup").json == {"needed": True, "code_issued": True}
    result = client.simulate_post("/api/setup", json=_wizard(code))
    assert result.status_code == 201, result.text
    assert result.json["username"] == "admin" and result.json["revision"] == 2
    cookie = result.cookies["mw_session"].value
    state = client.simulate_get("/api/state", headers={"Cookie": f"mw_session={cookie}"})
    assert state.json["state"]["system"]["hostname"] == "gw.example.org"
    assert state.json["state"]["domains"][0]["transport"]["host"] == "10.0.0.5"
    assert not sandbox.layout.setup_code.exists()
    assert client.simulate_get("/api/setup").json["needed"] is False
    again = client.simulate_post("/api/setup", json=_wizard(code))
    assert again.status_code == 409 and again.json["error"]["code"] == "already_set_up"
    login = client.simulate_post("/api/session", json={"username": "admin",
                                                       "password": "a long password"})
    assert login.status_code == 200


def test_wizard_from_outside_the_trusted_networks_keeps_the_web_ui(fresh) -> None:
    client, _sandbox, code = fresh
    result = client.simulate_post("/api/setup", json=_wizard(code),
                                  remote_addr="198.51.100.7")
    assert result.status_code == 201, result.text
    cookie = result.cookies["mw_session"].value
    state = client.simulate_get("/api/state", headers={"Cookie": f"mw_session={cookie}"})
    networks = state.json["state"]["networks"]
    assert "198.51.100.7/32" in networks["management"]
    assert "198.51.100.7/32" not in networks["trusted"]


def test_wizard_refuses_a_wrong_code_and_throttles_guessing(fresh) -> None:
    client, sandbox, code = fresh
    for _ in range(10):
        result = client.simulate_post("/api/setup", json=_wizard("AAAA-BBBB-CCCC-DDDD"))
        assert result.status_code == 403
        assert result.json["error"]["field"] == "setup_code"
    result = client.simulate_post("/api/setup", json=_wizard(code))
    assert result.status_code == 429
    assert Users(CredentialStore.for_layout(sandbox.layout)).count() == 0


def test_wizard_names_the_fields_it_refuses_and_stays_open(fresh) -> None:
    client, sandbox, code = fresh
    result = client.simulate_post("/api/setup", json=_wizard(
        code, hostname="mailhost", admin={"password": "short"},
        domains=[{"name": "example", "server": "10.0.0.5"}]))
    assert result.status_code == 400
    fields = {e["field"] for e in result.json["error"]["errors"]}
    assert fields == {"hostname", "admin.password", "domains[0].name"}
    assert sandbox.layout.setup_code.exists()
    assert client.simulate_get("/api/setup").json["needed"] is True
    assert yaml.safe_load(sandbox.layout.state_file.read_text())["system"]["hostname"] == \
        "mx.example.test"


def test_wizard_refuses_an_expired_code_then_takes_a_fresh_one(fresh) -> None:
    client, sandbox, _code = fresh
    old = setupcode.issue(sandbox.layout.setup_code, now=time.time() - setupcode.LIFETIME - 1)
    assert client.simulate_get("/api/setup").json == {"needed": True, "code_issued": False}
    result = client.simulate_post("/api/setup", json=_wizard(old))
    assert result.status_code == 403
    assert result.json["error"]["code"] == "setup_code_expired"
    assert result.json["error"]["field"] == "setup_code"
    assert "expired" in result.json["error"]["message"]
    assert Users(CredentialStore.for_layout(sandbox.layout)).count() == 0
    new = setupcode.issue(sandbox.layout.setup_code)
    result = client.simulate_post("/api/setup", json=_wizard(
        new, keyboard="de", timezone="Europe/Berlin",
        network={"mode": "dhcp", "ipv6": "static", "ipv6_address": "2001:db8::10/64"}))
    assert result.status_code == 201, result.text
    # Used: the appliance is set up, and the code is gone with the wizard.
    again = client.simulate_post("/api/setup", json=_wizard(new))
    assert again.status_code == 409 and again.json["error"]["code"] == "already_set_up"


def test_setup_code_lifetime(tmp_path: Path) -> None:
    path = tmp_path / "setup-code"
    code = setupcode.issue(path, now=1000.0, lifetime=60.0)
    assert setupcode.current(path) == code and setupcode.expires(path) == 1060.0
    assert setupcode.valid(path, now=1059.0) == code
    assert setupcode.valid(path, now=1060.0) is None and setupcode.expired(path, now=1060.0)
    assert setupcode.matches(path, code.lower().replace("-", " "))
    path.write_text(code + "\n")  # an earlier version's file: no expiry, so expired
    assert setupcode.expired(path, now=0.0)
    setupcode.discard(path)
    assert setupcode.current(path) is None and setupcode.expired(path)
