"""The three-night demo: the real DAG under Airflow, real moto S3, GX, LLaMA-Factory, MLflow.

(a) a first batch arrives -> train, evaluate against the base model, promote v1;
(b) a second batch arrives -> train again on both batches (twice the data, half the epochs: about the
    same steps), evaluate against the champion, promote or keep with a stated reason;
(c) no new data -> the run is skipped right after the intake check, nothing is trained.
Used by ``make demo`` (``python -m tests.support.demo``) and by the end-to-end test.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.stack import REPO_ROOT, AirflowEnv, MotoServer, drop_database, metadata_database
from tests.support.synth import make_batch

log = logging.getLogger("retrain.demo")

BUCKET = "ner-retrain"
#: Good records per night's batch. 600 rather than 200: with more distinct sentences (and fewer epochs,
#: the same steps) the adapter learns to copy entities instead of memorising sentences, and the golden
#: set (25%, ~150 sentences) is large enough for a tight interval.
DEMO_RECORDS = 600


@dataclass
class NightResult:
    name: str
    run_id: str
    returncode: int
    wall_s: float
    states: dict[str, str]
    note: str | None
    summary: dict[str, Any] | None
    intake: dict[str, Any] | None
    log_file: str


@dataclass
class DemoResult:
    nights: list[NightResult] = field(default_factory=list)
    registry: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    workdir: str = ""
    reports: list[str] = field(default_factory=list)
    # Where the runs live, for looking at them afterwards (the Airflow UI over the demo): the Airflow
    # metadata database (dropped on return unless ``keep_db``), AIRFLOW_HOME (task logs) and the
    # RETRAIN_* settings the tasks ran with (bucket, RETRAIN_HOME with the MLflow registry, …).
    database: str = ""
    #: Which metadata DB that is, in words (PostgreSQL or the embedded SQLite fallback, and why).
    database_kind: str = ""
    airflow_home: str = ""
    retrain_env: dict[str, str] = field(default_factory=dict)


def trainer_python() -> Path:
    return REPO_ROOT / ".venv-tr" / "bin" / "python"


def build_tiny_model(workdir: Path, size: str = "tiny") -> Path:
    """The tiny model of ``size`` (tests/support/tiny_model.py SIZES) under ``workdir/models``."""
    out = workdir / "models" / ("tiny-qwen2" if size == "tiny" else f"tiny-qwen2-{size}")
    subprocess.run(
        [str(trainer_python()), "-m", "tests.support", "tiny-model", "--out", str(out), "--size", size],
        check=True,
        cwd=REPO_ROOT,
    )
    return out


#: The gate of the end-to-end tests that check promotion MECHANICS with the plain tiny model and the
#: cpu_tiny profile (Celery scheduler, Docker launcher, worker kill, event-triggered runs): that model
#: finds a few entities in a few dozen golden sentences, real gains that never clear the noise, so these
#: tests promote on any observed gain (min_delta -1: every lower bound clears it; the rule still needs a
#: difference > 0) and ignore the parse-failure rate. The interval is computed and shown all the same.
#: The demo does NOT use it: its model learns (`run_demo`), and production's gate decides.
MECHANICS_GATE = {"RETRAIN__GATE__MIN_DELTA": "-1", "RETRAIN__GATE__MAX_PARSE_FAILURE": "1.0"}


#: What the tests that need a first promotion train (Celery scheduler, Docker launcher, compose stack):
#: the "demo" tiny model (`ZEROED`) with the cpu_demo profile, for `MECHANICS_EPOCHS`. Measured on
#: December 3 2026 (make_batch(120, seed=1) trained, 120 unseen golden sentences, strict micro F1):
#: demo model / cpu_demo 10 epochs 0 true positives, 15 epochs 28, 20 epochs 50 (F1 0.15, 70 s of
#: training); plain tiny model / cpu_tiny 40 epochs 18, 60 epochs 46 (313 s). The base model finds none,
#: so 20 epochs of the demo model beat it as surely as 60 of the plain one, in a third of the steps.
MECHANICS_MODEL_SIZE = "demo"
MECHANICS_PROFILE = {"RETRAIN__TRAIN__PROFILE": "cpu_demo"}
MECHANICS_EPOCHS = 20


def dev_retrain_env(workdir: Path, tiny: Path) -> dict[str, str]:
    """RETRAIN__* settings for running ner_retrain on this machine with the tiny model (demo, e2e)."""
    return {
        "RETRAIN_HOME": str(workdir / "state"),
        "RETRAIN__S3__BUCKET": BUCKET,
        "RETRAIN__TRAIN__BASE_MODEL": str(tiny),
        "RETRAIN__TRAIN__PROFILE": "cpu_tiny",
        "RETRAIN__TRAIN__MODEL_CACHE_DIR": str(workdir / "models"),
        # conf models.allow (retrain.base_models): the models this machine built, plus the shipped
        # trainer-volume pattern (the Docker test mounts the tiny model at /models/tiny)
        "RETRAIN__MODELS__ALLOW": json.dumps([str(workdir / "models" / "*"), "/models/*"]),
        "RETRAIN__TRAIN__TRAINER_PYTHON": str(trainer_python()),
        "RETRAIN__EVALUATE__MAX_NEW_TOKENS": "96",
        "RETRAIN__EVALUATE__BATCH_SIZE": "16",
        "RETRAIN__SCHEDULE__RETRIES": "0",
        **MECHANICS_GATE,
        # One torch thread: on a 2-core machine shared with Airflow, two threads per process thrash
        # (a tiny-model step took 1.9 s instead of 0.16 s under load).
        "OMP_NUM_THREADS": "1",
    }


def _upload_batch(moto: MotoServer, key: str, lines: list[str]) -> None:
    moto.client().put_object(Bucket=BUCKET, Key=key, Body=("\n".join(lines) + "\n").encode("utf-8"))


def _night(
    af: AirflowEnv, moto: MotoServer, name: str, date: str, conf: dict[str, Any], workdir: Path
) -> NightResult:
    from retrain.ingest import safe_run_id

    t0 = time.monotonic()
    log_file = workdir / "logs" / f"{name}.log"
    proc = af.dags_test("ner_retrain", date, conf, log_file=log_file)
    wall = time.monotonic() - t0
    runs = [r for r in af.run_states("ner_retrain") if str(r.get("logical_date", "")).startswith(date[:10])]
    run_id = runs[0]["run_id"] if runs else ""
    states = af.task_states("ner_retrain", run_id) if run_id else {}
    note = af.run_note("ner_retrain", run_id) if run_id else None
    client = moto.client()
    summary = intake = None
    prefix = f"runs/{safe_run_id(run_id)}/"
    for fname in ("summary.json", "intake.json"):
        try:
            body = json.loads(client.get_object(Bucket=BUCKET, Key=prefix + fname)["Body"].read())
        except client.exceptions.NoSuchKey:
            body = None
        if fname == "summary.json":
            summary = body
        else:
            intake = body
    log.info("night %s: exit %d in %.0fs; tasks %s", name, proc.returncode, wall, states)
    return NightResult(name, run_id, proc.returncode, wall, states, note, summary, intake, str(log_file))


def run_demo(
    workdir: Path,
    *,
    records_first: int = DEMO_RECORDS,
    records_second: int = DEMO_RECORDS,
    bad: int = 5,
    # 20 epochs of ~400 sentences: ~1,000 steps of batch 8 (12 epochs reached golden micro F1 0.38, 20
    # epochs 0.78: tests/support/tiny_model.py SIZES); night b ~800 sentences x 10 epochs, as many steps
    epochs_first: float = 20.0,
    epochs_second: float = 10.0,
    keep_db: bool = False,
    moto: MotoServer | None = None,
) -> DemoResult:
    """Run the three nights and return what happened (states, summaries, registry).

    ``keep_db``: leave the Airflow metadata database (``result.database``) for the caller to use and
    drop (``stack.drop_database``). ``moto``: a running S3 server to use, left running with the demo
    bucket in it; by default the demo starts its own and stops it on return (the bucket is mirrored
    to ``workdir/bucket`` either way).

    Every run starts clean: the registry (``workdir/state``), the bucket mirror, the logs and
    AIRFLOW_HOME of an earlier run are removed first, because the bucket (moto, in memory) is new
    each time and a registry kept from an earlier run would name a champion whose adapter is not in
    it. The tiny model (``workdir/models``) is rebuilt in place."""
    workdir = workdir.resolve()  # RETRAIN_HOME and the SQLite URL must be absolute
    database, database_kind = metadata_database(
        f"retrain_demo_{int(time.time())}", workdir / "airflow" / "airflow.db"
    )
    log.info("Airflow metadata DB: %s", database_kind)
    workdir.mkdir(parents=True, exist_ok=True)
    for stale in ("state", "bucket", "logs", "airflow"):
        if (workdir / stale).exists():
            log.info("starting clean: removing %s from an earlier run", workdir / stale)
            shutil.rmtree(workdir / stale)
    tiny = build_tiny_model(workdir, size="demo")
    mechanics = dev_retrain_env(workdir, tiny)
    retrain_env = {
        # production's gate (conf/pipeline.yaml), not the mechanics tests' MECHANICS_GATE
        **{k: v for k, v in mechanics.items() if k not in MECHANICS_GATE},
        # The model and profile that learn the synthetic task on a CPU (tests/support/tiny_model.py
        # ZEROED, conf/llamafactory/cpu_demo.yaml); the gate is production's (conf/pipeline.yaml).
        "RETRAIN__TRAIN__PROFILE": "cpu_demo",
        # A larger golden share than production's 10%: ~150 golden sentences a night, so that the
        # gate's interval is narrow enough to tell a trained adapter from the base model.
        "RETRAIN__DATASET__GOLDEN_FRACTION": "0.25",
    }
    result = DemoResult(
        workdir=str(workdir),
        database=database,
        database_kind=database_kind,
        airflow_home=str(workdir / "airflow"),
        retrain_env=retrain_env,
    )
    with contextlib.ExitStack() as stack:
        if moto is None:
            moto = stack.enter_context(MotoServer())
        client = moto.client()
        client.create_bucket(Bucket=BUCKET)
        af = AirflowEnv(result.airflow_home, database, moto, retrain_env)
        try:
            af.migrate()
            _upload_batch(
                moto, "incoming/2026-11-27/batch-001.json", make_batch(records_first, seed=1, bad=bad)
            )
            result.nights.append(
                _night(
                    af, moto, "a-first-batch", "2026-11-27T02:00:00+00:00", {"epochs": epochs_first}, workdir
                )
            )
            _upload_batch(
                moto, "incoming/2026-11-28/batch-002.json", make_batch(records_second, seed=2, bad=bad)
            )
            result.nights.append(
                _night(
                    af,
                    moto,
                    "b-second-batch",
                    "2026-11-28T02:00:00+00:00",
                    {"epochs": epochs_second},
                    workdir,
                )
            )
            result.nights.append(_night(af, moto, "c-no-new-data", "2026-11-29T02:00:00+00:00", {}, workdir))
            result.registry, result.history = _registry_state(workdir, tiny)
            _mirror_bucket(moto, workdir / "bucket")
            for night in result.nights:
                if night.intake and night.intake.get("report_uri"):
                    result.reports.append(
                        night.intake["report_uri"].replace(f"s3://{BUCKET}", str(workdir / "bucket"))
                    )
        finally:
            if not keep_db:
                drop_database(database)
    return result


def _mirror_bucket(moto: MotoServer, dest: Path) -> None:
    """Copy the demo bucket to disk (the moto server keeps it in memory only)."""
    from retrain.storage import ObjectStore

    ObjectStore(moto.client(), BUCKET).download_prefix("", dest)


def _registry_state(workdir: Path, tiny: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    from unittest import mock

    from retrain.config import load_settings
    from retrain.registry import Registry

    # The registry the tasks used (under their RETRAIN_HOME), without leaving RETRAIN_HOME set in
    # this process afterwards (a test session goes on after the demo).
    with mock.patch.dict(os.environ, {"RETRAIN_HOME": str(workdir / "state")}):
        reg = Registry.from_settings(load_settings(), str(tiny))
        return reg.describe(), reg.history()


def format_table(result: DemoResult) -> str:
    rows = [
        (
            "night",
            "state",
            "read",
            "accepted",
            "quarantined",
            "candidate F1",
            "vs",
            "champion F1",
            "difference [CI]",
            "decision",
        )
    ]
    for n in result.nights:
        s = n.summary or {}
        intake = n.intake or {}
        ev = s.get("evaluation", {})
        cand = ev.get("candidate", {}).get("micro_f1")
        champ = ev.get("champion", {}).get("micro_f1")
        failed = [t for t, st in n.states.items() if st == "failed"]
        state = (
            "failed: " + ",".join(failed)
            if failed
            else (
                "skipped"
                if n.states.get("validate_batches") == "skipped"
                else ("ok" if n.returncode == 0 else f"exit {n.returncode}")
            )
        )
        decision = (s.get("decision") or {}).get(
            "reason", "no training (no new data)" if state == "skipped" else "—"
        )
        sig = (s.get("decision") or {}).get("significance")
        rows.append(
            (
                n.name,
                state,
                str(intake.get("read", "—")),
                str(intake.get("accepted", "—")),
                str(intake.get("quarantined", "—")),
                f"{cand:.3f}" if cand is not None else "—",
                s.get("champion_name", "—"),
                f"{champ:.3f}" if champ is not None else "—",
                _interval(sig),
                decision,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = []
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1])
    return "\n".join(lines)


def _interval(sig: dict[str, Any] | None) -> str:
    """The gate's micro-F1 difference with its bootstrap interval, e.g. ``+0.412 [+0.35, +0.47] 95%``."""
    if not sig:
        return "—"
    return f"{sig['difference']:+.3f} [{sig['low']:+.3f}, {sig['high']:+.3f}] {sig['confidence']:.0%}"


def _fmt(value: float | None) -> str:
    return "  —  " if value is None else f"{value:.3f}"


def format_per_label(result: DemoResult) -> str:
    lines = []
    for n in result.nights:
        ev = (n.summary or {}).get("evaluation")
        if not ev:
            continue
        lines.append(f"{n.name}: per-label F1 candidate / {n.summary.get('champion_name')}")
        cand, champ = ev["candidate"]["per_label_f1"], ev["champion"]["per_label_f1"]
        for label in sorted(set(cand) | set(champ)):
            lines.append(f"  {label:<13} {_fmt(cand.get(label))} / {_fmt(champ.get(label))}")
        sig = n.summary["decision"].get("significance")
        if sig:
            lines.append(
                f"  micro F1 difference {sig['difference']:+.4f}, {sig['confidence']:.0%} CI "
                f"[{sig['low']:+.4f}, {sig['high']:+.4f}] ({sig['reading']}, exam "
                f"{n.summary['decision'].get('exam')}, {sig['resamples']} resamples)"
            )
        for rule in n.summary["decision"]["rules"]:
            lines.append(
                f"  gate {rule['rule']:<20} {'PASS' if rule['passed'] else 'FAIL'}  {rule['detail']}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default=str(REPO_ROOT / ".work" / "demo"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    t0 = time.monotonic()
    result = run_demo(Path(args.workdir))
    print(f"\nAirflow metadata DB: {result.database_kind}")
    print("\n" + format_table(result))
    print("\n" + format_per_label(result))
    champ = result.registry.get("champion") or {}
    print(
        f"\nregistry: {result.registry.get('name')} at {result.registry.get('tracking_uri')}; "
        f"champion v{champ.get('version')}, previous "
        f"v{(result.registry.get('previous') or {}).get('version')}"
    )
    print("DAG-run notes:")
    for n in result.nights:
        print(f"  {n.name}: {n.note}")
    print("alias history:")
    for ev in result.history:
        print(
            f"  {ev.get('at')} {ev.get('kind')} v{ev.get('from_version') or '-'} "
            f"-> v{ev.get('to_version')}: {ev.get('reason')}"
        )
    print("intake reports (the demo bucket, mirrored to disk):")
    for r in result.reports:
        print(f"  {r}")
    print(f"logs: {Path(args.workdir) / 'logs'}; total {time.monotonic() - t0:.0f}s")
    ok = all(n.returncode == 0 for n in result.nights) and not any(
        st == "failed" for n in result.nights for st in n.states.values()
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
