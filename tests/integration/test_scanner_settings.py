"""What the scanner settings do to a message on the real mail path (Postfix, the filter,
Rspamd, ClamAV): the size above which Rspamd is not asked, what happens when a scanner
stalls (its time-out, then on_failure), and the switches that turn each scanner off."""

from __future__ import annotations

import email
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailwarden_dev.instance import EICAR, Sandbox

from .conftest import state_for
from .test_mail_path import GTUBE, build, marker, send, wait_quarantined

pytestmark = pytest.mark.integration

SETTINGS = """\
mail:
  reject_unknown_sender_domain: false   # Postfix resolves with the host's resolver here
greylisting:
  enabled: false
spam:
  fuzzy_check: false
  max_scan_size_kb: 64
  timeout_seconds: 2
  on_failure: accept_tagged
virus:
  timeout_seconds: 2
  on_failure: accept_tagged
"""


def _state(gw: Sandbox, settings: str = SETTINGS) -> str:
    # state_for's own spam section would be a second `spam:` key.
    return state_for(gw, settings).replace("spam:\n  fuzzy_check: false\n", "", 1)


@pytest.fixture(scope="module")
def gw(sandbox_root: Path) -> Iterator[Sandbox]:
    sandbox = Sandbox(sandbox_root / "scanners", agent_services=True)
    sandbox.start(_state(sandbox))
    yield sandbox
    sandbox.stop()


def _result(delivered: bytes) -> str:
    """The filter's X-Mailwarden header, unfolded."""
    return " ".join(str(email.message_from_bytes(delivered)["X-Mailwarden"]).split())


def test_rspamd_is_not_asked_about_mail_above_max_scan_size_kb(gw: Sandbox) -> None:
    small = marker()
    send(gw, build(small, body=f"{GTUBE}\n"))
    assert wait_quarantined(gw, small).kind == "spam"
    big = marker()
    send(gw, build(big, body=f"{GTUBE}\n" + "padding line\n" * 6000))  # about 78 kB
    [delivered] = gw.sink.wait_for_marker(big)
    assert "score=unscanned (too large)" in _result(delivered)


@pytest.mark.parametrize(("daemon", "header"), [("rspamd", b"X-Mailwarden-Spam-Scan: failed"),
                                                 ("clamav", b"X-Mailwarden-Virus-Scan: failed")])
def test_a_stalled_scanner_times_out_and_the_mail_goes_on_tagged(gw: Sandbox, daemon: str,
                                                                 header: bytes) -> None:
    """Stopped, not ended: the scanner's socket still accepts, nothing answers. Only the
    time-out (timeout_seconds) ends the wait, and on_failure: accept_tagged lets the mail
    through marked as unscanned."""
    process = gw.daemons[daemon].process
    assert process is not None
    os.killpg(process.pid, signal.SIGSTOP)
    try:
        subject = marker()
        # An attachment: plain text would not be sent to clamd at all (skip_plain_text).
        send(gw, build(subject, attachment=("report.pdf", b"%PDF-1.4 not really\n")))
        [delivered] = gw.sink.wait_for_marker(subject, timeout=120)
    finally:
        os.killpg(process.pid, signal.SIGCONT)
    assert header in delivered


def test_scanners_switched_off_pass_gtube_and_eicar(gw: Sandbox) -> None:
    live = gw.layout.state_file.read_text()
    off = SETTINGS.replace("  fuzzy_check: false\n", "  fuzzy_check: false\n  enabled: false\n")
    off = off.replace("virus:\n", "virus:\n  enabled: false\n")
    gw.apply(_state(gw, off), comment="scanners off")
    try:
        subject = marker()
        send(gw, build(subject, body=f"{GTUBE}\n", attachment=("eicar.com", EICAR)))
        [delivered] = gw.sink.wait_for_marker(subject)
    finally:
        gw.apply(live, comment="scanners on again")
    result = _result(delivered)
    assert "score=unscanned (disabled)" in result
    assert "virus=unscanned (disabled)" in result
    # On again: the same message is held.
    again = marker()
    send(gw, build(again, body=f"{GTUBE}\n", attachment=("eicar.com", EICAR)))
    assert wait_quarantined(gw, again).kind == "virus"
