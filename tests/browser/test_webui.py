"""The web UI end to end: log in, dashboard, quarantine preview (no script, nothing remote),
release to the sink, settings applied and rolled back, a quarantine user's own view."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mailwarden.sandbox.instance import Sandbox
from mailwarden.store.db import Database
from mailwarden.store.quarantine import Quarantine

from .conftest import PASSWORD

SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
HOSTILE = b"""From: Eve <eve@sender.test>\r
To: user@example.test\r
Subject: Hostile preview test\r
MIME-Version: 1.0\r
Content-Type: text/html; charset=utf-8\r
\r
<p>Hello <b>there</b></p><script>parent.document.title = "pwned"; fetch("http://tracker.example/x")</script>\r
<img src="http://tracker.example/pixel.gif" onerror="parent.document.title='pwned'">\r
"""


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

    def login(self, username: str) -> None:
        self.page.goto(f"{self.base}/#/login")
        self.page.fill("#username", username)
        self.page.fill("#password", PASSWORD)
        self.page.click("button[type=submit]")
        self.page.wait_for_selector("#who")
        self.page.wait_for_function("document.getElementById('who').textContent.length > 0")


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
    return Quarantine(Database(gw.layout.database),
                      gw.layout.quarantine_dir)


def test_dashboard(page: Page) -> None:
    page.login("admin")
    page.page.wait_for_selector("text=Mail per hour")
    page.page.wait_for_selector("text=running")
    page.page.screenshot(path=str(SCREENSHOTS / "dashboard.png"), full_page=True)


def test_quarantine_preview_runs_nothing_and_release_delivers(page: Page,
                                                                ui_gateway: Sandbox) -> None:
    qid = _quarantine(ui_gateway).put(HOSTILE, kind="spam", sender="eve@sender.test",
                                      recipients=["user@example.test"], lifetime_days=7,
                                      subject="Hostile preview test", spam_score=11.5)
    page.login("admin")
    page.page.goto(f"{page.base}/#/quarantine")
    page.page.click("text=Hostile preview test")
    frame_el = page.page.wait_for_selector("iframe[title='Message preview']")
    frame = frame_el.content_frame()
    frame.wait_for_selector("b")
    assert frame.inner_text("p").startswith("Hello")
    assert frame_el.get_attribute("sandbox") == ""
    assert "pwned" not in page.page.title()
    assert frame.query_selector("script") is None
    assert frame.query_selector("img[src]") is None
    page.page.screenshot(path=str(SCREENSHOTS / "quarantine.png"), full_page=True)
    before = len(ui_gateway.sink.containing("Hostile preview test"))
    page.page.click("text=Release (r)")
    page.page.wait_for_selector("text=release: done")
    ui_gateway.sink.wait_for_marker("Hostile preview test", before + 1)
    assert _quarantine(ui_gateway).get(qid).recipients == {"user@example.test": "released"}


def test_settings_apply_shows_field_errors_and_rolls_back(page: Page) -> None:
    page.login("admin")
    page.page.goto(f"{page.base}/#/settings/spam")
    tag = page.page.wait_for_selector("[data-path='spam.levels.tag']")
    tag.fill("30")
    # Chromium logs the API's 400 for the invalid value; that one is the point of the test.
    page.expected.append("Failed to load resource: the server responded with a status of 400 "
                         "(Bad Request)")
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
    page.page.click("tr[data-revision='1'] >> text=Roll back to this")
    page.page.wait_for_selector("text=rollback to revision 1")
    page.page.goto(f"{page.base}/#/settings/spam")
    assert page.page.wait_for_selector("[data-path='spam.levels.tag']").input_value() == "6"


def test_quarantine_user_sees_only_their_mail(page: Page, ui_gateway: Sandbox) -> None:
    q = _quarantine(ui_gateway)
    q.put(b"Subject: For the user\r\n\r\nx", kind="spam", sender="s@sender.test",
          recipients=["user@example.test"], lifetime_days=7, subject="For the user")
    q.put(b"Subject: For the boss\r\n\r\nx", kind="spam", sender="s@sender.test",
          recipients=["boss@example.test"], lifetime_days=7, subject="For the boss")
    page.login("user@example.test")
    page.page.wait_for_selector("text=For the user")
    assert page.page.query_selector("text=For the boss") is None
    assert page.page.is_hidden("#nav a[href='#/settings']")


def test_phone_width(page: Page) -> None:
    page.page.set_viewport_size({"width": 380, "height": 800})
    page.login("admin")
    page.page.goto(f"{page.base}/#/quarantine")
    page.page.wait_for_selector("h1:has-text('Quarantine')")
    assert page.page.evaluate("document.documentElement.scrollWidth <= 400")
    assert page.page.is_hidden("#nav")  # collapsed behind the menu button
    page.page.click("#menu-toggle")
    assert page.page.is_visible("#nav a[href='#/quarantine']")


def test_rules_page_tests_a_message(page: Page) -> None:
    page.login("admin")
    page.page.goto(f"{page.base}/#/rules")
    page.page.wait_for_selector("text=Block viruses")
    page.page.fill("#to", "user@example.test")
    page.page.fill("#score", "12")
    page.page.click("text=Test against the rules")
    page.page.wait_for_selector("text=by rule \"Quarantine spam\"")
    assert "spam score 12.0 >= quarantine level 10.0" in page.page.inner_text("main")
    page.page.screenshot(path=str(SCREENSHOTS / "rules.png"), full_page=True)
