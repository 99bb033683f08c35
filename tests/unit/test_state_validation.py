"""Reading and validating state files: every mistake reported, with its path and line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from mailwarden.errors import FieldError, StateError
from mailwarden.state.load import dump_state, load_state_file, load_state_text, validate_data
from mailwarden.state.migrate import migrate
from mailwarden.state.schema import CURRENT_VERSION, State

STATES = Path(__file__).parent.parent / "data" / "states"
VALID = sorted(STATES.glob("*.yaml"))

MINIMAL = """\
version: 1
system: {hostname: mx1.example.org}
domains:
  - name: example.org
    transport: {host: 10.0.0.5}
"""


def errors_of(text: str) -> list[FieldError]:
    with pytest.raises(StateError) as caught:
        load_state_text(text)
    return caught.value.errors


# --- the ten-mistake file ---------------------------------------------------------------

TEN = [
    # (path, line, substring of the message)
    ("system.hostname", 4, "must be a fully qualified name"),
    ("networks.trusted[0]", 6, "has host bits set; did you mean 10.0.0.0/8?"),
    ("networks.trustd", 7, "unknown key; did you mean 'trusted'?"),
    ("domains[1].transport.port", 12, "must be 1..65535"),
    ("domains[2].name", 13, "domain 'example.org' is already at domains[0]"),
    ("mail.max_size_mb", 16, "must be a whole number (got 'lots')"),
    ("mail.filter_mode", 17, "must be 'after_queue' or 'before_queue' (got 'sometimes')"),
    ("spam.levels", 19, "tag <= quarantine <= reject (got 12.0 / 8.0 / 15.0)"),
    ("rule_objects.bad[0].regex", 22, "not a valid regular expression"),
    ("rules[0].from.objects[0]", 26, "no rule object named 'ghost'"),
]


@pytest.fixture(scope="module")
def ten_errors() -> list[FieldError]:
    with pytest.raises(StateError) as caught:
        load_state_file(STATES / "invalid" / "ten_mistakes.yaml")
    return caught.value.errors


def test_ten_mistakes_give_exactly_ten_messages(ten_errors: list[FieldError]) -> None:
    assert len(ten_errors) == 10, "\n".join(map(str, ten_errors))
    assert sorted(e.path for e in ten_errors) == sorted(path for path, _, _ in TEN)


@pytest.mark.parametrize(("path", "line", "message"), TEN, ids=[p for p, _, _ in TEN])
def test_each_mistake_is_precise(
    ten_errors: list[FieldError], path: str, line: int, message: str
) -> None:
    found = [e for e in ten_errors if e.path == path]
    assert len(found) == 1, ten_errors
    assert message in found[0].message
    assert found[0].line == line


def test_state_error_text_lists_every_mistake_with_its_line(ten_errors: list[FieldError]) -> None:
    with pytest.raises(StateError) as caught:
        load_state_file(STATES / "invalid" / "ten_mistakes.yaml")
    text = str(caught.value)
    assert "ten_mistakes.yaml: 10 errors" in text
    assert "domains[1].transport.port (line 12): must be 1..65535" in text


def test_broken_rule_object_does_not_hide_missing_references() -> None:
    text = MINIMAL + """\
rule_objects:
  bad: [{regex: '('}]
  good: [{domain: good.example}]
rules:
  - {name: A, priority: 1, from: {objects: [bad, good, ghost]}, actions: [block]}
"""
    found = {e.path: e.message for e in errors_of(text)}
    # 'bad' exists (broken, reported once); only 'ghost' is missing.
    assert set(found) == {"rule_objects.bad[0].regex", "rules[0].from.objects[2]"}


def test_rule_group_with_objects_of_the_wrong_family() -> None:
    text = MINIMAL + """\
rule_objects:
  night: [{timeframe: {start: "20:00", end: "06:00"}}]
rules:
  - {name: A, priority: 1, from: {objects: [night]}, actions: [block]}
"""
    (error,) = errors_of(text)
    assert error.path == "rules[0].from.objects[0]"
    assert "the from group needs who objects" in error.message


# --- YAML-level problems ----------------------------------------------------------------


def test_unknown_top_level_key_suggests_the_right_one() -> None:
    (error,) = errors_of(MINIMAL + "greylsting: {enabled: false}\n")
    assert error.path == "greylsting"
    assert error.message == "unknown key; did you mean 'greylisting'?"
    assert error.line == 6


def test_unknown_key_without_a_close_match_lists_the_allowed_ones() -> None:
    (error,) = errors_of(MINIMAL.replace("{host: 10.0.0.5}", "{host: 10.0.0.5, zzz: 1}"))
    assert error.path == "domains[0].transport.zzz"
    assert error.message == "unknown key (allowed: host, port, mx_lookup, protocol, tls)"


def test_duplicate_yaml_keys_are_errors() -> None:
    (error,) = errors_of(MINIMAL + "mail: {max_size_mb: 10}\nmail: {max_size_mb: 20}\n")
    assert error.path == "mail"
    assert error.message == "duplicate key (first at line 6)"
    assert error.line == 7


@pytest.mark.parametrize("text", ["", "   \n", "# only a comment\n"])
def test_empty_file(text: str) -> None:
    (error,) = errors_of(text)
    assert error.message == "the file is empty"


@pytest.mark.parametrize("text", ["- a\n- b\n", "just text\n", "42\n"])
def test_top_level_must_be_a_mapping(text: str) -> None:
    (error,) = errors_of(text)
    assert error.path == ""
    assert "must be a mapping" in error.message


def test_invalid_yaml_names_the_line() -> None:
    (error,) = errors_of("version: 1\nsystem: {hostname: [\n")
    assert error.message.startswith("not valid YAML")
    assert error.line == 3


def test_missing_file() -> None:
    with pytest.raises(StateError, match="file not found"):
        load_state_file(Path("/nonexistent/state.yaml"))


# --- versions and migration -------------------------------------------------------------


def test_missing_version() -> None:
    (error,) = errors_of(MINIMAL.replace("version: 1\n", ""))
    assert error.path == "version"
    assert error.message.startswith("required")


def test_future_version_is_refused() -> None:
    (error,) = errors_of(MINIMAL.replace("version: 1", f"version: {CURRENT_VERSION + 1}"))
    assert error.path == "version"
    assert "written by a newer Mailwarden" in error.message


@pytest.mark.parametrize("version", ["one", 0, True, 1.5])
def test_version_must_be_a_positive_whole_number(version: object) -> None:
    with pytest.raises(StateError) as caught:
        validate_data({"version": version})
    assert caught.value.errors[0].path == "version"


def test_injected_migration_runs_forward() -> None:
    def rename_hostname(data: dict[str, Any]) -> dict[str, Any]:
        data["system"] = {"hostname": data.pop("fqdn")}
        return data

    old = {"version": 1, "fqdn": "mx.example.org", "domains": []}
    new = migrate(old, migrations={1: rename_hostname}, target=2)
    assert new == {"version": 2, "system": {"hostname": "mx.example.org"}, "domains": []}
    assert "fqdn" in old  # the caller's data is not changed in place


def test_missing_migration_step_is_an_error() -> None:
    with pytest.raises(StateError, match="no migration from version 2"):
        migrate({"version": 1}, migrations={1: dict}, target=3)


def _yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict)
    return data


def test_version_1_drops_digest_and_notifications_and_nothing_else() -> None:
    old = _yaml(STATES / "version1" / "full.yaml")
    assert "notifications" in old and "digest" in old["quarantine"]
    new = migrate(old, target=2)
    assert new == _yaml(STATES / "version2" / "full.yaml")  # the same file, as version 2
    assert "notifications" in old and "digest" in old["quarantine"]  # not changed in place
    assert load_state_file(STATES / "version2" / "full.yaml") == \
        load_state_file(STATES / "version1" / "full.yaml")


def test_version_1_without_them_only_changes_the_version() -> None:
    old = _yaml(STATES / "minimal.yaml") | {"version": 1}
    old["quarantine"] = {"user_portal": False}
    new = migrate(old, target=2)
    assert new == old | {"version": 2}
    State.model_validate(migrate(new))


def _without_settings_of_no_effect(data: dict[str, Any]) -> dict[str, Any]:
    """data as version 4 has it: without virus.signatures.freshclam."""
    virus = data["virus"] | {"signatures": {k: v for k, v in data["virus"]["signatures"].items()
                                            if k != "freshclam"}}
    return data | {"virus": virus}


def test_version_2_only_changes_the_version() -> None:
    old = _yaml(STATES / "version2" / "full.yaml")
    assert migrate(old, target=3) == old | {"version": 3}
    assert migrate(old) == _without_settings_of_no_effect(old) | {"version": 4}
    state = State.model_validate(migrate(old))
    assert state.quarantine.digest.enabled is False  # digests stay off until turned on
    assert all(domain.digest is None for domain in state.domains)


def test_version_3_drops_only_the_settings_that_did_nothing() -> None:
    old = _yaml(STATES / "version3" / "full.yaml")
    assert old["virus"]["signatures"]["freshclam"] is True
    assert migrate(old) == _without_settings_of_no_effect(old) | {"version": 4}
    state = State.model_validate(migrate(old))
    # Every notification stays off until turned on: an upgrade sends no new mail.
    assert state.notifications.enabled() == []
    # The version 3 file is the current full one without its notifications.
    current = _yaml(STATES / "full.yaml")
    del current["notifications"]
    assert migrate(old) == current | {"version": 4}


def test_version_3_dkim_algorithm_goes_and_an_ed25519_key_is_refused() -> None:
    text = MINIMAL.replace("version: 1", "version: 3") + (
        "dkim:\n  sign:\n"
        "    - {domain: example.org, selector: s1, key: dkim-s1, algorithm: rsa-sha256}\n")
    state = load_state_text(text)
    assert [(k.domain, k.selector, k.key) for k in state.dkim.sign] == [
        ("example.org", "s1", "dkim-s1")]
    ed25519 = text.replace("rsa-sha256", "ed25519-sha256")
    with pytest.raises(StateError) as refused:
        load_state_text(ed25519, "state.yaml")
    (error,) = refused.value.errors
    assert refused.value.source == "state.yaml"
    assert error.path == "dkim.sign[0].algorithm"
    assert "never signed" in error.message and "RSA key" in error.message
    # Version 4 has no such key: a typo, not a migration.
    (error,) = errors_of(text.replace("version: 3", "version: 4"))
    assert error.path == "dkim.sign[0].algorithm"


def test_version_1_shape_of_the_daily_report_is_refused_at_its_key() -> None:
    text = MINIMAL.replace("version: 1", "version: 3")
    (error,) = errors_of(text + "notifications: {daily_report: true}\n")
    assert error.path == "notifications.daily_report"


def test_notifications_of_the_full_file() -> None:
    full = load_state_file(STATES / "full.yaml")
    n = full.notifications
    assert full.notification_recipients == ["admin@full.example", "oncall@full.example"]
    assert full.notification_sender == "alerts@full.example"
    assert n.enabled() == ["virus_to_admin", "daily_report.enabled", "service_alerts.enabled"]
    assert (n.daily_report.time, n.service_alerts.signature_max_age_hours,
            n.service_alerts.disk_used_percent) == ("06:30", 36, 85)


NOTIFY = MINIMAL.replace("version: 1", "version: 4")


def test_notification_defaults() -> None:
    state = load_state_text(NOTIFY)
    assert state.notifications.enabled() == []
    assert state.notification_recipients == []  # no system.admin_email: nobody, all off
    assert state.notification_sender == "postmaster@mx1.example.org"
    with_admin = load_state_text(NOTIFY.replace(
        "{hostname: mx1.example.org}",
        "{hostname: mx1.example.org, admin_email: boss@example.org}"))
    assert with_admin.notification_recipients == ["boss@example.org"]


@pytest.mark.parametrize("setting", ["virus_to_admin: true", "daily_report: {enabled: true}",
                                     "service_alerts: {enabled: true}"])
def test_a_notification_on_needs_somebody_to_send_it_to(setting: str) -> None:
    (error,) = errors_of(NOTIFY + f"notifications:\n  {setting}\n")
    assert error.path == "notifications.recipients"
    assert "nobody to send it to" in error.message
    assert error.line is not None
    (error,) = errors_of(NOTIFY + f"notifications:\n  recipients: []\n  {setting}\n")
    assert error.path == "notifications.recipients" and "is empty" in error.message
    # With a recipient, or with system.admin_email, it is fine.
    load_state_text(NOTIFY + f"notifications:\n  recipients: [a@example.org]\n  {setting}\n")


@pytest.mark.parametrize(("setting", "path"), [
    ("daily_report: {time: '24:00'}", "notifications.daily_report.time"),
    ("service_alerts: {disk_used_percent: 101}", "notifications.service_alerts.disk_used_percent"),
    ("service_alerts: {signature_max_age_hours: 0}",
     "notifications.service_alerts.signature_max_age_hours"),
    ("sender: not-an-address", "notifications.sender"),
    ("recipients: [nobody]", "notifications.recipients[0]"),
])
def test_notification_settings_are_checked(setting: str, path: str) -> None:
    (error,) = errors_of(NOTIFY + f"notifications:\n  {setting}\n")
    assert error.path == path


def test_version_3_has_digests() -> None:
    text = MINIMAL.replace("version: 1", "version: 3")
    full = load_state_file(STATES / "full.yaml")
    assert (full.quarantine.digest.enabled, full.quarantine.digest.time) == (True, "06:45")
    assert full.domains[1].digest is not None and full.domains[1].digest.weekday == "friday"
    (error,) = errors_of(text + "quarantine:\n  digest: {time: '25:00'}\n")
    assert error.path == "quarantine.digest.time"
    (error,) = errors_of(text + "quarantine:\n  digest:\n"
                         "    portal_url: 'https://x.example/?a=<b>'\n")
    assert error.path == "quarantine.digest.portal_url"


# --- defaults ---------------------------------------------------------------------------


def test_minimal_file_gets_safe_defaults() -> None:
    state = load_state_file(STATES / "minimal.yaml")
    assert state.mail.filter_mode == "after_queue"  # mail is never lost
    assert state.spam.enabled and state.virus.enabled
    assert state.spam.on_failure == "tempfail"
    assert state.virus.on_failure == "tempfail"
    assert state.virus.exceeding_limits == "virus"  # zip bombs are not let through
    assert state.postscreen.enabled
    assert state.postscreen.dnsbl[0].zone == "zen.spamhaus.org"
    assert state.system.dns.resolver == "local"  # DNSBLs refuse public resolvers
    assert state.networks.trusted == []  # nobody may relay unless listed
    assert state.networks.ssh is False
    assert state.tls.inbound.enabled
    assert state.domains[0].transport.port == 25
    assert state.domains[0].transport.mx_lookup is False
    assert state.admin_email == "postmaster@example.org"
    assert state.quarantine.user_release_virus is False
    assert "Block viruses" in [r.name for r in state.rules]


def test_defaults_validate_by_themselves() -> None:
    state = State.model_validate(
        {"version": CURRENT_VERSION, "system": {"hostname": "mx.example.org"},
         "domains": [{"name": "example.org", "transport": {"host": "10.0.0.5"}}]}
    )
    dumped = state.model_dump(mode="json", by_alias=True)
    assert validate_data(dumped) == state


# --- valid fixtures and the round trip ---------------------------------------------------


@pytest.mark.parametrize("path", VALID, ids=[p.stem for p in VALID])
def test_fixture_is_valid(path: Path) -> None:
    assert isinstance(load_state_file(path), State)


@pytest.mark.parametrize("path", VALID, ids=[p.stem for p in VALID])
def test_dump_round_trip(path: Path) -> None:
    state = load_state_file(path)
    text = dump_state(state)
    assert load_state_text(text) == state
    assert dump_state(load_state_text(text)) == text


def test_dump_keeps_defaults_implicit() -> None:
    text = dump_state(load_state_file(STATES / "minimal.yaml"))
    assert "postscreen" not in text
    assert "rules" not in text


# --- domains sharing one internal server ---------------------------------------------------

SHARED_SERVER = """\
version: 1
system: {hostname: mx1.example.org}
domains:
  - name: example.org
    transport: {host: Exchange.example.org, port: 25}
  - name: example.net
    transport: {host: exchange.example.org, port: 25, tls: %s}
"""


def test_domains_sharing_a_server_share_its_tls_policy() -> None:
    from mailwarden.layout import appliance
    from mailwarden.render.configs import render

    state = load_state_text(SHARED_SERVER % "may")
    files = {f.target.path: f.content for f in render(state, appliance())}
    policy = [line for line in files["/etc/postfix/mailwarden/tls_policy"].splitlines()
              if line and not line.startswith("#")]
    # One line for the one server: postmap refuses a table with a duplicate key.
    assert policy == ["[exchange.example.org]:25 may"]


def test_domains_sharing_a_server_must_agree_on_tls() -> None:
    [error] = errors_of(SHARED_SERVER % "verify")
    assert error.path == "domains[1].transport.tls"
    assert "differs from domains[0] (example.org: 'may')" in error.message
    assert "same server" in error.message


# --- what the YAML reader refuses: its cost stays linear in the file ---------------------

LAUGHS = """\
version: 1
a: &a ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]
e: [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]
"""


def test_anchors_are_refused_with_their_line() -> None:
    [error] = errors_of(LAUGHS)
    assert (error.line, error.message) == (2, "anchors (&a) are not allowed: write each value "
                                              "out")


def test_aliases_are_refused_with_their_line() -> None:
    text = MINIMAL + "networks:\n  trusted: *nets\n"
    [error] = errors_of(text)
    assert (error.line, error.message) == (7, "aliases (*nets) are not allowed: write the value "
                                              "out")


def test_an_anchor_on_a_merge_key_is_refused_too() -> None:
    text = MINIMAL + "mail: &m {max_size_mb: 10}\nspam:\n  <<: *m\n"
    [error] = errors_of(text)
    assert error.line == 6 and "anchors (&m)" in error.message


def test_deep_nesting_is_refused_before_the_parser_recurses() -> None:
    text = MINIMAL + "rules: " + "[" * 5000 + "]" * 5000 + "\n"
    [error] = errors_of(text)
    assert (error.line, error.message) == (6, "nested deeper than 32 levels")


def test_files_over_the_size_limit_are_refused_unread(tmp_path: Path) -> None:
    from mailwarden.state.load import MAX_BYTES

    path = tmp_path / "state.yaml"
    path.write_text(MINIMAL + "# " + "x" * MAX_BYTES + "\n")
    with pytest.raises(StateError) as caught:
        load_state_file(path)
    assert [e.message for e in caught.value.errors] == ["the file is larger than 4 MiB"]
    [error] = errors_of(MINIMAL + "# " + "x" * MAX_BYTES + "\n")
    assert error.message == "the file is larger than 4 MiB"


def test_the_state_writer_never_writes_aliases() -> None:
    """What dump_state writes, load_state_text must read: PyYAML writes an object met twice
    as an anchor and an alias, which the reader refuses."""
    import yaml

    from mailwarden.state import load

    shared = ["10.0.0.0/8"]
    assert "&id001" in yaml.safe_dump({"trusted": shared, "management": shared})
    text = yaml.dump({"trusted": shared, "management": shared}, Dumper=load._Dumper)
    assert "&" not in text and "*" not in text
    state = validate_data({**yaml.safe_load(MINIMAL),
                           "networks": {"trusted": shared, "management": shared}})
    assert load_state_text(dump_state(state)) == state
