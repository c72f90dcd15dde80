"""One fault scenario under real Airflow, shared by the DAG-level fault test and the secrets scan.

The real ``ner_retrain`` DAG runs three times with ``airflow dags test`` (metadata DB on the local
PostgreSQL, a moto S3 server, the local launcher), like the demo (tests/support/demo.py):

A. the trainer dies: ``train.trainer_python`` is a script that prints its S3 secret (to see
   whether the task output masks it) and exits 137, as an OOM-killed trainer does;
B. the worker dies: the trainer is started, and the whole ``airflow dags test`` process group
   (the run, its task and the trainer) is SIGKILLed while training;
C. the fault is gone: the next run trains on the batch still pending and promotes v1.

The trainer env of B and C is tests/faults/stand_in.py: the real `retrain train`/`retrain evaluate`
with LLaMA-Factory and generation replaced (a real tiny-model training that beats the base model
takes minutes here; tests/e2e/test_nightly_demo.py runs that one), so the outcome is deterministic.

Everything a test needs is collected into `ScenarioResult` (states, S3 snapshots, registry,
every log text) and the servers are stopped before it is returned; `scenario()` runs it once per
pytest session, whichever module asks first.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support import mlflow_db

BUCKET = "ner-retrain-faults"
BATCH_KEY = "incoming/2026-11-27/batch-001.json"
DATES = {
    "A-trainer-exit-137": "2026-11-27T02:00:00+00:00",
    "B-worker-sigkill": "2026-11-28T02:00:00+00:00",
    "C-rerun": "2026-11-29T02:00:00+00:00",
}


@dataclass
class Attempt:
    name: str
    run_id: str
    returncode: int
    wall_s: float
    states: dict[str, str]
    killed: bool = False


@dataclass
class Snapshot:
    """The bucket and the registry after an attempt."""

    keys: list[str]
    pending_marker: bool
    ledger: dict[str, Any]
    accepted_rows: list[dict[str, Any]]
    registry_versions: list[dict[str, Any]]
    champion: str | None


@dataclass
class ScenarioResult:
    attempts: dict[str, Attempt] = field(default_factory=dict)
    after: dict[str, Snapshot] = field(default_factory=dict)
    intake: dict[str, Any] = field(default_factory=dict)  # run name -> runs/<id>/intake.json
    summary: dict[str, Any] | None = None  # run C's summary.json
    datasets: dict[str, str] = field(default_factory=dict)  # run name -> dataset version it trained
    secret_key: str = ""
    access_key: str = ""
    logs: dict[str, str] = field(default_factory=dict)  # file -> text: task logs, CLI output, S3 texts
    leftover_processes: list[str] = field(default_factory=list)
    workdir: str = ""
    error: str = ""


_RESULT: ScenarioResult | None = None


def scenario(workdir: Path) -> ScenarioResult:
    """Run the scenario once per session; later callers get the same result."""
    global _RESULT
    if _RESULT is None:
        _RESULT = run_scenario(workdir)
    return _RESULT


def _stand_in(path: Path) -> Path:
    import sys

    here = Path(__file__).resolve().parent
    path.write_text(f'#!/bin/sh\nexec {sys.executable} {here / "stand_in.py"} "$@"\n')
    path.chmod(0o755)
    return path


def _fake_base_model(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({"model_type": "qwen2", "hidden_size": 64}))
    (path / "tokenizer.json").write_text("{}")
    return path


def _oom_trainer(path: Path) -> Path:
    """A 'trainer python' that leaks its S3 secret to stdout, then dies like an OOM-killed process."""
    path.write_text(
        "#!/bin/sh\n"
        'echo "loading checkpoint shards for $*"\n'
        'echo "debug: AWS_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY"\n'
        'echo "Killed"\n'
        "exit 137\n"
    )
    path.chmod(0o755)
    return path


def _descendants(pid: int) -> list[Any]:
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _cmdline(p: Any) -> str:
    import psutil

    try:
        return " ".join(p.cmdline())
    except psutil.Error:  # gone, or a zombie
        return ""


def _dags_test_killed_in_train(
    af: Any, date: str, log_file: Path, timeout: float = 600
) -> tuple[int, list[str]]:
    """Start ``airflow dags test`` in its own process group, SIGKILL the group once the trainer
    runs; return (exit code, command lines of processes that outlived it)."""
    import psutil

    cmd = [str(af.af_bin / "airflow"), "dags", "test", "ner_retrain", date]
    with log_file.open("w", encoding="utf-8") as out:
        proc = subprocess.Popen(
            cmd, env=af.env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        tree: list[Any] = []
        try:
            while time.monotonic() < deadline and proc.poll() is None:
                tree = _descendants(proc.pid)
                if any("fake_trainer.py" in _cmdline(p) for p in tree):
                    time.sleep(1)
                    tree = _descendants(proc.pid)
                    break
                time.sleep(0.5)
            else:
                raise RuntimeError(f"the trainer never started (exit {proc.poll()}); see {log_file}")
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(60)
    time.sleep(1)
    left = []
    for p in tree:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                left.append(_cmdline(p)[:200])
                p.kill()  # never leave a stray trainer behind, even when the test then fails
        except psutil.Error:
            pass
    return proc.returncode, left


def _snapshot(store: Any, registry: Any) -> Snapshot:
    from retrain.ingest import read_ledger

    keys = [o.key for o in store.iter_objects("")]
    rows = []
    for key in (k for k in keys if k.startswith("accepted/")):
        rows += [json.loads(line) for line in store.get_bytes(key).decode().splitlines() if line.strip()]
    champ = registry.champion()
    return Snapshot(
        keys=keys,
        pending_marker="state/dataset_pending.json" in keys,
        ledger=read_ledger(store, registry_settings(store)),
        accepted_rows=rows,
        registry_versions=registry.versions(),
        champion=champ["version"] if champ else None,
    )


def registry_settings(store: Any) -> Any:
    from retrain.config import load_settings

    return load_settings(environ={"RETRAIN__S3__BUCKET": store.bucket})


def run_scenario(workdir: Path) -> ScenarioResult:
    from retrain.config import load_settings
    from retrain.ingest import safe_run_id
    from retrain.registry import Registry, model_name
    from retrain.storage import ObjectStore
    from tests.support.stack import AirflowEnv, MotoServer, drop_database
    from tests.support.synth import make_batch

    workdir.mkdir(parents=True, exist_ok=True)
    result = ScenarioResult(workdir=str(workdir))
    tiny = _fake_base_model(workdir / "models" / "tiny-qwen2")
    database = f"retrain_faults_{int(time.time())}_{os.getpid()}"
    retrain_env = {
        "RETRAIN_HOME": str(workdir / "state"),
        "RETRAIN__S3__BUCKET": BUCKET,
        "RETRAIN__TRAIN__BASE_MODEL": str(tiny),
        "RETRAIN__TRAIN__PROFILE": "cpu_tiny",
        "RETRAIN__TRAIN__MODEL_CACHE_DIR": str(workdir / "models"),
        "RETRAIN__MODELS__ALLOW": json.dumps([str(workdir / "models" / "*")]),
        "RETRAIN__TRAIN__TRAINER_PYTHON": str(_oom_trainer(workdir / "oom-trainer")),
        "RETRAIN__SCHEDULE__RETRIES": "0",
        "RETRAIN_FAKE_TRAINER": "ok",
        "RETRAIN_FAKE_QUALITY": "good",
    }
    logs_dir = workdir / "logs"
    logs_dir.mkdir(exist_ok=True)
    with MotoServer() as moto:
        result.secret_key, result.access_key = moto.secret_key, moto.access_key
        store = ObjectStore(moto.client(), BUCKET)
        store.ensure_bucket()
        af = AirflowEnv(workdir / "airflow", database, moto, retrain_env)
        settings = load_settings(environ={"RETRAIN__S3__BUCKET": BUCKET})
        registry = Registry(
            mlflow_db.sqlite_uri(workdir / "state" / "mlflow.db"), model_name(settings, str(tiny))
        )
        try:
            af.migrate()
            store.put_bytes(BATCH_KEY, ("\n".join(make_batch(60, seed=1, bad=3)) + "\n").encode("utf-8"))

            def attempt(name: str, killed: bool = False) -> None:
                date = DATES[name]
                log_file = logs_dir / f"{name}.log"
                t0 = time.monotonic()
                if killed:
                    code, left = _dags_test_killed_in_train(af, date, log_file)
                    result.leftover_processes += left
                else:
                    code = af.dags_test("ner_retrain", date, log_file=log_file).returncode
                wall = time.monotonic() - t0
                runs = [
                    r
                    for r in af.run_states("ner_retrain")
                    if str(r.get("logical_date", "")).startswith(date[:10])
                ]
                run_id = runs[0]["run_id"] if runs else ""
                states = af.task_states("ner_retrain", run_id) if run_id else {}
                result.attempts[name] = Attempt(name, run_id, code, round(wall, 1), states, killed)
                result.after[name] = _snapshot(store, registry)
                prefix = f"runs/{safe_run_id(run_id)}/"
                if store.exists(prefix + "intake.json"):
                    result.intake[name] = store.get_json(prefix + "intake.json")
                if store.exists(prefix + "train_request.json"):
                    result.datasets[name] = store.get_json(prefix + "train_request.json")["dataset_version"]
                if name == "C-rerun" and store.exists(prefix + "summary.json"):
                    result.summary = store.get_json(prefix + "summary.json")

            attempt("A-trainer-exit-137")
            af.retrain_env["RETRAIN__TRAIN__TRAINER_PYTHON"] = str(_stand_in(workdir / "stand-in-python"))
            af.retrain_env["RETRAIN_FAKE_TRAINER"] = "slow"
            attempt("B-worker-sigkill", killed=True)
            af.retrain_env["RETRAIN_FAKE_TRAINER"] = "ok"
            attempt("C-rerun")
        except Exception as exc:  # keep what was collected; the tests report it
            result.error = f"{type(exc).__name__}: {exc}"
        finally:
            for path in sorted(workdir.rglob("*.log")):
                if path.is_file():
                    result.logs[str(path)] = path.read_text(encoding="utf-8", errors="replace")
            for key in (o.key for o in store.iter_objects("")):
                if key.endswith((".log", ".json", ".jsonl", ".yaml", ".md", ".html")):
                    result.logs[f"s3://{BUCKET}/{key}"] = store.get_bytes(key).decode("utf-8", "replace")
            drop_database(database)
    return result
