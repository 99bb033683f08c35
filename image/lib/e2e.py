#!/usr/bin/env python3
"""Host side of the end-to-end tier's mail checks (standard library only).

    e2e.py send PORT KIND RUN_ID [RCPT]  send a clean / gtube / eicar message to 127.0.0.1:PORT
                                       (the guest's port 25); prints the SMTP reply
    e2e.py subject KIND RUN_ID         the subject that message carries
    e2e.py sink-has DIR SUBJECT        exit 0 when a message with SUBJECT reached the sink
    e2e.py quarantine URL USER PASS    log in to the API, print "kind<TAB>subject" per entry
    e2e.py services URL USER PASS      every service the API probes; exit 0 when all are healthy
    e2e.py health URL                  exit 0 when GET URL/api/health says ok
    e2e.py add-domain URL USER PASS NAME
                                       as USER, add relay domain NAME (same internal server as
                                       the first) through PUT /api/settings/domains; prints
                                       the new revision and the services reloaded
    e2e.py set-management URL USER PASS NET...
                                       as USER, replace networks.management with NET...
                                       through PUT /api/settings/networks; prints the new
                                       revision and the services reloaded
    e2e.py lynis-slowest LOG [N]       the N (default 8) Lynis tests that took longest, from
                                       the timestamps of Lynis's log
    e2e.py eicar                       print the 68-byte EICAR test file

The guest's API has its own self-signed certificate: it is not verified here.
"""

# Every URL opened here is the booted guest's API, forwarded to a loopback port over HTTPS
# (never file: or another scheme taken from input).
# ruff: noqa: S310

from __future__ import annotations

import datetime as dt
import email.message
import email.utils
import json
import re
import smtplib
import ssl
import sys
import urllib.error
import urllib.request
from pathlib import Path

GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
# The EICAR test file, assembled so that this script is not itself a "virus".
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


def send(port: int, kind: str, run_id: str, recipient: str = RECIPIENT) -> int:
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.outside.example.net",
                      timeout=300) as smtp:
        smtp.ehlo()
        refused = smtp.send_message(message(kind, run_id, recipient), SENDER, [recipient])
        code, _ = smtp.noop()
    print(f"accepted ({'refused: ' + str(refused) if refused else 'all recipients'})")
    return 0 if not refused and code == 250 else 1


def sink_has(folder: Path, wanted: str) -> int:
    needle = f"Subject: {wanted}".encode()
    for path in folder.iterdir() if folder.is_dir() else []:
        try:
            if needle in path.read_bytes():
                return 0
        except OSError:
            continue
    return 1


def _context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def health(url: str) -> int:
    try:
        with urllib.request.urlopen(f"{url}/api/health", timeout=10,
                                    context=_context()) as response:
            return 0 if json.load(response).get("status") == "ok" else 1
    except (OSError, ValueError):
        return 1


def _login(url: str, user: str, password: str) -> dict[str, str]:
    """Log in; the headers every later request sends (session cookie, CSRF token)."""
    login = urllib.request.Request(
        f"{url}/api/session", method="POST",
        data=json.dumps({"username": user, "password": password}).encode(),
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(login, timeout=60, context=_context()) as response:
        cookies = [c.split(";", 1)[0] for c in response.headers.get_all("Set-Cookie") or []]
        token = str(json.load(response).get("csrf_token", ""))
    return {"Cookie": "; ".join(cookies), "X-CSRF-Token": token}


def _get(url: str, user: str, password: str, path: str) -> dict[str, object]:
    """GET path as user (logged in with a session cookie)."""
    request = urllib.request.Request(f"{url}{path}", headers=_login(url, user, password))
    with urllib.request.urlopen(request, timeout=120, context=_context()) as response:
        return dict(json.load(response))


def add_domain(url: str, user: str, password: str, name: str) -> int:
    """The appliance's way to change a setting: the unprivileged API asks the root apply
    helper (render, validate with the real tools, reload, health check)."""
    headers = _login(url, user, password)
    request = urllib.request.Request(f"{url}/api/settings/domains", headers=headers)
    with urllib.request.urlopen(request, timeout=120, context=_context()) as response:
        etag = response.headers["ETag"]
        domains = list(json.load(response)["domains"])
    domains.append(dict(domains[0], name=name))
    change = urllib.request.Request(
        f"{url}/api/settings/domains", method="PUT",
        data=json.dumps({"domains": domains, "comment": "end-to-end: add a domain"}).encode(),
        headers=dict(headers, **{"Content-Type": "application/json", "If-Match": etag}))
    try:
        with urllib.request.urlopen(change, timeout=600, context=_context()) as response:
            answer = json.load(response)
    except urllib.error.HTTPError as exc:
        print(f"PUT /api/settings/domains: {exc.code} {exc.read().decode(errors='replace')}")
        return 1
    print(f"revision {answer['revision']} reloaded {','.join(answer.get('reloaded') or [])}")
    return 0


def set_management(url: str, user: str, password: str, networks: list[str]) -> int:
    """The management networks decide who reaches the API: the answer still comes back on the
    connection that asked (the firewall keeps established connections)."""
    headers = _login(url, user, password)
    request = urllib.request.Request(f"{url}/api/settings/networks", headers=headers)
    with urllib.request.urlopen(request, timeout=120, context=_context()) as response:
        etag = response.headers["ETag"]
        section = dict(json.load(response)["networks"])
    section["management"] = networks
    change = urllib.request.Request(
        f"{url}/api/settings/networks", method="PUT",
        data=json.dumps({"networks": section,
                         "comment": "end-to-end: management networks"}).encode(),
        headers=dict(headers, **{"Content-Type": "application/json", "If-Match": etag}))
    try:
        with urllib.request.urlopen(change, timeout=600, context=_context()) as response:
            answer = json.load(response)
    except urllib.error.HTTPError as exc:
        print(f"PUT /api/settings/networks: {exc.code} {exc.read().decode(errors='replace')}")
        return 1
    print(f"revision {answer['revision']} reloaded {','.join(answer.get('reloaded') or [])}")
    return 0


_LYNIS_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) (.*)$")
_LYNIS_TEST = re.compile(r"Performing test ID (\S+)")


def lynis_slowest(log: Path, count: int) -> int:
    """Where Lynis's time goes: each test runs from its "Performing test ID" line to the
    next one. For choosing what the test profile skips."""
    tests: list[tuple[str, dt.datetime]] = []
    last: dt.datetime | None = None
    for line in log.read_text(errors="replace").splitlines():
        match = _LYNIS_LINE.match(line)
        if not match:
            continue
        last = dt.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S")
        test = _LYNIS_TEST.search(match.group(2))
        if test:
            tests.append((test.group(1), last))
    if not tests or last is None:
        return 1
    ends = [when for _, when in tests[1:]] + [last]
    spans = sorted(((end - when).total_seconds(), name)
                   for (name, when), end in zip(tests, ends, strict=True))
    for seconds, name in reversed(spans[-count:]):
        print(f"{name} {seconds:.0f} s")
    return 0


def quarantine(url: str, user: str, password: str) -> int:
    items = _get(url, user, password, "/api/quarantine?limit=100")["items"]
    for item in items:  # type: ignore[attr-defined]
        print(f"{item.get('kind')}\t{item.get('subject')}")
    return 0


def services(url: str, user: str, password: str) -> int:
    """Every service the API probes, healthy or not; exit 0 when all are."""
    try:
        items = _get(url, user, password, "/api/system/services")["items"]
    except (OSError, ValueError) as exc:
        print(f"API: {exc}")
        return 1
    unhealthy = 0
    for item in items:  # type: ignore[attr-defined]
        print(f"{item['name']}\t{'healthy' if item['healthy'] else item['error']}")
        unhealthy += not item["healthy"]
    return 1 if unhealthy else 0


def main(args: list[str]) -> int:
    command, rest = args[0], args[1:]
    if command == "send":
        return send(int(rest[0]), rest[1], rest[2], *rest[3:4])
    if command == "eicar":
        sys.stdout.write(EICAR)
        return 0
    if command == "subject":
        print(subject(rest[0], rest[1]))
        return 0
    if command == "sink-has":
        return sink_has(Path(rest[0]), rest[1])
    if command == "quarantine":
        return quarantine(rest[0], rest[1], rest[2])
    if command == "services":
        return services(rest[0], rest[1], rest[2])
    if command == "health":
        return health(rest[0])
    if command == "add-domain":
        return add_domain(rest[0], rest[1], rest[2], rest[3])
    if command == "set-management":
        return set_management(rest[0], rest[1], rest[2], rest[3:])
    if command == "lynis-slowest":
        return lynis_slowest(Path(rest[0]), int(rest[1]) if rest[1:] else 8)
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
