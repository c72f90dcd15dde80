"""scripts/test_lanes.py: `make test`'s lanes, at most N at a time, in the order given."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "test_lanes.py"


def _lanes(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120)


def _lane(name: str, marks: Path, body: str = "") -> str:
    """A lane that writes `start NAME`, sleeps, runs BODY, then writes `end NAME` to MARKS."""
    return f"{name}=echo start {name} >> {marks}; sleep 1; {body} echo end {name} >> {marks}"


def test_one_slot_runs_the_lanes_one_after_another_in_order(tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    proc = _lanes("--jobs", "1", str(tmp_path / "logs"), _lane("a", marks), _lane("b", marks))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert marks.read_text().split("\n")[:-1] == ["start a", "end a", "start b", "end b"]
    assert (tmp_path / "logs" / "a.log").exists() and "===== end of lane b =====" in proc.stdout


def test_two_slots_overlap_and_a_third_lane_waits_for_a_free_one(tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    lanes = [_lane(n, marks) for n in ("a", "b", "c")]
    proc = _lanes("--jobs", "2", str(tmp_path / "logs"), *lanes)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    order = marks.read_text().split("\n")[:-1]
    assert set(order[:2]) == {"start a", "start b"}  # both before either ends
    assert order.index("start c") > min(order.index("end a"), order.index("end b"))


def test_a_failing_lane_fails_the_whole_and_the_others_still_run(tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    proc = _lanes("--jobs", "1", str(tmp_path / "logs"), _lane("bad", marks, "exit 3;"), _lane("good", marks))
    assert proc.returncode == 1
    assert "end good" in marks.read_text() and "end bad" not in marks.read_text()
    assert "bad          FAILED (exit 3)" in proc.stdout and "good         passed" in proc.stdout


def test_jobs_must_be_a_positive_integer(tmp_path: Path) -> None:
    proc = _lanes("--jobs", "0", str(tmp_path), "a=true")
    assert proc.returncode != 0 and "--jobs needs a positive integer" in proc.stderr


def test_the_table_gives_each_lanes_cpu_time_and_the_cores_busy_share(tmp_path: Path) -> None:
    # a lane whose child process burns ~1 s of CPU: the lane's CPU counts its waited-for children
    loop = 'import time; t = time.process_time(); exec("while time.process_time() - t < 1: pass")'
    burn = f"{sys.executable} -c '{loop}'"
    proc = _lanes("--jobs", "2", str(tmp_path / "logs"), f"burn={burn}", "idle=sleep 1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = {line.split()[0]: line.split() for line in proc.stdout.splitlines() if line.startswith("  ")}
    assert float(rows["burn"][-2]) >= 1 and float(rows["idle"][-2]) < 1, proc.stdout
    assert "lane burn: exit 0 after" in proc.stdout and "s of CPU); its output" in proc.stdout
    busy = [line for line in proc.stdout.splitlines() if "cores busy:" in line]
    assert busy and ("% of" in busy[0] or "unknown" in busy[0]), proc.stdout
