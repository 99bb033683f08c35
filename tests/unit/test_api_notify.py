"""The notifications' API: settings through /api/settings/notifications (a field error when
one is on with nobody to send it to), a test notification, the report and alert previews."""

from __future__ import annotations

import email
import email.policy

from .api_env import api_env


def test_notification_settings_a_test_and_the_previews() -> None:
    with api_env(users={"admin": "admin", "auditor": "audit"}) as env:
        admin = env.login("admin")
        current = env.client.simulate_get("/api/settings/notifications", headers=admin)
        assert current.status_code == 200
        assert current.json["notifications"]["virus_to_admin"] is False
        revision = current.json["revision"]

        # On, with nobody to send it to: refused with the field, nothing applied.
        refused = env.client.simulate_put(
            "/api/settings/notifications", headers={**admin, "If-Match": f'"{revision}"'},
            json={"notifications": {"daily_report": {"enabled": True}}})
        assert refused.status_code == 400
        assert refused.json["error"]["code"] == "state_invalid"
        (problem,) = refused.json["error"]["errors"]
        assert problem["field"] == "notifications.recipients"
        assert "nobody to send it to" in problem["message"]
        # Nothing to send a test to either.
        nobody = env.client.simulate_post("/api/notifications/test", headers=admin, json={})
        assert nobody.status_code == 400 and nobody.json["error"]["field"] == \
            "notifications.recipients"
        assert env.delivered == []

        changed = env.client.simulate_put(
            "/api/settings/notifications", headers={**admin, "If-Match": f'"{revision}"'},
            json={"notifications": {"recipients": ["ops@example.test"],
                                    "daily_report": {"enabled": True, "time": "06:00"}}})
        assert changed.status_code == 200, changed.text

        sent = env.client.simulate_post("/api/notifications/test", headers=admin, json={})
        assert sent.status_code == 200, sent.text
        assert sent.json["recipients"] == ["ops@example.test"]
        assert "Turned on: daily_report.enabled." in sent.json["text"]
        ((raw, sender, recipients),) = env.delivered
        assert (sender, recipients) == ("postmaster@mx.example.test", ["ops@example.test"])
        message = email.message_from_bytes(raw, policy=email.policy.default)
        assert message["X-Mailwarden-Notification"] == "test"
        audit = env.client.simulate_get("/api/audit", headers=admin).json
        assert any(e["action"] == "notifications.test_sent" for e in audit["items"])

        report = env.client.simulate_get("/api/notifications/report", headers=admin)
        assert report.status_code == 200 and "Daily report of mx.example.test" in \
            report.json["text"]
        alerts = env.client.simulate_get("/api/notifications/alerts", headers=admin)
        assert alerts.status_code == 200
        # No daemon runs in this sandbox: listed, and with service alerts off the mail is
        # only previewed.
        assert alerts.json["conditions"] == ["postfix is not running (stopped)"]
        assert alerts.json["mail"]["kind"] == "alert"
        assert len(env.delivered) == 1  # previews send nothing

        # An auditor reads, but sends no test.
        auditor = env.login("auditor")
        assert env.client.simulate_get("/api/notifications/report",
                                       headers=auditor).status_code == 200
        assert env.client.simulate_post("/api/notifications/test", headers=auditor,
                                         json={}).status_code == 403
