"""End-to-end time per stage of a `ner_retrain` night, so the time spent outside training shows.

    .venv-af/bin/python bench/e2e_stages.py [--records 80] [--epochs 1] [--json]      # runs one small night
    .venv-af/bin/python bench/e2e_stages.py --from-logs .work/demo/logs [--json]        # reads demo nights

Default: one small night under real Airflow, as the demo runs it (moto S3, Postgres metadata DB, the
tiny model trained by LLaMA-Factory on CPU through the local launcher, MLflow), timed from outside
(wall time of `airflow dags test`) and from its log. ``--from-logs DIR`` reads the `*.log` files the
demo wrote instead (no training); there the wall time is the logged span, first to last log line,
which leaves out the interpreter's start and Airflow's imports (a few seconds).

Per task, from the `dags test` log:
  span  `[DAG TEST] starting` -> `end task`: what `dags test` spent on the task;
  run   the execution API's `Task started` -> the final state update: the task's own code.
Inside train: LLaMA-Factory's own `train_runtime` (the training loop) against the rest of the task
(interpreter + imports, dataset download, llamafactory-cli start-up, adapter check, uploads).
Inside evaluate: the generation calls (`generating N outputs` -> `generated N/N`) against the rest.
Airflow's overhead = wall - sum of task runs (start-up, DAG parse, the in-process execution API, state
updates between tasks).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    BENCH_WORK,
    TASK_ORDER,
    DagsTestLog,
    db_task_durations,
    emit_json,
    fmt_s,
    load_average,
    parse_dags_test_log,
    row,
)

BUCKET = "ner-retrain"
TRAINING = ("train", "evaluate")

_PY_TS = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")
_TRAIN_RUNTIME = re.compile(r"'train_runtime': '?([\d.]+)")
_LF_WALL = re.compile(r" trained: .*?, ([\d.]+) s; committed")
_GENERATING = re.compile(r"retrain\.evaluate: .*: generating (\d+) outputs")
_GENERATED = re.compile(r"retrain\.evaluate\.generate: generated (\d+)/(\d+)")


def _py_ts(line: str) -> float | None:
    m = _PY_TS.match(line)
    return datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp() if m else None


def inner_stage_times(path: Path) -> dict[str, float | None]:
    """Seconds of LLaMA-Factory's training loop, of llamafactory-cli as a whole, and of generation,
    from the trainer's own lines inside the train/evaluate task logs (last run of the file)."""
    text = path.read_text(encoding="utf-8", errors="replace")
    text = text[text.rfind("$ ") :] if "$ " in text else text
    train_runtime = lf_wall = None
    generation = 0.0
    started: float | None = None
    seen_generation = False
    for line in text.splitlines():
        if (m := _TRAIN_RUNTIME.search(line)) is not None:
            train_runtime = float(m.group(1))
        elif (m := _LF_WALL.search(line)) is not None:
            lf_wall = float(m.group(1))
        elif _GENERATING.search(line):
            started = _py_ts(line)
        elif (m := _GENERATED.search(line)) is not None and m.group(1) == m.group(2) and started is not None:
            end = _py_ts(line)
            if end is not None:
                generation += end - started
                seen_generation = True
            started = None
    return {
        "train_loop_s": train_runtime,
        "llamafactory_cli_s": lf_wall,
        "generation_s": generation if seen_generation else None,
    }


def report_night(
    name: str,
    timeline: DagsTestLog,
    wall_s: float,
    wall_kind: str,
    inner: dict[str, Any],
    db: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Print one night's per-stage table and return its numbers."""
    tasks = {t.task_id: t for t in timeline.tasks}
    ran = [t for t in TASK_ORDER if t in tasks] + [t for t in tasks if t not in TASK_ORDER]
    total_run = timeline.sum_run_s()
    print(f"\n== {name}: run {timeline.run_state or '?'}; wall {wall_s:.1f} s ({wall_kind})")
    head = f"{'task':<20}{'state':<10}{'span s':>9}{'run s':>9}{'share':>8}"
    print(head + (f"{'DB s':>9}" if db else ""))
    for task_id in ran:
        t = tasks[task_id]
        share = f"{(t.run_s or 0) / total_run:>7.1%}" if total_run else f"{'—':>8}"
        line = f"{task_id:<20}{t.state:<10}{fmt_s(t.span_s, 9)}{fmt_s(t.run_s, 9)}{share:>8}"
        if db:
            line += fmt_s((db.get(task_id) or {}).get("duration_s"), 9)
        print(line)
    skipped = [t for t in TASK_ORDER if t not in tasks]
    if skipped:
        print(f"(not run: {', '.join(skipped)})")
    train_eval = timeline.sum_run_s(TRAINING)
    rest = total_run - train_eval
    overhead = wall_s - total_run
    in_spans = timeline.sum_span_s() - total_run
    first_span = timeline.tasks[0].span_start if timeline.tasks else None
    before_first = (first_span - timeline.first_ts) if first_span and timeline.first_ts else 0.0
    if wall_kind == "measured":
        before_first += wall_s - timeline.logged_wall_s  # the process start before its first log line
    print(
        f"sum of task runs {total_run:.1f} s: train+evaluate {train_eval:.1f} s "
        f"({train_eval / total_run:.1%}), the other tasks {rest:.1f} s ({rest / total_run:.1%})"
        if total_run
        else "no task ran"
    )
    print(
        f"Airflow overhead (wall - task runs): {overhead:.1f} s = {overhead / wall_s:.1%} of the wall; "
        f"before the first task {before_first:.1f} s, inside task spans (start-up of each task, the first "
        f"one starting the execution API) {in_spans:.1f} s, between/after tasks "
        f"{overhead - before_first - in_spans:.1f} s"
    )
    train = tasks.get("train")
    loop, lf_wall = inner.get("train_loop_s"), inner.get("llamafactory_cli_s")
    if train and train.run_s and loop:
        print(
            f"inside train ({train.run_s:.1f} s): LLaMA-Factory training loop {loop:.1f} s "
            f"({loop / train.run_s:.1%}); llamafactory-cli start-up/save {(lf_wall or loop) - loop:.1f} s; "
            f"`retrain train` around it (imports, dataset download, adapter check, uploads) "
            f"{train.run_s - (lf_wall or loop):.1f} s"
        )
    evaluate, gen = tasks.get("evaluate"), inner.get("generation_s")
    if evaluate and evaluate.run_s and gen is not None:
        print(
            f"inside evaluate ({evaluate.run_s:.1f} s): generation {gen:.1f} s ({gen / evaluate.run_s:.1%}); "
            f"model loading, scoring, reports {evaluate.run_s - gen:.1f} s"
        )
    compute = (loop or 0.0) + (gen or 0.0)
    if compute:
        print(
            f"pure compute (training loop + generation) {compute:.1f} s = "
            f"{compute / wall_s:.1%} of the wall; "
            f"everything else {wall_s - compute:.1f} s"
        )
    return {
        "name": name,
        "wall_s": wall_s,
        "wall_kind": wall_kind,
        "run_state": timeline.run_state,
        "task_run_s": total_run,
        "train_eval_s": train_eval,
        "rest_s": rest,
        "overhead_s": overhead,
        "compute_s": compute,
        "inner": inner,
        "timeline": timeline.to_json(),
        "db": db,
    }


def run_small_night(args: argparse.Namespace) -> tuple[Path, float, dict[str, Any]]:
    """One night with a fresh batch, under Airflow; returns (log file, wall seconds, DB task durations)."""
    from tests.support.demo import build_tiny_model, trainer_python
    from tests.support.stack import AirflowEnv, MotoServer, _json_list, drop_database
    from tests.support.synth import make_batch

    work = args.workdir.resolve()
    shutil.rmtree(work, ignore_errors=True)
    (work / "logs").mkdir(parents=True)
    t0 = time.perf_counter()
    tiny = build_tiny_model(work)  # built fresh (a few seconds, not timed): never a stale recipe
    print(f"tiny model ready in {time.perf_counter() - t0:.1f} s: {tiny}")
    retrain_env = {
        "RETRAIN_HOME": str(work / "state"),
        "RETRAIN__S3__BUCKET": BUCKET,
        "RETRAIN__TRAIN__BASE_MODEL": str(tiny),
        "RETRAIN__TRAIN__PROFILE": "cpu_tiny",
        "RETRAIN__TRAIN__MODEL_CACHE_DIR": str(tiny.parent),
        "RETRAIN__TRAIN__TRAINER_PYTHON": str(trainer_python()),
        "RETRAIN__EVALUATE__MAX_NEW_TOKENS": str(args.max_new_tokens),
        "RETRAIN__EVALUATE__BATCH_SIZE": "16",
        "RETRAIN__SCHEDULE__RETRIES": "0",
    }
    database = f"retrain_bench_e2e_{os.getpid()}_{int(time.time())}"
    with MotoServer() as moto:
        client = moto.client()
        client.create_bucket(Bucket=BUCKET)
        client.put_object(
            Bucket=BUCKET,
            Key="incoming/2026-11-27/batch-001.json",
            Body=("\n".join(make_batch(args.records, seed=1, bad=3)) + "\n").encode("utf-8"),
        )
        af = AirflowEnv(work / "airflow", database, moto, retrain_env)
        try:
            af.migrate()
            log_file = work / "logs" / "small-night.log"
            t0 = time.perf_counter()
            proc = af.dags_test(
                "ner_retrain", "2026-11-27T02:00:00+00:00", {"epochs": args.epochs}, log_file=log_file
            )
            wall = time.perf_counter() - t0
            runs = af.run_states("ner_retrain")
            run_id = runs[0]["run_id"] if runs else ""
            db_rows = _json_list(
                af.run("tasks", "states-for-dag-run", "ner_retrain", run_id, "-o", "json").stdout
            )
        finally:
            drop_database(database)
    if proc.returncode != 0:
        print(f"`airflow dags test` exited {proc.returncode}; log: {log_file}", file=sys.stderr)
    return log_file, wall, db_task_durations(db_rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--from-logs", type=Path, default=None, help="read the demo's dags-test logs in DIR")
    ap.add_argument("--records", type=int, default=80, help="records of the night's batch (default run)")
    ap.add_argument("--epochs", type=float, default=1.0, help="training epochs of the night (default run)")
    ap.add_argument("--max-new-tokens", type=int, default=32, help="evaluation max_new_tokens (default run)")
    ap.add_argument("--workdir", type=Path, default=BENCH_WORK / "e2e")
    ap.add_argument("--json", action="store_true", help="also print the headline numbers as one JSON line")
    args = ap.parse_args(argv)

    load_before = load_average()
    nights: list[dict[str, Any]] = []
    if args.from_logs:
        logs = sorted(args.from_logs.glob("*.log"))
        if not logs:
            print(f"no *.log files in {args.from_logs}", file=sys.stderr)
            return 2
        print(
            f"reading {len(logs)} dags-test logs from {args.from_logs} (no run); load average {load_before}"
        )
        for path in logs:
            timeline = parse_dags_test_log(path)
            nights.append(
                report_night(
                    path.stem, timeline, timeline.logged_wall_s, "logged span", inner_stage_times(path)
                )
            )
    else:
        print(
            f"one small night: {args.records} records, {args.epochs:g} epoch(s), max_new_tokens "
            f"{args.max_new_tokens}; load average {load_before}"
        )
        log_file, wall, db = run_small_night(args)
        timeline = parse_dags_test_log(log_file)
        nights.append(
            report_night("small-night", timeline, wall, "measured", inner_stage_times(log_file), db)
        )
        if timeline.run_state != "success":
            print(
                f"the night did not succeed (state {timeline.run_state!r}); log: {log_file}", file=sys.stderr
            )
            return 1
    load_after = load_average()
    print(f"\nload average: before {load_before}, after {load_after}")
    if args.json:
        rows = []
        for n in nights:
            if not n["train_eval_s"]:
                rows.append(
                    row(
                        f"{n['name']}: Airflow overhead, no training (baseline: wall)",
                        n["overhead_s"],
                        "s",
                        n["wall_s"],
                        ratio_unit="%",
                    )
                )
                continue
            rows.append(
                row(
                    f"{n['name']}: other tasks (baseline: train+evaluate)",
                    n["rest_s"],
                    "s",
                    n["train_eval_s"],
                    ratio_unit="%",
                )
            )
            rows.append(
                row(
                    f"{n['name']}: Airflow overhead (baseline: wall)",
                    n["overhead_s"],
                    "s",
                    n["wall_s"],
                    ratio_unit="%",
                )
            )
            if n["compute_s"]:
                rows.append(
                    row(
                        f"{n['name']}: outside training loop+generation (baseline: wall)",
                        n["wall_s"] - n["compute_s"],
                        "s",
                        n["wall_s"],
                        ratio_unit="%",
                    )
                )
        emit_json(
            "e2e_stages",
            rows,
            {
                "nights": nights,
                "load_before": load_before,
                "load_after": load_after,
                "source": str(args.from_logs) if args.from_logs else "small night",
            },
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
