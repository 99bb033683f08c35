"""Global sender lists on the real mail path: real Postfix, the filter and Rspamd, the lists
changed as an administrator does (the command line, the API's store) while the gateway runs,
with no apply in between."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailwarden.process import run
from mailwarden.store.db import Database
from mailwarden.store.lists import GlobalLists, UserLists
from mailwarden_dev.instance import Sandbox

from .conftest import state_for
from .test_mail_path import GTUBE, build, marker, send, wait_quarantined

pytestmark = pytest.mark.integration

EXTRA = """\
mail:
  reject_unknown_sender_domain: false   # Postfix resolves with the host's resolver here
greylisting:
  enabled: false
"""


@pytest.fixture(scope="module")
def gw(sandbox_root: Path) -> Iterator[Sandbox]:
    sandbox = Sandbox(sandbox_root / "glists", agent_services=True)
    sandbox.start(state_for(sandbox, EXTRA))
    yield sandbox
    sandbox.stop()


def _cli(gw: Sandbox, *args: str) -> str:
    return run([".venv/bin/mailwarden", "lists", *args, "--root", str(gw.root)]).stdout


def test_a_globally_blocked_sender_is_held_for_every_recipient(gw: Sandbox) -> None:
    domain = f"{marker()}.example"
    assert "block for every recipient" in _cli(gw, "add", "--global", f"@{domain}", "block")
    # A recipient who allows the sender themselves gets it: their own entry comes first.
    UserLists(Database(gw.layout.database)).set("fan@example.test", f"@{domain}", "allow")
    subject = marker()
    recipients = ("user@example.test", "other@example.test", "fan@example.test")
    send(gw, build(subject, sender=f"news@{domain}", to=", ".join(recipients)),
         sender=f"news@{domain}", to=recipients)
    entry = wait_quarantined(gw, subject)
    assert (entry.kind, entry.rule) == ("blocked", "global-blocklist")
    assert sorted(entry.recipients) == ["other@example.test", "user@example.test"]
    [delivered] = gw.sink.wait_for_marker(subject)
    rcpts = [line for line in delivered.splitlines() if line.startswith(b"X-Rcpt-Args:")]
    assert len(rcpts) == 1 and b"fan@example.test" in rcpts[0], rcpts
    # Off the list: the next message goes through to everyone, still without an apply.
    assert "removed" in _cli(gw, "remove", "--global", f"@{domain}")
    after = marker()
    send(gw, build(after, sender=f"news@{domain}", to="user@example.test"),
         sender=f"news@{domain}")
    gw.sink.wait_for_marker(after)


def test_spam_from_a_globally_allowed_sender_is_delivered(gw: Sandbox) -> None:
    domain = f"{marker()}.example"
    GlobalLists(Database(gw.layout.database)).set(f"friend@{domain}", "allow", "admin")
    allowed = marker()
    send(gw, build(allowed, body=f"{GTUBE}\n", sender=f"friend@{domain}"),
         sender=f"friend@{domain}")
    [delivered] = gw.sink.wait_for_marker(allowed)
    assert GTUBE.encode() in delivered
    # The same spam from the same domain, another address: the entry was the difference.
    held = marker()
    send(gw, build(held, body=f"{GTUBE}\n", sender=f"stranger@{domain}"),
         sender=f"stranger@{domain}")
    assert wait_quarantined(gw, held).kind == "spam"
    time.sleep(2)  # a wrong delivery of the held one would show up by now
    assert gw.sink.containing(held) == []
