"""Host side of the end-to-end tier's mail and API checks: messages for the guest's port 25,
the smtp-sink's folder, and the guest's API (forwarded to a loopback port over HTTPS).

The guest's API has its own self-signed certificate: it is not verified here.
"""

# Every URL opened here is the booted guest's API, forwarded to a loopback port over HTTPS
# (never file: or another scheme taken from input).
# ruff: noqa: S310

from __future__ import annotations

import datetime as dt
import email.message
import email.utils
import hashlib
import json
import re
import smtplib
import socket
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
# The EICAR test file, assembled so that this file is not itself a "virus".
EICAR = "X5O!P%@AP[4\\PZX54(P^)7CC)7}$" + "EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
SENDER = "alice@outside.example.net"
RECIPIENT = "bob@e2e.example.org"


def subject(kind: str, run_id: str) -> str:
    return f"mailwarden e2e {kind} {run_id}"


def message(kind: str, run_id: str, recipient: str = RECIPIENT) -> email.message.EmailMessage:
    msg = email.message.EmailMessage()
    msg["From"] = SENDER
    msg["To"] = recipient
    msg["Subject"] = subject(kind, run_id)
    msg["Date"] = email.utils.formatdate()
    msg["Message-ID"] = email.utils.make_msgid(domain="outside.example.net")
    if kind == "gtube":
        msg.set_content(f"This is spam by definition.\n\n{GTUBE}\n")
    else:
        msg.set_content("Hello Bob,\n\nthe minutes of Tuesday's meeting are attached.\n")
    if kind == "eicar":
        msg.add_attachment(EICAR.encode(), maintype="application", subtype="octet-stream",
                           filename="eicar.com")
    return msg


def password_hash(password: str) -> str:
    """The admin password's argon2 hash for a seed, made by this checkout's agent."""
    agent = Path(sys.executable).parent / "mailwarden"
    return subprocess.run([str(agent), "user", "hash-password", "--password-stdin"],
                          input=password + "\n", capture_output=True, text=True,
                          check=True).stdout.strip()


def eicar_signature(work: Path) -> bytes:
    """A ClamAV signature (.hdb) for EICAR made with sigtool: the test guests have no
    internet for freshclam, and clamd starts only with a database."""
    (work / "eicar.com").write_text(EICAR)
    made = subprocess.run(["sigtool", "--md5", "eicar.com"], cwd=work, capture_output=True,
                          text=True, check=True).stdout.strip()
    assert made.endswith(":68:eicar.com"), f"sigtool made no EICAR signature: {made!r}"
    return (made.removesuffix("eicar.com") + "Mailwarden-E2E-EICAR\n").encode()


def send(port: int, kind: str, run_id: str, recipient: str = RECIPIENT) -> None:
    """Send one message through the guest's port 25; raises unless every recipient and the
    transaction were accepted."""
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.outside.example.net",
                      timeout=600) as smtp:
        smtp.ehlo()
        refused = smtp.send_message(message(kind, run_id, recipient), SENDER, [recipient])
        code, _ = smtp.noop()
    assert not refused, f"recipients refused: {refused}"
    assert code == 250


def smtp_greets(port: int) -> bool:
    """QEMU's port forward accepts even when nothing listens in the guest: only a 220 counts."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=8) as sock:
            sock.settimeout(6)
            return sock.recv(512).startswith(b"220")
    except OSError:
        return False


def sink_has(folder: Path, wanted: str) -> bool:
    needle = f"Subject: {wanted}".encode()
    for path in folder.iterdir() if folder.is_dir() else []:
        try:
            if needle in path.read_bytes():
                return True
        except OSError:
            continue
    return False


def _context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def call(url: str, method: str, path: str, body: Any = None,
         headers: dict[str, str] | None = None) -> tuple[int, Any, list[str]]:
    """One API request: (status, JSON body, Set-Cookie headers); an error status is an
    answer here, not an exception."""
    request = urllib.request.Request(
        url + path, method=method, headers={"Content-Type": "application/json",
                                            **(headers or {})},
        data=None if body is None else json.dumps(body).encode())
    try:
        # Setup waits for Rspamd's first start (up to 900 s), as the API's own client does.
        with urllib.request.urlopen(request, timeout=1500, context=_context()) as response:
            return (response.status, json.load(response),
                    response.headers.get_all("Set-Cookie") or [])
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}"), []


def sign_in(url: str, password: str, user: str = "admin") -> dict[str, str] | None:
    """The headers of a session (cookie and CSRF token); None when the password is refused."""
    status, body, cookies = call(url, "POST", "/api/session",
                                 {"username": user, "password": password})
    if status not in (200, 201):
        return None
    return {"Cookie": "; ".join(c.split(";", 1)[0] for c in cookies),
            "X-CSRF-Token": str(body.get("csrf_token", ""))}


def answers_health(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/api/health", timeout=10,
                                    context=_context()) as response:
            return bool(response.status == 200)
    except (OSError, ValueError):
        return False


def presented_fingerprint(url: str) -> str:
    """The SHA-256 fingerprint of the certificate the API presents, as the console shows it."""
    host, port = url.removeprefix("https://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as raw, \
            _context().wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


class Api:
    """The guest's API as an admin uses it: a session cookie and its CSRF token."""

    def __init__(self, url: str, user: str, password: str) -> None:
        self.url, self.user, self.password = url, user, password

    def health(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/api/health", timeout=10,
                                        context=_context()) as response:
                return bool(json.load(response).get("status") == "ok")
        except (OSError, ValueError):
            return False

    def _login(self) -> dict[str, str]:
        login = urllib.request.Request(
            f"{self.url}/api/session", method="POST",
            data=json.dumps({"username": self.user, "password": self.password}).encode(),
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(login, timeout=120, context=_context()) as response:
            cookies = [c.split(";", 1)[0] for c in response.headers.get_all("Set-Cookie") or []]
            token = str(json.load(response).get("csrf_token", ""))
        return {"Cookie": "; ".join(cookies), "X-CSRF-Token": token}

    def get(self, path: str) -> dict[str, Any]:
        request = urllib.request.Request(f"{self.url}{path}", headers=self._login())
        with urllib.request.urlopen(request, timeout=120, context=_context()) as response:
            return dict(json.load(response))

    def services(self) -> dict[str, str]:
        """Every service the API probes: name -> "healthy" or its error."""
        items = self.get("/api/system/services")["items"]
        return {item["name"]: "healthy" if item["healthy"] else str(item["error"])
                for item in items}

    def quarantined(self) -> set[tuple[str, str]]:
        """(kind, subject) of every quarantined message."""
        items = self.get("/api/quarantine?limit=100")["items"]
        return {(str(item.get("kind")), str(item.get("subject"))) for item in items}

    def change_section(self, section: str, change: Any, comment: str) -> dict[str, Any]:
        """GET a settings section, let change() edit it, PUT it back with its ETag: the
        unprivileged API asks the root apply helper (render, validate, reload). The answer
        of the apply (revision, reloaded services)."""
        headers = self._login()
        request = urllib.request.Request(f"{self.url}/api/settings/{section}", headers=headers)
        with urllib.request.urlopen(request, timeout=120, context=_context()) as response:
            etag = response.headers["ETag"]
            body = dict(json.load(response))
        new = change(body[section])
        put = urllib.request.Request(
            f"{self.url}/api/settings/{section}", method="PUT",
            data=json.dumps({section: new, "comment": comment}).encode(),
            headers=dict(headers, **{"Content-Type": "application/json", "If-Match": etag}))
        try:
            with urllib.request.urlopen(put, timeout=900, context=_context()) as response:
                return dict(json.load(response))
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"PUT /api/settings/{section}: {exc.code} "
                                 f"{exc.read().decode(errors='replace')}") from exc


_LYNIS_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) (.*)$")
_LYNIS_TEST = re.compile(r"Performing test ID (\S+)")


def lynis_slowest(log: str, count: int = 8) -> list[tuple[str, float]]:
    """Where Lynis's time goes: each test runs from its "Performing test ID" line to the
    next one. For choosing what the test profile skips."""
    tests: list[tuple[str, dt.datetime]] = []
    last: dt.datetime | None = None
    for line in log.splitlines():
        match = _LYNIS_LINE.match(line)
        if not match:
            continue
        last = dt.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S")
        test = _LYNIS_TEST.search(match.group(2))
        if test:
            tests.append((test.group(1), last))
    if not tests or last is None:
        return []
    ends = [when for _, when in tests[1:]] + [last]
    spans = sorted(((end - when).total_seconds(), name)
                   for (name, when), end in zip(tests, ends, strict=True))
    return [(name, seconds) for seconds, name in reversed(spans[-count:])]
