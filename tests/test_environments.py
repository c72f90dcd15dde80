"""tests/conftest.py's choice of environment: TRAINER_MODULES and the modules' own markers agree."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import TESTS, TRAINER_MODULES


def _marks_itself_trainer(path: Path) -> bool:
    """True when the module assigns ``pytestmark`` a value that names ``pytest.mark.trainer``."""
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets
        ):
            return "pytest.mark.trainer" in ast.unparse(node.value)
    return False


def test_trainer_modules_are_declared_and_marked() -> None:
    marked = {p.relative_to(TESTS).as_posix() for p in TESTS.rglob("test_*.py") if _marks_itself_trainer(p)}
    assert marked == set(TRAINER_MODULES)
    assert all((TESTS / m).is_file() for m in TRAINER_MODULES)
