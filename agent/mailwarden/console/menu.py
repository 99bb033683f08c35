"""The console once the appliance is set up: a numbered menu, as appliances have.

Every change it makes is a revision authored `console` (system.record_event): the state's
own changes (SSH) as a new state, the others (network, admin password) as the live state
applied again with a comment saying what changed, so that the history shows them all.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml

from ..control.service import Controller
from ..errors import MailwardenError, StateError
from ..firstboot.answers import NetworkAnswer, validate_answers
from ..firstboot.boot import default_address
from ..firstboot.configure import adopt_earlier_setup
from ..layout import Layout
from ..process import run
from ..state.revisions import RevisionStore
from .system import (
    ConsoleHost,
    current_state,
    factory_reset,
    fingerprint,
    interfaces,
    record_event,
    reset_admin_password,
    service_health,
    set_ssh,
    ssh_enabled,
    web_url,
)
from .terminal import Terminal, uninterrupted
from .wizard import Wizard, checker


@dataclass
class Menu:
    term: Terminal
    layout: Layout
    controller: Controller
    host: ConsoleHost
    live: bool
    sys_net: Any = None

    def entries(self) -> list[tuple[str, Callable[[], None]]]:
        ssh = "Disable SSH" if self._ssh() else "Enable SSH"
        return [("Addresses and web interface", self.addresses),
                ("Service health", self.health),
                ("Reconfigure the network", self.network),
                ("Reset the admin password", self.password),
                (ssh, self.ssh),
                ("Factory reset", self.reset),
                ("Shell (root login)", self.shell),
                ("Reboot", self.reboot),
                ("Shut down", self.shutdown)]

    def _ssh(self) -> bool:
        try:
            return ssh_enabled(self.layout)
        except MailwardenError:
            return False

    def run_once(self) -> bool:
        """One round: the header, the menu, one choice. False once the appliance is no
        longer set up (a factory reset): back to the wizard."""
        entries = self.entries()
        self.header()
        for number, (title, _) in enumerate(entries, 1):
            self.term.say(f"  {number}) {title}")
        self.term.mark("menu")
        answer = self.term.ask("choice", "Choice", None,
                               lambda a: None if a.isdigit() and 1 <= int(a) <= len(entries)
                               else f"answer a number from 1 to {len(entries)}")
        title, action = entries[int(answer) - 1]
        self.term.say(f"-- {title}")
        try:
            action()
        except StateError as exc:
            self.term.mark(f"failed: [{exc.code}] {exc.source}: {len(exc.errors)} error(s)")
            for error in exc.errors:
                self.term.say(f"  {error}")
        except MailwardenError as exc:
            self.term.mark(f"failed: [{exc.code}] {exc.message.splitlines()[0]}")
        return adopt_earlier_setup(self.layout)

    def header(self) -> None:
        store = RevisionStore(self.layout.revisions_dir)
        try:
            name = self._hostname(current_state(self.layout)[1])
        except MailwardenError:
            name = socket.getfqdn()
        self.term.say()
        self.term.say(f"Mailwarden {name}   revision {store.current() or '-'}")
        self.term.say(f"  Web interface {web_url(self.layout, default_address())}")
        self.term.say(f"  Certificate   SHA-256 {fingerprint(self.layout) or 'not made yet'}")
        self.term.say()

    # --- the entries --------------------------------------------------------------------

    def addresses(self) -> None:
        found = interfaces(self.sys_net) if self.sys_net is not None else interfaces()
        for nic in found:
            self.term.say(f"  {nic.name:<12} {nic.mac:<17} link {nic.link:<8} "
                          f"{' '.join(nic.addresses) or '(no address)'}")
        self.term.say(f"  Web interface {web_url(self.layout, default_address())}")
        self.term.say(f"  Certificate   SHA-256 {fingerprint(self.layout) or 'not made yet'}")

    def health(self) -> None:
        for service, status in service_health(self.layout, self.controller):
            self.term.say(f"  {service:<10} {status}")
        self.term.mark("health shown")

    def network(self) -> None:
        wizard = Wizard(self.term, self.layout, self.controller, self.host, self.live,
                        self.sys_net)
        network = wizard.ask_network()
        _, text = current_state(self.layout)
        hostname = self._hostname(text)
        answers = validate_answers({"version": 1, "hostname": hostname,
                                    "admin": {"password": "x" * 10}, "network": network,
                                    "domains": [{"name": "example.org", "server": "127.0.0.1"}]},
                                   "console")
        if answers.network is None or not self.term.confirm("apply", "Apply this network"):
            return
        with uninterrupted():
            self._set_network(answers.network)

    def _set_network(self, network: NetworkAnswer) -> None:
        self.host.set_network(network)
        summary = f"static {network.address}" if network.mode == "static" else "DHCP"
        result = record_event(self.layout, self.controller,
                              f"network: IPv4 {summary}, IPv6 {network.ipv6} "
                              f"on {network.interface or 'the first Ethernet'} (console)")
        self.term.mark(f"network changed revision={result.revision.number}")

    @staticmethod
    def _hostname(text: str) -> str:
        data = yaml.safe_load(text) or {}
        return str((data.get("system") or {}).get("hostname") or "mx1.example.org")

    def password(self) -> None:
        wizard = Wizard(self.term, self.layout, self.controller, self.host, self.live)
        password = wizard.ask_password()
        with uninterrupted():
            result = reset_admin_password(self.layout, self.controller, password,
                                          live=self.live)
        self.term.mark(f"admin password reset revision={result.revision.number}")

    def ssh(self) -> None:
        if self._ssh():
            if not self.term.confirm("ssh-off", "Turn SSH off"):
                return
            with uninterrupted():
                result = set_ssh(self.layout, self.controller, self.host, [])
            self.term.mark(f"ssh off revision={result.revision.number}")
            return
        keys = self.host.ssh_keys()
        self.term.say("SSH takes public keys only (root may log in with them).")
        check = checker("ssh_authorized_keys[0]")
        key = self.term.ask("ssh-key", "Public key line (ssh-ed25519 AAAA... you@host)"
                            + (f"; empty keeps the {len(keys)} key(s) there" if keys else ""),
                            "" if keys else None,
                            lambda a: None if not a and keys else check(a))
        keys = [key] if key else keys
        with uninterrupted():
            result = set_ssh(self.layout, self.controller, self.host, keys)
        self.term.mark(f"ssh on revision={result.revision.number}")

    def reset(self) -> None:
        name = self._hostname(current_state(self.layout)[1])
        self.term.say("A factory reset removes the state and its history, every user, the "
                      "quarantine, the statistics, the mail queue and the DKIM keys; it keeps "
                      "the machine's identity (machine id, SSH host keys, certificates).")
        answer = self.term.ask("reset-confirm", f"Type the host name ({name}) to confirm",
                               "", None)
        if answer != name:
            self.term.mark("reset cancelled")
            return
        with uninterrupted():
            removed = factory_reset(self.layout, self.host, live=self.live)
        self.term.mark(f"factory reset done removed={len(removed)}")
        if self.live:
            # A clean start: first boot runs again and the services start without the old
            # stores; the identity is kept.
            self._systemctl("reboot")

    def shell(self) -> None:
        if not self.live:
            raise MailwardenError("no shell from a development sandbox's console")
        # login asks for root's password: the console itself never opens a shell. It takes
        # this process's place, as it takes agetty's: login hangs the terminal up (vhangup)
        # before it asks, which would end a console waiting for it; when the shell ends, the
        # unit starts the console again.
        self.term.mark("login")
        os.execv("/bin/login", ["login", "root"])  # noqa: S606 - argv, no shell string

    def reboot(self) -> None:
        if self.term.confirm("reboot", "Reboot now", default=False):
            self._systemctl("reboot")

    def shutdown(self) -> None:
        if self.term.confirm("shutdown", "Shut down now", default=False):
            self._systemctl("poweroff")

    def _systemctl(self, verb: str) -> None:
        if not self.live:
            raise MailwardenError(f"a development sandbox does not {verb}")
        self.term.mark(verb)
        run(["systemctl", verb], check=False, timeout=60)


def run_console(layout: Layout, *, controller: Controller, host: ConsoleHost, term: Terminal,
                live: bool, sys_net: Any = None, rounds: int | None = None) -> None:
    """The wizard until set up, then the menu; for ever (or `rounds` menu choices)."""
    done = 0
    while rounds is None or done < rounds:
        if not adopt_earlier_setup(layout):
            Wizard(term, layout, controller, host, live, sys_net).run()
            continue
        Menu(term, layout, controller, host, live, sys_net).run_once()
        done += 1


__all__ = ["Menu", "run_console"]
