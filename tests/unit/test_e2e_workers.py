"""The e2e tier's worker split (tests/e2e/workers.py): xdist must keep the gateway module on
one worker and put every other module on the other. Runs a small suite under real xdist."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.e2e.workers import GATEWAY, OTHERS, group_of

ROOT = Path(__file__).resolve().parents[2]
MODULE = '''
import os
import pytest

@pytest.mark.parametrize("i", range(4))
def test_where(i):
    with open(os.environ["WHERE"], "a") as log:
        log.write(f"{__name__} {os.environ['PYTEST_XDIST_WORKER']}\\n")
'''


def test_group_of() -> None:
    assert group_of("tests/e2e/test_gateway.py::test_lynis") == GATEWAY
    assert group_of("tests/e2e/test_install.py::test_smtp[secureboot]") == OTHERS
    assert group_of("tests/e2e/test_plain_boots.py::test_x[test_gateway.py]") == OTHERS


def test_gateway_alone_on_one_worker(tmp_path: Path) -> None:
    suite = tmp_path / "suite"
    suite.mkdir()
    for name in ("test_console", "test_gateway", "test_install", "test_plain_boots"):
        (suite / f"{name}.py").write_text(MODULE)
    where = tmp_path / "where"
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                    "-p", "tests.e2e.workers", "-n", "2", "--dist", "loadscope", str(suite)],
                   cwd=ROOT, env={"WHERE": str(where), "PATH": "/usr/bin:/bin",
                                  "PYTHONPATH": str(ROOT)},
                   check=True, capture_output=True, timeout=300)
    workers: dict[str, set[str]] = {}
    for line in where.read_text().splitlines():
        module, worker = line.split()
        workers.setdefault(module, set()).add(worker)
    assert len(workers) == 4 and all(len(w) == 1 for w in workers.values()), workers
    (gateway,) = workers.pop("test_gateway")
    others = set().union(*workers.values())
    assert others == {"gw0", "gw1"} - {gateway}, workers
