"""``train.launcher: local``: the stage as a subprocess of the trainer environment on the worker.

Invoked exactly as the container is (``retrain <stage> --run-uri s3://…/runs/<id>``, as
``<trainer python> -m retrain.cli …``), with the S3 credentials of the Airflow connection (or the
stage's scoped ones, ``s3.scoped_credentials``) in its environment; its output streams into the
task log with those secrets masked.

The child dies with the task process (`die_with_parent`: Linux's parent-death signal, SIGTERM, on
which `retrain` stops its own ``llamafactory-cli`` child): a worker killed with SIGKILL, whose task
process goes with it, leaves no trainer writing into the run's prefix beside the retry. Unlike the
Docker launcher's container, the process cannot outlive the task, so there is nothing to clear
before a retry.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from airflow.sdk import BaseOperator

from retrain.config import Settings
from retrain.errors import INPUT_ERROR_EXIT
from retrain.scoped_credentials import ScopedCredentials
from retrain_airflow import settings as glue
from retrain_airflow.launchers.base import StageLauncher, input_error, stage_command
from retrain_airflow.s3 import SECRET_VARIABLES, s3_environment

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[3]
#: Lines of the trainer's output kept for the task's error message.
TAIL_LINES = 15


def trainer_python(settings: Settings) -> str:
    """The trainer environment's python: conf, then $RETRAIN_TRAINER_PYTHON, then <repo>/.venv-tr."""
    return (
        settings.train.trainer_python
        or os.environ.get("RETRAIN_TRAINER_PYTHON")
        or str(REPO_ROOT / ".venv-tr" / "bin" / "python")
    )


def _trainer_environment(
    settings: Settings, credentials: ScopedCredentials | None = None
) -> tuple[dict[str, str], list[str]]:
    """The child's environment (no AIRFLOW*/AWS_* of the worker; the connection's AWS_*, or the
    stage's scoped credentials) and its secrets."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "AWS_"))}
    s3_env = s3_environment(settings.airflow.aws_conn_id, credentials)
    env.update(s3_env)
    env["PYTHONUNBUFFERED"] = "1"
    env["RETRAIN_CONF_DIR"] = settings.conf_dir
    return env, [v for k, v in s3_env.items() if k in SECRET_VARIABLES]


#: prctl(2) option: the signal this process gets when the thread that started it ends.
PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """``preexec_fn`` of the trainer: SIGTERM when its parent (the task process) dies, however it dies.
    If the parent is already gone when this runs (the race prctl leaves open), end now."""
    if sys.platform != "linux":  # pragma: no cover - workers run Linux
        return
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), signal.SIGTERM)


def run_trainer_process(
    stage: str, run_uri: str, settings: Settings, credentials: ScopedCredentials | None = None
) -> None:
    """Run ``retrain <stage> --run-uri <run_uri>`` in the trainer env, streaming its output into the
    task log; `input_error` on exit 65, RuntimeError (retried) on any other non-zero exit."""
    python = trainer_python(settings)
    if not Path(python).exists():
        raise FileNotFoundError(
            f"trainer python {python} not found (set train.trainer_python or "
            "RETRAIN_TRAINER_PYTHON, or run `make install`)"
        )
    env, secrets = _trainer_environment(settings, credentials)
    cmd = [python, "-m", "retrain.cli", *stage_command(stage, run_uri)[1:]]
    log.info("local launcher: %s", " ".join(cmd))
    parent = os.getpid()
    proc = subprocess.Popen(
        cmd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        cwd=REPO_ROOT,
        preexec_fn=lambda: die_with_parent(parent),  # noqa: PLW1509 (no threads start the trainer)
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
    detail = "\n".join(tail[-TAIL_LINES:])
    if code == INPUT_ERROR_EXIT:
        raise input_error(stage, detail)
    if code != 0:
        raise RuntimeError(f"`retrain {stage}` exited with code {code}; last output:\n{detail}")


class LocalStageOperator(StageLauncher, BaseOperator):
    """The task running a trainer stage as a subprocess of the trainer env (`run_trainer_process`).

    The settings are read when the task runs (`retrain_airflow.settings`), as every task callable
    reads them; the task's XCom is the run URI."""

    template_fields: Sequence[str] = ("run_uri",)

    def __init__(self, *, stage: str, run_uri: str, aws_conn_id: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stage = stage
        self.run_uri = run_uri
        self.aws_conn_id = aws_conn_id

    @classmethod
    def from_settings(cls, stage: str, run_uri: str, settings: Settings, **kwargs: Any) -> LocalStageOperator:
        args: dict[str, Any] = {
            "task_id": stage,
            "stage": stage,
            "run_uri": run_uri,
            "aws_conn_id": settings.airflow.aws_conn_id,
        }
        args.update(kwargs)
        return cls(**args)

    def launch(self, context: Any) -> None:
        run_trainer_process(self.stage, self.run_uri, glue.settings(), self.scoped_credentials)
