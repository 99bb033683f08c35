"""The first-boot wizard on the console: the web wizard's questions, one line at a time.

Every answer is checked by the answer model itself (firstboot/answers.py, the one the web
wizard and seed files go through), field by field, and refused with that model's message for
the field: the console and the web wizard never disagree about what is valid. The whole set
then goes through the same engine (configure.apply_answers) and the administrator is made as
first boot makes it.
"""

from __future__ import annotations

import copy
import itertools
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..control.service import Controller
from ..errors import MailwardenError, StateError
from ..firstboot import setupcode
from ..firstboot.answers import Answers, validate_answers
from ..firstboot.boot import (
    API_USER,
    COMPLETE,
    api_owner,
    create_admin,
    default_address,
    open_mail_path,
)
from ..firstboot.configure import FirstbootResult, apply_answers, is_set_up
from ..layout import Layout
from ..state.revisions import RevisionStore
from ..store.users import hash_password
from .system import ConsoleHost, Interface, fingerprint, interfaces, web_url
from .terminal import Check, Terminal, uninterrupted

# What the other fields hold while one is checked: valid, so that only the field asked
# about can be refused.
_PLACEHOLDER: dict[str, Any] = {
    "version": 1, "hostname": "mx1.example.org", "admin": {"password": "x" * 10},
    "domains": [{"name": "example.org", "server": "192.0.2.25"}]}
# How often the web wizard's screen looks whether setup finished or the code expired.
WEB_POLL = 5.0


def field_problem(answers: dict[str, Any], path: str) -> str | None:
    """The answer model's message for `path` (or anything below it) in `answers`, exactly as
    the web wizard reports it; None when that field is fine."""
    # A check written on the object holding the field (network: "a static IPv6 network
    # needs ...") reports the object's path: with every other field valid, it is this one's.
    parts = path.replace("[", ".[").split(".")
    holders = {".".join(parts[:n]).replace(".[", "[") for n in range(1, len(parts))}
    try:
        validate_answers(answers, "answers")
    except StateError as exc:
        for error in exc.errors:
            if error.path == path or error.path.startswith((path + ".", path + "[")) \
                    or error.path in holders:
                return error.message
    return None


def _with(path: str, value: Any, known: dict[str, Any] | None = None) -> dict[str, Any]:
    """The placeholder answers with what is known so far and `value` at `path`."""
    data = copy.deepcopy(_PLACEHOLDER)
    data.update(copy.deepcopy(known or {}))
    keys: list[Any] = [int(k) if k.isdigit() else k
                       for k in path.replace("]", "").replace("[", ".").split(".")]
    target: Any = data
    for key, following in itertools.pairwise(keys):
        _fill(target, key, [] if isinstance(following, int) else {})
        target = target[key]
    _fill(target, keys[-1], None)
    target[keys[-1]] = value
    return data


def _fill(target: Any, key: Any, empty: Any) -> None:
    """Make target[key] exist (a list grows to it)."""
    if isinstance(target, list):
        while len(target) <= key:
            target.append(copy.deepcopy(empty))
        if target[key] is None:
            target[key] = empty
    elif key not in target:
        target[key] = empty


def checker(path: str, convert: Callable[[str], Any] = lambda s: s,
            known: Callable[[], dict[str, Any]] | None = None
            ) -> Callable[[str], str | None]:
    def check(answer: str) -> str | None:
        return field_problem(_with(path, convert(answer), known() if known else None), path)

    return check


def _list(answer: str) -> list[str]:
    return [part for part in answer.replace(",", " ").split() if part]


@dataclass
class Wizard:
    term: Terminal
    layout: Layout
    controller: Controller
    host: ConsoleHost
    live: bool
    sys_net: Any = None  # where the interfaces are listed (tests: a fake /sys/class/net)
    # The answers given so far, by prompt: the defaults when the questions are asked again
    # (a "no" at the summary, or answers the engine refused), so a typo costs one answer.
    last: dict[str, str] = field(default_factory=dict)

    def _ask(self, prompt_id: str, question: str, default: str | None,
             check: Check | None) -> str:
        answer = self.term.ask(prompt_id, question, self.last.get(prompt_id, default), check)
        self.last[prompt_id] = answer
        return answer

    def _choose(self, prompt_id: str, question: str, options: list[str], default: str) -> str:
        answer = self.term.choose(prompt_id, question, options,
                                  self.last.get(prompt_id, default))
        self.last[prompt_id] = answer
        return answer

    # --- the questions ------------------------------------------------------------------

    def ask_keyboard(self) -> str:
        keyboard = self._ask("keyboard", "Keyboard layout (us, de, fr, fr:bepo ...)", "us",
                                 checker("keyboard"))
        # At once, so that the password is typed with the layout it will be typed with.
        try:
            self.host.set_keyboard(keyboard)
        except MailwardenError as exc:
            self.term.say(f"  (keyboard not loaded now: {exc.message})")
        return keyboard

    def ask_network(self) -> dict[str, Any]:
        found = interfaces(self.sys_net) if self.sys_net is not None else interfaces()
        network: dict[str, Any] = {}
        interface = self._ask_interface(found)
        if interface:
            network["interface"] = interface
        mode = self._choose("ipv4", "IPv4", ["dhcp", "static"], "dhcp")
        network["mode"] = mode
        if mode == "static":
            def known() -> dict[str, Any]:
                return {"network": {**network, "address": network.get("address", "192.0.2.10/24"),
                                    "gateway": network.get("gateway", "192.0.2.1")}}

            network["address"] = self._ask(
                "ipv4-address", "IPv4 address with prefix (192.0.2.10/24)", None,
                checker("network.address", known=known))
            network["gateway"] = self._ask("ipv4-gateway", "IPv4 gateway", None,
                                               checker("network.gateway", known=known))
        ipv6 = self._choose("ipv6", "IPv6: router advertisements/DHCPv6, static, or off",
                                ["auto", "static", "off"], "auto")
        network["ipv6"] = ipv6
        if ipv6 == "static":
            def known6() -> dict[str, Any]:
                return {"network": {**network,
                                    "ipv6_address": network.get("ipv6_address",
                                                                "2001:db8::10/64")}}

            network["ipv6_address"] = self._ask(
                "ipv6-address", "IPv6 address with prefix (2001:db8::10/64)", None,
                checker("network.ipv6_address", known=known6))
            gateway = self._ask(
                "ipv6-gateway", "IPv6 gateway (empty: from router advertisements)", "",
                lambda a: None if not a else checker("network.ipv6_gateway", known=known6)(a))
            if gateway:
                network["ipv6_gateway"] = gateway
        if mode == "static":
            dns = self._ask("dns", "DNS servers (space separated)", None,
                                checker("network.dns", _list, known=lambda: {"network": {
                                    **network}}))
            network["dns"] = _list(dns)
        return network

    def _ask_interface(self, found: list[Interface]) -> str | None:
        if not found:
            self.term.say("No network interface found; the first Ethernet one will be used.")
            return None
        self.term.say("Network interfaces:")
        for number, nic in enumerate(found, 1):
            kind = "" if nic.physical else " (virtual)"
            addresses = f"  {', '.join(nic.addresses)}" if nic.addresses else ""
            self.term.say(f"  {number}) {nic.name:<12} {nic.mac:<17} link {nic.link}"
                          f"{kind}{addresses}")
        names = [nic.name for nic in found]

        def check(answer: str) -> str | None:
            if answer.isdigit() and 1 <= int(answer) <= len(found):
                return None
            if answer in names:
                return None
            return f"answer a number from 1 to {len(found)} or an interface name"

        answer = self._ask("interface", "Management interface", "1", check)
        return found[int(answer) - 1].name if answer.isdigit() else answer

    def ask_password(self) -> str:
        while True:
            password = self.term.ask("admin-password", "Password for the web user 'admin'",
                                     None, checker("admin.password"), secret=True)
            again = self.term.ask("admin-password-again", "The same password again", None,
                                  None, secret=True)
            if again == password:
                return password
            self.term.mark("refused admin-password-again: the passwords differ")

    def ask_all(self) -> dict[str, Any]:
        answers: dict[str, Any] = {"version": 1}
        answers["keyboard"] = self.ask_keyboard()
        answers["network"] = self.ask_network()
        current = socket.getfqdn()
        answers["hostname"] = self._ask(
            "hostname", "Host name (fully qualified, mx1.example.org)",
            current if current and field_problem(_with("hostname", current), "hostname") is None
            else None, checker("hostname"))
        answers["timezone"] = self._ask("timezone", "Time zone (Europe/Berlin, UTC ...)",
                                            "UTC", checker("timezone"))
        answers["admin"] = {"password": self.ask_password()}
        domain = self._ask("domain", "First mail domain (example.org)", None,
                               checker("domains[0].name"))
        server = self._ask("server", f"Internal mail server for {domain} (name or address)",
                               None, checker("domains[0].server"))
        port = self._ask("port", "Its SMTP port", "25",
                             checker("domains[0].port", lambda s: int(s) if s.isdigit() else s))
        answers["domains"] = [{"name": domain, "server": server, "port": int(port)}]
        return answers

    # --- the whole dialogue -------------------------------------------------------------

    def run(self) -> FirstbootResult | None:
        """Until the appliance is set up here or through the web wizard. None: set up by
        the web wizard meanwhile."""
        self.term.say()
        self.term.say("Mailwarden is not set up yet.")
        self.term.mark("wizard")
        while True:
            if is_set_up(self.layout):
                # The web wizard finished while this one waited for an answer.
                self.term.mark("set up by the web wizard")
                return None
            how = self.term.choose("how", "Set it up here on the console, or in a web browser",
                                   ["console", "web"], "console")
            if how == "web":
                if self.web():
                    return None
                continue
            answers = self.ask_all()
            self._summary(answers)
            if not self.term.confirm("apply", "Apply these settings"):
                continue
            try:
                with uninterrupted():
                    return self.apply(validate_answers(answers, "console"))
            except MailwardenError as exc:
                self.term.mark(f"failed: [{exc.code}] {exc.message.splitlines()[0]}")
                if is_set_up(self.layout):
                    # The state applied and the host is configured; a later step failed
                    # (the administrator, the mail path): the menu can finish the job.
                    self.term.say("The appliance is set up, but that step failed: "
                                  "see Service health, and Reset the admin password if "
                                  "the web interface does not take it.")
                    return None
                for line in exc.message.splitlines()[1:]:
                    self.term.say(f"  {line}")
                if isinstance(exc, StateError):
                    for error in exc.errors:
                        self.term.say(f"  {error}")

    def _summary(self, answers: dict[str, Any]) -> None:
        network = answers["network"]
        self.term.say()
        self.term.say(f"  host name   {answers['hostname']}")
        self.term.say(f"  interface   {network.get('interface', 'first Ethernet')}")
        ipv4 = (f"static {network['address']} via {network['gateway']}"
                if network["mode"] == "static" else "DHCP")
        self.term.say(f"  IPv4        {ipv4}")
        ipv6 = network["ipv6"] if network["ipv6"] != "static" else \
            f"static {network['ipv6_address']}"
        self.term.say(f"  IPv6        {ipv6}")
        if network.get("dns"):
            self.term.say(f"  DNS         {' '.join(network['dns'])}")
        self.term.say(f"  keyboard    {answers['keyboard']}   time zone {answers['timezone']}")
        domain = answers["domains"][0]
        self.term.say(f"  mail domain {domain['name']} -> {domain['server']}:{domain['port']}")
        self.term.say()

    def apply(self, answers: Answers) -> FirstbootResult:
        """The engine every front end uses, then the administrator as first boot makes it."""
        self.term.say("Applying (this takes a minute or more) ...")
        started = time.monotonic()
        password = answers.admin.password or ""
        password_hash = answers.admin.password_hash or hash_password(password)
        first = RevisionStore(self.layout.revisions_dir).current() is None
        result = apply_answers(answers, layout=self.layout, controller=self.controller,
                               host=self.host, author="console wizard")
        create_admin(self.layout, result.admin, password_hash,
                     as_user=API_USER if self.live and os.geteuid() == 0 else None)
        if first and self.live:
            open_mail_path(self.layout)
        setupcode.discard(self.layout.setup_code)
        complete = self.layout.path(COMPLETE)
        complete.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
        complete.touch()
        self.term.mark(f"set-up complete revision={result.applied.revision.number} "
                       f"hostname={answers.hostname} admin={result.admin} "
                       f"in {time.monotonic() - started:.1f} s")
        return result

    # --- the web wizard instead ---------------------------------------------------------

    def web(self) -> bool:
        """The address, a live setup code and the certificate's fingerprint, until the web
        wizard has set the appliance up (True) or the console is asked for again (False)."""
        fresh = False
        while True:
            if is_set_up(self.layout):
                self.term.mark("set up by the web wizard")
                return True
            code = None if fresh else setupcode.valid(self.layout.setup_code)
            if code is None:
                code = setupcode.issue(self.layout.setup_code,
                                       api_owner() if self.live else None)
            fresh = False
            self.show_web(code)
            self.term.mark("prompt web")
            self.term.say("Enter: look again   n: a new code   c: set up on the console")
            answer = self.term.wait_line(WEB_POLL)
            while answer is None:
                if is_set_up(self.layout) or setupcode.valid(self.layout.setup_code) != code:
                    break
                answer = self.term.wait_line(WEB_POLL)
            if answer is not None and answer.strip().lower().startswith("c"):
                return False
            fresh = answer is not None and answer.strip().lower().startswith("n")

    def show_web(self, code: str) -> None:
        until = setupcode.expires(self.layout.setup_code)
        self.term.say()
        self.term.say(f"  Open          {web_url(self.layout, default_address())}")
        self.term.say(f"  Setup code    {code}")
        if until is not None:
            self.term.say("  Valid until   "
                          f"{time.strftime('%H:%M %Z', time.localtime(until))}"
                          " (a new one is shown then)")
        self.term.say(f"  Certificate   SHA-256 {fingerprint(self.layout) or 'not made yet'}")
        self.term.mark(f"setup-code {code}")


