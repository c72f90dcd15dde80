"""A no-new-data night under real Airflow: what it costs, and proof that nothing was trained.

    .venv-af/bin/python bench/no_new_data.py [--records 40] [--repeat 10] [--json]

Set-up (not timed): a moto S3 server, one small synthetic batch ingested at library level
(`retrain.ingest.process_batches`) and marked trained (`retrain.ingest.clear_pending`), so the ledger
knows the batch and nothing is pending; a fresh Airflow metadata database on the local PostgreSQL
(`tests.support.stack.AirflowEnv`, as the demo does).

Measured: `airflow dags test ner_retrain` for one night (wall time of the command), the task durations
Airflow recorded (`airflow tasks states-for-dag-run -o json`: start_date/end_date) and the task timeline
from the command's log; side by side in the same run, the intake check alone: the library call
`retrain.ingest.find_new_batches` against the same moto bucket (median of --repeat calls before and
after the night; each call gets a new boto3 client and checks the bucket, as the task does).

Proof that no training was launched: train/evaluate (and every task after the intake check) are
`skipped` in the metadata DB; no object was written under runs/ (the bucket's keys before and after);
the trainer python handed to the local launcher is a tripwire script that would leave a marker file;
and no llamafactory / `retrain train|evaluate` process appeared among this process's descendants
(polled every 50 ms while the night ran).
"""

from __future__ import annotations

import argparse
import os
import shutil
import stat
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    BENCH_WORK,
    TASK_ORDER,
    TR_PY,
    db_task_durations,
    emit_json,
    fmt_s,
    load_average,
    median,
    parse_dags_test_log,
    row,
)

BUCKET = "ner-retrain"
TRAINING_TASKS = ("prepare_training", "train", "prepare_evaluation", "evaluate", "decide", "promote")
SUSPECT = ("llamafactory", "retrain.cli train", "retrain.cli evaluate", "retrain train", "retrain evaluate")


class DescendantWatch(threading.Thread):
    """Polls /proc for processes descending from this one and keeps their command lines."""

    def __init__(self, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.seen: dict[int, str] = {}
        self._halt = threading.Event()

    def run(self) -> None:
        root = os.getpid()
        while not self._halt.is_set():
            parents: dict[int, int] = {}
            for entry in os.listdir("/proc"):
                if not entry.isdigit():
                    continue
                try:
                    with open(f"/proc/{entry}/stat", encoding="utf-8", errors="replace") as fh:
                        fields = fh.read().rsplit(")", 1)[1].split()
                    parents[int(entry)] = int(fields[1])
                except (OSError, IndexError, ValueError):
                    continue
            for pid in parents:
                p, depth = pid, 0
                while p in parents and p != root and depth < 64:
                    p, depth = parents[p], depth + 1
                if p == root and pid != root and pid not in self.seen:
                    try:
                        with open(f"/proc/{pid}/cmdline", "rb") as fh:
                            self.seen[pid] = fh.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
                    except OSError:
                        continue
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join(5)

    def suspects(self) -> list[str]:
        return [c for c in self.seen.values() if any(s in c for s in SUSPECT)]


def tripwire(path: Path, marker: Path) -> Path:
    """A stand-in trainer python: records that it was called, then runs the real one."""
    path.write_text(f"#!/bin/sh\necho \"$$ $*\" >> '{marker}'\nexec '{TR_PY}' \"$@\"\n", encoding="utf-8")
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def all_keys(client: Any) -> set[str]:
    keys: set[str] = set()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        keys.update(o["Key"] for o in page.get("Contents", []))
    return keys


def time_intake(moto: Any, settings: Any, repeat: int) -> tuple[list[float], list[float]]:
    """(fresh client + ensure_bucket + find_new_batches, find_new_batches alone) seconds per call."""
    from retrain.ingest import find_new_batches
    from retrain.storage import ObjectStore

    full, call = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        store = ObjectStore(moto.client(), BUCKET)
        store.ensure_bucket()
        t1 = time.perf_counter()
        plan = find_new_batches(store, settings)
        t2 = time.perf_counter()
        if plan.has_work:
            raise RuntimeError(f"the intake check found work: {plan}")
        full.append(t2 - t0)
        call.append(t2 - t1)
    return full, call


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=40, help="records of the one ingested batch")
    ap.add_argument("--repeat", type=int, default=10, help="intake-check calls before and after the night")
    ap.add_argument("--workdir", type=Path, default=BENCH_WORK / "no-new-data")
    ap.add_argument("--json", action="store_true", help="also print the headline numbers as one JSON line")
    args = ap.parse_args(argv)
    logging_quiet()

    from retrain.config import load_settings
    from retrain.ingest import clear_pending, find_new_batches, process_batches
    from retrain.storage import ObjectStore
    from tests.support.stack import AirflowEnv, MotoServer, _json_list, drop_database
    from tests.support.synth import make_batch

    work = args.workdir.resolve()
    shutil.rmtree(work, ignore_errors=True)
    (work / "logs").mkdir(parents=True)
    marker = work / "trainer_python_called.txt"
    retrain_env = {
        "RETRAIN_HOME": str(work / "state"),
        "RETRAIN__S3__BUCKET": BUCKET,
        "RETRAIN__TRAIN__BASE_MODEL": str(work / "no-model-here"),  # training would fail loudly
        "RETRAIN__TRAIN__PROFILE": "cpu_tiny",
        "RETRAIN__TRAIN__MODEL_CACHE_DIR": str(work / "models"),
        "RETRAIN__TRAIN__TRAINER_PYTHON": str(tripwire(work / "trainer-python-tripwire", marker)),
        "RETRAIN__SCHEDULE__RETRIES": "0",
    }
    settings = load_settings(environ=retrain_env)
    load_before = load_average()
    database = f"retrain_bench_nnd_{os.getpid()}_{int(time.time())}"
    with MotoServer() as moto:
        client = moto.client()
        client.create_bucket(Bucket=BUCKET)
        client.put_object(
            Bucket=BUCKET,
            Key="incoming/2026-11-27/batch-001.json",
            Body=("\n".join(make_batch(args.records, seed=1, bad=2)) + "\n").encode("utf-8"),
        )
        store = ObjectStore(client, BUCKET)
        t0 = time.perf_counter()
        plan = find_new_batches(store, settings)
        intake = process_batches(store, settings, plan.objects, "bench__ingest")
        clear_pending(store, settings)
        ingest_s = time.perf_counter() - t0
        if find_new_batches(store, settings).has_work:
            raise RuntimeError("set-up failed: work is still pending after ingest + clear_pending")
        keys_before = all_keys(client)

        af = AirflowEnv(work / "airflow", database, moto, retrain_env)
        try:
            t0 = time.perf_counter()
            af.migrate()
            migrate_s = time.perf_counter() - t0
            intake_full, intake_call = time_intake(moto, settings, args.repeat)

            watch = DescendantWatch()
            watch.start()
            log_file = work / "logs" / "no-new-data.log"
            t0 = time.perf_counter()
            proc = af.dags_test("ner_retrain", "2026-11-29T02:00:00+00:00", log_file=log_file)
            wall_s = time.perf_counter() - t0
            watch.stop()

            more_full, more_call = time_intake(moto, settings, args.repeat)
            intake_full += more_full
            intake_call += more_call
            runs = af.run_states("ner_retrain")
            run_id = runs[0]["run_id"] if runs else ""
            rows_db = _json_list(
                af.run("tasks", "states-for-dag-run", "ner_retrain", run_id, "-o", "json").stdout
            )
            keys_after = all_keys(client)
        finally:
            drop_database(database)
    load_after = load_average()

    db = db_task_durations(rows_db)
    timeline = parse_dags_test_log(log_file)
    task_time_db = sum(d["duration_s"] or 0.0 for d in db.values())
    task_run_log = timeline.sum_run_s()
    new_keys = sorted(keys_after - keys_before)
    new_runs = [k for k in new_keys if k.startswith(settings.s3.runs_prefix)]
    skipped = {t: db.get(t, {}).get("state") for t in ("validate_batches", "build_dataset", *TRAINING_TASKS)}
    suspects = watch.suspects()
    proofs = {
        "dags test exit code 0": proc.returncode == 0,
        "find_new_batches succeeded": db.get("find_new_batches", {}).get("state") == "success",
        "every later task skipped": all(s == "skipped" for s in skipped.values()),
        "no new key under runs/": not new_runs,
        "trainer python never called (tripwire)": not marker.exists(),
        "no llamafactory/retrain train|evaluate process": not suspects,
    }
    t_full, t_call = median(intake_full), median(intake_call)
    find_task = timeline.task("find_new_batches")

    print(
        f"no-new-data night under Airflow (set-up: ingest of {intake.read} records in {ingest_s:.1f} s, "
        f"db migrate {migrate_s:.1f} s; not timed below)"
    )
    print(f"load average: before {load_before}, after {load_after}")
    print(f"{'task':<20}{'state (DB)':<12}{'DB s':>8}{'log span s':>12}{'log run s':>11}")
    for task_id in sorted(db, key=lambda t: TASK_ORDER.index(t) if t in TASK_ORDER else len(TASK_ORDER)):
        d = db[task_id]
        t = timeline.task(task_id)
        print(
            f"{task_id:<20}{d['state']:<12}{fmt_s(d['duration_s'])}{fmt_s(t.span_s if t else None, 12)}"
            f"{fmt_s(t.run_s if t else None, 11)}"
        )
    print(f"`airflow dags test` wall          : {wall_s:8.2f} s")
    print(
        f"sum of task durations (DB)        : {task_time_db:8.2f} s   (log: task code {task_run_log:.2f} s, "
        f"dags-test span {timeline.sum_span_s():.2f} s)"
    )
    print(
        f"intake check alone (library call) : {t_full * 1000:8.1f} ms  new client + bucket check + "
        f"find_new_batches; find_new_batches alone {t_call * 1000:.1f} ms (median of {len(intake_full)})"
    )
    print(f"ratio night wall / intake check   : {wall_s / t_full:8.0f}x")
    print(f"ratio task time (DB) / intake     : {task_time_db / t_full:8.0f}x")
    print(f"new objects in the bucket during the night: {len(new_keys)} ({len(new_runs)} under runs/)")
    print(f"processes spawned under this bench during the night: {len(watch.seen)}")
    for name, ok in proofs.items():
        print(f"  [{'ok' if ok else 'FAIL'}] {name}")
    if suspects:
        print("  suspect processes:\n    " + "\n    ".join(suspects))
    if args.json:
        emit_json(
            "no_new_data",
            [
                row("night wall (baseline: intake check alone)", wall_s, "s", t_full),
                row("night task time, DB (baseline: intake check)", task_time_db, "s", t_full),
                row(
                    "find_new_batches task code, from its log (baseline: intake check)",
                    find_task.run_s if find_task else None,
                    "s",
                    t_full,
                ),
                row(
                    "proofs of no training that failed",
                    float(sum(not ok for ok in proofs.values())),
                    "",
                    note=f"0 = all {len(proofs)} held",
                ),
            ],
            {
                "proofs": proofs,
                "db": db,
                "timeline": timeline.to_json(),
                "intake_full_s": intake_full,
                "intake_call_s": intake_call,
                "new_keys": new_keys,
                "migrate_s": migrate_s,
                "ingest_s": ingest_s,
                "load_before": load_before,
                "load_after": load_after,
                "processes": list(watch.seen.values()),
            },
        )
    return 0 if all(proofs.values()) else 1


def logging_quiet() -> None:
    import logging

    logging.basicConfig(level=logging.WARNING)
    for name in ("great_expectations", "botocore", "urllib3"):
        logging.getLogger(name).setLevel(logging.ERROR)


if __name__ == "__main__":
    sys.exit(main())
