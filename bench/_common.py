"""Shared helpers of the bench scripts: paths, load average, the `--json` result line, and the
parser of `airflow dags test` logs (task timelines from the log's own timestamps).

Every bench prints its human report, and with ``--json`` one last line on stdout::

    {"bench": NAME, "rows": [{"metric", "value", "unit", "baseline", "ratio", "note"}], "details": {...}}

which `run_all.py` collects into one table. ``baseline`` is what the value is compared with, measured in
the same run; ``ratio`` is ``value / baseline`` unless the row says otherwise.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # the test harness (tests.support: moto, Airflow env, tiny model, synth)
    sys.path.insert(0, str(REPO))
AF_PY = REPO / ".venv-af" / "bin" / "python"
TR_PY = REPO / ".venv-tr" / "bin" / "python"
BENCH_WORK = REPO / ".work" / "bench"
#: The tasks of ner_retrain in the order they run.
TASK_ORDER = (
    "find_new_batches",
    "validate_batches",
    "build_dataset",
    "prepare_training",
    "train",
    "prepare_evaluation",
    "evaluate",
    "decide",
    "promote",
)


def load_average() -> str:
    """The 1/5/15-minute load averages (this machine is shared: every report states them)."""
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f} ({os.cpu_count()} cores)"


def row(
    metric: str,
    value: float | None,
    unit: str = "",
    baseline: float | None = None,
    ratio: float | None = None,
    note: str = "",
    ratio_unit: str = "x",
) -> dict[str, Any]:
    """One headline number; ``ratio`` defaults to value / baseline; ``ratio_unit`` "x" (a factor) or
    "%" (a share of the baseline)."""
    if ratio is None and value is not None and baseline:
        ratio = value / baseline
    return {
        "metric": metric,
        "value": value,
        "unit": unit,
        "baseline": baseline,
        "ratio": ratio,
        "ratio_unit": ratio_unit,
        "note": note,
    }


def emit_json(bench: str, rows: list[dict[str, Any]], details: dict[str, Any] | None = None) -> None:
    """The machine-readable result: one JSON object on one line (the last line of stdout)."""
    print(
        json.dumps({"bench": bench, "rows": rows, "details": details or {}}, ensure_ascii=False, default=str),
        flush=True,
    )


def median(values: Iterable[float]) -> float:
    return float(statistics.median(list(values)))


# --------------------------------------------------------------------------- dags test logs

_LINE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z?) \[\s*(\w+)\s*\] (.*)$")
_START = re.compile(r"\[DAG TEST\] starting task_id=(\S+)")
_RUNNING = re.compile(r"\[DAG TEST\] running task <TaskInstance: [^.\s]+\.(\S+) .*ti_id=([0-9a-f-]+)")
_END = re.compile(r"\[DAG TEST\] end task task_id=(\S+)")
_API_STARTED = re.compile(r"^Task started\b.*\bti_id=([0-9a-f-]+)")
_API_STATE = re.compile(r"^Task instance state updated\b.*\bnew_state=(\w+).*\bti_id=([0-9a-f-]+)")
_RUN_FINISHED = re.compile(r"DagRun Finished: .*\bstate=(\w+)")


def _ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@dataclass
class TaskTiming:
    """One task of one `dags test` run, from its log.

    span: `[DAG TEST] starting` -> `[DAG TEST] end task` (what `dags test` spent on the task);
    run:  the execution API's `Task started` -> the task's final state update (the task's code).
    """

    task_id: str
    state: str = ""
    span_start: float | None = None
    span_end: float | None = None
    run_start: float | None = None
    run_end: float | None = None

    @property
    def span_s(self) -> float | None:
        return None if self.span_start is None or self.span_end is None else self.span_end - self.span_start

    @property
    def run_s(self) -> float | None:
        return None if self.run_start is None or self.run_end is None else self.run_end - self.run_start


@dataclass
class DagsTestLog:
    """The timeline of one `airflow dags test` run read from its log."""

    path: str
    first_ts: float | None = None
    last_ts: float | None = None
    run_state: str = ""
    tasks: list[TaskTiming] = field(default_factory=list)

    @property
    def logged_wall_s(self) -> float:
        """First to last timestamped line: a lower bound of the command's wall time (the interpreter's
        start and Airflow's imports before the first log line are not in the log)."""
        return (
            (self.last_ts - self.first_ts) if self.first_ts is not None and self.last_ts is not None else 0.0
        )

    def task(self, task_id: str) -> TaskTiming | None:
        return next((t for t in self.tasks if t.task_id == task_id), None)

    def sum_run_s(self, task_ids: Iterable[str] | None = None) -> float:
        wanted = set(task_ids) if task_ids is not None else None
        return sum(t.run_s or 0.0 for t in self.tasks if wanted is None or t.task_id in wanted)

    def sum_span_s(self) -> float:
        return sum(t.span_s or 0.0 for t in self.tasks)

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "logged_wall_s": self.logged_wall_s,
            "run_state": self.run_state,
            "tasks": [dict(asdict(t), span_s=t.span_s, run_s=t.run_s) for t in self.tasks],
        }


def parse_dags_test_log(path: str | Path) -> DagsTestLog:
    """Read the task timeline of one `airflow dags test` log (as written by AirflowEnv.run/log_file).

    A log holding several runs (appended) yields the LAST run's timeline.
    """
    out = DagsTestLog(path=str(path))
    by_ti: dict[str, TaskTiming] = {}
    current: TaskTiming | None = None
    for raw in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        if raw.startswith("$ ") and "dags test" in raw:  # a new command: keep only the last run
            out = DagsTestLog(path=str(path))
            by_ti, current = {}, None
            continue
        m = _LINE.match(raw)
        if not m:
            continue
        ts, msg = _ts(m.group(1)), m.group(3)
        out.first_ts = ts if out.first_ts is None else out.first_ts
        out.last_ts = ts
        if (s := _START.search(msg)) is not None:
            current = TaskTiming(s.group(1), span_start=ts)
            out.tasks.append(current)
        elif (s := _RUNNING.search(msg)) is not None:
            task = current if current is not None and current.task_id == s.group(1) else None
            if task is not None:
                by_ti[s.group(2)] = task
        elif (s := _API_STARTED.search(msg)) is not None:
            task = by_ti.get(s.group(1))
            if task is not None and task.run_start is None:
                task.run_start = ts
        elif (s := _API_STATE.search(msg)) is not None:
            task = by_ti.get(s.group(2))
            if task is not None:
                task.run_end, task.state = ts, s.group(1)
        elif (s := _END.search(msg)) is not None:
            if current is not None and current.task_id == s.group(1):
                current.span_end = ts
                current = None
        elif (s := _RUN_FINISHED.search(msg)) is not None:
            out.run_state = s.group(1)
    return out


def db_task_durations(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``airflow tasks states-for-dag-run -o json`` rows -> {task_id: {state, duration_s}} (None when the
    task never ran, e.g. skipped)."""
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        start, end = r.get("start_date") or "", r.get("end_date") or ""
        dur = None
        if start and end:
            dur = datetime.fromisoformat(end).timestamp() - datetime.fromisoformat(start).timestamp()
        out[r["task_id"]] = {"state": r.get("state", ""), "duration_s": dur}
    return out


def fmt_s(value: float | None, width: int = 8) -> str:
    return f"{'—':>{width}}" if value is None else f"{value:>{width}.2f}"
