"""Browser tier: the web UI in Debian's headless Chromium, driven by Playwright, against a
running sandbox (gunicorn serving the API and the UI over HTTPS)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailwarden.firstboot import setupcode
from mailwarden_dev.instance import Sandbox

from ..integration.conftest import state_for
from ..integration.test_mail_path import EXTRA

CHROMIUM = "/usr/bin/chromium"
PASSWORD = "correct horse battery"
_REPO = Path(__file__).resolve().parents[2]
# A plain run writes its screenshots under out/ (ignored by git) so the tracked ones in
# docs/screenshots change only when someone asks: MAILWARDEN_REFRESH_SCREENSHOTS=1.
SCREENSHOTS = (
    _REPO / "docs" / "screenshots"
    if os.environ.get("MAILWARDEN_REFRESH_SCREENSHOTS") == "1"
    else _REPO / "out" / "screenshots"
)


@pytest.fixture(scope="session", autouse=True)
def screenshot_dir() -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS


@pytest.fixture(scope="session")
def ui_gateway() -> Iterator[Sandbox]:
    root = Path(tempfile.mkdtemp(prefix="mw-ui-", dir="/tmp"))
    root.chmod(0o755)
    # The whole gateway, filter included: mail sent over SMTP reaches the quarantine the UI
    # shows. Like a fresh appliance it has no admin: the first-run wizard makes one.
    sandbox = Sandbox(root / "gw", agent_services=True, api=True)
    sandbox.start(state_for(sandbox, EXTRA))
    setupcode.issue(sandbox.layout.setup_code)
    try:
        yield sandbox
    finally:
        sandbox.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        yield browser
        browser.close()
