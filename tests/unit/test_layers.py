"""The layer order in pyproject.toml ([tool.importlinter]) holds, and its check can fail."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    """lint-imports over tree's agent/ with tree's pyproject.toml, nothing else on the path."""
    env = {**os.environ, "PYTHONPATH": str(tree / "agent")}
    return subprocess.run([LINT_IMPORTS, "--no-cache", "--config", tree / "pyproject.toml"],
                          cwd=tree, env=env, capture_output=True, text=True, timeout=300,
                          check=False)


def test_the_tree_keeps_its_layers() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def _copy(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    shutil.copytree(ROOT / "agent", tree / "agent",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy(ROOT / "pyproject.toml", tree / "pyproject.toml")
    return tree


def test_a_back_import_breaks_the_layers(tmp_path: Path) -> None:
    tree = _copy(tmp_path)
    layout = tree / "agent" / "mailwarden" / "layout.py"
    layout.write_text(layout.read_text() + "\nfrom mailwarden import api  # noqa: E402\n")
    result = lint_imports(tree)
    assert result.returncode != 0
    assert "Layers: " in result.stdout and "BROKEN" in result.stdout
    assert "mailwarden.layout -> mailwarden.api" in result.stdout, result.stdout


def test_importing_the_harness_breaks_the_product(tmp_path: Path) -> None:
    tree = _copy(tmp_path)
    view = tree / "agent" / "mailwarden" / "render" / "view.py"
    view.write_text(view.read_text() + "\nimport mailwarden_dev.control  # noqa: E402\n")
    result = lint_imports(tree)
    assert result.returncode != 0
    assert "mailwarden.render.view -> mailwarden_dev" in result.stdout, result.stdout
