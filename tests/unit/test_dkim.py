"""DKIM keys, signing and verifying, with DNS answered by a stub dnsfunc."""

from __future__ import annotations

import stat
from pathlib import Path

import dkim as dkimpy
import pytest

from mailwarden.layout import Layout, sandbox
from mailwarden.mail import dkim
from mailwarden.mail.dkim import DkimError, DkimKeyInfo
from mailwarden.state.load import load_state_text
from mailwarden.state.schema import State

MESSAGE = (b"From: Alice <alice@example.test>\r\nTo: bob@other.test\r\n"
           b"Subject: hello\r\nDate: Wed, 25 Nov 2026 05:00:00 +0000\r\n"
           b"Message-ID: <1@example.test>\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: text/plain; charset=utf-8\r\n\r\nHello Bob.\r\n")


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Layout:
    return sandbox(tmp_path_factory.mktemp("dkim"), agent_services=False)


@pytest.fixture(scope="module")
def key(layout: Layout) -> DkimKeyInfo:
    # 1024 bits keeps the test fast; the default is 2048.
    return dkim.generate_key(layout, "example.test", "s1", bits=1024)


def state_with(key: DkimKeyInfo, domain: str | None = None, key_name: str | None = None) -> State:
    return load_state_text(f"""\
version: 1
system: {{hostname: mx.example.test}}
domains:
  - name: example.test
    transport: {{host: 127.0.0.1}}
dkim:
  sign:
    - {{domain: {domain or key.domain}, selector: {key.selector}, key: {key_name or key.key_name}}}
""")


def dns_stub(records: dict[str, str]) -> dkim.DnsFunc:
    def get_txt(name: bytes, timeout: float = 5) -> bytes | None:
        value = records.get(name.decode().rstrip("."))
        return value.encode() if value is not None else None

    return get_txt


def test_generate_writes_a_private_key_0600_and_returns_the_record(key: DkimKeyInfo) -> None:
    assert key.path.name == "dkim-example.test-s1.key"
    assert stat.S_IMODE(key.path.stat().st_mode) == 0o600
    assert key.path.read_bytes().startswith(b"-----BEGIN RSA PRIVATE KEY-----")
    assert key.dns_name == "s1._domainkey.example.test"
    assert key.txt.startswith("v=DKIM1; k=rsa; p=MI")
    assert key.record.startswith('s1._domainkey.example.test. IN TXT "v=DKIM1; k=rsa; p=')
    assert all(len(chunk) <= 255 for chunk in key.record.split('"')[1::2])


def test_generate_refuses_to_overwrite_unless_forced(layout: Layout, key: DkimKeyInfo) -> None:
    before = key.path.read_bytes()
    with pytest.raises(DkimError, match="exists"):
        dkim.generate_key(layout, "example.test", "s1", bits=1024)
    assert key.path.read_bytes() == before
    other = dkim.generate_key(layout, "example.test", "s1", bits=1024,
                              key_name="replaced.key")
    again = dkim.generate_key(layout, "example.test", "s1", bits=1024,
                              key_name="replaced.key", force=True)
    assert again.txt != other.txt
    assert not list(layout.secrets_dir.glob("tmp*"))  # no half-written leftovers


def test_generate_refuses_unsupported_algorithms_and_sizes(layout: Layout) -> None:
    with pytest.raises(DkimError, match="ed25519"):
        dkim.generate_key(layout, "example.test", "e1", algorithm="ed25519-sha256")
    with pytest.raises(DkimError, match="bits"):
        dkim.generate_key(layout, "example.test", "s2", bits=512)


def test_long_domains_get_a_valid_key_name() -> None:
    name = dkim.default_key_name("a" * 60 + ".example.test", "selector")
    assert len(name) <= 64 and name.startswith("dkim-")


def test_sign_then_verify_round_trip(layout: Layout, key: DkimKeyInfo) -> None:
    signed = dkim.sign(MESSAGE, state_with(key), layout)
    assert signed.startswith(b"DKIM-Signature: ")
    assert signed.endswith(MESSAGE)
    header = signed[:len(signed) - len(MESSAGE)].decode()
    assert "c=relaxed/relaxed" in header and "d=example.test" in header and "s=s1" in header
    # From is oversigned: a second From added later breaks the signature.
    h_tag = "".join(header.split("h=", 1)[1].split(";", 1)[0].split())
    assert h_tag.lower().split(":").count("from") == 2
    stub = dns_stub({key.dns_name: key.txt})
    assert dkim.verify(signed, stub) == ("pass", ["example.test"])
    forged = signed.replace(b"Subject: hello", b"Subject: pay now")
    assert dkim.verify(forged, stub) == ("fail", [])
    extra_from = signed.replace(b"To: bob", b"From: mallory@evil.test\r\nTo: bob")
    assert dkim.verify(extra_from, stub)[0] == "fail"


def test_lf_messages_are_signed_with_lf(layout: Layout, key: DkimKeyInfo) -> None:
    lf = MESSAGE.replace(b"\r\n", b"\n")
    signed = dkim.sign(lf, state_with(key), layout)
    assert b"\r\n" not in signed
    assert dkim.verify(signed, dns_stub({key.dns_name: key.txt}))[0] == "pass"


def test_subdomain_from_uses_the_parent_key(layout: Layout, key: DkimKeyInfo) -> None:
    message = MESSAGE.replace(b"alice@example.test", b"alice@news.example.test")
    signed = dkim.sign(message, state_with(key), layout)
    assert b"d=example.test" in signed


def test_no_key_for_the_from_domain_leaves_the_message_alone(layout: Layout,
                                                            key: DkimKeyInfo) -> None:
    message = MESSAGE.replace(b"alice@example.test", b"alice@other.test")
    assert dkim.sign(message, state_with(key), layout) == message
    assert dkim.sign(b"Subject: no from\r\n\r\nx\r\n", state_with(key), layout).startswith(
        b"Subject")


def test_missing_key_file_is_a_typed_error(layout: Layout, key: DkimKeyInfo) -> None:
    state = state_with(key, key_name="absent.key")
    with pytest.raises(DkimError, match=r"absent\.key"):
        dkim.sign(MESSAGE, state, layout)


def test_verify_results(layout: Layout, key: DkimKeyInfo) -> None:
    signed = dkim.sign(MESSAGE, state_with(key), layout)
    assert dkim.verify(MESSAGE, dns_stub({})) == ("none", [])
    assert dkim.verify(signed, dns_stub({})) == ("fail", [])  # no key published

    def timeout(name: bytes, timeout: float = 5) -> bytes | None:
        raise dkimpy.DnsTimeoutError("slow")

    assert dkim.verify(signed, timeout) == ("temperror", [])
    assert dkim.verify(b"\x00\xff garbage", dns_stub({})) == ("none", [])
    broken = b"DKIM-Signature: v=1; nonsense\r\n" + MESSAGE
    assert dkim.verify(broken, dns_stub({}))[0] == "fail"


def test_two_signatures_report_every_valid_domain(layout: Layout, key: DkimKeyInfo,
                                                  tmp_path: Path) -> None:
    other_layout = sandbox(tmp_path, agent_services=False)
    other = dkim.generate_key(other_layout, "esp.test", "k1", bits=1024)
    first = dkim.sign(MESSAGE, state_with(key), layout)
    both = dkim.sign(first.replace(b"alice@example.test", b"alice@esp.test", 1),
                     state_with(other), other_layout)
    # The From changed after the first signature: only esp.test's signature holds.
    stub = dns_stub({key.dns_name: key.txt, other.dns_name: other.txt})
    assert dkim.verify(both, stub) == ("pass", ["esp.test"])
