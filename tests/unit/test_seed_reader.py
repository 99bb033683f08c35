"""Seed files are read by root at first boot with the same bounded reader as state files."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailwarden.errors import StateError
from mailwarden.firstboot import seed

BILLION_LAUGHS = """\
version: 1
a: &a ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]
c: [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]
"""


@pytest.mark.parametrize("wrap", [False, True])
def test_a_seed_with_aliases_is_refused_with_its_line(wrap: bool) -> None:
    text = BILLION_LAUGHS
    if wrap:
        text = "#cloud-config\nmailwarden:\n" + "".join(f"  {line}\n"
                                                      for line in text.splitlines())
    with pytest.raises(StateError) as info:
        seed.answers_from_text(text, "cidata:/dev/sr0")
    error = info.value.errors[0]
    assert "alias" in error.message or "anchor" in error.message
    assert error.line == (4 if wrap else 2)


def test_a_signature_name_with_a_trailing_newline_is_not_copied(tmp_path: Path) -> None:
    (tmp_path / "mailwarden.yaml").write_text("version: 1\n")
    (tmp_path / "clamav").mkdir()
    (tmp_path / "clamav" / "good.hdb").write_text("44d88612fea8a8f36de82e1278abb02f:68:E\n")
    (tmp_path / "clamav" / "evil.hdb\n").write_text("44d88612fea8a8f36de82e1278abb02f:68:E\n")
    found = seed.read_seed_dir(tmp_path, "cidata")
    assert found is not None and sorted(found.signatures) == ["good.hdb"]
