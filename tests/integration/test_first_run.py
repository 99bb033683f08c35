"""A fresh appliance: nothing but the API runs, its first-run wizard applies the first state
from nothing, and the gateway then relays mail. Real daemons, the real API over HTTPS."""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from mailwarden.firstboot import setupcode
from mailwarden.state.revisions import RevisionStore
from mailwarden_dev.instance import Sandbox

from .conftest import SendMail

pytestmark = pytest.mark.integration


def _call(base: str, method: str, path: str, body: dict[str, Any] | None = None,
          ) -> tuple[int, dict[str, Any]]:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the appliance's own self-signed certificate
    request = urllib.request.Request(  # noqa: S310 - https on loopback
        base + path, method=method, data=json.dumps(body).encode() if body else None,
        headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, context=context,  # noqa: S310 - loopback
                                    timeout=60) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def test_fresh_appliance_is_set_up_by_the_wizard_then_relays(sandbox_root: Path,
                                                             send_mail: SendMail) -> None:
    sandbox = Sandbox(sandbox_root / "fresh", agent_services=True, api=True)
    sandbox.start(None)
    try:
        assert list(sandbox.daemons) == ["api"]
        assert not sandbox.layout.state_file.exists()
        base = f"https://127.0.0.1:{sandbox.layout.ports.api}"
        assert _call(base, "GET", "/api/setup")[1] == {"needed": True, "code_issued": False}
        answers = {"version": 1, "hostname": "mx.example.test",
                   "admin": {"password": "a long admin password"},
                   "domains": [{"name": "example.test", "server": "127.0.0.1",
                                "port": sandbox.sink.port}]}
        expired = setupcode.issue(sandbox.layout.setup_code,
                                  now=time.time() - setupcode.LIFETIME - 1)
        assert _call(base, "GET", "/api/setup")[1] == {"needed": True, "code_issued": False}
        status, body = _call(base, "POST", "/api/setup",
                             {"setup_code": expired, "answers": answers})
        assert status == 403 and body["error"]["code"] == "setup_code_expired", body
        code = setupcode.issue(sandbox.layout.setup_code)
        status, body = _call(base, "POST", "/api/setup",
                             {"setup_code": code, "answers": answers})
        assert status == 201, body
        assert body["revision"] == 1 and body["username"] == "admin"
        store = RevisionStore(sandbox.layout.revisions_dir)
        assert store.get(1).author == "setup wizard"
        assert _call(base, "GET", "/api/setup")[1]["needed"] is False

        sandbox.start_remaining()
        marker = send_mail(sandbox.layout.ports.smtp)
        [delivered] = sandbox.sink.wait_for_marker(marker)
        assert b"X-Mailwarden:" in delivered
    finally:
        sandbox.stop()
