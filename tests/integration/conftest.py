"""Fixtures that run the real daemons (Debian's Postfix, Rspamd, ClamAV, Redis, Unbound,
NSD) as private instances from our own rendered configs."""

from __future__ import annotations

import shutil
import smtplib
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mailwarden_dev.instance import Sandbox

pytestmark = pytest.mark.integration

REQUIRED = ["postfix", "rspamd", "clamd", "redis-server", "unbound", "nsd", "smtp-sink"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    missing = [tool for tool in REQUIRED if shutil.which(tool) is None
               and not Path("/usr/sbin", tool).exists()]
    if missing:
        # `./build.sh test` installs them; a missing daemon is a broken setup, not a skip.
        raise pytest.UsageError(f"integration tier needs {', '.join(missing)}: run ./build.sh test")


def state_for(sandbox: Sandbox, extra: str = "") -> str:
    """A small state relaying example.test to the sandbox's sink."""
    return f"""\
version: 1
system:
  hostname: mx.example.test
networks:
  trusted: [10.20.0.0/16]
domains:
  - name: example.test
    transport: {{host: 127.0.0.1, port: {sandbox.sink.port}, tls: none}}
spam:
  fuzzy_check: false
{extra}"""


@pytest.fixture(scope="module")
def sandbox_root() -> Iterator[Path]:
    # Not pytest's tmp_path: the daemons' users must be able to traverse the folder.
    root = Path(tempfile.mkdtemp(prefix="mw-it-", dir="/tmp"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def gateway(sandbox_root: Path) -> Iterator[Sandbox]:
    """A running sandbox without the agent's filter (that comes with the mail path)."""
    sandbox = Sandbox(sandbox_root / "gw", agent_services=False)
    sandbox.start(state_for(sandbox))
    try:
        yield sandbox
    finally:
        sandbox.stop()


SendMail = Callable[..., str]


@pytest.fixture
def send_mail() -> SendMail:
    def send(port: int, to: str = "user@example.test", sender: str = "someone@sender.test",
             subject: str | None = None) -> str:
        marker = subject or f"mailwarden-test-{uuid.uuid4().hex}"
        body = f"From: {sender}\r\nTo: {to}\r\nSubject: {marker}\r\n\r\nhello\r\n"
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
            smtp.sendmail(sender, [to], body.encode())
        return marker

    return send
