"""Spam learning in the unit tier: the controller client's answers mapped (learned, already
learned, too few words, Bayes off), mbox uploads split, and the API's learning paths (release
as ham, mark as spam, bulk upload, counts) with their audit records and refusals."""

from __future__ import annotations

import asyncio
from contextlib import AbstractContextManager

import pytest

from mailwarden.errors import LearnError, ScannerError
from mailwarden.mail import scanners
from mailwarden.mail.learning import Learner, split_mbox
from mailwarden.state.schema import Bayes

from .api_env import STATE, ApiEnv, api_env
from .fake_rspamd import FakeController, fake_controller, message


def _learner(ports: tuple[int, int], enabled: bool = True) -> Learner:
    return Learner(*ports, lambda: Bayes(enabled=enabled))


def test_learned_already_learned_and_too_few_words_are_told_apart() -> None:
    with fake_controller() as (fake, port, redis):
        learner = _learner((port, redis))
        first = learner.learn(message("a"), "spam")
        assert not first.already
        again = learner.learn(message("a"), "spam")
        assert again.already and "already learned" in again.message
        with pytest.raises(LearnError) as refused:
            learner.learn(message("short", words=3), "ham")
        assert refused.value.code == "learn_too_few_tokens"
        learner.learn(message("a"), "ham")  # relearned as the other class
        counts = learner.counts()
    assert (counts.spam, counts.ham) == (0, 1)
    assert fake.requests.count("POST /learnspam") == 2


def test_bayes_off_is_a_clear_error_and_nothing_is_sent() -> None:
    with fake_controller() as (fake, *ports), pytest.raises(LearnError) as refused:
        _learner((ports[0], ports[1]), enabled=False).learn(message("b"), "spam")
    assert refused.value.code == "bayes_disabled"
    assert "spam.bayes.enabled" in refused.value.message
    assert fake.requests == []


def test_a_controller_or_redis_nobody_runs_is_a_scanner_error() -> None:
    with fake_controller() as (_, port, redis):
        pass
    with pytest.raises(ScannerError, match="cannot reach the controller"):
        _learner((port, redis)).learn(message("c"), "spam")
    with pytest.raises(ScannerError, match="redis: cannot read Bayes' counts"):
        _learner((port, redis)).counts()

    async def other_status() -> None:
        with fake_controller() as (_, live, _redis):
            # Not a learning path: Rspamd's 404 with its {"error"} is passed on.
            request = b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n"
            status, body = await scanners._controller(live, 5, request)
            assert status == 404 and scanners._error_text(body) == "Unknown command"
            scanners.close_pools()

    asyncio.run(other_status())


def test_an_mbox_is_split_into_its_messages_and_from_quoting_undone() -> None:
    mbox = (b"From a@x Mon Dec  7 10:00:00 2026\nSubject: one\n\n>From the start\nbody\n\n"
            b"From b@x Mon Dec  7 10:01:00 2026\nSubject: two\n\nsecond\n")
    assert split_mbox(mbox) == [b"Subject: one\n\nFrom the start\nbody\n",
                                b"Subject: two\n\nsecond\n"]
    single = b"Subject: x\r\n\r\nFrom here on\r\n"
    assert split_mbox(single) == [single]


def _controller(env: ApiEnv) -> AbstractContextManager[tuple[FakeController, int, int]]:
    return fake_controller(env.layout.ports.rspamd_controller, env.layout.ports.redis)


def test_release_as_ham_learns_before_it_releases_and_is_audited() -> None:
    with api_env(users={"admin": "admin", "u@example.test": "quser"}) as env, \
            _controller(env) as (fake, _, _):
        entry_id = env.quarantine.put(message("ham-1"), kind="spam", sender="s@x.test",
                                      recipients=["u@example.test"], lifetime_days=7,
                                      subject="ham-1", spam_score=9.0)
        user = env.login("u@example.test")
        listed = env.client.simulate_get("/api/quarantine", headers=user).json["items"][0]
        assert "spam" in listed["actions"]
        result = env.client.simulate_post(f"/api/quarantine/{entry_id}/release",
                                          json={"learn": True}, headers=user)
        assert result.status_code == 200, result.text
        assert result.json["learned"] == {"as": "ham", "result": "learned"}
        assert result.json["released"] == ["u@example.test"]
        assert fake.counts() == {"spam": 0, "ham": 1}
        assert len(env.delivered) == 1
        admin = env.login("admin")
        status = env.client.simulate_get("/api/learning", headers=admin).json
        assert status["counts"]["ham"] == 1 and status["bayes"]["enabled"] is True
        assert status["recent"][0]["action"] == "learn.ham"
        assert status["recent"][0]["actor"] == "u@example.test"
        assert status["recent"][0]["target"] == entry_id
        assert status["recent"][0]["detail"]["result"] == "learned"


def test_a_message_rspamd_will_not_learn_is_not_released_either() -> None:
    with api_env() as env, _controller(env) as (fake, _, _):
        entry_id = env.quarantine.put(message("tiny", words=3), kind="spam", sender="s@x.test",
                                      recipients=["u@example.test"], lifetime_days=7)
        admin = env.login("admin")
        result = env.client.simulate_post(f"/api/quarantine/{entry_id}/release",
                                          json={"learn": True}, headers=admin)
        assert result.status_code == 422
        assert result.json["error"]["code"] == "learn_too_few_tokens"
        assert env.delivered == []
        assert env.quarantine.get(entry_id).recipients == {"u@example.test": "new"}
        refused = env.client.simulate_get("/api/learning", headers=admin).json["recent"][0]
        assert refused["detail"]["result"] == "learn_too_few_tokens"
        assert fake.counts() == {"spam": 0, "ham": 0}


def test_learning_input_that_does_not_fit_is_bad_input() -> None:
    with api_env() as env, _controller(env):
        virus = env.hold("v", ["u@example.test"], kind="virus")
        spam = env.hold("s", ["u@example.test"])
        admin = env.login("admin")
        for path, body, field in (
                (f"/api/quarantine/{virus}/release", {"learn": True}, "learn"),
                (f"/api/quarantine/{spam}/delete", {"learn": True}, "learn"),
                (f"/api/quarantine/{spam}/release", {"delete": True}, "delete"),
                (f"/api/quarantine/{spam}/release", {"learn": "yes"}, "learn")):
            result = env.client.simulate_post(path, json=body, headers=admin)
            assert result.status_code == 400, (path, body, result.text)
            assert result.json["error"]["field"] == field
        assert env.delivered == []


def test_mark_as_spam_learns_and_deletes_when_asked() -> None:
    with api_env() as env, _controller(env) as (fake, _, _):
        keep = env.quarantine.put(message("keep"), kind="attachment", sender="s@x.test",
                                  recipients=["u@example.test"], lifetime_days=7)
        drop = env.quarantine.put(message("drop"), kind="spam", sender="s@x.test",
                                  recipients=["u@example.test"], lifetime_days=7)
        admin = env.login("admin")
        kept = env.client.simulate_post(f"/api/quarantine/{keep}/spam", headers=admin)
        assert kept.status_code == 200, kept.text
        assert kept.json == {"learned": {"as": "spam", "result": "learned"}}
        assert env.quarantine.get(keep).recipients == {"u@example.test": "new"}
        dropped = env.client.simulate_post(f"/api/quarantine/{drop}/spam",
                                           json={"delete": True}, headers=admin)
        assert dropped.json["deleted"] == ["u@example.test"]
        assert env.quarantine.get(drop).recipients == {"u@example.test": "deleted"}
        again = env.client.simulate_post(f"/api/quarantine/{keep}/spam", headers=admin)
        assert again.json["learned"]["result"] == "already_learned"
        assert fake.counts() == {"spam": 2, "ham": 0}


def test_bulk_upload_learns_each_message_and_reports_each() -> None:
    mbox = b"".join(b"From x@y Mon Dec  7 10:00:00 2026\n" + m.replace(b"\r\n", b"\n") + b"\n"
                    for m in (message("u1"), message("u2", words=3), message("u3")))
    with api_env(users={"admin": "admin", "help": "helpdesk"}) as env, \
            _controller(env) as (fake, _, _):
        admin = env.login("admin")
        result = env.client.simulate_post(
            "/api/learning/spam", body=mbox,
            headers={**admin, "Content-Type": "application/mbox"})
        assert result.status_code == 200, result.text
        report = result.json
        assert (report["messages"], report["learned"], report["failed"]) == (3, 2, 1)
        assert [r["result"] for r in report["results"]] == [
            "learned", "learn_too_few_tokens", "learned"]
        assert report["counts"]["spam"] == 2 == fake.counts()["spam"]
        one = env.client.simulate_post(
            "/api/learning/ham", body=message("u1"),
            headers={**admin, "Content-Type": "message/rfc822"})
        assert one.json["learned"] == 1 and fake.counts() == {"spam": 2, "ham": 1}
        recent = env.client.simulate_get("/api/learning", headers=admin).json["recent"]
        assert [(e["action"], e["target"]) for e in recent[:2]] == [
            ("learn.ham", "1 uploaded"), ("learn.spam", "3 uploaded")]
        assert recent[1]["detail"] == {"result": "partly", "learned": 2,
                                       "already_learned": 0, "failed": 1}
        helpdesk = env.login("help")
        refused = env.client.simulate_post(
            "/api/learning/spam", body=message("u4"),
            headers={**helpdesk, "Content-Type": "message/rfc822"})
        assert refused.status_code == 403
        for content_type, body in (("text/plain", message("u5")), ("message/rfc822", b"  ")):
            bad = env.client.simulate_post("/api/learning/spam", body=body,
                                           headers={**admin, "Content-Type": content_type})
            assert bad.status_code == 400 and bad.json["error"]["code"] == "bad_input"
        assert env.client.simulate_post(
            "/api/learning/eggs", body=message("u6"),
            headers={**admin, "Content-Type": "message/rfc822"}).status_code == 404


def test_bayes_off_refuses_every_way_of_learning() -> None:
    state = STATE + "spam:\n  bayes: {enabled: false}\n"
    with api_env(state) as env, _controller(env) as (fake, _, _):
        spam = env.hold("s", ["u@example.test"])
        admin = env.login("admin")
        for result in (
                env.client.simulate_post(f"/api/quarantine/{spam}/spam", headers=admin),
                env.client.simulate_post(f"/api/quarantine/{spam}/release",
                                         json={"learn": True}, headers=admin),
                env.client.simulate_post("/api/learning/spam", body=message("x"),
                                         headers={**admin,
                                                  "Content-Type": "message/rfc822"})):
            assert result.status_code == 409, result.text
            assert result.json["error"]["code"] == "bayes_disabled"
        assert fake.requests == [] and env.delivered == []
        status = env.client.simulate_get("/api/learning", headers=admin).json
        assert status["bayes"]["enabled"] is False and status["counts"]["spam"] == 0


def test_counts_without_rspamd_are_an_error_in_the_reply_not_a_failure() -> None:
    with api_env() as env:
        status = env.client.simulate_get("/api/learning", headers=env.login("admin"))
        assert status.status_code == 200
        assert status.json["counts"] is None and "cannot read" in status.json["error"]
