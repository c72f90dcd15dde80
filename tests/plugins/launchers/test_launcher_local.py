"""The local launcher (plugins/retrain_airflow/launchers/local.py): the stage as a child process.

The child is the real `retrain` CLI (``python -m retrain.cli``, this environment's python standing in
for the trainer env's: the stages fail on their input before anything needs torch), or a script
that crashes the way an OOM-killed trainer does; S3 is a moto server reached through the Airflow
connection. An input error (exit 65) must end the task without retries (AirflowFailException);
a crash must stay an ordinary, retried failure.
"""

from __future__ import annotations

import sys

import pytest
from airflow.sdk.exceptions import AirflowFailException
from retrain_airflow import settings as glue
from retrain_airflow.launchers.base import StageInputError
from retrain_airflow.launchers.local import LocalStageOperator

from retrain import runs
from retrain.stages import StageNotCommitted
from tests.support import contracts
from tests.support.launchers import CONN_ID

RUN_ID = "manual__2026-12-02"


@pytest.fixture
def worker(moto_server, store, tmp_path, monkeypatch):
    """The worker's view: conf with this python as the trainer's, the S3 connection; glue settings fresh."""

    def use(trainer_python: str = sys.executable) -> LocalStageOperator:
        monkeypatch.setenv("RETRAIN__TRAIN__TRAINER_PYTHON", trainer_python)
        monkeypatch.setenv("RETRAIN__AIRFLOW__AWS_CONN_ID", CONN_ID)
        monkeypatch.setenv("RETRAIN__S3__BUCKET", store.bucket)
        monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", moto_server.airflow_connection())
        glue.settings.cache_clear()
        return LocalStageOperator.from_settings(
            "train", f"s3://{store.bucket}/runs/{RUN_ID}", glue.settings(), retries=2
        )

    yield use
    glue.settings.cache_clear()


def _script(tmp_path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text(f"#!{sys.executable}\nimport sys\n{body}\n")
    path.chmod(0o755)
    return str(path)


def test_an_input_error_fails_the_task_without_retries(worker, store) -> None:
    request = contracts.train_request(RUN_ID, store.bucket).model_dump(mode="json")
    request["dataset_version"] = 7  # strict contract: a string
    store.put_json(f"runs/{RUN_ID}/{runs.TRAIN_REQUEST}", request)
    op = worker()
    assert op.retries == 2

    with pytest.raises(StageInputError) as info:
        op.execute({})
    assert isinstance(info.value, AirflowFailException)  # Airflow's "fail now, do not retry"
    message = str(info.value)
    assert "`retrain train` exited with code 65" in message and "retrying will not help" in message
    assert "dataset_version" in message  # the CLI's own line, from the child's output


def test_a_crash_stays_a_retried_failure(worker, tmp_path, moto_server) -> None:
    oom = _script(tmp_path, "oom-python", "print('loading checkpoint shards', flush=True)\nsys.exit(137)")
    with pytest.raises(RuntimeError, match="exited with code 137") as info:
        worker(oom).execute({})
    assert not isinstance(info.value, AirflowFailException)
    assert "loading checkpoint shards" in str(info.value)
    assert moto_server.secret_key not in str(info.value)


def test_exit_0_without_a_commit_fails_and_an_old_marker_cannot_pass(worker, store, tmp_path) -> None:
    stale = f"runs/{RUN_ID}/{runs.TRAIN_RESULT}"
    store.put_json(stale, {"status": "succeeded"})
    silent = _script(tmp_path, "silent-python", "print('all good, nothing saved')")
    with pytest.raises(StageNotCommitted, match="train_result.json is missing"):
        worker(silent).execute({})
    assert not store.exists(stale)


def test_the_trainer_gets_the_connection_credentials_and_prints_them_masked(
    worker, tmp_path, moto_server, capsys
) -> None:
    leaky = _script(
        tmp_path,
        "leaky-python",
        "import os\nprint('key', os.environ['AWS_SECRET_ACCESS_KEY'], os.environ['AWS_ENDPOINT_URL'])\n"
        "sys.exit(3)",
    )
    with pytest.raises(RuntimeError, match="exited with code 3") as info:
        worker(leaky).execute({})
    assert f"key *** {moto_server.endpoint}" in str(info.value)
    assert moto_server.secret_key not in capsys.readouterr().out


TASK_PROCESS = """
import os, sys
sys.path[:0] = [os.environ["REPO"], os.environ["REPO"] + "/src", os.environ["REPO"] + "/plugins"]
from retrain_airflow import settings as glue
from retrain_airflow.launchers.local import run_trainer_process
run_trainer_process("train", sys.argv[1], glue.settings())
"""


def test_the_trainer_dies_with_a_killed_task_process(worker, store, tmp_path) -> None:
    """SIGKILL the process that runs the local launcher (as a killed Celery worker takes its task
    process with it): the trainer it started gets SIGTERM and is gone, instead of running on
    beside the retry (without the parent-death signal it is re-parented and keeps running)."""
    import os
    import signal
    import subprocess
    import time
    from pathlib import Path

    import psutil

    pid_file, term_file = tmp_path / "trainer.pid", tmp_path / "trainer.sigterm"
    sleeper = _script(
        tmp_path,
        "long-python",
        "import os, signal, time\n"
        f"open({str(pid_file)!r}, 'w').write(str(os.getpid()))\n"
        f"def term(*_):\n    open({str(term_file)!r}, 'w').write('SIGTERM')\n    sys.exit(143)\n"
        "signal.signal(signal.SIGTERM, term)\n"
        "time.sleep(600)",
    )
    worker(sleeper)  # the environment the task process inherits
    repo = str(Path(__file__).resolve().parents[3])
    task = subprocess.Popen(
        [sys.executable, "-c", TASK_PROCESS, f"s3://{store.bucket}/runs/{RUN_ID}"],
        env={**os.environ, "REPO": repo},
    )
    deadline = time.monotonic() + 60
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline and task.poll() is None, "the trainer did not start"
        time.sleep(0.1)
    trainer = psutil.Process(int(pid_file.read_text()))
    assert trainer.ppid() == task.pid

    os.kill(task.pid, signal.SIGKILL)
    task.wait()
    try:
        trainer.wait(timeout=10)
    except psutil.TimeoutExpired:
        trainer.kill()
        pytest.fail("the trainer outlived its killed task process")
    assert term_file.read_text() == "SIGTERM"  # a graceful stop: retrain stops llamafactory-cli on it
