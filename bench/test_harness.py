"""What `make test`'s harness changes save, measured side by side in one run (issue 16 item 6).

    .venv-af/bin/python bench/test_harness.py metadata [--json]
    .venv-af/bin/python bench/test_harness.py lanes [--a PYTEST_SELECTION] [--b PYTEST_SELECTION] [--json]

``metadata``: an Airflow metadata DB for a stack (tests/support/stack.py ``AirflowEnv.migrate``) the way
every stack made it before (`airflow db migrate` + `airflow pools set` on a fresh PostgreSQL database)
against a clone of a migrated template (``migrated_templates``: what every stack after the first of a
test session now gets). Both DBs are checked to hold the same Alembic revision and pools.

``lanes``: two pytest selections of the Airflow env (default: one from each of make test's lanes, the
Celery scheduler e2e module and the DAG-level fault test) run one after the other, then side by side
(scripts/test_lanes.py, as `make test` runs its lanes); wall times and their ratio. Both runs must pass.

Needs the PostgreSQL server the stacks use (scripts/test_services.sh, README "Requirements").
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import AF_PY, BENCH_WORK, REPO, load_average, row  # noqa: E402

DEFAULT_A = "tests/e2e/test_celery_scheduler.py"
DEFAULT_B = "tests/faults/test_fault_dag.py"


def _db_facts(af: Any) -> list[list[str]]:
    return af.query("SELECT version_num FROM alembic_version") + af.query(
        "SELECT pool, slots::text FROM slot_pool ORDER BY pool"
    )


def bench_metadata() -> dict[str, Any]:
    from tests.support.stack import AirflowEnv, MotoServer, drop_database, migrated_templates

    work = BENCH_WORK / "test_harness"
    names = [f"retrain_bench_{uuid.uuid4().hex[:8]}" for _ in range(3)]
    try:
        with MotoServer() as moto:
            envs = [AirflowEnv(work / f"af{i}", name, moto, {}) for i, name in enumerate(names)]
            t0 = time.monotonic()
            envs[0].migrate()  # outside migrated_templates: the CLI, as every stack did before
            plain = time.monotonic() - t0
            with migrated_templates():
                envs[1].migrate()  # the session's first: the CLI, then copied to the template
                t0 = time.monotonic()
                envs[2].migrate()  # every later one: a clone
                clone = time.monotonic() - t0
            same = _db_facts(envs[0]) == _db_facts(envs[2])
    finally:
        for name in names:
            drop_database(name)
    print(f"load average {load_average()}")
    print(f"metadata DB by `db migrate` + `pools set`: {plain:.1f} s; as a template clone: {clone:.2f} s")
    print(f"same Alembic revision and pools: {same}")
    if not same:
        raise SystemExit("the clone differs from a migrated DB")
    return {
        "bench": "test_harness_metadata",
        "rows": [row("stack metadata DB (clone vs CLI)", clone, "s", plain)],
        "details": {"load": load_average()},
    }


def _pytest(selection: str) -> str:
    return f"{AF_PY} -m pytest -p no:cacheprovider -q -ra {selection}"


def _timed(cmd: list[str]) -> float:
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}")
    return wall


def bench_lanes(a: str, b: str) -> dict[str, Any]:
    print(f"load average before: {load_average()}")
    serial_a = _timed(["bash", "-c", _pytest(a)])
    serial_b = _timed(["bash", "-c", _pytest(b)])
    print(f"one after the other: {a} {serial_a:.0f} s + {b} {serial_b:.0f} s = {serial_a + serial_b:.0f} s")
    print(f"load average: {load_average()}")
    lanes = str(REPO / "scripts" / "test_lanes.py")
    log_dir = str(BENCH_WORK / "test_harness" / "lanes")
    side = _timed([sys.executable, lanes, log_dir, f"a={_pytest(a)}", f"b={_pytest(b)}"])
    print(f"side by side: {side:.0f} s ({side / (serial_a + serial_b):.2f} of one after the other)")
    print(f"load average after: {load_average()}")
    return {
        "bench": "test_harness_lanes",
        "rows": [row("two selections side by side vs serial", side, "s", serial_a + serial_b)],
        "details": {"a": a, "b": b, "serial_a_s": serial_a, "serial_b_s": serial_b, "load": load_average()},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=("metadata", "lanes"))
    p.add_argument("--a", default=DEFAULT_A)
    p.add_argument("--b", default=DEFAULT_B)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    result = bench_metadata() if args.what == "metadata" else bench_lanes(args.a, args.b)
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
