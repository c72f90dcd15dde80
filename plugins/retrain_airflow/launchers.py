"""Where the trainer-side stages (train, evaluate) run: one conf setting, ``train.launcher``.

- ``local``: a subprocess in the trainer environment on the worker, invoked exactly as the container
  is (``retrain <stage> --run-uri s3://…/runs/<id>``), S3 credentials passed in its environment.
- ``docker``: the trainer image through DockerOperator (GPU device requests from conf).
- ``kubernetes``: the same image and command through KubernetesPodOperator.
The DAG file calls `stage_operator` and does not change with the launcher.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from retrain.config import Settings

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]


def trainer_python(settings: Settings) -> str:
    """The trainer environment's python: conf, then $RETRAIN_TRAINER_PYTHON, then <repo>/.venv-tr."""
    return (
        settings.train.trainer_python
        or os.environ.get("RETRAIN_TRAINER_PYTHON")
        or str(REPO_ROOT / ".venv-tr" / "bin" / "python")
    )


def stage_command(stage: str, run_uri: str) -> list[str]:
    """The one command line every launcher runs."""
    return ["retrain", stage, "--run-uri", run_uri]


def _run_store(run_uri: str, aws_conn_id: str | None) -> tuple[Any, str]:
    """The run's bucket through the Airflow connection (conf's when None) and the run's prefix."""
    from retrain.storage import parse_s3_uri
    from retrain_airflow.s3 import object_store
    from retrain_airflow.settings import settings

    bucket, prefix = parse_s3_uri(run_uri)
    return object_store(settings(), bucket, aws_conn_id), prefix


def before_stage(stage: str, run_uri: str, aws_conn_id: str | None = None) -> None:
    """Every launcher, before it starts a stage: remove the stage's commit marker of an earlier attempt
    (see retrain.stages), so that only this attempt's output can pass `after_stage`."""
    from retrain.stages import uncommit

    store, prefix = _run_store(run_uri, aws_conn_id)
    uncommit(store, prefix, stage)


def after_stage(stage: str, run_uri: str, aws_conn_id: str | None = None) -> None:
    """Every launcher, after a stage exited 0: its output must be committed, else the task fails with
    what is missing (`retrain.stages.StageNotCommitted`)."""
    from retrain.stages import check_committed

    store, prefix = _run_store(run_uri, aws_conn_id)
    check_committed(store, prefix, stage)


def run_local_stage(stage: str, run_uri: str) -> str:
    """Run a trainer stage as a subprocess of the trainer env; stream its output into the task log."""
    from retrain_airflow.s3 import s3_environment
    from retrain_airflow.settings import settings

    s = settings()
    python = trainer_python(s)
    if not Path(python).exists():
        raise FileNotFoundError(
            f"trainer python {python} not found (set train.trainer_python or "
            "RETRAIN_TRAINER_PYTHON, or run `make install`)"
        )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "AWS_"))}
    s3_env = s3_environment(s)
    env.update(s3_env)
    secrets = [v for k, v in s3_env.items() if k in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN") and v]
    env["PYTHONUNBUFFERED"] = "1"
    env["RETRAIN_CONF_DIR"] = s.conf_dir
    cmd = [python, "-m", "retrain.cli", *stage_command(stage, run_uri)[1:]]
    before_stage(stage, run_uri, s.airflow.aws_conn_id)
    log.info("local launcher: %s", " ".join(cmd))
    proc = subprocess.Popen(
        cmd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        cwd=str(REPO_ROOT),
    )
    tail: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip("\n")
        for secret in secrets:  # whatever the trainer prints, its credentials never reach the task log
            line = line.replace(secret, "***")
        tail = (tail + [line])[-40:]
        print(line, file=sys.stdout, flush=True)
    code = proc.wait()
    if code != 0:
        raise RuntimeError(
            f"`retrain {stage}` exited with code {code}; last output:\n" + "\n".join(tail[-15:])
        )
    after_stage(stage, run_uri, s.airflow.aws_conn_id)
    return run_uri


def stage_operator(stage: str, run_uri: str, settings: Settings, **kwargs: Any) -> Any:
    """The operator that runs ``retrain <stage> --run-uri <run_uri>`` with the configured launcher.

    ``run_uri`` is usually a Jinja template pulling the URI from XCom."""
    launcher = settings.train.launcher
    if launcher == "local":
        from airflow.providers.standard.operators.python import PythonOperator

        return PythonOperator(
            task_id=stage, python_callable=run_local_stage, op_args=[stage, run_uri], **kwargs
        )
    if launcher == "docker":
        from retrain_airflow.container_launchers import docker_stage_operator

        return docker_stage_operator(stage, run_uri, settings, **kwargs)
    if launcher == "kubernetes":
        from retrain_airflow.container_launchers import kubernetes_stage_operator

        return kubernetes_stage_operator(stage, run_uri, settings, **kwargs)
    raise ValueError(f"unknown train.launcher {launcher!r}")
