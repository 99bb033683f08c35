"""/api/settings/{section}: each section of the state, read and replaced on its own.

One resource serves every section of the schema (system, domains, spam, ...), so a new
setting is in the API the moment it is in the schema. A change is a full apply transaction
with If-Match, exactly like PUT /api/state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import falcon
import yaml

from ..state.load import parse_yaml, validate_data
from ..state.migrate import migrate
from ..state.revisions import RevisionStore
from ..store.users import Audit
from . import replies
from .bodies import SECTIONS, SettingsChange, accepts
from .errors import BadInput
from .replies import returns
from .resources import ADMIN, READERS, Applier, _base_revision


@dataclass
class SettingsResource:
    store: RevisionStore
    apply: Applier
    audit: Audit
    roles = {"GET": READERS, "PUT": ADMIN}

    def _live(self) -> tuple[int, dict[str, Any]]:
        current = self.store.current()
        if current is None:
            raise falcon.HTTPNotFound(title="Not Found", description="no state applied yet")
        # Migrated, so that a section sent in the current format meets data in that format.
        data = migrate(parse_yaml(self.store.text(current), "live state")[0], "live state")
        return current, data

    def on_get(self, req: falcon.Request, resp: falcon.Response, section: str) -> None:
        if section not in SECTIONS:
            raise falcon.HTTPNotFound(title="Not Found", description=f"no section '{section}'")
        current, data = self._live()
        state = validate_data(data, source="live state")
        resp.etag = f'"{current}"'
        resp.media = {"revision": current,
                      section: state.model_dump(mode="json", by_alias=True)[section]}

    @returns(replies.Applied)
    @accepts(SettingsChange)
    def on_put(self, req: falcon.Request, resp: falcon.Response, body: SettingsChange,
               section: str) -> None:
        if section not in SECTIONS:
            raise falcon.HTTPNotFound(title="Not Found", description=f"no section '{section}'")
        base = _base_revision(req)
        sent = body.sent()
        comment = sent.pop("comment", None) or f"{section} changed"
        if section not in sent:
            raise BadInput(f"send {{\"{section}\": ...}}", section)
        others = [name for name in sent if name != section]
        if others:
            raise BadInput(f"only the section '{section}' belongs here", others[0])
        _, data = self._live()
        data[section] = sent[section]
        validate_data(data, source="state")  # errors name e.g. domains[0].transport.port
        text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
        user = req.context.user
        result = self.apply(text, user.username, comment, base)
        self.audit.record(user.username, f"settings.{section}",
                          f"revision {result.revision.number}", {"comment": comment},
                          req.remote_addr)
        resp.etag = f'"{result.revision.number}"'
        resp.media = {"revision": result.revision.number, "reloaded": result.reloaded}
