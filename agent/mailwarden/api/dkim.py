"""DKIM keys through the API: generate one, and show the DNS records to publish."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import falcon

from ..layout import Layout
from ..mail.dkim import DkimError, generate_key, public_record
from ..state.load import load_state_file
from ..store.users import Audit
from .bodies import NewDkimKey, accepts
from .errors import BadInput
from .replies import returns

ADMIN = ("admin",)


def _info(info: Any) -> dict[str, Any]:
    return {"domain": info.domain, "selector": info.selector, "key": info.key_name,
            "dns_name": info.dns_name, "txt": info.txt, "record": info.record}


@dataclass
class DkimKeysResource:
    layout: Layout
    audit: Audit
    roles = {"GET": ("admin", "audit"), "POST": ADMIN}

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        """The records of the keys the state signs with (missing files reported)."""
        state = load_state_file(self.layout.state_file)
        items = []
        for key in state.dkim.sign:
            try:
                items.append(_info(public_record(self.layout, key)))
            except DkimError as exc:
                items.append({"domain": key.domain, "selector": key.selector, "key": key.key,
                              "error": exc.message})
        resp.media = {"items": items}

    @returns(status=201)
    @accepts(NewDkimKey)
    def on_post(self, req: falcon.Request, resp: falcon.Response, body: NewDkimKey) -> None:
        domain, selector = body.domain, body.selector
        try:
            info = generate_key(self.layout, domain, selector, bits=body.bits)
        except DkimError as exc:
            raise BadInput(exc.message) from None
        self.audit.record(req.context.user.username, "dkim.generate",
                          f"{selector}._domainkey.{domain}", source_ip=req.remote_addr)
        resp.status = falcon.HTTP_201
        resp.media = {**_info(info), "next": "publish the record, then add the key to "
                      "dkim.sign (PUT /api/settings/dkim)"}
