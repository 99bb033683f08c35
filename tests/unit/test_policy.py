"""The policy service: the protocol parser, decide() with an injected clock and SPF function,
and the asyncio server over a real loopback socket."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from mailwarden.layout import sandbox
from mailwarden.mail import policy as pol
from mailwarden.mail.policy import (
    Policy,
    PolicyRequestError,
    RateCounter,
    format_request,
    normalise_sender,
    parse_request,
    split_requests,
)
from mailwarden.mail.receivedspf import parse_received_spf, received_spf
from mailwarden.state.load import load_state_text
from mailwarden.state.schema import State
from mailwarden.store.db import Database
from mailwarden.store.greylist import GreylistStore

BASE = """\
version: 1
system:
  hostname: mx.example.test
networks:
  trusted: [10.20.0.0/16]
  backup_mx: [198.51.100.7/32]
domains:
  - name: example.test
    transport: {host: 127.0.0.1, port: 2525}
"""


def make_state(extra: str = "") -> State:
    return load_state_text(BASE + extra, "test state")


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeSpf:
    """(ip, sender, helo) -> result by sender domain; counts calls."""

    def __init__(self, results: dict[str, str] | None = None) -> None:
        self.results = results or {}
        self.calls: list[tuple[str, str, str]] = []

    def __call__(self, ip: str, sender: str, helo: str) -> tuple[str, str]:
        self.calls.append((ip, sender, helo))
        domain = sender.rpartition("@")[2] if sender else helo
        return self.results.get(domain, "none"), "explained"


@pytest.fixture
def db(tmp_path: Path) -> Database:
    return Database(tmp_path / "mw.db")


def make_policy(db: Database, extra: str = "greylisting: {enabled: false}\n",
                spf: FakeSpf | None = None, clock: Clock | None = None) -> Policy:
    return Policy(state=make_state(extra), greylist=GreylistStore(db),
                  spf_check=spf or FakeSpf(), clock=clock or Clock())


_counter = iter(range(1, 1_000_000))


def rcpt(client: str = "192.0.2.25", sender: str = "alice@sender.test",
         recipient: str = "user@example.test", instance: str | None = None,
         **extra: str) -> dict[str, str]:
    attrs = {
        "request": "smtpd_access_policy", "protocol_state": "RCPT", "protocol_name": "ESMTP",
        "client_address": client, "client_name": "mail.sender.test",
        "helo_name": "mail.sender.test", "sender": sender, "recipient": recipient,
        "instance": instance or f"inst.{next(_counter)}", "queue_id": "",
    }
    attrs.update(extra)
    return attrs


# --- the protocol ------------------------------------------------------------------------


def test_parse_request_round_trips_and_splits_on_the_first_equals() -> None:
    attrs = rcpt(sender="a=b@sender.test")
    attrs["ccert_subject"] = "CN=x=y"
    assert parse_request(format_request(attrs)) == attrs


def test_several_requests_per_connection_are_split_at_blank_lines() -> None:
    first, second = rcpt(instance="one"), rcpt(instance="two", recipient="b@example.test")
    stream = format_request(first) + format_request(second) + b"request=smtpd_access"
    requests, rest = split_requests(stream)
    assert [parse_request(r) for r in requests] == [first, second]
    assert rest == b"request=smtpd_access"


def test_crlf_and_8bit_values_survive() -> None:
    data = "sender=j\u00f6rg@sender.test\r\nrecipient=u@example.test\r\n\r\n".encode()
    assert parse_request(data)["sender"] == "j\u00f6rg@sender.test"
    raw = b"sender=\xff@x.test\n\n"  # not UTF-8: kept, not dropped
    assert format_request(parse_request(raw)) == raw


@pytest.mark.parametrize("data", [b"no equals sign\n\n", b"=value\n\n", b"na me=x\n\n",
                                  b"".join(b"a%d=1\n" % i for i in range(200)) + b"\n"])
def test_malformed_requests_raise_a_typed_error(data: bytes) -> None:
    with pytest.raises(PolicyRequestError):
        parse_request(data)


def test_empty_request_is_an_empty_dict() -> None:
    assert parse_request(b"\n") == {}


def test_action_encoding_never_breaks_the_protocol() -> None:
    assert pol.PolicyAction("DUNNO").encode() == b"action=DUNNO\n\n"
    assert pol.PolicyAction("PREPEND X: a\nb").encode() == b"action=PREPEND X: a b\n\n"


# --- Received-SPF ------------------------------------------------------------------------


def test_received_spf_round_trip() -> None:
    value = received_spf("softfail", receiver="mx.example.test", client_ip="192.0.2.25",
                         sender="a b\"c@sender.test", helo="mail.sender.test",
                         identity="mailfrom", comment="mx: (nested) text")
    assert value.startswith("softfail (mx: nested text) receiver=mx.example.test;")
    assert parse_received_spf(value) == ("softfail", "sender.test")


@pytest.mark.parametrize(("value", "expected"), [
    ('pass (mybox.example.org: domain of myname@example.com designates 192.0.2.1 as '
     'permitted sender) receiver=mybox.example.org; client-ip=192.0.2.1; '
     'envelope-from="myname@example.com"; helo=foo.example.com;', ("pass", "example.com")),
    ("fail (mybox.example.org: domain of (nested (comment)) x) envelope-from=a@Bad.TEST;",
     ("fail", "bad.test")),
    ("none (no sender) receiver=mx; client-ip=192.0.2.1; envelope-from=; helo=h.test; "
     "identity=helo;", ("none", "h.test")),
    ("Pass\r\n (folded) envelope-from=x@y.test", ("pass", "y.test")),
    ("garbage", ("none", "")),
    ("", ("none", "")),
])
def test_parse_received_spf(value: str, expected: tuple[str, str]) -> None:
    assert parse_received_spf(value) == expected


# --- decide(): who is skipped -------------------------------------------------------------


def test_not_rcpt_and_unknown_requests_get_dunno(db: Database) -> None:
    policy = make_policy(db)
    assert policy.decide({"request": "smtpd_access_policy"}).text == "DUNNO"
    assert policy.decide(rcpt(protocol_state="DATA")).text == "DUNNO"
    assert policy.decide(rcpt(request="other")).text == "DUNNO"
    assert policy.decide(rcpt(client="not-an-ip")).text == "DUNNO"


@pytest.mark.parametrize("client", ["10.20.3.4", "127.0.0.1", "::1", "198.51.100.7"])
def test_trusted_loopback_and_backup_mx_skip_spf_and_greylisting(db: Database,
                                                                  client: str) -> None:
    spf = FakeSpf({"sender.test": "fail"})
    policy = make_policy(db, "greylisting: {enabled: true}\n", spf)
    assert policy.decide(rcpt(client=client)).text == "DUNNO"
    assert spf.calls == []


# --- SPF -----------------------------------------------------------------------------------


def test_spf_fail_is_rejected_with_5_7_23(db: Database) -> None:
    policy = make_policy(db, spf=FakeSpf({"sender.test": "fail"}))
    action = policy.decide(rcpt())
    assert action.text.startswith("550 5.7.23 ")
    assert "sender.test" in action.text and "192.0.2.25" in action.text


def test_spf_fail_exemptions(db: Database) -> None:
    spf = FakeSpf({"sender.test": "fail", "sub.partner.test": "fail"})
    policy = make_policy(db, "greylisting: {enabled: false}\nspf:\n"
                             "  exempt_senders: [partner.test]\n"
                             "  exempt_networks: [203.0.113.0/24]\n", spf)
    exempt_domain = policy.decide(rcpt(sender="a@sub.partner.test"))
    assert exempt_domain.text.startswith("PREPEND Received-SPF: fail ")
    assert policy.decide(rcpt(client="203.0.113.9")).text.startswith("PREPEND Received-SPF: fail")
    assert policy.decide(rcpt()).text.startswith("550 5.7.23")


def test_spf_fail_only_tagged_when_reject_is_off(db: Database) -> None:
    policy = make_policy(db, "greylisting: {enabled: false}\nspf: {reject_fail: false}\n",
                         FakeSpf({"sender.test": "fail"}))
    assert policy.decide(rcpt()).text.startswith("PREPEND Received-SPF: fail ")


def test_spf_softfail_is_rejected_when_tagging_is_off(db: Database) -> None:
    spf = FakeSpf({"sender.test": "softfail", "partner.test": "softfail"})
    policy = make_policy(db, "greylisting: {enabled: false}\n"
                             "spf: {tag_softfail: false, exempt_senders: [partner.test]}\n", spf)
    action = policy.decide(rcpt())
    assert action.text.startswith("550 5.7.23 SPF softfail: sender.test ")
    exempt = policy.decide(rcpt(sender="a@partner.test"))
    assert exempt.text.startswith("PREPEND Received-SPF: softfail ")
    # Turning softfail rejection on does not depend on reject_fail, nor change fail.
    both_off = make_policy(db, "greylisting: {enabled: false}\n"
                               "spf: {tag_softfail: false, reject_fail: false}\n",
                           FakeSpf({"sender.test": "fail"}))
    assert both_off.decide(rcpt()).text.startswith("PREPEND Received-SPF: fail ")


@pytest.mark.parametrize("result", ["pass", "softfail", "neutral", "none", "temperror",
                                    "permerror"])
def test_other_spf_results_prepend_the_header(db: Database, result: str) -> None:
    policy = make_policy(db, spf=FakeSpf({"sender.test": result}))
    action = policy.decide(rcpt())
    assert action.verb == "PREPEND"
    header = action.text.removeprefix("PREPEND ")
    name, _, value = header.partition(": ")
    assert name == "Received-SPF"
    assert parse_received_spf(value) == (result, "sender.test")
    assert "receiver=mx.example.test;" in value and "client-ip=192.0.2.25;" in value


def test_header_is_added_once_per_message_and_spf_runs_once(db: Database) -> None:
    spf = FakeSpf({"sender.test": "pass"})
    policy = make_policy(db, spf=spf)
    first = policy.decide(rcpt(instance="msg1", recipient="a@example.test"))
    second = policy.decide(rcpt(instance="msg1", recipient="b@example.test"))
    other = policy.decide(rcpt(instance="msg2"))
    assert first.verb == "PREPEND" and second.text == "DUNNO" and other.verb == "PREPEND"
    assert len(spf.calls) == 2


def test_null_sender_is_checked_by_helo(db: Database) -> None:
    spf = FakeSpf({"mail.sender.test": "pass"})
    policy = make_policy(db, spf=spf)
    action = policy.decide(rcpt(sender=""))
    assert parse_received_spf(action.text.partition(": ")[2]) == ("pass", "mail.sender.test")
    assert "identity=helo;" in action.text


def test_spf_check_crash_becomes_temperror(db: Database) -> None:
    def broken(ip: str, sender: str, helo: str) -> tuple[str, str]:
        raise RuntimeError("boom")

    policy = Policy(state=make_state("greylisting: {enabled: false}\n"), greylist=None,
                    spf_check=broken, clock=Clock())
    assert policy.decide(rcpt()).text.startswith("PREPEND Received-SPF: temperror ")


def test_spf_disabled_still_prepends_none(db: Database) -> None:
    spf = FakeSpf({"sender.test": "fail"})
    policy = make_policy(db, "greylisting: {enabled: false}\nspf: {enabled: false}\n", spf)
    assert policy.decide(rcpt()).text.startswith("PREPEND Received-SPF: none ")
    assert spf.calls == []


# --- greylisting ---------------------------------------------------------------------------

GREY = "greylisting: {enabled: true, delay_seconds: 60, retry_window_hours: 2, " \
       "pass_lifetime_days: 3}\n"


def test_greylist_first_try_early_retry_then_pass(db: Database) -> None:
    clock = Clock()
    policy = make_policy(db, GREY, FakeSpf({"sender.test": "pass"}), clock)
    first = policy.decide(rcpt(instance="a"))
    assert first.text == "DEFER_IF_PERMIT 4.7.1 Greylisted, try again in 60 seconds"
    clock.now += 20
    early = policy.decide(rcpt(instance="b"))
    assert early.text == "DEFER_IF_PERMIT 4.7.1 Greylisted, try again in 40 seconds"
    clock.now += 41
    assert policy.decide(rcpt(instance="c")).verb == "PREPEND"
    clock.now += 86400  # known triplet, within pass lifetime
    assert policy.decide(rcpt(instance="d")).verb == "PREPEND"


def test_greylist_triplet_uses_network_and_verp_normalised_sender(db: Database) -> None:
    clock = Clock()
    policy = make_policy(db, GREY, clock=clock)
    assert policy.decide(rcpt(client="192.0.2.25", sender="list+bounce-123@sender.test"))\
        .verb == "DEFER_IF_PERMIT"
    clock.now += 61
    # Same /24, another VERP address of the same list: the same triplet, so it passes.
    assert policy.decide(rcpt(client="192.0.2.99", sender="list+bounce-456@sender.test"))\
        .verb == "PREPEND"
    assert normalise_sender("List+Bounce-123@Sender.TEST") == "list@sender.test"
    assert normalise_sender("bounce-12-x34@sender.test") == "bounce-#-x#@sender.test"
    assert normalise_sender("") == "<>"


def test_retry_outside_the_window_starts_over(db: Database) -> None:
    clock = Clock()
    policy = make_policy(db, GREY, clock=clock)
    assert policy.decide(rcpt()).verb == "DEFER_IF_PERMIT"
    clock.now += 3 * 3600
    assert policy.decide(rcpt()).text.endswith("try again in 60 seconds")


def test_auto_whitelist_lets_a_proven_network_pass_any_triplet(db: Database) -> None:
    clock = Clock()
    policy = make_policy(db, GREY, clock=clock)
    policy.decide(rcpt())
    clock.now += 61
    assert policy.decide(rcpt()).verb == "PREPEND"
    other = rcpt(client="192.0.2.200", sender="bob@other.test", recipient="x@example.test")
    assert policy.decide(other).verb == "PREPEND"
    # After the pass lifetime the network is unknown again.
    clock.now += 4 * 86400
    stranger = rcpt(client="192.0.2.201", sender="carol@third.test")
    assert policy.decide(stranger).verb == "DEFER_IF_PERMIT"
    # A different network never benefited.
    assert policy.decide(rcpt(client="203.0.113.5")).verb == "DEFER_IF_PERMIT"


def test_greylist_exemptions_and_ipv6(db: Database) -> None:
    extra = GREY.rstrip("}\n") + ", exempt_networks: [203.0.113.0/24], " \
        "exempt_senders: [friend.test], exempt_recipients: [postmaster@example.test]}\n"
    policy = make_policy(db, extra)
    assert policy.decide(rcpt(client="203.0.113.5")).verb == "PREPEND"
    assert policy.decide(rcpt(sender="a@mail.friend.test")).verb == "PREPEND"
    assert policy.decide(rcpt(recipient="postmaster@example.test")).verb == "PREPEND"
    assert policy.decide(rcpt(client="2001:db8::25")).verb == "PREPEND"  # ipv6: false
    v6 = make_policy(db, GREY.replace("}", ", ipv6: true, ipv6_netmask: 64}"))
    assert v6.decide(rcpt(client="2001:db8::25")).verb == "DEFER_IF_PERMIT"


def test_greylist_netmasks_decide_which_clients_share_a_triplet(db: Database) -> None:
    def retry_from_a_neighbour(extra: str, first: str, second: str) -> str:
        clock = Clock()
        policy = make_policy(db, extra, clock=clock)
        assert policy.decide(rcpt(client=first)).verb == "DEFER_IF_PERMIT"
        clock.now += 61
        return policy.decide(rcpt(client=second)).verb

    # IPv4: the default /24 makes a neighbour's retry the same triplet; /32 does not.
    assert retry_from_a_neighbour(GREY, "192.0.2.25", "192.0.2.99") == "PREPEND"
    assert retry_from_a_neighbour(GREY.replace("}", ", ipv4_netmask: 32}"),
                                  "198.51.100.25", "198.51.100.99") == "DEFER_IF_PERMIT"
    # IPv6 likewise, by ipv6_netmask.
    v6 = GREY.replace("}", ", ipv6: true, ipv6_netmask: 64}")
    assert retry_from_a_neighbour(v6, "2001:db8:1::25", "2001:db8:1::99") == "PREPEND"
    v6_host = GREY.replace("}", ", ipv6: true, ipv6_netmask: 128}")
    assert retry_from_a_neighbour(v6_host, "2001:db8:2::25", "2001:db8:2::99") \
        == "DEFER_IF_PERMIT"


def test_null_sender_is_greylisted(db: Database) -> None:
    policy = make_policy(db, GREY)
    assert policy.decide(rcpt(sender="")).verb == "DEFER_IF_PERMIT"


def test_greylist_purge(db: Database) -> None:
    clock = Clock()
    policy = make_policy(db, GREY, clock=clock)
    store = policy.greylist
    assert store is not None
    policy.decide(rcpt())
    assert store.count() == 1
    assert store.purge(clock.now + 3 * 3600, policy.greylist_times()) == 1
    assert store.count() == 0


# --- rate limits ---------------------------------------------------------------------------


def test_client_rate_limit_in_a_sliding_hour(db: Database) -> None:
    clock = Clock()
    policy = make_policy(db, "greylisting: {enabled: false}\n"
                             "rate_limits: {client_per_hour: 3}\n", clock=clock)
    answers = [policy.decide(rcpt(instance="m")).verb for _ in range(4)]
    assert answers == ["PREPEND", "DUNNO", "DUNNO", "450"]
    assert policy.decide(rcpt(client="192.0.2.26")).verb == "PREPEND"  # per client
    clock.now += 3601
    assert policy.decide(rcpt()).verb == "PREPEND"


def test_sender_rate_limit_applies_to_trusted_clients(db: Database) -> None:
    policy = make_policy(db, "greylisting: {enabled: false}\n"
                             "rate_limits: {sender_per_hour: 2, exempt_networks: [10.20.9.0/24]}\n")
    out = rcpt(client="10.20.1.1", sender="clerk@example.test")
    assert [policy.decide(out).text[:3] for _ in range(3)] == ["DUN", "DUN", "450"]
    assert policy.decide(rcpt(client="10.20.9.1", sender="clerk@example.test")).text == "DUNNO"


def test_rate_counter_forgets_idle_keys() -> None:
    counter = RateCounter()
    assert counter.take("a", 1, 0.0)
    assert not counter.take("a", 1, 10.0)
    assert counter.count("a", 3700.0) == 0
    for i in range(1000):
        counter.take(f"k{i}", 5, 8000.0)
    assert "a" not in counter._buckets


# --- the server ---------------------------------------------------------------------------


async def _exchange(port: int, payload: bytes, answers: int) -> list[bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(payload)
        await writer.drain()
        return [await asyncio.wait_for(reader.readuntil(b"\n\n"), 5) for _ in range(answers)]
    finally:
        writer.close()
        await writer.wait_closed()


def test_server_answers_several_requests_and_survives_garbage(db: Database,
                                                              tmp_path: Path) -> None:
    layout = sandbox(tmp_path, agent_services=False)
    policy = make_policy(db, spf=FakeSpf({"sender.test": "fail", "good.test": "pass"}))

    async def scenario() -> None:
        server = await pol.start_policy_server(policy.state, layout, db, policy=policy, port=0)
        port = server.sockets[0].getsockname()[1]
        try:
            answers = await _exchange(port, format_request(rcpt())
                                      + format_request(rcpt(sender="a@good.test"))
                                      + b"garbage line\n\n"
                                      + format_request({"request": "smtpd_access_policy"}), 4)
            assert answers[0].startswith(b"action=550 5.7.23 ")
            assert answers[1].startswith(b"action=PREPEND Received-SPF: pass ")
            assert answers[2:] == [b"action=DUNNO\n\n"] * 2
            # An overlong line: one DUNNO, then the connection is closed.
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"sender=" + b"x" * 20000 + b"\n\n")
            await writer.drain()
            assert await asyncio.wait_for(reader.read(), 5) == b"action=DUNNO\n\n"
            writer.close()
            # Still serving.
            assert (await _exchange(port, format_request(rcpt(protocol_state="CONNECT")), 1)
                    == [b"action=DUNNO\n\n"])
        finally:
            server.close()
            await server.wait_closed()
            server.policy_server.close()

    asyncio.run(scenario())


def test_server_closes_idle_clients(db: Database, tmp_path: Path) -> None:
    layout = sandbox(tmp_path, agent_services=False)
    policy = make_policy(db)

    async def scenario() -> None:
        server = await pol.start_policy_server(policy.state, layout, db, policy=policy, port=0)
        server.policy_server.idle_timeout = 0.2
        port = server.sockets[0].getsockname()[1]
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"request=smtpd_access_policy\n")  # never finished
            await writer.drain()
            assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()
        finally:
            server.close()
            await server.wait_closed()
            server.policy_server.close()

    asyncio.run(scenario())


def test_decide_failure_is_dunno_not_a_crash(db: Database, tmp_path: Path) -> None:
    layout = sandbox(tmp_path, agent_services=False)
    policy = make_policy(db)

    def explode(attrs: object) -> pol.PolicyAction:
        raise RuntimeError("store is gone")

    policy.decide = explode  # type: ignore[method-assign]

    async def scenario() -> None:
        server = await pol.start_policy_server(policy.state, layout, db, policy=policy, port=0)
        port = server.sockets[0].getsockname()[1]
        try:
            assert await _exchange(port, format_request(rcpt()), 1) == [b"action=DUNNO\n\n"]
        finally:
            server.close()
            await server.wait_closed()
            server.policy_server.close()

    asyncio.run(scenario())
