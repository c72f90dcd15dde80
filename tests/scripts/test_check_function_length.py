"""scripts/check_function_length.py: the size guard of `make lint`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "check_function_length.py"


def _check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60)


def test_a_long_function_or_method_fails_naming_it(tmp_path: Path) -> None:
    method_body = "\n".join(f"        x{i} = {i}" for i in range(80))  # def + 80 lines = 81
    function_body = "\n".join(f"    y{i} = {i}" for i in range(79))  # def + 79 lines = 80: allowed
    (tmp_path / "m.py").write_text(
        "def short():\n    return 1\n\n\nclass C:\n    def long(self):\n"
        f"{method_body}\n\n\ndef exactly_80():\n{function_body}\n"
    )
    proc = _check(str(tmp_path))
    assert proc.returncode == 1
    assert proc.stdout.splitlines() == [f"{tmp_path / 'm.py'}:6: C.long is 81 lines (max 80)"]


def test_the_project_passes() -> None:
    proc = _check(str(REPO / "src"), str(REPO / "plugins"))
    assert proc.returncode == 0, proc.stdout
