"""tests/conftest.py's choice of environment: TRAINER_MODULES and the modules' own markers agree."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.conftest import LANES, STACKS_MODULES, TESTS, TRAINER_MODULES, lane_of


def _marks_itself(path: Path, mark: str) -> bool:
    """True when the module assigns ``pytestmark`` a value that names ``pytest.mark.<mark>``."""
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets
        ):
            return f"pytest.mark.{mark}" in ast.unparse(node.value)
    return False


def test_trainer_modules_are_declared_and_marked() -> None:
    marked = {
        p.relative_to(TESTS).as_posix() for p in TESTS.rglob("test_*.py") if _marks_itself(p, "trainer")
    }
    assert marked == set(TRAINER_MODULES)
    assert all((TESTS / m).is_file() for m in TRAINER_MODULES)


class _Item:
    """What `lane_of` reads of a collected test: its file and its markers."""

    def __init__(self, module: str, *marks: str) -> None:
        self.fspath = TESTS / module
        self.marks = set(marks)

    def get_closest_marker(self, name: str) -> object | None:
        return name if name in self.marks else None


@pytest.mark.parametrize(
    ("module", "marks", "lane"),
    [
        ("test_cli.py", (), "units"),
        ("docker/test_trainer_image.py", ("docker",), "docker"),
        ("docker/test_trainer_image.py", ("docker", "e2e"), "docker"),
        ("e2e/test_nightly_demo.py", ("e2e",), "e2e"),
        ("e2e/test_celery_approval.py", ("e2e",), "e2e"),
        ("e2e/test_celery_scheduler.py", ("e2e",), "stacks"),
        ("e2e/test_worker_kill.py", ("e2e",), "stacks"),
    ],
)
def test_each_test_is_in_exactly_one_lane(module: str, marks: tuple[str, ...], lane: str) -> None:
    assert lane_of(_Item(module, *marks)) == lane
    assert lane in LANES


def test_the_stacks_lane_names_modules_that_exist_and_are_e2e() -> None:
    for module in STACKS_MODULES:
        assert _marks_itself(TESTS / module, "e2e"), module


def test_make_test_runs_each_stacks_module_in_a_lane_of_its_own() -> None:
    """The Makefile splits `--lane stacks` by module; a module added to STACKS_MODULES without its line
    there would never run."""
    makefile = (TESTS.parent / "Makefile").read_text(encoding="utf-8")
    paths = re.findall(r"\$\(PYTEST_LANE\) stacks (\S+)'", makefile)
    assert sorted(paths) == sorted(f"tests/{m}" for m in STACKS_MODULES)
    assert len(set(paths)) == len(paths)
