"""schemathesis against the live API (gunicorn, HTTPS, real store and state): no 5xx, and
every response as the OpenAPI document says."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mailwarden.control import health
from mailwarden.store.credentials import CredentialStore
from mailwarden.store.db import Database
from mailwarden.store.quarantine import Quarantine
from mailwarden.store.users import Users
from mailwarden_dev.instance import Sandbox

from .conftest import state_for

pytestmark = pytest.mark.integration
SUMMARY = Path(os.environ.get("MAILWARDEN_SCHEMATHESIS_SUMMARY", "/tmp/mw-schemathesis.txt"))


def _config(path: Path, values: dict[str, dict[str, object]]) -> Path:
    """A schemathesis configuration that names real objects for some path parameters, so
    those operations reach their logic instead of answering 404 to random ids."""
    lines = []
    for operation, parameters in values.items():
        pairs = ", ".join(f"{name} = {json.dumps(value)}" for name, value in parameters.items())
        lines += ["[[operations]]", f"include-path = {json.dumps(operation)}",
                  f"parameters = {{ {pairs} }}", ""]
    path.write_text("\n".join(lines))
    return path


def test_schemathesis_finds_no_server_errors(sandbox_root: Path) -> None:
    sandbox = Sandbox(sandbox_root / "st", api=True)
    sandbox.start(state_for(sandbox))
    try:
        health.api(sandbox.layout)
        users = Users(CredentialStore.for_layout(sandbox.layout))
        owner = users.add("schemathesis", "correct horse battery", "admin")
        _, token = users.create_token("schemathesis", "admin", owner)
        # Things for the destructive operations to act on, so that none is left out and
        # none destroys the run's own credential: a token and a user to revoke and delete,
        # quarantined messages to release, delete, allow and block.
        spare, _ = users.create_token("spare", "audit", owner)
        users.add("spare-user", "correct horse battery", "helpdesk")
        quarantine = Quarantine(Database(sandbox.layout.database), sandbox.layout.quarantine_dir)
        entry = quarantine.put(b"Subject: held\r\n\r\nheld", kind="spam",
                               sender="s@sender.test", recipients=["user@example.test"],
                               lifetime_days=7, subject="held")
        config = _config(sandbox_root / "schemathesis.toml", {
            "/api/tokens/{token_id}": {"token_id": spare},
            "/api/users/{username}": {"username": "spare-user"},
            "/api/quarantine/{entry_id}": {"entry_id": entry},
            "/api/quarantine/{entry_id}/raw": {"entry_id": entry},
            "/api/quarantine/{entry_id}/preview": {"entry_id": entry},
            "/api/quarantine/{entry_id}/{action}": {"entry_id": entry},
        })
        base = f"https://127.0.0.1:{sandbox.layout.ports.api}"
        result = subprocess.run(
            [str(Path(sys.executable).parent / "schemathesis"), "--config-file", str(config),
             "run", f"{base}/api/openapi.json", "--url", base, "--tls-verify", "false",
             "-H", f"Authorization: Bearer {token}",
             "--checks", "not_a_server_error,status_code_conformance,"
                         "content_type_conformance,response_schema_conformance",
             "--max-examples", "25", "--no-color",
             *([f"--seed={os.environ['MAILWARDEN_SCHEMATHESIS_SEED']}"]
               if os.environ.get("MAILWARDEN_SCHEMATHESIS_SEED") else [])],
            capture_output=True, text=True, timeout=900, check=False)
        SUMMARY.write_text(result.stdout[-6000:])
        print(result.stdout[-3000:])
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
        # Every operation of the document, none excluded.
        selected = re.search(r"Operations:\s+(\d+) selected / (\d+) total", result.stdout)
        assert selected and selected[1] == selected[2], result.stdout[:2000]
    finally:
        sandbox.stop()
