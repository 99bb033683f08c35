"""firstboot/: the example answer files are valid, the README names every field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import BaseModel

from mailwarden.firstboot.answers import (
    AdminAnswer,
    Answers,
    DomainAnswer,
    NetworkAnswer,
    answers_schema,
    load_answers,
)

FIRSTBOOT = Path(__file__).resolve().parents[2] / "firstboot"
EXAMPLES = sorted((FIRSTBOOT / "examples").glob("*.yaml"))


def test_there_are_examples() -> None:
    assert len(EXAMPLES) >= 2


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_validates(path: Path) -> None:
    answers = load_answers(path.read_text(encoding="utf-8"), str(path))
    assert answers.domains


@pytest.mark.parametrize("model", [Answers, NetworkAnswer, AdminAnswer, DomainAnswer],
                         ids=lambda m: m.__name__)
def test_readme_describes_every_field(model: type[BaseModel]) -> None:
    readme = (FIRSTBOOT / "README.md").read_text(encoding="utf-8")
    missing = [name for name in model.model_fields if f"`{name}`" not in readme]
    assert not missing, f"firstboot/README.md does not describe {missing}"


def test_schema_is_json_with_every_field() -> None:
    schema = json.loads(answers_schema())
    assert set(schema["properties"]) == set(Answers.model_fields)
    assert schema["additionalProperties"] is False
