"""No setting without an effect: every leaf of the state schema is accounted for here.

A leaf is a setting an admin writes (`greylisting.delay_seconds`; `domains[].name` for each
item of a list, `rule_objects.*[].email` for each entry of each named object). Each one is
shown to do something in one of two ways:

- RENDERED: the daemons' configuration follows it. full.yaml (every section set) with this
  one leaf changed to the value given renders different files than full.yaml itself; the
  golden tests (test_render_golden.py) say which lines, and the integration tests run the
  daemons on those files.
- TESTED: the agent acts on it at run time (the filter, the policy service, the API, the
  digests): the tests named show the effect. Each must exist, and its source (or its
  module's, where the setting is written in a shared state) must name the setting.

A new setting fails `test_every_setting_is_accounted_for` until it is shown one of these
ways. NOT_YET_SHOWN lists the settings whose effect no test shows yet: each is open work,
and the list may only shrink (a setting shown elsewhere must leave it).
"""

from __future__ import annotations

import ast
import copy
import itertools
import re
import types
import typing
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from mailwarden.layout import appliance
from mailwarden.render.configs import render
from mailwarden.state.load import load_state_text
from mailwarden.state.schema import State

ROOT = Path(__file__).resolve().parents[2]
FULL = ROOT / "tests" / "data" / "states" / "full.yaml"


# --- the leaves -----------------------------------------------------------------------------

def _models(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models(arg)]


def _container(annotation: Any) -> str:
    """"[]" for a list of models, ".*" for a mapping of them (and so on, nested)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return next((c for arg in typing.get_args(annotation) if (c := _container(arg))), "")
    if origin is list:
        return "[]"
    if origin is dict:
        return ".*" + _container(typing.get_args(annotation)[1])
    return ""


def leaves(model: type[BaseModel] = State, prefix: str = "") -> list[str]:
    """Every setting of the schema, by its path in the file."""
    found: list[str] = []
    for name, field in model.model_fields.items():
        key = field.alias or name
        models = _models(field.annotation)
        if not models:
            found.append(prefix + key)
        for sub in models:
            found += leaves(sub, f"{prefix}{key}{_container(field.annotation)}.")
    return found


def _steps(path: str) -> list[str]:
    return [s for s in path.replace("[]", ".[]").split(".") if s]


def put(data: dict[str, Any], path: str, value: Any) -> None:
    """Set one leaf (the first item of each list, the first entry of each mapping)."""
    steps = _steps(path)
    node: Any = data
    for step, following in itertools.pairwise(steps):
        if step == "[]":
            node = node[0]
        elif step == "*":
            node = node[next(iter(node))]
        else:
            if node.get(step) is None:
                node[step] = [{}] if following == "[]" else {}
            node = node[step]
    node[steps[-1]] = value


# --- how each is shown ----------------------------------------------------------------------

# Leaf -> another value: full.yaml with it renders different daemon configuration.
RENDERED: dict[str, Any] = {
    "system.hostname": "mx2.full.example",
    "system.dns.resolver": "local",
    "system.dns.forwarders": ["192.0.2.53"],
    "system.dns.forward_zones[].zone": "int2.full.example",
    "system.dns.forward_zones[].servers": ["10.0.0.54"],
    "system.dns.forward_zones[].port": 5353,
    "system.dns.dnssec": True,
    "networks.trusted": ["10.0.0.0/8"],
    "networks.management": [],
    "networks.backup_mx": [],
    "networks.ssh": False,
    "domains[].name": "full2.example",
    "domains[].transport.host": "exchange2.int.full.example",
    "domains[].transport.port": 26,
    "domains[].transport.mx_lookup": True,
    "domains[].transport.protocol": "lmtp",
    "domains[].transport.tls": "none",
    "domains[].subdomains": True,
    "domains[].verify_recipients": False,
    "mail.max_size_mb": 41,
    "mail.filter_mode": "before_queue",
    "mail.banner": "$myhostname ESMTP at your service",
    "mail.max_recipients": 501,
    "mail.queue_lifetime_days": 4,
    "mail.smtputf8": True,
    "mail.reject_unknown_sender_domain": True,
    "mail.helo_required": False,
    "mail.smarthost.host": "smarthost2.full.example",
    "mail.smarthost.port": 587,
    "mail.smarthost.mx_lookup": False,
    "mail.max_connections_per_client": 21,
    "mail.max_messages_per_minute": 121,
    "spam.levels.tag": 6,
    "spam.levels.reject": 21,
    "spam.bayes.enabled": False,
    "spam.bayes.autolearn": False,
    "spam.bayes.min_learns": 101,
    "spam.fuzzy_check": True,
    "spam.rbl": True,
    "spam.symbol_scores[].symbol": "R_DKIM_ALLOW",
    "spam.symbol_scores[].score": 4.0,
    "virus.detect_pua": False,
    "virus.block_encrypted_archives": False,
    "virus.heuristic_phishing": True,
    "virus.max_scan_size_mb": 201,
    "virus.max_file_size_mb": 51,
    "virus.max_recursion": 11,
    "virus.max_files": 5001,
    "virus.exceeding_limits": "virus",
    "virus.signatures.checks_per_day": 25,
    "virus.signatures.mirrors": [],
    "postscreen.enabled": False,
    "postscreen.pregreet": True,
    "postscreen.dnsbl[].zone": "bl.spamcop.net",
    "postscreen.dnsbl[].weight": 4,
    "postscreen.dnsbl[].filter": "127.0.0.2",
    "postscreen.dnsbl_threshold": 5,
    "postscreen.dnsbl_action": "drop",
    "postscreen.allowlist_threshold": -1,
    "postscreen.deep_protocol_tests": False,
    "postscreen.allow_networks": [],
    "postscreen.block_networks": [],
    "tls.inbound.enabled": False,
    "tls.inbound.certificate": "mx2",
    "tls.inbound.require_on_submission": False,
    "tls.outbound_default": "encrypt",
    "tls.policies[].destination": "partner2.example",
    "tls.policies[].level": "secure",
    "tls.policies[].match": [],
    "tls.min_protocol": "TLSv1.3",
}

# Where the tests are, to keep the table readable.
U, IT = "tests/unit/", "tests/integration/"
STATE = U + "test_state_validation.py::"
DIG = U + "test_digest.py::"
ENGINE = U + "test_rule_engine.py::"
ACTIONS = U + "test_mail_actions.py::"
POLICY = U + "test_policy.py::"
MP = IT + "test_mail_path.py::"
MPB = IT + "test_mail_policy_and_bad_input.py::"
PS = IT + "test_policy_service.py::"
SC = IT + "test_scanner_settings.py::"
NOTIFY = IT + "test_notify.py::"

# Leaf -> tests that show what the agent does with it.
TESTED: dict[str, tuple[str, ...]] = {
    "version": (
        STATE + "test_version_2_only_changes_the_version",
        STATE + "test_future_version_is_refused",
    ),
    "system.admin_email": (ACTIONS + "test_admin_notices_go_to_the_admin_email_and_come_from_it",),
    "domains[].comment": (U + "test_api.py::test_settings_sections",),
    "domains[].digest.enabled": (DIG + "test_each_domain_may_replace_single_keys_of_the_schedule",),
    "domains[].digest.frequency": (
        DIG + "test_each_domain_may_replace_single_keys_of_the_schedule",
    ),
    "domains[].digest.time": (DIG + "test_each_domain_may_replace_single_keys_of_the_schedule",),
    "domains[].digest.weekday": (DIG + "test_each_domain_may_replace_single_keys_of_the_schedule",),
    "mail.rules_budget_ms": (
        ENGINE + "test_the_budget_comes_from_the_state",
        IT + "test_rule_budget.py::test_rules_over_budget_quarantine_log_and_track",
    ),
    "spam.enabled": (SC + "test_scanners_switched_off_pass_gtube_and_eicar",),
    "spam.levels.quarantine": (
        ENGINE + "test_spam_above_quarantine_level_is_tagged_and_quarantined_as_spam",
        ENGINE + "test_level_boundaries_follow_the_state",
    ),
    "spam.subject_tag": (MPB + "test_mail_above_the_tag_level_is_delivered_tagged",),
    "spam.max_scan_size_kb": (SC + "test_rspamd_is_not_asked_about_mail_above_max_scan_size_kb",),
    "spam.timeout_seconds": (SC + "test_a_stalled_scanner_times_out_and_the_mail_goes_on_tagged",),
    "spam.on_failure": (SC + "test_a_stalled_scanner_times_out_and_the_mail_goes_on_tagged",),
    "virus.enabled": (SC + "test_scanners_switched_off_pass_gtube_and_eicar",),
    "virus.skip_plain_text": (
        U + "test_virus_scope.py::test_plain_text_is_skipped",
        MP + "test_uuencoded_eicar_in_a_plain_text_body_is_still_found",
    ),
    "virus.scan": (
        MP + "test_eicar_in_a_zip_is_found_in_the_decoded_part",
        MP + "test_html_mail_goes_whole_for_the_phishing_checks",
    ),
    "virus.timeout_seconds": (SC + "test_a_stalled_scanner_times_out_and_the_mail_goes_on_tagged",),
    "virus.on_failure": (SC + "test_a_stalled_scanner_times_out_and_the_mail_goes_on_tagged",),
    "greylisting.enabled": (
        POLICY + "test_trusted_loopback_and_backup_mx_skip_spf_and_greylisting",
    ),
    "greylisting.delay_seconds": (POLICY + "test_greylist_first_try_early_retry_then_pass",),
    "greylisting.retry_window_hours": (POLICY + "test_retry_outside_the_window_starts_over",),
    "greylisting.pass_lifetime_days": (POLICY + "test_greylist_purge",),
    "greylisting.ipv4_netmask": (
        POLICY + "test_greylist_netmasks_decide_which_clients_share_a_triplet",
    ),
    "greylisting.ipv6_netmask": (
        POLICY + "test_greylist_netmasks_decide_which_clients_share_a_triplet",
    ),
    "greylisting.ipv6": (POLICY + "test_greylist_exemptions_and_ipv6",),
    "greylisting.exempt_networks": (POLICY + "test_greylist_exemptions_and_ipv6",),
    "greylisting.exempt_senders": (POLICY + "test_greylist_exemptions_and_ipv6",),
    "greylisting.exempt_recipients": (POLICY + "test_greylist_exemptions_and_ipv6",),
    "spf.enabled": (POLICY + "test_spf_disabled_still_prepends_none",),
    "spf.reject_fail": (POLICY + "test_spf_fail_only_tagged_when_reject_is_off",),
    "spf.tag_softfail": (POLICY + "test_spf_softfail_is_rejected_when_tagging_is_off",),
    "spf.exempt_senders": (POLICY + "test_spf_fail_exemptions",),
    "spf.exempt_networks": (POLICY + "test_spf_fail_exemptions",),
    "rate_limits.client_per_hour": (POLICY + "test_client_rate_limit_in_a_sliding_hour",),
    "rate_limits.sender_per_hour": (POLICY + "test_sender_rate_limit_applies_to_trusted_clients",),
    "rate_limits.exempt_networks": (POLICY + "test_sender_rate_limit_applies_to_trusted_clients",),
    "dkim.verify": (PS + "test_dkim_sign_and_verify_through_unbound",),
    "dkim.sign[].domain": (
        PS + "test_dkim_sign_and_verify_through_unbound",
        MPB + "test_outbound_mail_is_dkim_signed_and_verifies",
    ),
    "dkim.sign[].selector": (PS + "test_dkim_sign_and_verify_through_unbound",),
    "dkim.sign[].key": (PS + "test_dkim_sign_and_verify_through_unbound",),
    "dkim.dmarc": (
        PS + "test_dmarc_reject_for_a_spoofed_from",
        MPB + "test_dmarc_reject_is_honoured",
    ),
    "quarantine.lifetimes.spam": (MP + "test_gtube_is_quarantined_and_released_exactly_once",),
    "quarantine.lifetimes.virus": (MP + "test_eicar_is_quarantined_as_virus_and_never_delivered",),
    "quarantine.lifetimes.attachment": (MP + "test_zip_holding_an_exe_loses_the_attachment",),
    "quarantine.lifetimes.blocked": (
        IT + "test_rule_budget.py::test_the_same_rule_matching_quarantines",
    ),
    "quarantine.digest.enabled": (DIG + "test_nothing_is_sent_while_digests_are_off",),
    "quarantine.digest.frequency": (
        DIG + "test_the_last_slot_is_the_latest_scheduled_time_passed",
    ),
    "quarantine.digest.time": (DIG + "test_the_last_slot_is_the_latest_scheduled_time_passed",),
    "quarantine.digest.weekday": (DIG + "test_the_last_slot_is_the_latest_scheduled_time_passed",),
    "quarantine.digest.ticket_lifetime_days": (DIG + "test_an_expired_ticket_is_refused",),
    "quarantine.digest.sender": (
        DIG + "test_the_sender_and_the_portal_address_come_from_the_state",
    ),
    "quarantine.digest.portal_url": (
        DIG + "test_the_sender_and_the_portal_address_come_from_the_state",
    ),
    "quarantine.user_portal": (
        U + "test_api_edges.py::test_portal_off_shuts_quarantine_users_out",
        U + "test_portal_link.py::test_no_links_while_the_portal_is_off",
    ),
    "quarantine.user_release_virus": (
        U + "test_api_edges.py::test_user_release_virus_lets_users_allow_and_release",
    ),
    "notifications.recipients": (U + "test_notify.py::test_recipients_and_sender",),
    "notifications.sender": (U + "test_notify.py::test_recipients_and_sender",),
    "notifications.virus_to_admin": (NOTIFY + "test_virus_notice_on_and_off",),
    "notifications.daily_report.enabled": (NOTIFY + "test_daily_report_on_and_off",),
    "notifications.daily_report.time": (
        U + "test_notify.py::test_the_report_is_due_once_a_day_at_its_time",),
    "notifications.service_alerts.enabled": (
        NOTIFY + "test_service_alert_for_a_full_disk_on_and_off",),
    "notifications.service_alerts.disk_used_percent": (
        NOTIFY + "test_service_alert_for_a_full_disk_on_and_off",),
    "notifications.service_alerts.signature_max_age_hours": (
        NOTIFY + "test_service_alert_for_old_signatures",),
    "rule_objects.*[].email": (ENGINE + "test_welcomelist_accept_beats_spam_rules",),
    "rule_objects.*[].domain": (ENGINE + "test_domain_entries_are_exact_not_subdomains",),
    "rule_objects.*[].regex": (ENGINE + "test_what_entries_content_type_detected_and_regex_who",),
    "rule_objects.*[].network": (
        ENGINE + "test_network_never_matches_in_to_group_but_does_in_from",
    ),
    "rule_objects.*[].spam.min": (
        ENGINE + "test_to_group_gives_recipients_different_outcomes_and_groups",
    ),
    "rule_objects.*[].spam.max": (ENGINE + "test_upper_bounds_of_size_and_spam_score",),
    "rule_objects.*[].spam.level": (
        ENGINE + "test_spam_above_quarantine_level_is_tagged_and_quarantined_as_spam",
    ),
    "rule_objects.*[].virus": (
        ENGINE + "test_virus_is_quarantined_as_virus_and_the_admin_notified",
    ),
    "rule_objects.*[].content_type": (
        ENGINE + "test_what_entries_content_type_detected_and_regex_who",
    ),
    "rule_objects.*[].filename": (
        ENGINE + "test_dangerous_attachment_is_removed_and_the_mail_delivered",
    ),
    "rule_objects.*[].archive_filename": (
        ENGINE + "test_archive_filename_object_matches_a_member_not_the_archive",
    ),
    "rule_objects.*[].header.name": (
        ENGINE + "test_quarantine_kind_auto_falls_back_to_blocked_and_explicit_wins",
    ),
    "rule_objects.*[].header.regex": (
        ENGINE + "test_quarantine_kind_auto_falls_back_to_blocked_and_explicit_wins",
    ),
    "rule_objects.*[].body": (
        U + "test_simulate.py::test_rules_over_budget_are_reported_as_the_filter_would_act",
    ),
    "rule_objects.*[].size.min_kb": (ENGINE + "test_invert_and_mode_all",),
    "rule_objects.*[].size.max_kb": (ENGINE + "test_upper_bounds_of_size_and_spam_score",),
    "rule_objects.*[].timeframe.start": (
        ENGINE + "test_overnight_timeframe",
        ENGINE + "test_office_hours_daytime_frame",
    ),
    "rule_objects.*[].timeframe.end": (ENGINE + "test_overnight_timeframe",),
    "rule_objects.*[].timeframe.days": (ENGINE + "test_office_hours_daytime_frame",),
    "rules[].name": (ENGINE + "test_budget_names_the_rule_where_it_stopped",),
    "rules[].priority": (ENGINE + "test_priority_order_and_ties_keep_file_order",),
    "rules[].direction": (ENGINE + "test_inbound_rules_do_not_see_outbound_mail",),
    "rules[].active": (ENGINE + "test_an_inactive_rule_is_skipped",),
    "rules[].from.objects": (ENGINE + "test_network_never_matches_in_to_group_but_does_in_from",),
    "rules[].from.mode": (ENGINE + "test_invert_and_mode_all",),
    "rules[].from.invert": (ENGINE + "test_invert_and_mode_all",),
    "rules[].to.objects": (
        ENGINE + "test_to_group_gives_recipients_different_outcomes_and_groups",
    ),
    "rules[].to.mode": (ENGINE + "test_to_and_when_groups_invert_and_need_all_in_mode_all",),
    "rules[].to.invert": (ENGINE + "test_to_and_when_groups_invert_and_need_all_in_mode_all",),
    "rules[].what.objects": (ENGINE + "test_invert_and_mode_all",),
    "rules[].what.mode": (ENGINE + "test_invert_and_mode_all",),
    "rules[].what.invert": (ENGINE + "test_invert_and_mode_all",),
    "rules[].when.objects": (ENGINE + "test_office_hours_daytime_frame",),
    "rules[].when.mode": (ENGINE + "test_to_and_when_groups_invert_and_need_all_in_mode_all",),
    "rules[].when.invert": (ENGINE + "test_to_and_when_groups_invert_and_need_all_in_mode_all",),
    "rules[].actions[].reject.message": (U + "test_api.py::test_simulate_says_which_rule_and_why",),
    "rules[].actions[].quarantine.kind": (
        ENGINE + "test_quarantine_kind_auto_falls_back_to_blocked_and_explicit_wins",
    ),
    "rules[].actions[].tag_subject.text": (
        ACTIONS + "test_tag_subject_with_encoded_and_8bit_subjects",
    ),
    "rules[].actions[].add_header.name": (
        ACTIONS + "test_add_header_macros_spam_bar_and_sanitising",
    ),
    "rules[].actions[].add_header.value": (
        ACTIONS + "test_add_header_macros_spam_bar_and_sanitising",
    ),
    "rules[].actions[].remove_header.name": (
        ACTIONS + "test_remove_header_every_occurrence_with_folding",
    ),
    "rules[].actions[].remove_attachments.matched_only": (ACTIONS + "test_remove_all_attachments",),
    "rules[].actions[].remove_attachments.quarantine": (
        U + "test_simulate.py::test_per_recipient_outcomes_and_attachment_parts",
    ),
    "rules[].actions[].remove_attachments.notice": (ACTIONS + "test_remove_all_attachments",),
    "rules[].actions[].bcc.to": (ACTIONS + "test_side_effects_notify_once_per_rule_and_bcc",),
    "rules[].actions[].bcc.original": (ACTIONS + "test_side_effects_notify_once_per_rule_and_bcc",),
    "rules[].actions[].notify.to": (ACTIONS + "test_side_effects_notify_once_per_rule_and_bcc",),
    "rules[].actions[].notify.subject": (
        ACTIONS + "test_side_effects_notify_once_per_rule_and_bcc",
    ),
    "rules[].actions[].notify.body": (ACTIONS + "test_side_effects_notify_once_per_rule_and_bcc",),
    "rules[].actions[].disclaimer.text": (ACTIONS + "test_disclaimer_plain_and_html_escaped",),
    "rules[].actions[].disclaimer.position": (ACTIONS + "test_disclaimer_plain_and_html_escaped",),
}

# Settings whose effect no test shows yet: open work, never a place to park a new one.
NOT_YET_SHOWN: frozenset[str] = frozenset()


# --- the checks -----------------------------------------------------------------------------

def test_every_setting_is_accounted_for() -> None:
    schema = set(leaves())
    shown = set(RENDERED) | set(TESTED)
    assert not (shown | NOT_YET_SHOWN) - schema, "no such setting in the schema"
    assert not NOT_YET_SHOWN & shown, "shown now: take it out of NOT_YET_SHOWN"
    missing = sorted(schema - shown - NOT_YET_SHOWN)
    assert not missing, f"settings with no test showing their effect: {missing}"


@cache
def _full() -> tuple[dict[str, Any], dict[str, str]]:
    data = yaml.safe_load(FULL.read_text())
    return data, _rendered(data)


def _rendered(data: dict[str, Any]) -> dict[str, str]:
    state = load_state_text(yaml.safe_dump(data, sort_keys=False))
    return {f.target.path: f.content for f in render(state, appliance())}


@pytest.mark.parametrize("leaf", sorted(RENDERED))
def test_the_daemons_configuration_follows(leaf: str) -> None:
    data, before = _full()
    changed = copy.deepcopy(data)
    put(changed, leaf, RENDERED[leaf])
    after = _rendered(changed)
    assert after != before, f"{leaf} = {RENDERED[leaf]!r} changes no rendered file"


@cache
def _functions(path: str) -> tuple[str, dict[str, str]]:
    source = (ROOT / path).read_text()
    tree = ast.parse(source)
    return source, {node.name: ast.get_source_segment(source, node) or ""
                    for node in tree.body
                    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)}


@pytest.mark.parametrize("leaf", sorted(TESTED))
def test_the_tests_that_show_it_exist_and_name_it(leaf: str) -> None:
    key = _steps(leaf)[-1]
    for reference in TESTED[leaf]:
        path, name = reference.split("::")
        module, functions = _functions(path)
        assert name.startswith("test_") and name in functions, f"{reference}: no such test"
        named = re.compile(rf"\b{re.escape(key)}\b")
        assert named.search(functions[name]) or named.search(module), \
            f"{reference} never names {key}"
