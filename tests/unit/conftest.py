"""Fixtures several unit modules share."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailwarden_dev.instance import Sandbox


@pytest.fixture
def fresh() -> Iterator[Sandbox]:
    """A new sandbox that was never set up (under /tmp: its services' users must reach it)."""
    root = Path(tempfile.mkdtemp(prefix="mw-fresh-", dir="/tmp"))
    root.chmod(0o755)
    sandbox = Sandbox(root / "sb")
    sandbox.prepare(None)
    yield sandbox
    shutil.rmtree(root, ignore_errors=True)
