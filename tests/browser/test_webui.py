"""The web UI end to end on a whole gateway: the first-run wizard, GTUBE sent over SMTP found
in the quarantine and previewed (no script, nothing remote) and released to the sink, a rule
made in the UI tagging the next message and gone after a rollback, settings with their errors,
a quarantine user's own view, a phone's width, spam learning with Rspamd's counts rising."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from email.message import EmailMessage
from pathlib import Path

import pyotp
import pytest
import yaml

from mailwarden.firstboot import setupcode
from mailwarden.mail.learning import Learner
from mailwarden.mail.types import BayesCounts
from mailwarden.state.load import load_state_file
from mailwarden.state.revisions import RevisionStore
from mailwarden.store.credentials import CredentialStore
from mailwarden.store.db import Database
from mailwarden.store.quarantine import Quarantine
from mailwarden.store.users import Users
from mailwarden_dev.instance import Sandbox

from ..integration.test_learning import TEXT
from ..integration.test_mail_path import GTUBE, build, marker, send, wait_quarantined
from .conftest import PASSWORD, SCREENSHOTS

HOSTILE_HTML = """<p>Hello <b>there</b></p>
<script>parent.document.title = "pwned"; fetch("http://tracker.example/x")</script>
<img src="http://tracker.example/pixel.gif" onerror="parent.document.title='pwned'">
"""


def hostile_spam(subject: str, to: str = "user@example.test") -> bytes:
    """GTUBE in the text part (so Rspamd quarantines it) and a hostile HTML part."""
    msg = EmailMessage()
    msg["From"] = "Eve <alice@sender.test>"
    msg["To"] = to
    msg["Subject"] = subject
    msg.set_content(f"{GTUBE}\n")
    msg.add_alternative(HOSTILE_HTML, subtype="html")
    return msg.as_bytes()


class Page:
    """A browser page that records console errors and every request leaving loopback."""

    def __init__(self, browser: object, base: str) -> None:
        self.context = browser.new_context(ignore_https_errors=True,  # type: ignore[attr-defined]
                                           viewport={"width": 1280, "height": 860})
        self.page = self.context.new_page()
        self.base = base
        self.errors: list[str] = []
        self.expected: list[str] = []  # errors a test provokes on purpose, each allowed once
        self.outside: list[str] = []
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", self._request)

    def _request(self, request: object) -> None:
        url = request.url  # type: ignore[attr-defined]
        if not url.startswith(("https://127.0.0.1", "data:", "about:")):
            self.outside.append(url)

    def expect_http_error(self, status: int, reason: str) -> None:
        """Chromium logs each 4xx the API answers; a test provoking one says so."""
        self.expected.append(f"Failed to load resource: the server responded with a status of "
                             f"{status} ({reason})")

    def login(self, username: str) -> None:
        self.page.goto(f"{self.base}/#/login")
        self.page.fill("#username", username)
        self.page.fill("#password", PASSWORD)
        self.page.click("button[type=submit]")
        self.page.wait_for_selector("#who")
        self.page.wait_for_function("document.getElementById('who').textContent.length > 0")


def complete_wizard(page: Page, gw: Sandbox, screenshot: bool = False) -> None:
    """The first-run wizard as an admin meets it: any page leads there; a wrong code is
    refused next to its field; the right one sets the gateway up and logs the admin in."""
    code = setupcode.current(gw.layout.setup_code)
    assert code, "the sandbox has no setup code"
    p = page.page
    p.goto(f"{page.base}/#/dashboard")
    p.wait_for_selector("h1:has-text('Welcome to Mailwarden')")
    p.fill("#setup-setup-code", "WRONG-CODE-0000-0000")
    p.fill("#setup-admin-password", PASSWORD)
    p.fill("#setup-confirm", PASSWORD)
    p.fill("#setup-hostname", "mx.example.test")
    p.fill("#setup-domains-0-name", "example.test")
    p.fill("#setup-domains-0-server", "127.0.0.1")
    p.fill("#setup-domains-0-port", str(gw.sink.port))
    if screenshot:
        p.screenshot(path=str(SCREENSHOTS / "wizard.png"), full_page=True)
    page.expect_http_error(403, "Forbidden")
    p.click("button[type=submit]")
    error = p.wait_for_selector("#setup-setup-code-error:has-text('not the setup code')")
    assert error.is_visible()
    p.fill("#setup-setup-code", code.lower())  # read off a console: case does not matter
    p.click("button[type=submit]")
    p.wait_for_selector("text=Mail per hour")
    assert p.inner_text("#who") == "admin (admin)"


@pytest.fixture
def page(browser: object, ui_gateway: Sandbox) -> Iterator[Page]:
    p = Page(browser, f"https://127.0.0.1:{ui_gateway.layout.ports.api}")
    yield p
    p.context.close()
    unexpected = list(p.errors)
    for text in p.expected:
        assert text in unexpected, f"the expected error did not happen: {text}"
        unexpected.remove(text)
    assert unexpected == [], f"console errors: {unexpected}"
    assert p.outside == [], f"requests left the machine: {p.outside}"


def _quarantine(gw: Sandbox) -> Quarantine:
    return Quarantine(Database(gw.layout.database), gw.layout.quarantine_dir)


@pytest.fixture
def admin(browser: object, ui_gateway: Sandbox) -> None:
    """Tests after the wizard's need its admin; run alone, they complete it first."""
    if Users(CredentialStore.for_layout(ui_gateway.layout)).count("admin") == 0:
        p = Page(browser, f"https://127.0.0.1:{ui_gateway.layout.ports.api}")
        complete_wizard(p, ui_gateway)
        p.context.close()


def test_first_run_wizard(page: Page, ui_gateway: Sandbox) -> None:
    complete_wizard(page, ui_gateway, screenshot=True)
    state = RevisionStore(ui_gateway.layout.revisions_dir)
    assert state.get(state.current()).author == "setup wizard"
    assert not ui_gateway.layout.setup_code.exists()
    # Closed for good: the wizard's address now says so, and pages lead to the login.
    page.page.click("#logout")
    page.page.wait_for_selector("button:has-text('Log in')")
    page.page.goto(f"{page.base}/#/setup")
    page.page.wait_for_selector("text=This appliance is set up")


def test_gtube_over_smtp_is_quarantined_previewed_safely_and_released(
        page: Page, ui_gateway: Sandbox, admin: None) -> None:
    subject = f"Hostile preview {marker()}"
    send(ui_gateway, hostile_spam(subject))
    entry = wait_quarantined(ui_gateway, subject)
    assert entry.kind == "spam"
    page.login("admin")
    page.page.goto(f"{page.base}/#/quarantine")
    page.page.click(f"text={subject}")
    frame_el = page.page.wait_for_selector("iframe[title='Message preview']")
    frame = frame_el.content_frame()
    frame.wait_for_selector("b")
    assert frame.inner_text("p").startswith("Hello")
    assert frame_el.get_attribute("sandbox") == ""
    assert "pwned" not in page.page.title()
    assert frame.query_selector("script") is None
    assert frame.query_selector("img[src]") is None
    page.page.screenshot(path=str(SCREENSHOTS / "quarantine.png"), full_page=True)
    assert ui_gateway.sink.containing(subject) == []
    page.page.click("text=Release (r)")
    page.page.wait_for_selector("text=release: done")
    ui_gateway.sink.wait_for_marker(subject)
    assert _quarantine(ui_gateway).get(entry.id).recipients == {"user@example.test": "released"}


def test_rule_made_in_the_ui_tags_the_next_message_and_rollback_removes_it(
        page: Page, ui_gateway: Sandbox, admin: None) -> None:
    store = RevisionStore(ui_gateway.layout.revisions_dir)
    before = store.current()
    page.login("admin")
    p = page.page
    p.goto(f"{page.base}/#/rules")
    p.wait_for_selector("text=Block viruses")
    p.fill("#rule-name", "Tag partner mail")
    p.fill("#rule-from", "sender.test")
    p.select_option("#rule-action", "tag_subject")
    p.fill("#rule-param", "[PARTNER]")
    p.fill("#rule-priority", "90")
    p.click("text=Add to the list")
    p.wait_for_selector("tr[data-rule='Tag partner mail']")
    p.click("text=Apply changes")
    p.wait_for_selector(f"text=Applied as revision {before + 1}")
    p.screenshot(path=str(SCREENSHOTS / "rules.png"), full_page=True)

    tagged = marker()
    send(ui_gateway, build(tagged))
    [delivered] = ui_gateway.sink.wait_for_marker(tagged)
    assert f"Subject: [PARTNER] {tagged}".encode() in delivered

    p.goto(f"{page.base}/#/history")
    p.on("dialog", lambda dialog: dialog.accept())
    p.click(f"tr[data-revision='{before}'] >> text=Roll back to this")
    p.wait_for_selector(f"text=rollback to revision {before}")
    p.goto(f"{page.base}/#/rules")
    p.wait_for_selector("text=Block viruses")
    assert p.query_selector("tr[data-rule='Tag partner mail']") is None
    plain = marker()
    send(ui_gateway, build(plain))
    [delivered] = ui_gateway.sink.wait_for_marker(plain)
    assert f"Subject: {plain}".encode() in delivered and b"[PARTNER]" not in delivered


def test_settings_apply_shows_field_errors_and_rolls_back(page: Page, ui_gateway: Sandbox,
                                                          admin: None) -> None:
    before = RevisionStore(ui_gateway.layout.revisions_dir).current()
    page.login("admin")
    page.page.goto(f"{page.base}/#/settings/spam")
    tag = page.page.wait_for_selector("[data-path='spam.levels.tag']")
    tag.fill("30")
    # The API's 400 for the invalid value is the point of the test.
    page.expect_http_error(400, "Bad Request")
    page.page.click("text=Apply")
    error = page.page.wait_for_selector(
        "[data-error-for='spam.levels']:has-text('tag <= quarantine')")
    assert error.is_visible()
    tag.fill("5.5")
    page.page.fill("#comment", "lower tag level")
    page.page.click("text=Apply")
    page.page.wait_for_selector("text=Applied as revision")
    page.page.screenshot(path=str(SCREENSHOTS / "settings.png"), full_page=True)
    page.page.goto(f"{page.base}/#/history")
    page.page.wait_for_selector("text=lower tag level")
    page.page.screenshot(path=str(SCREENSHOTS / "history.png"), full_page=True)
    page.page.on("dialog", lambda dialog: dialog.accept())
    page.page.click(f"tr[data-revision='{before}'] >> text=Roll back to this")
    page.page.wait_for_selector(f"text=rollback to revision {before}")
    page.page.goto(f"{page.base}/#/settings/spam")
    assert page.page.wait_for_selector("[data-path='spam.levels.tag']").input_value() == "6"


def test_quarantine_user_sees_only_their_mail(page: Page, ui_gateway: Sandbox,
                                              admin: None) -> None:
    users = Users(CredentialStore.for_layout(ui_gateway.layout))
    if "user@example.test" not in {u.username for u in users.list()}:
        users.add("user@example.test", PASSWORD, "quser")
    mine, theirs = f"For the user {marker()}", f"For the boss {marker()}"
    send(ui_gateway, build(mine, body=f"{GTUBE}\n"))
    send(ui_gateway, build(theirs, body=f"{GTUBE}\n", to="boss@example.test"),
         to=("boss@example.test",))
    wait_quarantined(ui_gateway, mine)
    wait_quarantined(ui_gateway, theirs)
    page.login("user@example.test")
    page.page.wait_for_selector(f"text={mine}")
    assert page.page.query_selector(f"text={theirs}") is None
    assert page.page.query_selector("text=For the boss") is None
    assert page.page.is_hidden("#nav a[href='#/settings']")


def test_dashboard(page: Page, admin: None) -> None:
    page.login("admin")
    page.page.wait_for_selector("text=Mail per hour")
    page.page.wait_for_selector("text=running")
    page.page.screenshot(path=str(SCREENSHOTS / "dashboard.png"), full_page=True)


def test_phone_width(page: Page, admin: None) -> None:
    page.page.set_viewport_size({"width": 380, "height": 800})
    page.login("admin")
    page.page.goto(f"{page.base}/#/quarantine")
    page.page.wait_for_selector("h1:has-text('Quarantine')")
    assert page.page.evaluate("document.documentElement.scrollWidth <= 400")
    assert page.page.is_hidden("#nav")  # collapsed behind the menu button
    page.page.click("#menu-toggle")
    assert page.page.is_visible("#nav a[href='#/quarantine']")


def test_rules_page_tests_a_message(page: Page, admin: None) -> None:
    page.login("admin")
    page.page.goto(f"{page.base}/#/rules")
    page.page.wait_for_selector("text=Block viruses")
    page.page.fill("#to", "user@example.test")
    page.page.fill("#score", "12")
    page.page.click("text=Test against the rules")
    page.page.wait_for_selector("text=by rule \"Quarantine spam\"")
    assert "spam score 12.0 >= quarantine level 10.0" in page.page.inner_text("main")


def test_dkim_key_generated_published_and_signing(page: Page, ui_gateway: Sandbox,
                                                  admin: None) -> None:
    page.login("admin")
    p = page.page
    p.goto(f"{page.base}/#/dkim")
    p.fill("#dkim-selector", "ui2026")
    p.click("text=Generate a 2048-bit RSA key")
    record = p.wait_for_selector("pre.record")
    assert record.inner_text().startswith("v=DKIM1; k=rsa; p=")
    assert "ui2026._domainkey.example.test" in p.inner_text("main")
    p.click("text=Sign outbound mail with this key")
    p.wait_for_selector("text=Outbound mail is signed with 1 key")
    state = yaml.safe_load(ui_gateway.layout.state_file.read_text())
    assert state["dkim"]["sign"][-1]["selector"] == "ui2026"


def test_quarantine_user_turns_on_totp_and_then_needs_it(page: Page, ui_gateway: Sandbox,
                                                         admin: None) -> None:
    users = Users(CredentialStore.for_layout(ui_gateway.layout))
    users.add("totp@example.test", PASSWORD, "quser")
    page.login("totp@example.test")
    p = page.page
    p.goto(f"{page.base}/#/account")
    p.click("text=Set up")
    secret = p.wait_for_selector("#totp-secret").inner_text().replace(" ", "")
    p.fill("#totp-code", pyotp.TOTP(secret).now())
    p.fill("#totp-password", PASSWORD)
    p.click("text=Turn on")
    p.wait_for_selector("text=Two-factor login is on")
    p.click("#logout")
    p.fill("#username", "totp@example.test")
    p.fill("#password", PASSWORD)
    page.expect_http_error(401, "Unauthorized")
    p.click("button[type=submit]")
    p.wait_for_selector("#totp:visible")
    # The code that turned it on is used up: the next one logs in.
    p.fill("#totp", pyotp.TOTP(secret).at(time.time() + 30))
    p.click("button[type=submit]")
    p.wait_for_selector("h1:has-text('Quarantine')")
    # Turning it off asks for the password and a code again.
    p.goto(f"{page.base}/#/account")
    p.click("text=Turn off")
    p.fill("#totp-current", pyotp.TOTP(secret).at(time.time() + 30))
    p.fill("#totp-password", "not the password")
    page.expect_http_error(403, "Forbidden")
    p.click("text=Turn two-factor login off")
    p.wait_for_selector("text=the current password is required and was wrong")
    assert users.get("totp@example.test").totp is True


def test_every_page_and_settings_section_renders(page: Page, admin: None) -> None:
    """Each page and each schema-generated form opens without an error (console errors are
    asserted by the fixture)."""
    from mailwarden.api.settings import SECTIONS

    page.login("admin")
    p = page.page
    for route, heading in (("dashboard", "Dashboard"), ("quarantine", "Quarantine"),
                           ("tracking", "Tracking"), ("rules", "Rules"), ("dkim", "DKIM"),
                           ("history", "History"), ("users", "Users"), ("system", "System"),
                           ("account", "My account"), ("learning", "Learning")):
        p.goto(f"{page.base}/#/{route}")
        p.wait_for_selector(f"h1:has-text('{heading}')")
        assert "Something went wrong" not in p.inner_text("main"), route
    for section in SECTIONS:
        p.goto(f"{page.base}/#/settings/{section}")
        p.wait_for_selector(f"h1:has-text('Settings: {section}')")
        assert p.query_selector("button:has-text('Apply')") is not None, section


def test_networks_settings_say_who_reaches_the_web_ui(page: Page, admin: None) -> None:
    """networks.management decides who reaches 8006: the page shows it, and the fallback to
    the trusted networks when it is empty (the gateway's state sets only trusted)."""
    page.login("admin")
    p = page.page
    p.goto(f"{page.base}/#/settings/networks")
    hint = p.wait_for_selector("#management-hint").inner_text()
    assert "decide who reaches this web UI and the API (port 8006)" in hint
    assert "(none set: the trusted networks)" in hint
    # The harness trusts loopback as well (its own clients).
    assert "Now: 10.20.0.0/16, 127.0.0.1/32." in hint
    assert p.query_selector("[id='networks.management']") is not None


def test_bulk_release_of_500_shows_progress_and_loses_nothing(page: Page, ui_gateway: Sandbox,
                                                              admin: None) -> None:
    q = _quarantine(ui_gateway)
    batch = marker()
    for n in range(500):
        subject = f"Bulk {batch} {n:03d}"
        q.put(build(subject), kind="spam", sender="alice@sender.test",
              recipients=["user@example.test"], lifetime_days=7, subject=subject,
              spam_score=12.0)
    page.login("admin")
    p = page.page
    p.goto(f"{page.base}/#/quarantine")
    p.fill("input[type=search]", batch)
    p.press("input[type=search]", "Enter")
    p.wait_for_selector(f"text=Bulk {batch} 000")
    assert len(p.query_selector_all("tbody tr[data-id]")) == 500
    p.check("input[aria-label='select every message shown']")
    p.click("text=Release selected")
    p.wait_for_selector("[role=progressbar]:visible")
    p.wait_for_selector("text=/Released \\d+ of 500/")
    p.wait_for_selector("text=release: 500 messages", timeout=120_000)
    assert p.query_selector(f"text=Bulk {batch} 000") is None
    ui_gateway.sink.wait_for_marker(f"Bulk {batch}", 500)
    assert len(ui_gateway.sink.containing(f"Bulk {batch}")) == 500


def test_digest_previewed_sent_and_its_links_used(page: Page, ui_gateway: Sandbox,
                                                  admin: None) -> None:
    """An admin previews and sends a recipient's digest; the links in the received mail open
    pages that act only on their button, and the portal link logs the recipient in."""
    import email
    import email.policy
    import re

    def delivered() -> list[bytes]:
        """The message itself at the sink, not the digest that names it."""
        return [m for m in ui_gateway.sink.containing(subject)
                if b"X-Mailwarden-Digest:" not in m]

    recipient = f"digest-{marker()}@example.test"
    subject = f"Digest item {marker()}"
    send(ui_gateway, hostile_spam(subject, to=recipient), to=(recipient,))
    wait_quarantined(ui_gateway, subject)
    page.login("admin")
    p = page.page
    p.goto(f"{page.base}/#/quarantine")
    p.fill("input[aria-label='Digest recipient']", recipient)
    p.click("button:has-text('Preview digest')")
    p.wait_for_selector(f"pre.digest-text:has-text('{subject}')")
    p.screenshot(path=str(SCREENSHOTS / "digest.png"), full_page=True)
    assert ui_gateway.sink.containing(f"held for {recipient}") == []  # a preview sends nothing
    p.click("button:has-text('Send digest now')")
    p.wait_for_selector(f"text=Digest sent to {recipient}")
    [mail] = ui_gateway.sink.wait_for_marker(f"held for {recipient}")
    message = email.message_from_bytes(mail, policy=email.policy.default)
    body = message.get_body(("plain",))
    assert body is not None
    text = body.get_content()
    found = {m.group(1): m.group(0) for m in re.finditer(r"/ticket/(\w+)\?t=\S+", text)}
    assert set(found) == {"release", "delete", "allow", "block", "login"}
    p.click("#logout")
    p.wait_for_selector("button:has-text('Log in')")

    p.goto(page.base + found["release"])
    p.wait_for_selector("h1:has-text('Release this message?')")
    p.screenshot(path=str(SCREENSHOTS / "digest-link.png"), full_page=True)
    time.sleep(2)
    assert delivered() == []  # opening the page delivered nothing

    p.goto(page.base + found["login"])
    p.click("button:has-text('Open the quarantine')")
    p.wait_for_selector(f"text={subject}")
    assert p.inner_text("#who").startswith(recipient)
    p.click(f"text={subject}")
    p.click("text=Release (r)")  # the portal's own action, with the CSRF token it learnt
    p.wait_for_selector("text=release: done")
    deadline = time.monotonic() + 60
    while not delivered():
        assert time.monotonic() < deadline, "the released message did not arrive"
        time.sleep(0.5)
    # The digest's link now says it is done (410) and delivers nothing again.
    import ssl
    import urllib.error
    import urllib.request

    insecure = ssl.create_default_context()
    insecure.check_hostname, insecure.verify_mode = False, ssl.CERT_NONE
    with pytest.raises(urllib.error.HTTPError) as gone:
        urllib.request.urlopen(urllib.request.Request(  # noqa: S310 - our own test server
            page.base + "/ticket/release", data=found["release"].partition("?")[2].encode(),
            method="POST"), context=insecure, timeout=60)
    assert gone.value.code == 410 and b"delivered already" in gone.value.read()
    time.sleep(2)
    assert len(delivered()) == 1


def test_a_user_blocks_a_sender_on_their_list_and_the_next_mail_is_held(
        page: Page, ui_gateway: Sandbox, admin: None) -> None:
    users = Users(CredentialStore.for_layout(ui_gateway.layout))
    name = f"lists-{marker()}@example.test"
    users.add(name, PASSWORD, "quser")
    page.login(name)
    p = page.page
    p.goto(f"{page.base}/#/lists")
    p.wait_for_selector("h1:has-text('My sender lists')")
    assert p.query_selector("input[aria-label='Recipient']") is None  # their own list only
    p.fill("input[aria-label='Sender']", "@pest.example")
    p.select_option("select[aria-label='Allow or block']", "block")
    p.click("button:has-text('Add')")
    p.wait_for_selector("td:has-text('@pest.example')")
    p.screenshot(path=str(SCREENSHOTS / "lists.png"), full_page=True)
    held = f"From a pest {marker()}"
    send(ui_gateway, build(held, sender="news@pest.example", to=name),
         sender="news@pest.example", to=(name,))
    entry = wait_quarantined(ui_gateway, held)
    assert (entry.kind, entry.rule) == ("blocked", "user-blocklist")
    # Off the list again: the next one is delivered.
    p.click("button[aria-label='Remove @pest.example']")
    p.wait_for_selector("text=No entries.")
    passed = f"After the list {marker()}"
    send(ui_gateway, build(passed, sender="news@pest.example", to=name),
         sender="news@pest.example", to=(name,))
    ui_gateway.sink.wait_for_marker(passed)


NOT_IN_TABLE = "(text) => !document.querySelector('tbody').innerText.includes(text)"


def test_staff_keep_the_global_lists_and_the_next_mail_is_held_for_everyone(
        browser: object, page: Page, ui_gateway: Sandbox, admin: None) -> None:
    users = Users(CredentialStore.for_layout(ui_gateway.layout))
    manager, helper = f"gl-qm-{marker()}", f"gl-hd-{marker()}"
    users.add(manager, PASSWORD, "qmanager")
    users.add(helper, PASSWORD, "helpdesk")
    domain = f"{marker()}.example"
    page.login(manager)
    p = page.page
    p.goto(f"{page.base}/#/lists")
    p.click("nav[aria-label='Which sender lists'] a:has-text('Global')")
    p.wait_for_selector("a[aria-current='page']:has-text('Global')")
    p.fill("input[aria-label='Sender']", f"@{domain}")
    p.select_option("select[aria-label='Allow or block']", "block")
    p.click("button:has-text('Add')")
    p.wait_for_selector(f"td:has-text('@{domain}')")
    p.fill("input[aria-label='Sender']", "partner@friends.example")
    p.select_option("select[aria-label='Allow or block']", "allow")
    p.click("button:has-text('Add')")
    p.wait_for_selector("td:has-text('partner@friends.example')")
    # A domain is written @domain: the API's message appears next to the form.
    page.expect_http_error(400, "Bad Request")
    p.fill("input[aria-label='Sender']", domain)
    p.click("button:has-text('Add')")
    p.wait_for_selector("p.errors[role='alert']:not(:empty)")
    p.fill("input[aria-label='Search global lists']", "friends")
    p.press("input[aria-label='Search global lists']", "Enter")
    p.wait_for_function(NOT_IN_TABLE, arg=f"@{domain}")
    assert p.locator("tbody tr").count() == 1
    p.fill("input[aria-label='Search global lists']", "")
    p.press("input[aria-label='Search global lists']", "Enter")
    p.wait_for_selector(f"td:has-text('@{domain}')")
    p.screenshot(path=str(SCREENSHOTS / "lists-global.png"), full_page=True)
    held = f"From a globally blocked sender {marker()}"
    recipient = f"anyone-{marker()}@example.test"
    send(ui_gateway, build(held, sender=f"news@{domain}", to=recipient),
         sender=f"news@{domain}", to=(recipient,))
    entry = wait_quarantined(ui_gateway, held)
    assert (entry.kind, entry.rule) == ("blocked", "global-blocklist")
    # The help desk reads the global lists; only admins and quarantine managers change them.
    reader = Page(browser, page.base)
    try:
        reader.login(helper)
        reader.page.goto(f"{page.base}/#/lists/global")
        reader.page.wait_for_selector(f"td:has-text('@{domain}')")
        assert reader.page.query_selector("input[aria-label='Sender']") is None
        assert reader.page.query_selector(f"button[aria-label='Remove @{domain}']") is None
    finally:
        reader.context.close()
    assert reader.errors == []
    p.click(f"button[aria-label='Remove @{domain}']")
    p.wait_for_function(NOT_IN_TABLE, arg=f"@{domain}")
    passed = f"After the global list {marker()}"
    send(ui_gateway, build(passed, sender=f"news@{domain}", to=recipient),
         sender=f"news@{domain}", to=(recipient,))
    ui_gateway.sink.wait_for_marker(passed)


def test_a_quarantine_user_never_sees_the_global_lists(
        page: Page, ui_gateway: Sandbox, admin: None) -> None:
    name = f"gl-user-{marker()}@example.test"
    Users(CredentialStore.for_layout(ui_gateway.layout)).add(name, PASSWORD, "quser")
    page.login(name)
    p = page.page
    p.goto(f"{page.base}/#/lists/global")
    p.wait_for_selector("h1:has-text('My sender lists')")
    assert p.query_selector("a:has-text('Global')") is None
    assert p.query_selector("th:has-text('Added by')") is None


def test_a_user_without_a_password_gets_in_by_a_link_by_mail(
        page: Page, ui_gateway: Sandbox, admin: None) -> None:
    """Nobody made this person an account: their mail was quarantined, they ask for a login
    link on the front page, follow it from the received mail and see their own quarantine."""
    import email
    import email.policy
    import re

    recipient = f"nopass-{marker()}@example.test"
    subject = f"Held for a stranger {marker()}"
    send(ui_gateway, hostile_spam(subject, to=recipient), to=(recipient,))
    wait_quarantined(ui_gateway, subject)
    p = page.page
    p.goto(f"{page.base}/#/login")
    p.fill("#link-address", recipient)
    p.click("button:has-text('Send me a login link')")
    p.wait_for_selector("text=a login link is on its way")
    p.screenshot(path=str(SCREENSHOTS / "login-link.png"), full_page=True)
    [mail] = ui_gateway.sink.wait_for_marker(f"Your quarantine login link for {recipient}")
    message = email.message_from_bytes(mail, policy=email.policy.default)
    body = message.get_body(("plain",))
    assert body is not None
    link = re.search(r"/ticket/login\?t=\S+", body.get_content())
    assert link, body.get_content()
    p.goto(page.base + link.group(0))
    p.click("button:has-text('Open the quarantine')")
    p.wait_for_selector(f"text={subject}")
    assert p.inner_text("#who") == f"{recipient} (quser)"


def test_two_aliases_one_quarantine_reached_by_a_link(page: Page, ui_gateway: Sandbox,
                                                      admin: None) -> None:
    """An admin gives a quarantine user a second address; the user asks for a login link for
    it, follows the link from the mail, sees the mail of both addresses and nobody else's,
    releases one message and blocks the other's sender: that sender's next message is held."""
    import email
    import email.policy
    import re

    name, alias = f"ali-{marker()}@example.test", f"alias-{marker()}@example.test"
    Users(CredentialStore.for_layout(ui_gateway.layout)).add(name, PASSWORD, "quser")
    page.login("admin")
    p = page.page
    p.goto(f"{page.base}/#/users")
    p.fill(f"input[aria-label='New address for {name}']", alias)
    p.click(f"tr:has-text('{name}') button:has-text('Add address')")
    p.wait_for_selector(f"text={alias}")
    p.screenshot(path=str(SCREENSHOTS / "users-aliases.png"), full_page=True)
    p.click("#logout")
    p.wait_for_selector("button:has-text('Log in')")

    first, second, other = (f"{what} {marker()}" for what in ("Alias one", "Alias two", "Not mine"))
    pest = f"pest-{marker()}@sender.test"
    send(ui_gateway, hostile_spam(first, to=name), to=(name,))
    send(ui_gateway, build(second, body=f"{GTUBE}\n", sender=pest, to=alias), sender=pest,
         to=(alias,))
    send(ui_gateway, hostile_spam(other, to="boss@example.test"), to=("boss@example.test",))
    for subject in (first, second, other):
        wait_quarantined(ui_gateway, subject)

    p.goto(f"{page.base}/#/login")
    p.fill("#link-address", alias)
    p.click("button:has-text('Send me a login link')")
    p.wait_for_selector("text=a login link is on its way")
    [mail] = ui_gateway.sink.wait_for_marker(f"Your quarantine login link for {alias}")
    body = email.message_from_bytes(mail, policy=email.policy.default).get_body(("plain",))
    assert body is not None
    link = re.search(r"/ticket/login\?t=\S+", body.get_content())
    assert link
    p.goto(page.base + link.group(0))
    p.click("button:has-text('Open the quarantine')")
    p.wait_for_selector(f"text={first}")
    p.wait_for_selector(f"text={second}")
    assert p.query_selector(f"text={other}") is None
    assert p.inner_text("#who") == f"{name} (quser)"

    p.click(f"text={first}")
    p.click("text=Release (r)")
    p.wait_for_selector("text=release: done")
    p.click(f"text={second}")
    p.click("text=Always block sender")
    p.wait_for_selector("text=block: done")
    following = f"From the pest again {marker()}"
    send(ui_gateway, build(following, sender=pest, to=alias), sender=pest, to=(alias,))
    held = wait_quarantined(ui_gateway, following)
    assert (held.kind, held.recipients) == ("blocked", {alias: "new"})


# --- notifications ---


def test_notification_settings_refuse_nobody_and_send_a_test(page: Page, ui_gateway: Sandbox,
                                                             admin: None) -> None:
    """The notifications' page: one turned on with nobody to send it to is refused at the
    recipients' field; with a recipient it applies, and the test notification reaches the
    sink; the report is previewed."""
    page.login("admin")
    p = page.page
    p.goto(f"{page.base}/#/settings/notifications")
    p.wait_for_selector("h1:has-text('Settings: notifications')")
    p.check("[id='notifications.daily_report.enabled']")
    page.expect_http_error(400, "Bad Request")
    p.click("text=Apply")
    error = p.wait_for_selector(
        "[data-error-for='notifications.recipients']:has-text('nobody to send it to')")
    assert error.is_visible()
    admin_box = f"ops-{marker()}@example.test"
    p.fill("[id='notifications.recipients']", admin_box)
    p.fill("#comment", "daily report to the operators")
    p.click("text=Apply")
    p.wait_for_selector("text=Applied as revision")
    p.click("text=Send a test notification")
    p.wait_for_selector(f"text=Test notification sent to {admin_box}")
    [received] = ui_gateway.sink.wait_for_marker(admin_box)
    assert b"X-Mailwarden-Notification: test" in received
    assert b"Turned on: daily_report.enabled." in received
    p.click("text=Preview the daily report")
    p.wait_for_selector("#notification-output >> text=Daily report of mx.example.test")
    p.screenshot(path=str(SCREENSHOTS / "notifications.png"), full_page=True)
    p.click("text=Check service alerts")
    p.wait_for_selector("#notification-output >> text=alert condition")
# --- end of notifications ---
# --- learning: a quarantine user's release as ham, an uploaded delivered copy as spam ------
# (GTUBE is no use here: Rspamd answers "success" to learning it and learns nothing.)


def _bayes_counts(gw: Sandbox) -> BayesCounts:
    """Read from Redis by the agent's own reader, in a thread of its own: Playwright's sync
    API keeps an event loop running in this one."""
    learner = Learner(gw.layout.ports.rspamd_controller, gw.layout.ports.redis,
                      lambda: load_state_file(gw.layout.state_file).spam.bayes)
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(learner.counts).result()


def test_release_as_ham_and_an_uploaded_spam_raise_the_learned_counts(
        page: Page, ui_gateway: Sandbox, admin: None, tmp_path: Path) -> None:
    users = Users(CredentialStore.for_layout(ui_gateway.layout))
    if "learner@example.test" not in {u.username for u in users.list()}:
        users.add("learner@example.test", PASSWORD, "quser")
    # A spam of ordinary words, as the filter holds it.
    subject = f"Garden furniture offer {uuid.uuid4().hex[:8]}"
    Quarantine(Database(ui_gateway.layout.database), ui_gateway.layout.quarantine_dir).put(
        build(subject, body=TEXT, to="learner@example.test"), kind="spam",
        sender="alice@sender.test", recipients=["learner@example.test"], lifetime_days=7,
        subject=subject, spam_score=12.5)
    before = _bayes_counts(ui_gateway)
    page.login("learner@example.test")
    p = page.page
    p.click(f"text={subject}")
    p.click("button:has-text('Release and learn as not spam')")
    p.wait_for_selector("text=Learned as ham, released")
    ui_gateway.sink.wait_for_marker(subject)
    assert _bayes_counts(ui_gateway).ham == before.ham + 1

    # A clean message is delivered; its copy from the mailbox is uploaded as spam.
    clean = f"Delivered newsletter {uuid.uuid4().hex[:8]}"
    send(ui_gateway, build(clean, body=TEXT.replace("garden", "patio")))
    [delivered] = ui_gateway.sink.wait_for_marker(clean)
    copy = tmp_path / "delivered.eml"
    copy.write_bytes(delivered)
    p.click("#logout")
    p.wait_for_selector("button:has-text('Log in')")
    page.login("admin")
    p.goto(f"{page.base}/#/learning")
    p.wait_for_selector("h1:has-text('Learning')")
    ham_card = p.locator(".card", has_text="Learned as ham")
    assert ham_card.locator(".value").inner_text() == str(before.ham + 1)
    p.select_option("select[name=kind]", "spam")
    p.set_input_files("input[name=files]", str(copy))
    p.click("button:has-text('Learn')")
    p.wait_for_selector("text=Learning as spam: done")
    after = _bayes_counts(ui_gateway)
    assert after.spam == before.spam + 1
    spam_card = p.locator(".card", has_text="Learned as spam")
    spam_card.locator(f".value:text-is('{after.spam}')").wait_for()
    row = p.locator("tr", has_text="delivered.eml")
    assert row.locator("td").nth(2).inner_text() == "1"
    # The audit log's entries: the upload, and the quarantine user's release.
    recent = p.inner_text("table.responsive")
    assert "1 uploaded" in recent and "learner@example.test" in recent
    p.screenshot(path=str(SCREENSHOTS / "learning.png"), full_page=True)
