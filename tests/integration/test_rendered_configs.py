"""Rendered configs pass the daemons' own checkers (postfix check, postconf, postmap,
rspamadm configtest, clamconf, unbound-checkconf, redis-server), and broken ones do not."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mailwarden.control.checks import (
    CHECKERS,
    check_clamav,
    check_postfix,
    check_redis,
    check_rspamd,
    check_unbound,
    staged,
)
from mailwarden.errors import ServiceError
from mailwarden.layout import Layout, sandbox
from mailwarden.render.configs import SERVICES, render
from mailwarden.state.load import load_state_file
from mailwarden_dev.instance import make_runtime_dirs

pytestmark = pytest.mark.integration

STATES = Path(__file__).parent.parent / "data" / "states"
FIXTURES = sorted(p.stem for p in STATES.glob("*.yaml"))
ROOT_KEY = Path("/usr/share/dns/root.key")  # Debian's dns-root-data, a dependency of unbound


def _prepare(layout: Layout) -> None:
    """The folders the rendered configs point at, owned as the daemons expect."""
    make_runtime_dirs(layout)
    # Unbound's DNSSEC trust anchor, seeded from Debian's dns-root-data as unbound-helper
    # does before the first start (unbound-checkconf insists that it exists).
    anchor = layout.path("/var/lib/unbound/root.key")
    shutil.copyfile(ROOT_KEY, anchor)
    shutil.chown(anchor, user=layout.users.unbound)


@pytest.fixture(scope="module")
def root() -> Iterator[Path]:
    # Not tmp_path (0700): clamconf and unbound-checkconf drop privileges and must get in.
    folder = Path(tempfile.mkdtemp(prefix="mw-configs-", dir="/tmp"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def layout(root: Path) -> Layout:
    result = sandbox(root / "sandbox")
    _prepare(result)
    return result


def stage_for(fixture: str, layout: Layout, name: str) -> Path:
    """A staging folder holding the rendered files, as apply builds it."""
    stage = layout.staging_dir / name
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir()
    stage.chmod(0o755)
    state = load_state_file(STATES / f"{fixture}.yaml")
    for f in render(state, layout):
        target = stage / f.path.relative_to(layout.root)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.parent.chmod(0o755)
        target.write_text(f.content)
        target.chmod(f.target.mode)
    return stage


def test_every_service_has_a_checker() -> None:
    assert set(SERVICES) <= set(CHECKERS)


@pytest.mark.parametrize("service", sorted(CHECKERS))
@pytest.mark.parametrize("fixture", FIXTURES)
def test_fixture_passes_the_checker(fixture: str, service: str, layout: Layout) -> None:
    stage = stage_for(fixture, layout, f"{fixture}-{service}")
    CHECKERS[service](stage, layout)


# --- broken configs are refused ---------------------------------------------------------


def _append(stage: Path, layout: Layout, absolute: str, text: str) -> None:
    path = staged(stage, layout, absolute)
    path.write_text(path.read_text() + text)


def _refused(checker: Callable[[Path, Layout], None], stage: Path, layout: Layout) -> str:
    with pytest.raises(ServiceError) as caught:
        checker(stage, layout)
    return str(caught.value)


def test_bogus_postfix_parameter(layout: Layout) -> None:
    stage = stage_for("minimal", layout, "bad-postfix")
    _append(stage, layout, "/etc/postfix/main.cf", "mailwarden_bogus_parameter = 1\n")
    assert "mailwarden_bogus_parameter" in _refused(check_postfix, stage, layout)


def test_bogus_postfix_master_entry(layout: Layout) -> None:
    stage = stage_for("minimal", layout, "bad-master")
    _append(stage, layout, "/etc/postfix/master.cf", "broken unix - -\n")
    assert "bad field count" in _refused(check_postfix, stage, layout)


def test_broken_postfix_cidr_map(layout: Layout) -> None:
    stage = stage_for("minimal", layout, "bad-cidr")
    _append(stage, layout, "/etc/postfix/mailwarden/postscreen_access.cidr",
            "300.1.2.3/8 permit\n")
    assert "postscreen_access.cidr" in _refused(check_postfix, stage, layout)


def test_bogus_clamd_option(layout: Layout) -> None:
    stage = stage_for("minimal", layout, "bad-clamd")
    _append(stage, layout, "/etc/clamav/clamd.conf", "MailwardenBogusOption yes\n")
    assert "MailwardenBogusOption" in _refused(check_clamav, stage, layout)


def test_broken_unbound_conf(layout: Layout) -> None:
    stage = stage_for("minimal", layout, "bad-unbound")
    _append(stage, layout, "/etc/unbound/unbound.conf", "server:\n    no-such-option: yes\n")
    assert "unknown keyword 'no-such-option'" in _refused(check_unbound, stage, layout)


def test_broken_redis_conf(layout: Layout) -> None:
    stage = stage_for("minimal", layout, "bad-redis")
    _append(stage, layout, "/etc/redis/redis.conf", "mailwarden-bogus-directive yes\n")
    assert "mailwarden-bogus-directive" in _refused(check_redis, stage, layout)


def test_broken_rspamd_ucl(layout: Layout) -> None:
    stage = stage_for("minimal", layout, "bad-rspamd")
    _append(stage, layout, "/etc/rspamd/local.d/options.inc", "dns {\n  nameserver = [\n")
    message = _refused(check_rspamd, stage, layout)
    assert "ucl parser error" in message
    assert "local.d/options.inc" in message
