"""The OpenAPI 3.1 document, built from the routes and the same pydantic models the
resources validate with, so it cannot drift from them."""

from __future__ import annotations

from typing import Any

from .. import __version__
from ..state.schema import State

ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {
        "type": "object",
        "required": ["code", "message", "field"],
        "properties": {
            "code": {"type": "string"},
            "message": {"type": "string"},
            "field": {"type": ["string", "null"]},
        },
    }},
}

_DESCRIPTIONS = {
    "/api/health": "Liveness of the API process.",
    "/api/session": "Log in (POST), who am I (GET), log out (DELETE).",
    "/api/state": "The live state (GET, with ETag), applying a new one (PUT, If-Match) or "
                  "replacing some of its sections in one revision (PATCH, If-Match).",
    "/api/setup": "First-run wizard: is it needed (GET); set up with the console's one-time "
                  "code (POST); closed once an admin exists.",
    "/api/state/revisions": "Applied revisions, newest first.",
    "/api/state/revisions/{number}": "One revision's state file and metadata.",
    "/api/state/diff": "Unified diff between two revisions (?from=&to=).",
    "/api/state/rollback": "Apply an earlier revision again as a new one (If-Match).",
    "/api/audit": "The audit log: every change and every login.",
    "/api/settings/{section}": "One section of the state (GET), replaced (PUT, If-Match).",
    "/api/statistics": "Mail counts in/out, spam, virus, bytes; hourly, per domain, top lists.",
    "/api/tracking": "Recorded decisions by sender, recipient, queue id, time.",
    "/api/users": "API and web UI users (admin).",
    "/api/users/{username}": "Delete a user, or set a new password (PUT).",
    "/api/tokens": "API tokens: list, create (the secret is shown once).",
    "/api/tokens/{token_id}": "Revoke an API token.",
    "/api/session/totp": "Enrol (POST), confirm (POST with secret+code), remove (DELETE) TOTP.",
    "/api/rules/simulate": "Run a message (raw source + envelope, optional assumed score/virus) "
    "through the rules: which match, why, and what would happen. No side effects.",
    "/api/dkim/keys": "DKIM keys: records to publish (GET), generate a key (POST).",
    "/api/system/services": "Each service probed over its protocol, with its processes.",
    "/api/system/queue": "Postfix's mail queue (GET); flush it (POST).",
    "/api/system/queue/{queue_id}": "Delete one message from the queue.",
    "/api/system/versions": "Versions and ClamAV signature age.",
    "/api/quarantine": "Quarantined mail (?kind=&recipient=&sender=&status=&limit=&offset=).",
    "/api/quarantine/{entry_id}": "One quarantined message's metadata.",
    "/api/quarantine/bulk": "Release or delete many messages; a result per id.",
    "/api/quarantine/{entry_id}/preview": "Headers, text and sanitised HTML (?format=html: a "
    "page for a sandboxed frame, with a strict Content-Security-Policy).",
    "/api/quarantine/{entry_id}/raw": "The message as received (message/rfc822).",
    "/api/quarantine/{entry_id}/{action}": "release, delete, allow or block the sender.",
}


def openapi_document(routes: dict[str, Any]) -> dict[str, Any]:
    schemas: dict[str, Any] = {"Error": ERROR}
    state_schema = State.model_json_schema(by_alias=True,
                                           ref_template="#/components/schemas/{model}")
    schemas.update(state_schema.pop("$defs", {}))
    schemas["State"] = state_schema
    paths: dict[str, Any] = {}
    for template, resource in routes.items():
        path = template.replace("{number:int(min=1)}", "{number}").replace(
            "{token_id:int}", "{token_id}")
        params = [p.strip("{}") for p in path.split("/") if p.startswith("{")]
        item: dict[str, Any] = {}
        public = getattr(resource, "public", ())
        methods = set(getattr(resource, "roles", {})) | set(public)
        for method in sorted(methods):
            operation: dict[str, Any] = {
                "summary": _DESCRIPTIONS.get(path, ""),
                "responses": {
                    **({"204": {"description": "Done; no content"}} if method == "DELETE"
                       else {"200": {"description": "OK"}}),
                    "default": {"description": "Error",
                                "content": {"application/json": {
                                    "schema": {"$ref": "#/components/schemas/Error"}}}},
                },
            }
            if method not in public:
                roles = getattr(resource, "roles", {}).get(method, ())
                operation["security"] = [{"session": []}, {"token": []}]
                operation["x-roles"] = list(roles)
            if params:
                operation["parameters"] = [
                    {"name": name, "in": "path", "required": True,
                     "schema": {"type": "integer", "minimum": 1}
                     if name in ("number", "token_id") else {"type": "string"}}
                    for name in params]
            if path == "/api/state" and method == "PUT":
                operation["requestBody"] = {"required": True, "content": {"application/json": {
                    "schema": {"type": "object", "properties": {
                        "state": {"$ref": "#/components/schemas/State"},
                        "yaml": {"type": "string"},
                        "comment": {"type": "string"}}}}}}
            if path == "/api/state" and method == "PATCH":
                operation["requestBody"] = {"required": True, "content": {"application/json": {
                    "schema": {"type": "object", "required": ["sections"], "properties": {
                        "sections": {"type": "object", "minProperties": 1, "description":
                                     "Top-level sections of State to replace, by name."},
                        "comment": {"type": "string"}}}}}}
            item[method.lower()] = operation
        paths[path] = item
    return {
        "openapi": "3.1.0",
        "info": {"title": "Mailwarden API", "version": __version__},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "session": {"type": "apiKey", "in": "cookie", "name": "mw_session"},
                "token": {"type": "http", "scheme": "bearer"},
            },
        },
    }
