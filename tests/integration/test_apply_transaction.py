"""apply on a running sandbox: revisions, reloads, refusal, automatic rollback, races."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from mailwarden.control import health
from mailwarden.control.apply import LocallyModified
from mailwarden.errors import ConflictError, RenderError, ServiceError
from mailwarden.state.revisions import RevisionStore
from mailwarden_dev.instance import Sandbox

from .conftest import SendMail, state_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def box(sandbox_root: Path) -> Sandbox:
    sandbox = Sandbox(sandbox_root / "apply", agent_services=False)
    sandbox.start(state_for(sandbox))
    yield sandbox
    sandbox.stop()


def _banner(box: Sandbox) -> str:
    with socket.create_connection(("127.0.0.1", box.layout.ports.reinject), timeout=10) as s:
        return s.recv(1024).decode()


def _live_files(box: Sandbox) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in box.root.glob("etc/**/*") if p.is_file()}


def _store(box: Sandbox) -> RevisionStore:
    return RevisionStore(box.layout.revisions_dir)


def _all_healthy(box: Sandbox) -> None:
    for service in box.services:
        health.PROBES[service](box.layout)


def test_revision_applied_and_only_postfix_reloaded(box: Sandbox) -> None:
    before = _store(box).current()
    text = state_for(box, 'mail:\n  banner: "$myhostname ESMTP revision-two"\n')
    result = box.apply(text, comment="new banner")
    assert result.revision.number == before + 1
    assert result.reloaded == ["postfix"]
    assert [p.name for p in result.changed] == ["main.cf"]
    assert "revision-two" in _banner(box)
    assert box.layout.state_file.read_text() == text
    history = _store(box).history()
    assert history[-1].comment == "new banner" and history[-1].author == "test"


def test_broken_override_changes_nothing(box: Sandbox, send_mail: SendMail) -> None:
    store = _store(box)
    number, live, state = store.current(), _live_files(box), box.layout.state_file.read_text()
    override = box.layout.templates_dir / "postfix" / "main.cf.j2"
    override.parent.mkdir(parents=True, exist_ok=True)
    try:
        # Valid Jinja, but Postfix refuses it: the real checker must catch it.
        override.write_text('{% extends "default/postfix/main.cf.j2" %}\n'
                            "{% block identity %}{{ super() }}\nno_such_parameter = 1\n"
                            "{% endblock %}\n")
        with pytest.raises(ServiceError, match="no_such_parameter"):
            box.apply(state_for(box, "mail:\n  max_size_mb: 30\n"), comment="broken")
        # Broken Jinja: refused before anything is staged.
        override.write_text("{% block identity %}{{ missing_value }}{% endblock %}\n")
        with pytest.raises(RenderError, match=r"postfix/main\.cf\.j2"):
            box.apply(state_for(box, "mail:\n  max_size_mb: 30\n"), comment="broken")
    finally:
        override.unlink()
    assert store.current() == number
    assert _live_files(box) == live
    assert box.layout.state_file.read_text() == state
    _all_healthy(box)
    before = len(box.sink.messages())
    send_mail(box.layout.ports.smtp)
    box.sink.wait_for(before + 1)


def test_failed_health_check_rolls_back(box: Sandbox) -> None:
    store = _store(box)
    number, live = store.current(), _live_files(box)
    override = box.layout.templates_dir / "redis" / "redis.conf.j2"
    override.parent.mkdir(parents=True, exist_ok=True)
    try:
        # Passes the config check (which binds no TCP port) but cannot start for real:
        # the port belongs to Postfix.
        override.write_text('{% extends "default/redis/redis.conf.j2" %}\n'
                            "{% block port %}port {{ ports.smtp }}{% endblock %}\n")
        with pytest.raises(ServiceError, match="previous configuration is back"):
            box.apply(state_for(box, "mail:\n  max_size_mb: 31\n"), health_timeout=5)
    finally:
        override.unlink()
    assert store.current() == number
    assert _live_files(box) == live
    _all_healthy(box)


def test_moved_rspamd_listener_restarts_rspamd(box: Sandbox) -> None:
    """A fresh appliance's Rspamd runs Debian's proxy worker on localhost:PORT, and the first
    apply moves it to 127.0.0.1:PORT. A SIGHUP cannot take that (the new worker's bind fails
    while the old socket is held, and Rspamd exits): the worker files ask for a restart."""
    proxy = box.layout.path("/etc/rspamd/local.d/worker-proxy.inc")
    ours = proxy.read_text()
    port = box.layout.ports.rspamd_proxy
    proxy.write_text(f'bind_socket = "localhost:{port}";\nmilter = yes;\ncount = 1;\n')
    box.reload("rspamd", restart=True)
    health.wait_healthy("rspamd", box.layout, timeout=120)
    before = box.daemons["rspamd"].process

    result = box.apply(box.layout.state_file.read_text(), comment="our workers", force=True,
                       health_timeout=120)

    assert result.reloaded == ["rspamd"]
    assert [p.name for p in result.changed] == ["worker-proxy.inc"]
    assert proxy.read_text() == ours
    assert box.daemons["rspamd"].process is not before  # restarted, not signalled
    assert box.daemons["rspamd"].running
    _all_healthy(box)


def test_hand_edited_file_is_not_overwritten_silently(box: Sandbox) -> None:
    main_cf = box.layout.path("/etc/postfix/main.cf")
    original = main_cf.read_text()
    main_cf.write_text(original + "# a hand edit\n")
    text = state_for(box, "mail:\n  max_size_mb: 32\n")
    with pytest.raises(LocallyModified, match=r"main\.cf"):
        box.apply(text)
    box.apply(text, force=True)
    assert "# a hand edit" not in main_cf.read_text()
    assert "message_size_limit = 33554432" in main_cf.read_text()


def test_rollback_restores_an_earlier_revision(box: Sandbox) -> None:
    store = _store(box)
    first = store.text(1)
    result = box.rollback(1)
    assert result.revision.comment == "rollback to revision 1"
    assert store.text(result.revision.number) == first
    assert "revision-two" not in _banner(box)
    assert "33554432" not in box.layout.path("/etc/postfix/main.cf").read_text()


def test_second_of_two_racing_writers_gets_a_conflict(box: Sandbox) -> None:
    store = _store(box)
    base = store.current()
    start = threading.Barrier(2)
    outcomes: list[object] = []

    def writer(size: int) -> None:
        start.wait()
        try:
            outcomes.append(box.apply(state_for(box, f"mail:\n  max_size_mb: {size}\n"),
                                      base=base))
        except ConflictError as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in (40, 41)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    conflicts = [o for o in outcomes if isinstance(o, ConflictError)]
    assert len(conflicts) == 1 and len(outcomes) == 2
    assert store.current() == base + 1
    assert f"based on revision {base}" in conflicts[0].message
    assert "max_size_mb" in conflicts[0].message  # it shows what changed meanwhile


def test_malformed_state_reports_ten_errors_and_changes_nothing(box: Sandbox) -> None:
    from mailwarden.errors import StateError

    store = _store(box)
    number, live, state = store.current(), _live_files(box), box.layout.state_file.read_text()
    bad = (Path(__file__).parents[1] / "data/states/invalid/ten_mistakes.yaml").read_text()
    with pytest.raises(StateError) as refused:
        box.apply(bad, comment="ten mistakes")
    assert len(refused.value.errors) == 10
    assert all(e.path and e.line for e in refused.value.errors)
    assert store.current() == number
    assert _live_files(box) == live
    assert box.layout.state_file.read_text() == state
