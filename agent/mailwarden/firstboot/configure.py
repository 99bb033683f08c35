"""Answers -> a configured gateway: one state revision, the host's settings, the set-up marker.

Every front end ends here (seed file, console wizard, web wizard), so a fresh appliance is
configured the same way whichever asked the questions. The state goes through the normal
apply transaction (checked, swapped, probed, rolled back on failure); only after it succeeded
is the host touched and the marker written, so a refused answer leaves the appliance fresh and
the wizard can simply be run again.

Whether the appliance is set up is decided by the marker alone (layout.setup_marker, in a
folder only root writes), never by the stores the agent's users write. The first
administrator is not made here: credentials belong to the API's user, who makes the account
itself (the web wizard), or first boot runs the agent as that user (the seed).
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from typing import Any, Protocol

import yaml

from ..control.apply import ApplyResult, apply_state
from ..control.service import Controller
from ..errors import AlreadySetUp
from ..layout import Layout
from ..state.migrate import migrate
from ..state.revisions import RevisionStore
from ..state.schema import CURRENT_VERSION
from ..store.credentials import admin_exists
from .answers import Answers, NetworkAnswer

ADMIN = "admin"


class Host(Protocol):
    """The operating system's own settings, outside the state file."""

    def set_hostname(self, name: str) -> None: ...
    def set_network(self, network: NetworkAnswer) -> None: ...
    def set_ssh_keys(self, keys: list[str]) -> None: ...
    def set_keyboard(self, keyboard: str) -> None: ...
    def set_timezone(self, timezone: str) -> None: ...


class NullHost:
    """A sandbox: the host is not ours to change."""

    def set_hostname(self, name: str) -> None:
        pass

    def set_network(self, network: NetworkAnswer) -> None:
        pass

    def set_ssh_keys(self, keys: list[str]) -> None:
        pass

    def set_keyboard(self, keyboard: str) -> None:
        pass

    def set_timezone(self, timezone: str) -> None:
        pass

    def ssh_keys(self) -> list[str]:
        return []


@dataclass(frozen=True)
class FirstbootResult:
    applied: ApplyResult
    admin: str


def is_set_up(layout: Layout) -> bool:
    """The marker root writes after the first successful setup; anyone may read it."""
    return os.path.lexists(layout.setup_marker)


def mark_set_up(layout: Layout, how: str) -> None:
    """Write the marker (root on the appliance), by descriptor: never through a link."""
    folder = layout.state_dir
    folder.mkdir(mode=0o750, parents=True, exist_ok=True)
    dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        try:
            fd = os.open(layout.setup_marker.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL
                         | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640, dir_fd=dir_fd)
        except FileExistsError:
            return
        try:
            os.write(fd, f"{how}\n".encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def adopt_earlier_setup(layout: Layout) -> bool:
    """is_set_up, after writing the marker for an appliance set up by a version that had none:
    it has revisions and an administrator (in the shared store of those versions, or in the
    credentials store the API moved them to). Run by root at boot and before every setup."""
    if is_set_up(layout):
        return True
    if RevisionStore(layout.revisions_dir).current() is None:
        return False
    if not (admin_exists(layout.database) or admin_exists(layout.auth_database)):
        return False
    mark_set_up(layout, "set up before this marker existed")
    return True


def _covered(address: str, networks: list[str]) -> bool:
    ip = ipaddress.ip_address(address)
    return any(ip in ipaddress.ip_network(n) for n in networks)


def _trusted(answers: Answers, current: list[str]) -> list[str]:
    """The trusted networks the answers make: theirs (else the current ones) and every
    internal server given as an IP address."""
    trusted = list(answers.trusted_networks or current)
    for answer in answers.domains:
        try:
            ipaddress.ip_address(answer.server)
        except ValueError:
            continue
        if not _covered(answer.server, trusted):
            trusted.append(str(ipaddress.ip_network(answer.server)))
    return trusted


def keep_reachable(answers: Answers, address: str | None) -> Answers:
    """The web wizard's answers, with the browser's address among the networks that reach the
    web UI when the answers name none and the trusted networks do not cover it: the firewall
    the first state renders would otherwise shut out the administrator who just set it up.
    Answers that name management networks are the administrator's choice and stay as given."""
    if not address or answers.management_networks:
        return answers
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return answers
    trusted = _trusted(answers, [])
    if ip.is_loopback or _covered(address, trusted):
        return answers
    return answers.model_copy(
        update={"management_networks": [*trusted, str(ipaddress.ip_network(ip))]})


def state_from_answers(answers: Answers, current: str | None) -> str:
    """The state text: the current one (if any) with the answered settings replaced.

    An internal server given as an IP address is added to the trusted networks, because its
    outbound mail must be relayed; a name is left to the admin, who knows its addresses.
    """
    data: dict[str, Any] = yaml.safe_load(current) if current else {}
    data = data if isinstance(data, dict) else {}
    # The answer file's version numbers the answers, not the state: an earlier state is
    # brought to the current format first, and a new one is written in it.
    data = migrate(data, "the current state") if "version" in data else data
    data["version"] = CURRENT_VERSION
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
    networks["trusted"] = _trusted(answers, list(networks.get("trusted") or []))
    if answers.management_networks:
        networks["management"] = list(answers.management_networks)
    networks["ssh"] = bool(answers.ssh_authorized_keys)
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)


def apply_answers(answers: Answers, *, layout: Layout, controller: Controller, host: Host,
                  author: str = "firstboot") -> FirstbootResult:
    """The state and the host's settings, then the marker. The caller makes the administrator
    (answers.admin) in the credentials store once this returned."""
    if adopt_earlier_setup(layout):
        raise AlreadySetUp("this appliance is set up already; sign in as an administrator")
    store = RevisionStore(layout.revisions_dir)
    base = store.current()
    text = state_from_answers(answers, store.text(base) if base else None)
    applied = apply_state(text, layout=layout, controller=controller, author=author,
                          comment="first-run setup", base=base)
    host.set_hostname(answers.hostname)
    if answers.network is not None:
        host.set_network(answers.network)
    host.set_ssh_keys(list(answers.ssh_authorized_keys))
    if answers.keyboard is not None:
        host.set_keyboard(answers.keyboard)
    if answers.timezone is not None:
        host.set_timezone(answers.timezone)
    mark_set_up(layout, f"{author}, revision {applied.revision.number}")
    return FirstbootResult(applied, ADMIN)
