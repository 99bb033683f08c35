"""Answers -> a configured gateway: one state revision, the first admin, the host's settings.

Every front end ends here (seed file, console wizard, web wizard), so a fresh appliance is
configured the same way whichever asked the questions. The state goes through the normal
apply transaction (checked, swapped, probed, rolled back on failure); only after it succeeded
is the admin created and the host touched, so a refused answer leaves the appliance fresh and
the wizard can simply be run again.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, Protocol

import yaml

from ..errors import MailwardenError
from ..render.apply import ApplyResult, Controller, apply_state
from ..render.layout import Layout
from ..state.revisions import RevisionStore
from ..store.db import Database
from ..store.users import Users, hash_password
from .answers import Answers, NetworkAnswer

ADMIN = "admin"


class AlreadySetUp(MailwardenError):
    """An administrator exists: first-boot answers are not taken any more."""

    code = "already_set_up"


class Host(Protocol):
    """The operating system's own settings, outside the state file."""

    def set_hostname(self, name: str) -> None: ...
    def set_network(self, network: NetworkAnswer) -> None: ...
    def set_ssh_keys(self, keys: list[str]) -> None: ...


class NullHost:
    """A sandbox: the host is not ours to change."""

    def set_hostname(self, name: str) -> None:
        pass

    def set_network(self, network: NetworkAnswer) -> None:
        pass

    def set_ssh_keys(self, keys: list[str]) -> None:
        pass


@dataclass(frozen=True)
class FirstbootResult:
    applied: ApplyResult
    admin: str


def is_set_up(db: Database) -> bool:
    return Users(db).count(ADMIN) > 0


def _covered(address: str, networks: list[str]) -> bool:
    ip = ipaddress.ip_address(address)
    return any(ip in ipaddress.ip_network(n) for n in networks)


def state_from_answers(answers: Answers, current: str | None) -> str:
    """The state text: the current one (if any) with the answered settings replaced.

    An internal server given as an IP address is added to the trusted networks, because its
    outbound mail must be relayed; a name is left to the admin, who knows its addresses.
    """
    data: dict[str, Any] = yaml.safe_load(current) if current else {}
    data = data if isinstance(data, dict) else {}
    data["version"] = answers.version
    data.setdefault("system", {})["hostname"] = answers.hostname

    known = {d.get("name"): d for d in data.get("domains") or [] if isinstance(d, dict)}
    domains = []
    for answer in answers.domains:
        entry = dict(known.get(answer.name) or {"name": answer.name})
        transport = dict(entry.get("transport") or {})
        transport.update(host=answer.server, port=answer.port)
        entry["transport"] = transport
        domains.append(entry)
    data["domains"] = domains

    networks = data.setdefault("networks", {})
    trusted = list(answers.trusted_networks or networks.get("trusted") or [])
    for answer in answers.domains:
        try:
            ipaddress.ip_address(answer.server)
        except ValueError:
            continue
        if not _covered(answer.server, trusted):
            trusted.append(str(ipaddress.ip_network(answer.server)))
    networks["trusted"] = trusted
    networks["ssh"] = bool(answers.ssh_authorized_keys)
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)


def apply_answers(answers: Answers, *, layout: Layout, controller: Controller, host: Host,
                  db: Database, author: str = "firstboot") -> FirstbootResult:
    users = Users(db)
    if users.count(ADMIN) > 0:
        raise AlreadySetUp("this appliance is set up already; sign in as an administrator")
    store = RevisionStore(layout.revisions_dir)
    base = store.current()
    text = state_from_answers(answers, store.text(base) if base else None)
    applied = apply_state(text, layout=layout, controller=controller, author=author,
                          comment="first-run setup", base=base)
    admin = answers.admin
    password_hash = admin.password_hash or hash_password(admin.password or "")
    users.add_hashed(ADMIN, password_hash, "admin")
    host.set_hostname(answers.hostname)
    if answers.network is not None:
        host.set_network(answers.network)
    host.set_ssh_keys(list(answers.ssh_authorized_keys))
    return FirstbootResult(applied, ADMIN)
