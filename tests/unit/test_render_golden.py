"""Golden tests: the interesting lines of every rendered config, for each fixture and layout.

The expected lines are spelled out here (not in golden files) so that a change of a template
shows up in review as a change of the very line an admin would see in /etc/postfix/main.cf.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mailwarden.errors import RenderError
from mailwarden.layout import Layout, Ports, appliance
from mailwarden.render.configs import MANIFEST, render
from mailwarden.state.load import load_state_file, load_state_text

STATES = Path(__file__).parent.parent / "data" / "states"
FIXTURES = sorted(p.stem for p in STATES.glob("*.yaml"))

SANDBOX = Layout(
    name="sandbox",
    root=Path("/srv/sb"),
    ports=Ports(smtp=20025, submission=20026, policy=20022, filter_out=20023, filter_in=20024,
                reinject=20027, api=20006, rspamd_normal=21333, rspamd_controller=21334,
                rspamd_proxy=21332, redis=26379, dns=20053, clamd=23310),
    public_interfaces="127.0.0.1",
    inet_protocols="ipv4",
    xclient_hosts=("127.0.0.1",),
    postfix_log=True,
)
LAYOUTS = {"appliance": appliance(), "sandbox": SANDBOX}
# System files a sandbox only reads.
SHARED = {"/etc/ssl/certs/ca-certificates.crt"}


def rendered(fixture: str, layout: str = "appliance", overrides: Path | None = None
             ) -> dict[str, str]:
    """Appliance path -> content, for either layout."""
    state = load_state_file(STATES / f"{fixture}.yaml")
    return {f.target.path: f.content for f in render(state, LAYOUTS[layout], overrides)}


def lines(content: str) -> list[str]:
    return [line for line in content.splitlines() if line and not line.startswith("#")]


def assert_lines(content: str, *expected: str) -> None:
    have = lines(content)
    missing = [line for line in expected if line not in have]
    assert not missing, f"missing {missing} in:\n" + "\n".join(have)


def entries(content: str) -> list[str]:
    """The entries of a map file (header comments dropped)."""
    return lines(content)


# --- every fixture, both layouts --------------------------------------------------------


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("fixture", FIXTURES)
def test_every_file_rendered_with_header(fixture: str, layout: str) -> None:
    files = rendered(fixture, layout)
    assert list(files) == [t.path for t in MANIFEST]
    root = "/srv/sb" if layout == "sandbox" else ""
    for target in MANIFEST:
        content = files[target.path]
        assert content.startswith(
            f"# Managed by Mailwarden from {root}/etc/mailwarden/state.yaml;"
        ), target.path
        assert f"{root}/etc/mailwarden/templates/{target.template}" in content
        assert content.endswith("\n")
        assert "None" not in lines(content), target.path  # an unset value leaked


@pytest.mark.parametrize("fixture", FIXTURES)
def test_sandbox_paths_stay_under_the_root(fixture: str) -> None:
    files = rendered(fixture, "sandbox")
    for name in ("/etc/postfix/main.cf", "/etc/clamav/clamd.conf", "/etc/redis/redis.conf",
                 "/etc/unbound/unbound.conf", "/etc/clamav/freshclam.conf"):
        for line in lines(files[name]):
            for word in line.replace('"', " ").replace(",", " ").split():
                if word.startswith(("/etc/", "/var/", "/run/")) and word not in SHARED:
                    pytest.fail(f"{name}: {line!r} leaves the sandbox")


@pytest.mark.parametrize("fixture", FIXTURES)
def test_sandbox_listens_on_loopback_ports(fixture: str) -> None:
    files = rendered(fixture, "sandbox")
    assert_lines(files["/etc/postfix/main.cf"],
                 "inet_interfaces = 127.0.0.1", "inet_protocols = ipv4",
                 "queue_directory = /srv/sb/var/spool/postfix",
                 "data_directory = /srv/sb/var/lib/postfix",
                 "maillog_file = /srv/sb/var/log/postfix/postfix.log")
    assert_lines(files["/etc/postfix/master.cf"],
                 "127.0.0.1:20026             inet  n  -  n  -  -  smtpd",
                 "127.0.0.1:20027 inet  n  -  n  -  -  smtpd")
    assert_lines(files["/etc/rspamd/local.d/options.inc"], '  nameserver = ["127.0.0.1:20053"];')
    assert_lines(files["/etc/rspamd/local.d/worker-normal.inc"],
                 'bind_socket = "127.0.0.1:21333";')
    assert_lines(files["/etc/rspamd/local.d/worker-controller.inc"],
                 'bind_socket = "127.0.0.1:21334";')
    assert_lines(files["/etc/rspamd/local.d/redis.conf"], 'servers = "127.0.0.1:26379";')
    assert_lines(files["/etc/redis/redis.conf"], "port 26379", "bind 127.0.0.1",
                 "dir /srv/sb/var/lib/redis")
    assert_lines(files["/etc/clamav/clamd.conf"], "TCPSocket 23310", "TCPAddr 127.0.0.1",
                 "LocalSocket /srv/sb/run/clamav/clamd.ctl")
    assert_lines(files["/etc/unbound/unbound.conf"], "    port: 20053", "    do-ip6: no",
                 '    pidfile: "/srv/sb/run/unbound.pid"')
    if fixture != "full":  # dnssec: false there
        # Unbound rewrites its trust anchor: a sandbox must not touch the system's.
        assert_lines(files["/etc/unbound/unbound.conf"],
                     '    auto-trust-anchor-file: "/srv/sb/var/lib/unbound/root.key"')


def test_appliance_standard_ports() -> None:
    files = rendered("minimal")
    assert_lines(files["/etc/postfix/main.cf"], "inet_interfaces = all", "inet_protocols = all",
                 "queue_directory = /var/spool/postfix")
    assert "maillog_file" not in files["/etc/postfix/main.cf"]  # syslog on the appliance
    assert_lines(files["/etc/postfix/master.cf"],
                 "25                          inet  n  -  n  -  1  postscreen",
                 "26                          inet  n  -  n  -  -  smtpd",
                 "127.0.0.1:10025 inet  n  -  n  -  -  smtpd")
    assert_lines(files["/etc/rspamd/local.d/options.inc"], '  nameserver = ["127.0.0.1:53"];')
    assert_lines(files["/etc/rspamd/local.d/worker-normal.inc"],
                 'bind_socket = "127.0.0.1:11333";')
    assert_lines(files["/etc/redis/redis.conf"], "port 6379")
    assert_lines(files["/etc/clamav/clamd.conf"], "TCPSocket 3310",
                 "LocalSocket /run/clamav/clamd.ctl")
    assert_lines(files["/etc/unbound/unbound.conf"], "    port: 53", "    do-ip6: yes",
                 '    auto-trust-anchor-file: "/var/lib/unbound/root.key"')


# --- minimal: the defaults --------------------------------------------------------------


def test_minimal_defaults() -> None:
    files = rendered("minimal")
    assert_lines(files["/etc/postfix/main.cf"],
                 "myhostname = mx1.example.org",
                 "smtpd_banner = $myhostname ESMTP",
                 "mynetworks = 127.0.0.0/8 [::1]/128",
                 "relay_domains = texthash:/etc/postfix/mailwarden/relay_domains",
                 "transport_maps = texthash:/etc/postfix/mailwarden/transport",
                 "message_size_limit = 26214400",
                 "maximal_queue_lifetime = 5d",
                 "smtp_tls_security_level = may",
                 "smtp_dns_support_level = dnssec",
                 "postscreen_dnsbl_sites = zen.spamhaus.org=127.0.0.[2..11]*3, bl.spamcop.net*1, "
                 "list.dnswl.org=127.0.[0..255].[1..3]*-2",
                 "postscreen_dnsbl_threshold = 3")
    assert entries(files["/etc/postfix/mailwarden/relay_domains"]) == ["example.org OK"]
    assert entries(files["/etc/postfix/mailwarden/transport"]) == [
        "example.org smtp:[10.0.0.5]:25"]
    assert entries(files["/etc/postfix/mailwarden/tls_policy"]) == ["[10.0.0.5]:25 may"]
    assert entries(files["/etc/postfix/mailwarden/recipient_access"]) == []
    assert entries(files["/etc/postfix/mailwarden/postscreen_access.cidr"]) == []
    assert_lines(files["/etc/postfix/master.cf"], "  -o content_filter=scan:[127.0.0.1]:10024")
    assert_lines(files["/etc/rspamd/local.d/actions.conf"], "reject = 15.0;", "add_header = 6.0;")
    assert_lines(files["/etc/clamav/clamd.conf"], "MaxScanSize 100M", "MaxFileSize 25M",
                 "MaxRecursion 16", "MaxFiles 10000", "AlertExceedsMax yes",
                 "StreamMaxLength 100M", "DetectPUA no")
    assert_lines(files["/etc/clamav/freshclam.conf"], "Checks 12",
                 "DatabaseMirror database.clamav.net")
    assert "forward-zone:" not in files["/etc/unbound/unbound.conf"]


# --- per fixture ------------------------------------------------------------------------


def test_full_every_section() -> None:
    files = rendered("full")
    main = files["/etc/postfix/main.cf"]
    assert_lines(main,
                 "myhostname = mx1.full.example",
                 "smtpd_banner = $myhostname ESMTP ready",
                 "mynetworks = 127.0.0.0/8 [::1]/128 10.0.0.0/8 172.16.0.0/12",
                 "relayhost = smarthost.full.example:25",  # mx_lookup: no brackets
                 "maximal_queue_lifetime = 3d",
                 "message_size_limit = 41943040",
                 "smtpd_recipient_limit = 500",
                 "smtputf8_enable = no",
                 "smtpd_client_connection_count_limit = 20",
                 "smtpd_client_message_rate_limit = 120",
                 "smtpd_tls_chain_files = /etc/mailwarden/secrets/mx1.key, "
                 "/etc/mailwarden/secrets/mx1.crt",
                 "postscreen_dnsbl_sites = zen.spamhaus.org=127.0.0.[2..11]*3, "
                 "b.barracudacentral.org*2",
                 "postscreen_dnsbl_threshold = 4",
                 "postscreen_dnsbl_allowlist_threshold = -2",
                 "postscreen_greet_action = ignore",  # pregreet: false
                 "postscreen_pipelining_enable = yes")
    assert "smtp_dns_support_level = dnssec" not in lines(main)  # dnssec: false
    assert entries(files["/etc/postfix/mailwarden/relay_domains"]) == [
        "full.example OK", "other.example OK", ".other.example OK"]
    assert entries(files["/etc/postfix/mailwarden/transport"]) == [
        "full.example smtp:[exchange.int.full.example]:25",
        "other.example smtp:[10.0.0.26]:2525",
        ".other.example smtp:[10.0.0.26]:2525"]
    assert entries(files["/etc/postfix/mailwarden/tls_policy"]) == [
        "[exchange.int.full.example]:25 encrypt",
        "[10.0.0.26]:2525 none",
        "partner.example verify match=mx.partner.example"]
    assert entries(files["/etc/postfix/mailwarden/recipient_access"]) == [
        "full.example verify_recipient"]
    assert entries(files["/etc/postfix/mailwarden/postscreen_access.cidr"]) == [
        "192.0.2.128/25 permit", "198.51.100.7/32 permit", "203.0.113.0/24 reject"]
    assert_lines(files["/etc/postfix/master.cf"], "  -o smtpd_tls_security_level=encrypt",
                 "  -o message_size_limit=83886080")
    assert_lines(files["/etc/rspamd/local.d/actions.conf"], "reject = 20.0;", "add_header = 5.0;")
    assert_lines(files["/etc/rspamd/local.d/classifier-bayes.conf"], "min_learns = 100;",
                 "autolearn = true;")
    assert_lines(files["/etc/rspamd/local.d/fuzzy_check.conf"], "enabled = false;")
    assert_lines(files["/etc/rspamd/local.d/rbl.conf"], "enabled = false;")
    assert_lines(files["/etc/rspamd/local.d/groups.conf"],
                 '    "MISSING_MID" { weight = 3.5; }', '    "R_SPF_ALLOW" { weight = -1.0; }')
    assert_lines(files["/etc/rspamd/local.d/options.inc"],
                 'local_addrs = ["127.0.0.0/8", "::1", "10.0.0.0/8", "172.16.0.0/12"];')
    assert_lines(files["/etc/clamav/clamd.conf"], "MaxScanSize 200M", "MaxFileSize 50M",
                 "MaxRecursion 10", "MaxFiles 5000", "AlertExceedsMax no",
                 "AlertEncryptedArchive yes", "PhishingSignatures no", "DetectPUA yes",
                 "StreamMaxLength 200M")
    assert_lines(files["/etc/clamav/freshclam.conf"], "Checks 24",
                 "DatabaseMirror clamav-mirror.int.full.example")
    unbound = files["/etc/unbound/unbound.conf"]
    assert "auto-trust-anchor-file" not in unbound  # dnssec: false
    assert unbound.split("forward-zone:", 1)[1] == (
        '\n    name: "int.full.example"\n    forward-addr: 10.0.0.53@53\n'
        'forward-zone:\n    name: "."\n    forward-addr: 192.0.2.53\n'
        "    forward-addr: 2001:db8::53\n")


def test_before_queue_uses_a_proxy_filter() -> None:
    files = rendered("before_queue")
    master = files["/etc/postfix/master.cf"]
    inbound = master.split("smtpd      pass", 1)[1].split("dnsblog", 1)[0]
    assert "-o smtpd_proxy_filter=127.0.0.1:10024 -o smtpd_proxy_options=speed_adjust" in inbound
    assert "content_filter" not in inbound
    # Outbound stays after-queue; the reinjection port has no filter at all.
    assert_lines(master, "  -o content_filter=scan:[127.0.0.1]:10023", "  -o content_filter=",
                 "  -o smtpd_proxy_filter=")
    assert_lines(files["/etc/postfix/main.cf"], "message_size_limit = 52428800",
                 "smtpd_banner = $myhostname ESMTP Corp gateway",
                 "postscreen_dnsbl_threshold = 2",
                 "mynetworks = 127.0.0.0/8 [::1]/128 192.168.10.0/24")
    assert entries(files["/etc/postfix/mailwarden/transport"]) == [
        "corp.example smtp:[mail.corp.example]:2525"]
    assert entries(files["/etc/postfix/mailwarden/tls_policy"]) == [
        "[mail.corp.example]:2525 encrypt"]
    assert entries(files["/etc/postfix/mailwarden/recipient_access"]) == [
        "corp.example verify_recipient"]
    assert_lines(files["/etc/rspamd/local.d/actions.conf"], "reject = 12.0;", "add_header = 4.5;")


def test_after_queue_uses_a_content_filter() -> None:
    master = rendered("minimal")["/etc/postfix/master.cf"]
    inbound = master.split("smtpd      pass", 1)[1].split("dnsblog", 1)[0]
    assert inbound.strip().endswith("-o content_filter=scan:[127.0.0.1]:10024")
    assert "smtpd_proxy_filter=127" not in master


def test_ipv6_subdomains_lmtp_mx_and_smarthost() -> None:
    files = rendered("ipv6_and_subdomains")
    assert_lines(files["/etc/postfix/main.cf"],
                 "mynetworks = 127.0.0.0/8 [::1]/128 10.1.0.0/16 [2001:db8:100::]/48 "
                 "[fd00:1234::1]/128",
                 "relayhost = [relay.isp.example]:587")
    assert entries(files["/etc/postfix/mailwarden/relay_domains"]) == [
        "v6.example OK", "partner.example OK", ".v6.example OK"]
    assert entries(files["/etc/postfix/mailwarden/transport"]) == [
        "v6.example lmtp:[ipv6:2001:db8:100::10]:24",
        ".v6.example lmtp:[ipv6:2001:db8:100::10]:24",
        "partner.example smtp:mx.partner.example:25"]
    # LMTP has its own TLS settings; only the SMTP transport gets a policy line.
    assert entries(files["/etc/postfix/mailwarden/tls_policy"]) == ["mx.partner.example:25 may"]
    # cidr tables want IPv6 without brackets, unlike main.cf.
    assert entries(files["/etc/postfix/mailwarden/postscreen_access.cidr"]) == [
        "2001:db8:200::/64 permit", "2001:db8:ffff::25/128 permit", "198.51.100.0/24 reject"]
    assert_lines(files["/etc/rspamd/local.d/options.inc"],
                 'local_addrs = ["127.0.0.0/8", "::1", "10.1.0.0/16", "2001:db8:100::/48", '
                 '"fd00:1234::1/128"];')


def test_tls_strict_policies_dkim_forward_zones_no_postscreen() -> None:
    files = rendered("tls_strict")
    main = files["/etc/postfix/main.cf"]
    assert_lines(main, "smtp_tls_security_level = encrypt",
                 "smtp_tls_mandatory_protocols = >=TLSv1.3",
                 "smtpd_tls_mandatory_protocols = >=TLSv1.3",
                 "smtpd_tls_chain_files = /etc/mailwarden/secrets/mx-secure.key, "
                 "/etc/mailwarden/secrets/mx-secure.crt")
    assert entries(files["/etc/postfix/mailwarden/tls_policy"]) == [
        "[10.9.0.25]:25 verify",
        "bank.example secure match=mx.bank.example:.bank.example",
        ".gov.example verify match=nexthop",
        "[192.0.2.10]:25 encrypt",
        "legacy.example none"]
    master = files["/etc/postfix/master.cf"]
    assert "postscreen" not in " ".join(lines(master))
    assert_lines(master, "25                          inet  n  -  n  -  -  smtpd",
                 "  -o smtpd_tls_security_level=encrypt")
    unbound = files["/etc/unbound/unbound.conf"]
    assert unbound.split("forward-zone:", 1)[1] == (
        '\n    name: "ad.secure.example"\n    forward-addr: 10.9.0.1@53\n'
        "    forward-addr: 10.9.0.2@53\n"
        'forward-zone:\n    name: "0.10.in-addr.arpa"\n    forward-addr: 10.9.0.1@5353\n')


def test_sandbox_dns_upstream_replaces_forward_zones() -> None:
    from dataclasses import replace

    state = load_state_file(STATES / "tls_strict.yaml")
    layout = replace(SANDBOX, dns_upstream=("127.0.0.1@20054",))
    unbound = {f.target.path: f.content for f in render(state, layout)}[
        "/etc/unbound/unbound.conf"]
    assert unbound.split("forward-zone:", 1)[1] == (
        '\n    name: "."\n    forward-addr: 127.0.0.1@20054\n')
    assert_lines(unbound, "    do-not-query-localhost: no", '    local-zone: "test." nodefault')
    assert "auto-trust-anchor-file" not in unbound


def test_custom_rules_do_not_touch_daemon_configs() -> None:
    """Rules are the agent's business: the daemons' configs equal those of the same gateway
    with the default rules."""
    custom = rendered("custom_rules")
    state = load_state_file(STATES / "custom_rules.yaml")
    plain = state.model_copy(update={"rules": [], "rule_objects": {}})
    files = {f.target.path: f.content for f in render(plain, appliance())}
    assert files == custom
    assert entries(custom["/etc/postfix/mailwarden/transport"]) == [
        "rules.example smtp:[10.2.0.5]:25"]


def test_agent_services_off_drops_filters_and_policy() -> None:
    from dataclasses import replace

    state = load_state_file(STATES / "minimal.yaml")
    files = {f.target.path: f.content
             for f in render(state, replace(SANDBOX, agent_services=False))}
    assert "content_filter=scan" not in files["/etc/postfix/master.cf"]
    assert "check_policy_service" not in files["/etc/postfix/main.cf"]
    assert "check_policy_service { inet:127.0.0.1:20022" in rendered(
        "minimal", "sandbox")["/etc/postfix/main.cf"]


# --- overrides --------------------------------------------------------------------------


def test_override_extends_the_default_and_replaces_a_block(tmp_path: Path) -> None:
    (tmp_path / "postfix").mkdir()
    (tmp_path / "postfix" / "main.cf.j2").write_text(
        '{% extends "default/postfix/main.cf.j2" %}\n'
        "{% block identity %}\n"
        "{{ super() }}"
        "# site addition\n"
        "smtpd_banner = {{ state.system.hostname }} ESMTP (ours)\n"
        "{% endblock %}\n"
    )
    plain = rendered("minimal")
    files = rendered("minimal", overrides=tmp_path)
    main = files["/etc/postfix/main.cf"]
    assert_lines(main, "smtpd_banner = mx1.example.org ESMTP (ours)",
                 "myhostname = mx1.example.org")
    assert "# site addition" in main
    # The rest of main.cf and every other file are untouched.
    assert main.replace("# site addition\nsmtpd_banner = mx1.example.org ESMTP (ours)\n", "") == (
        plain["/etc/postfix/main.cf"])
    assert {k: v for k, v in files.items() if k != "/etc/postfix/main.cf"} == {
        k: v for k, v in plain.items() if k != "/etc/postfix/main.cf"}


def test_override_replaces_a_whole_file(tmp_path: Path) -> None:
    (tmp_path / "redis").mkdir()
    (tmp_path / "redis" / "redis.conf.j2").write_text("port {{ ports.redis }}\n")
    redis = rendered("minimal", overrides=tmp_path)["/etc/redis/redis.conf"]
    assert lines(redis) == ["port 6379"]
    assert redis.startswith("# Managed by Mailwarden")


def test_missing_override_folder_uses_the_builtin_templates(tmp_path: Path) -> None:
    assert rendered("minimal", overrides=tmp_path / "absent") == rendered("minimal")


def test_broken_override_names_the_template(tmp_path: Path) -> None:
    (tmp_path / "postfix").mkdir()
    (tmp_path / "postfix" / "main.cf.j2").write_text(
        '{% extends "default/postfix/main.cf.j2" %}\n{% block identity %}\n{% if %}\n'
        "{% endblock %}\n")
    with pytest.raises(RenderError, match=r"template .*postfix/main\.cf\.j2 line 3"):
        rendered("minimal", overrides=tmp_path)


def test_override_with_an_undefined_name_fails(tmp_path: Path) -> None:
    (tmp_path / "unbound").mkdir()
    (tmp_path / "unbound" / "unbound.conf.j2").write_text("port: {{ ports.nonexistent }}\n")
    with pytest.raises(RenderError, match=r"unbound/unbound\.conf\.j2.*nonexistent"):
        rendered("minimal", overrides=tmp_path)


# --- the firewall: networks.* decide who reaches which port --------------------------------

FIREWALL = "/etc/nftables.conf"
MINIMAL_TEXT = (STATES / "minimal.yaml").read_text()


def firewall(networks: str | None = None, layout: Layout | None = None) -> list[str]:
    """The ruleset's lines for the minimal state with this `networks:` section."""
    text = MINIMAL_TEXT + (f"networks: {networks}\n" if networks else "")
    files = render(load_state_text(text), layout or appliance())
    return lines(next(f.content for f in files if f.target.path == FIREWALL))


def port_rules(ruleset: list[str], port: int) -> list[str]:
    return [line.strip() for line in ruleset
            if line.strip().endswith(f"tcp dport {port} accept")]


def set_elements(ruleset: list[str], name: str) -> str | None:
    """The elements line of set `name`, None when the set is empty."""
    start = ruleset.index(f"\tset {name} {{")
    end = ruleset.index("\t}", start)
    found = [line.strip() for line in ruleset[start:end] if "elements" in line]
    return found[0] if found else None


def test_firewall_full_state() -> None:
    ruleset = lines(rendered("full")[FIREWALL])
    assert "\t\ttype filter hook input priority filter; policy drop;" in ruleset
    assert "\t\ttype filter hook forward priority filter; policy drop;" in ruleset
    assert port_rules(ruleset, 25) == ["tcp dport 25 accept"]
    assert port_rules(ruleset, 26) == ["ip saddr @trusted_v4 tcp dport 26 accept"]
    assert set_elements(ruleset, "trusted_v4") == "elements = { 10.0.0.0/8, 172.16.0.0/12 }"
    # management is set: the trusted networks do not reach the web UI.
    assert port_rules(ruleset, 8006) == ["ip saddr @management_v4 tcp dport 8006 accept"]
    assert set_elements(ruleset, "management_v4") == "elements = { 10.0.99.0/24 }"
    assert set_elements(ruleset, "management_v6") is None
    assert port_rules(ruleset, 22) == ["ip saddr @management_v4 tcp dport 22 accept"]  # ssh: true


def test_firewall_no_management_networks_closes_8006_and_ssh() -> None:
    # Neither management nor trusted networks: nobody reaches the web UI, whatever ssh says.
    for networks in (None, "{management: [], trusted: [], ssh: true}"):
        ruleset = firewall(networks)
        assert port_rules(ruleset, 8006) == []
        assert port_rules(ruleset, 22) == []
        assert port_rules(ruleset, 26) == []
        assert port_rules(ruleset, 25) == ["tcp dport 25 accept"]
        assert set_elements(ruleset, "management_v4") is None
        assert set_elements(ruleset, "management_v6") is None
        assert "\t\ttype filter hook input priority filter; policy drop;" in ruleset


def test_firewall_empty_management_means_the_trusted_networks() -> None:
    ruleset = firewall("{trusted: [192.0.2.0/24, '2001:db8::/48']}")
    assert port_rules(ruleset, 8006) == ["ip saddr @management_v4 tcp dport 8006 accept",
                                         "ip6 saddr @management_v6 tcp dport 8006 accept"]
    assert set_elements(ruleset, "management_v4") == "elements = { 192.0.2.0/24 }"
    assert set_elements(ruleset, "management_v6") == "elements = { 2001:db8::/48 }"
    assert port_rules(ruleset, 22) == []  # ssh is off by default


def test_firewall_management_only_and_ssh_follows_it() -> None:
    ruleset = firewall("{trusted: [10.0.0.0/8], management: ['2001:db8:1::/64'], ssh: true}")
    # IPv6 management only: no IPv4 address reaches 8006 or SSH, the trusted ones included.
    assert port_rules(ruleset, 8006) == ["ip6 saddr @management_v6 tcp dport 8006 accept"]
    assert port_rules(ruleset, 22) == ["ip6 saddr @management_v6 tcp dport 22 accept"]
    assert set_elements(ruleset, "management_v4") is None
    assert port_rules(ruleset, 26) == ["ip saddr @trusted_v4 tcp dport 26 accept"]


def test_firewall_overlapping_networks_are_merged() -> None:
    # nftables refuses overlapping elements in an interval set.
    ruleset = firewall("{management: [10.0.0.0/8, 10.1.0.0/16, 192.168.1.0/25, "
                       "192.168.1.128/25, 192.168.1.7/32]}")
    assert set_elements(ruleset, "management_v4") == "elements = { 10.0.0.0/8, 192.168.1.0/24 }"


def test_firewall_sandbox_uses_its_ports() -> None:
    ruleset = firewall("{trusted: [10.0.0.0/8], ssh: true}", SANDBOX)
    assert port_rules(ruleset, 20025) == ["tcp dport 20025 accept"]
    assert port_rules(ruleset, 20026) == ["ip saddr @trusted_v4 tcp dport 20026 accept"]
    assert port_rules(ruleset, 20006) == ["ip saddr @management_v4 tcp dport 20006 accept"]
    assert port_rules(ruleset, 22) == ["ip saddr @management_v4 tcp dport 22 accept"]


# --- purity -----------------------------------------------------------------------------


@pytest.mark.parametrize("fixture", FIXTURES)
def test_render_is_pure(fixture: str, tmp_path: Path) -> None:
    from dataclasses import replace

    state = load_state_file(STATES / f"{fixture}.yaml")
    before = state.model_copy(deep=True)
    layout = replace(SANDBOX, root=tmp_path / "root")
    first = render(state, layout)
    second = render(state, layout)
    assert [(f.path, f.content) for f in first] == [(f.path, f.content) for f in second]
    assert state == before
    assert list(tmp_path.iterdir()) == []  # nothing written
