"""The generated OpenAPI document and the typed request bodies behind it."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import falcon
import jsonschema_rs
import pytest
from falcon import testing
from schemathesis.specs.openapi.definitions import OPENAPI_31_VALIDATOR

from mailwarden.api import bodies
from mailwarden.api.app import Services, create_app
from mailwarden.control.service import NoController
from mailwarden.store.credentials import CredentialStore
from mailwarden.store.db import Database
from mailwarden.store.quarantine import Quarantine
from mailwarden.store.users import Users
from mailwarden_dev.instance import Sandbox

from .test_api import PASSWORD, STATE, login

WRITES = ("post", "put", "patch")


@pytest.fixture(scope="module")
def app() -> Iterator[tuple[falcon.App, testing.TestClient, dict[str, str], Quarantine]]:
    root = Path(tempfile.mkdtemp(prefix="mw-doc-", dir="/tmp"))
    root.chmod(0o755)
    sandbox = Sandbox(root / "sb")
    sandbox.prepare(STATE)
    users = Users(CredentialStore.for_layout(sandbox.layout))
    users.add("admin", PASSWORD, "admin")
    db = Database(sandbox.layout.database)
    app = create_app(Services(sandbox.layout, db, NoController()))
    client = testing.TestClient(app)
    yield app, client, login(client), Quarantine(db, sandbox.layout.quarantine_dir)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def document(app) -> dict[str, Any]:
    _, client, _, _ = app
    result = client.simulate_get("/api/openapi.json")
    assert result.status_code == 200
    return result.json


def _served_routes(app: falcon.App) -> dict[str, object]:
    """Every URI template the app routes under /api and /metrics, with its resource (the
    router's own tree). The pages a digest's links open (/ticket/...) are web pages, not API."""
    found: dict[str, object] = {}

    def walk(nodes: list[Any]) -> None:
        for node in nodes:
            if node.resource is not None and not node.uri_template.startswith("/ticket/"):
                found[node.uri_template] = node.resource
            walk(node.children)

    walk(app._router._roots)
    return found


def test_the_document_is_valid_openapi_3_1(document) -> None:
    OPENAPI_31_VALIDATOR.validate(document)  # raises with the first problem
    for name, schema in document["components"]["schemas"].items():
        assert jsonschema_rs.meta.is_valid(schema), name


def test_every_reference_resolves(document) -> None:
    schemas = document["components"]["schemas"]
    refs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                refs.append(node["$ref"])
            assert "x-schema" not in node, "a documented_as marker was left in"
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(document)
    assert refs
    for ref in refs:
        assert ref.startswith("#/components/schemas/") and ref.rsplit("/", 1)[1] in schemas, ref


def test_every_route_and_method_is_documented(app, document) -> None:
    served = _served_routes(app[0])
    assert set(served) >= {"/api/quarantine/digest", "/metrics"}
    assert len(served) == len(document["paths"])
    for resource in served.values():
        methods = set(getattr(resource, "roles", {})) | set(getattr(resource, "public", ()))
        for method in methods:
            assert callable(getattr(resource, f"on_{method.lower()}")), (resource, method)
    documented = sum(len(item) for item in document["paths"].values())
    assert documented >= 40


def test_every_write_documents_its_request_body(document) -> None:
    missing = [f"{method.upper()} {path}" for path, item in document["paths"].items()
               for method, operation in item.items()
               if method in WRITES and "requestBody" not in operation]
    assert not missing
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method not in WRITES:
                continue
            content = operation["requestBody"]["content"]
            if "application/json" not in content:
                # A message to learn from: its bytes, of a documented type and size.
                assert all(c["schema"]["format"] == "binary" and c["schema"]["maxLength"]
                           for c in content.values()), (method, path)
                continue
            schema = content["application/json"]["schema"]
            target = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
            # Unknown keys are errors everywhere, so a typo never passes for a setting.
            assert target.get("additionalProperties") is False, (method, path)


def test_state_bodies_point_at_the_state_schema(document) -> None:
    schemas = document["components"]["schemas"]
    put = schemas["StateChange"]["properties"]["state"]
    assert {"$ref": "#/components/schemas/State"} in put["anyOf"]
    domains = schemas["Sections"]["properties"]["domains"]
    assert domains["items"] == {"$ref": "#/components/schemas/RelayDomain"}
    setup = schemas["Setup"]["properties"]["answers"]
    assert setup == {"$ref": "#/components/schemas/Answers"}
    section = document["paths"]["/api/settings/{section}"]["put"]["parameters"][0]
    assert "domains" in section["schema"]["enum"]


def test_replies_are_described(document) -> None:
    get = document["paths"]["/api/state"]["get"]["responses"]["200"]
    assert get["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/StateView"}
    created = document["paths"]["/api/users"]["post"]["responses"]
    assert "201" in created and "200" not in created
    assert "204" in document["paths"]["/api/users/{username}"]["delete"]["responses"]
    raw = document["paths"]["/api/quarantine/{entry_id}/raw"]["get"]["responses"]["200"]
    assert list(raw["content"]) == ["message/rfc822"]


# --- request bodies through the API -------------------------------------------------------


def test_wrong_types_are_refused_not_coerced(app) -> None:
    _, client, headers, _ = app
    for revision in ("1", True, 1.0, 0):
        result = client.simulate_post("/api/state/rollback", json={"revision": revision},
                                      headers={**headers, "If-Match": '"1"'})
        assert result.status_code == 400, revision
        assert result.json["error"]["code"] == "bad_input"
        assert result.json["error"]["field"] == "revision"


def test_unknown_keys_are_refused_with_a_hint(app) -> None:
    _, client, headers, _ = app
    result = client.simulate_post("/api/users", headers=headers, json={
        "username": "x", "password": PASSWORD, "role": "audit", "passwrod": "?"})
    error = result.json["error"]
    assert result.status_code == 400 and error["field"] == "passwrod"
    assert "did you mean 'password'" in error["message"]


def test_every_wrong_field_is_listed(app) -> None:
    _, client, headers, _ = app
    result = client.simulate_post("/api/tokens", headers=headers,
                                  json={"role": "root", "expires_days": 366})
    error = result.json["error"]
    assert result.status_code == 400 and error["code"] == "bad_input"
    fields = {e["field"] for e in error["errors"]}
    assert fields == {"name", "role", "expires_days"}
    assert {"field": "name", "message": "name is required"} in error["errors"]


@pytest.mark.parametrize("payload", [None, [], "text", 3])
def test_a_body_must_be_an_object(app, payload) -> None:
    _, client, headers, _ = app
    result = client.simulate_post("/api/rules/simulate", headers=headers, json=payload)
    assert result.status_code == 400
    assert result.json["error"] == {"code": "bad_input", "field": None,
                                    "message": "the request body must be a JSON object"}


def test_optional_bodies_may_be_left_out(app) -> None:
    _, client, headers, _ = app
    result = client.simulate_post("/api/session/totp", headers=headers)
    assert result.status_code == 200 and result.json["secret"]
    extra = client.simulate_post("/api/session/totp", headers=headers, json={"secert": "x"})
    assert extra.status_code == 400 and extra.json["error"]["field"] == "secert"


def test_settings_take_the_named_section_only(app) -> None:
    _, client, headers, _ = app
    current = client.simulate_get("/api/settings/spam", headers=headers).json
    match = {**headers, "If-Match": f'"{current["revision"]}"'}
    other = client.simulate_put("/api/settings/spam", headers=match,
                                json={"spam": current["spam"], "virus": {}})
    assert other.status_code == 400 and other.json["error"]["field"] == "virus"
    missing = client.simulate_put("/api/settings/spam", headers=match, json={"comment": "x"})
    assert missing.status_code == 400 and missing.json["error"]["field"] == "spam"


def test_simulation_body_uses_the_wire_names() -> None:
    body = bodies.Simulation.model_validate({"message": "Subject: x\r\n\r\nhi",
                                             "to": ["a@example.test"], "from": "b@example.org"})
    assert body.sender == "b@example.org" and body.score is None
    assert bodies.Simulation.model_validate(
        {"message": "x", "to": ["a@example.test"], "score": 12}).score == 12.0


def test_a_handled_message_is_404_as_json_not_a_server_error(app) -> None:
    _, client, headers, quarantine = app
    entry = quarantine.put(b"Subject: x\r\n\r\nx", kind="spam", sender="s@sender.test",
                           recipients=["user@example.test"], lifetime_days=7)
    assert client.simulate_get(f"/api/quarantine/{entry}/raw",
                               headers=headers).status_code == 200
    deleted = client.simulate_post(f"/api/quarantine/{entry}/delete", headers=headers)
    assert deleted.status_code == 200
    for view in ("raw", "preview"):
        result = client.simulate_get(f"/api/quarantine/{entry}/{view}", headers=headers)
        assert result.status_code == 404, result.text
        assert result.headers["content-type"] == "application/json"
        assert "released or deleted" in result.json["error"]["message"]


def test_odd_keys_and_values_get_400_not_a_server_error(app) -> None:
    _, client, headers, _ = app
    # A key like a pydantic location tag; a value with no UTF-8 form, echoed in the message.
    result = client.simulate_post("/api/users", headers={
        **headers, "Content-Type": "application/json"},
        body=b'{"password": "correct horse battery", "a[b": 1}')
    assert result.status_code == 400, result.text
    assert result.json["error"]["code"] == "bad_input"
    # Text with no UTF-8 form (a lone surrogate from a JSON escape) goes out escaped.
    handler = app[0].resp_options.media_handlers["application/json"]
    assert handler.serialize({"field": "\udabb"}, "application/json") == b'{"field": "\\udabb"}'
