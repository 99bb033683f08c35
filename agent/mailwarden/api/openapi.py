"""The OpenAPI 3.1 document, generated from the routes: each resource's methods and roles,
the request body model `@accepts` puts on a responder (bodies.py), the reply `@returns` names
(replies.py), and the state schema. Nothing in it is kept by hand but the one-line
summaries."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode

from .. import __version__
from ..firstboot.answers import Answers
from ..mail.learning import KINDS as LEARN_KINDS
from ..state.schema import State
from . import replies
from .bodies import SECTIONS, raw_body, request_body
from .quarantine import ACTIONS
from .replies import returned
from .system import QUEUE_ID

REF = "#/components/schemas/{model}"

_DESCRIPTIONS = {
    "/api/openapi.json": "This document.",
    "/metrics": "Prometheus metrics: mail by direction and outcome, filter time, quarantine "
                "and queue sizes (an API token, or a management network).",
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
    "/api/users/{username}/addresses": "A quarantine user's aliases: add (POST) or remove "
    "(DELETE) an address; their quarantine and lists then cover it.",
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
    "/api/portal/link": "Send a quarantine login link to an address (the portal's front "
    "page); the same answer whether or not one went out; throttled.",
    "/api/lists": "Sender allow and block lists per recipient: list (?recipient=&q=&kind=), "
    "add or change (POST), remove (DELETE). A quarantine user's are their own.",
    "/api/lists/global": "Sender allow and block lists for every recipient (a recipient's "
    "own entry comes first): list (?q=&kind=), add or change (POST; admin, qmanager), "
    "remove (DELETE).",
    "/api/quarantine/digest": "One recipient's quarantine digest: what it would list now "
    "(GET ?address=), or send it now (POST).",
    "/api/notifications/test": "Send a test notification to the notification recipients now.",
    "/api/notifications/report": "The administrators' daily report as it would go out now "
    "(nothing sent).",
    "/api/notifications/alerts": "Every service alert condition now, and the mail the next "
    "run would send for those not mailed yet (nothing sent, nothing recorded).",
    "/api/quarantine/{entry_id}/preview": "Headers, text and sanitised HTML (?format=html: a "
    "page for a sandboxed frame, with a strict Content-Security-Policy).",
    "/api/quarantine/{entry_id}/raw": "The message as received (message/rfc822).",
    "/api/quarantine/{entry_id}/{action}": "release (with learn: as not spam too), delete, "
    "allow or block the sender, or spam: learn it as spam (with delete: and delete it).",
    # --- learning ---
    "/api/learning": "What Rspamd's Bayes has learned (spam and ham counts, its settings) "
    "and the latest learning actions from the audit log.",
    "/api/learning/{kind}": "Learn uploaded messages as spam or ham: one message "
    "(message/rfc822) or several (application/mbox); a result per message.",
    # --- end of learning ---
}


_CONVERTER = re.compile(r"\{(\w+)(?::(\w+)(?:\(([^)]*)\))?)?\}")
# Path parameters a route accepts only some values of (anything else is a 404).
_PATH_VALUES: dict[str, dict[str, Any]] = {
    "section": {"type": "string", "enum": list(SECTIONS)},
    "action": {"type": "string", "enum": list(ACTIONS)},
    "queue_id": {"type": "string", "pattern": QUEUE_ID.pattern},
    "kind": {"type": "string", "enum": list(LEARN_KINDS)},
}


def _path(template: str) -> tuple[str, list[dict[str, Any]]]:
    """The OpenAPI path of a Falcon route template, and its parameters: the converters'
    types (int, int(min=1)) become the parameters' schemas."""
    params = []
    for match in _CONVERTER.finditer(template):
        name, converter, args = match.groups()
        schema: dict[str, Any] = _PATH_VALUES.get(name, {"type": "string"})
        if converter == "int":
            schema = {"type": "integer"}
            for arg in (args or "").split(","):
                key, _, value = arg.partition("=")
                if key.strip() == "min":
                    schema["minimum"] = int(value)
                elif key.strip() == "max":
                    schema["maximum"] = int(value)
        params.append({"name": name, "in": "path", "required": True, "schema": schema})
    return _CONVERTER.sub(r"{\1}", template), params


def _merge(schemas: dict[str, Any], more: dict[str, Any]) -> None:
    """Adds definitions; two different ones under one name would make a $ref ambiguous."""
    for name, schema in more.items():
        if schemas.get(name, schema) != schema:
            raise ValueError(f"two schemas are called {name}")
        schemas[name] = schema


def _resolve(node: Any, schemas: dict[str, Any]) -> Any:
    """The `documented_as` markers replaced by what they stand for: a $ref to a component,
    or a state section's own schema."""
    if isinstance(node, list):
        return [_resolve(item, schemas) for item in node]
    if not isinstance(node, dict):
        return node
    if "x-schema" in node:
        if "x-section" not in node:
            return {"$ref": REF.format(model=node["x-schema"])}
        section = dict(schemas[node["x-schema"]]["properties"][node["x-section"]])
        section.pop("default", None)  # a default here would say the key may be left out
        return section
    return {key: _resolve(value, schemas) for key, value in node.items()}


def _schema_of(model: type[BaseModel], schemas: dict[str, Any], mode: JsonSchemaMode,
               ) -> dict[str, str]:
    schema = _resolve(model.model_json_schema(by_alias=True, ref_template=REF, mode=mode),
                      schemas)
    _merge(schemas, schema.pop("$defs", {}))
    _merge(schemas, {model.__name__: schema})
    return {"$ref": REF.format(model=model.__name__)}


def _operation(path: str, method: str, resource: Any, params: list[dict[str, Any]],
               schemas: dict[str, Any]) -> dict[str, Any]:
    responder = getattr(resource, f"on_{method.lower()}")
    reply = returned(responder)
    status = reply.status if reply else 204 if method == "DELETE" else 200
    success: dict[str, Any] = {"description": "Done; no content" if status == 204 else "OK"}
    if reply and reply.model is not None:
        success["content"] = {"application/json": {
            "schema": _schema_of(reply.model, schemas, "serialization")}}
    elif reply:
        success["content"] = {media: {"schema": {}} for media in reply.media_types}
    operation: dict[str, Any] = {
        "operationId": f"{method.lower()}{re.sub(r'[^A-Za-z0-9]+', '_', path).rstrip('_')}",
        "summary": _DESCRIPTIONS.get(path, ""),
        "responses": {
            str(status): success,
            "default": {"description": "Error", "content": {"application/json": {
                "schema": _schema_of(replies.Error, schemas, "serialization")}}},
        },
    }
    public = getattr(resource, "public", ())
    if method not in public:
        operation["security"] = [{"session": []}, {"token": []}]
        operation["x-roles"] = list(getattr(resource, "roles", {}).get(method, ()))
    if params:
        operation["parameters"] = params
    body = request_body(responder)
    if body is not None:
        operation["requestBody"] = {"required": body.required, "content": {
            "application/json": {"schema": _schema_of(body.model, schemas, "validation")}}}
    raw = raw_body(responder)
    if raw is not None:
        operation["requestBody"] = {"required": True, "content": {
            media: {"schema": {"type": "string", "format": "binary",
                               "maxLength": raw.max_bytes}} for media in raw.media_types}}
    return operation


def openapi_document(routes: dict[str, Any]) -> dict[str, Any]:
    """The document for `routes` (template -> resource): every method a resource serves,
    its path parameters, request body and reply, from the resource itself."""
    schemas: dict[str, Any] = {}
    for model in (State, Answers):  # what documented_as() markers point at
        _schema_of(model, schemas, "validation")
    paths: dict[str, Any] = {}
    for template, resource in routes.items():
        path, params = _path(template)
        methods = set(getattr(resource, "roles", {})) | set(getattr(resource, "public", ()))
        paths[path] = {method.lower(): _operation(path, method, resource, params, schemas)
                       for method in sorted(methods)}
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
