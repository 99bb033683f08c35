"""System endpoints against a running sandbox: probes, the real queue, versions."""

from __future__ import annotations

import pytest
from falcon import testing

from mailwarden.api.app import Services, create_app
from mailwarden.control.service import NoController
from mailwarden.store.credentials import CredentialStore
from mailwarden.store.db import Database
from mailwarden.store.users import Users
from mailwarden_dev.instance import Sandbox

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def client(gateway: Sandbox) -> tuple[testing.TestClient, dict[str, str]]:
    db = Database(gateway.layout.database)
    users = Users(CredentialStore.for_layout(gateway.layout))
    _, secret = users.create_token("test", "admin",
                                   users.add("system-tester", "correct horse battery", "admin"))
    app = create_app(Services(gateway.layout, db, NoController()))
    return testing.TestClient(app), {"Authorization": f"Bearer {secret}"}


def test_services_are_probed(client, gateway: Sandbox) -> None:
    api, headers = client
    items = {i["name"]: i for i in api.simulate_get("/api/system/services",
                                                     headers=headers).json["items"]}
    for name in gateway.services:
        assert items[name]["healthy"], items[name]
        assert items[name]["processes"], f"no process found for {name}"
    assert not items["filter"]["healthy"]  # this sandbox runs without the agent's filter


def test_queue_and_versions(client) -> None:
    api, headers = client
    queue = api.simulate_get("/api/system/queue", headers=headers)
    assert queue.status_code == 200 and queue.json["count"] == len(queue.json["items"])
    assert api.simulate_post("/api/system/queue", headers=headers).json == {"flushed": True}
    missing = api.simulate_delete("/api/system/queue/ABCDEF123", headers=headers)
    assert missing.status_code == 404
    assert api.simulate_delete("/api/system/queue/..%2F", headers=headers).status_code in (
        400, 404)
    versions = api.simulate_get("/api/system/versions", headers=headers).json
    assert versions["postfix"].startswith("3.")
    assert versions["signature_files"] == ["mailwarden-test.hdb"]
    assert versions["signature_age_hours"] is not None


def test_metrics_need_a_token_or_a_management_network(client) -> None:
    api, headers = client
    refused = api.simulate_get("/metrics", remote_addr="203.0.113.9")
    assert refused.status_code == 401
    ok = api.simulate_get("/metrics", headers=headers, remote_addr="203.0.113.9")
    assert ok.status_code == 200
    assert "mailwarden_queue_messages" in ok.text
    trusted = api.simulate_get("/metrics", remote_addr="10.20.1.1")  # state: trusted 10.20/16
    assert trusted.status_code == 200
