"""Spam learning against the real daemons: a spam quarantined by real Postfix, the filter
and Rspamd, released as ham through the API; a clean message delivered to the sink, its
delivered copy uploaded as spam; Bayes' counts read from the sandbox's Redis before and
after, through the API and the CLI."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from falcon import testing

from mailwarden.api.app import Services, create_app
from mailwarden.cli import main
from mailwarden.control.service import NoController
from mailwarden.mail.learning import Learner
from mailwarden.mail.types import BayesCounts
from mailwarden.state.load import load_state_file
from mailwarden.store.credentials import CredentialStore
from mailwarden.store.db import Database
from mailwarden.store.users import Users
from mailwarden_dev.instance import Sandbox

from .conftest import state_for
from .test_mail_path import EXTRA, build, send, wait_quarantined

pytestmark = pytest.mark.integration
PASSWORD = "correct horse battery"

# Rspamd learns nothing from a message of a few words: these have some sixty.
TEXT = """\
Dear customer, our quarterly newsletter brings the latest catalogue of garden furniture,
outdoor lighting, weatherproof cushions and hand made ceramic planters from our workshop.
Every order placed before the end of the month ships without charge to any address within
the country, and returns stay free for thirty days after delivery. Visit the showroom on
Saturday mornings to see the new collection, meet the craftsmen, and enjoy fresh coffee.
"""


# Rspamd answers {"success": true} to learning a GTUBE message and learns nothing (3.4): the
# spam here is an ordinary message with an all-capitals subject, that symbol weighted up and
# the levels low enough for it to be held (it scores about 5.3; plain mail below 0).
SPAM = """\
  levels: {tag: 3, quarantine: 4, reject: 50}
  symbol_scores:
    - {symbol: SUBJ_ALL_CAPS, score: 30}
"""


@pytest.fixture(scope="module")
def gw(sandbox_root: Path) -> Iterator[Sandbox]:
    sandbox = Sandbox(sandbox_root / "learn", agent_services=True)
    sandbox.start(state_for(sandbox, EXTRA).replace("  fuzzy_check: false\n",
                                                    "  fuzzy_check: false\n" + SPAM))
    yield sandbox
    sandbox.stop()


@pytest.fixture(scope="module")
def api(gw: Sandbox) -> testing.TestClient:
    return testing.TestClient(create_app(Services(gw.layout, Database(gw.layout.database),
                                                  NoController())))


def _login(api: testing.TestClient, gw: Sandbox, name: str, role: str) -> dict[str, str]:
    Users(CredentialStore.for_layout(gw.layout)).add(name, PASSWORD, role)
    session = api.simulate_post("/api/session", json={"username": name, "password": PASSWORD})
    return {"X-CSRF-Token": session.json["csrf_token"],
            "Cookie": f"mw_session={session.cookies['mw_session'].value}"}


def _stat(gw: Sandbox) -> BayesCounts:
    """Straight from Rspamd's Redis, not through the API under test; Rspamd's own /stat
    shows the same figures only after its periodic refresh."""
    return Learner(gw.layout.ports.rspamd_controller, gw.layout.ports.redis,
                   lambda: load_state_file(gw.layout.state_file).spam.bayes).counts()


def test_release_as_ham_raises_the_learned_ham_count(gw: Sandbox, api: testing.TestClient,
                                                     ) -> None:
    user = _login(api, gw, "user@example.test", "quser")
    subject = f"LEARN THIS AS HAM {uuid.uuid4().hex[:8].upper()}"
    send(gw, build(subject, body=TEXT))
    entry = wait_quarantined(gw, subject)
    assert entry.kind == "spam"
    before = _stat(gw)
    released = api.simulate_post(f"/api/quarantine/{entry.id}/release", json={"learn": True},
                                 headers=user)
    assert released.status_code == 200, released.text
    assert released.json == {"learned": {"as": "ham", "result": "learned"},
                             "released": ["user@example.test"]}
    after = _stat(gw)
    assert after.ham == before.ham + 1 and after.spam == before.spam
    gw.sink.wait_for_marker(subject)
    # What the API shows is Rspamd's figure, and the learning is in the audit log.
    admin = _login(api, gw, "learn-admin", "admin")
    status = api.simulate_get("/api/learning", headers=admin).json
    assert status["counts"]["ham"] == after.ham
    assert any(e["action"] == "learn.ham" and e["target"] == entry.id
               and e["actor"] == "user@example.test" for e in status["recent"])


def test_marking_a_delivered_message_as_spam_raises_the_learned_spam_count(
        gw: Sandbox, api: testing.TestClient) -> None:
    admin = _login(api, gw, "spam-admin", "admin")
    subject = f"learn-spam-{uuid.uuid4().hex[:8]}"
    send(gw, build(subject, body=TEXT))
    [delivered] = gw.sink.wait_for_marker(subject)
    before = _stat(gw)
    uploaded = api.simulate_post("/api/learning/spam", body=delivered,
                                 headers={**admin, "Content-Type": "message/rfc822"})
    assert uploaded.status_code == 200, uploaded.text
    assert uploaded.json["learned"] == 1 and uploaded.json["failed"] == 0
    after = _stat(gw)
    assert after.spam == before.spam + 1 and after.ham == before.ham
    assert uploaded.json["counts"]["spam"] == after.spam
    # The same copy again: Rspamd's 208, an answer and not an error; nothing counted twice.
    again = api.simulate_post("/api/learning/spam", body=delivered,
                              headers={**admin, "Content-Type": "message/rfc822"})
    assert again.json["already_learned"] == 1 and _stat(gw).spam == after.spam


def test_a_message_too_short_to_learn_is_refused_by_rspamd_with_a_clear_code(
        gw: Sandbox, api: testing.TestClient) -> None:
    admin = _login(api, gw, "short-admin", "admin")
    before = _stat(gw)
    short = build(f"short-{uuid.uuid4().hex[:8]}", body="hi\n")
    result = api.simulate_post("/api/learning/ham", body=short,
                               headers={**admin, "Content-Type": "message/rfc822"})
    assert result.status_code == 200, result.text
    assert result.json["results"][0]["result"] == "learn_too_few_tokens", result.json
    assert _stat(gw) == before


def test_the_cli_learns_and_shows_the_counts(gw: Sandbox, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    message = tmp_path / "ham.eml"
    message.write_bytes(build(f"cli-{uuid.uuid4().hex[:8]}",
                              body=TEXT.replace("garden", "kitchen")))
    before = _stat(gw)
    root = str(gw.layout.root)
    assert main(["learn", "ham", str(message), "--root", root, "--author", "ops"]) == 0
    assert _stat(gw).ham == before.ham + 1
    capsys.readouterr()
    assert main(["learn", "stats", "--root", root]) == 0
    out = capsys.readouterr().out
    assert f"ham: {before.ham + 1}\n" in out and "bayes: on" in out
