"""The `retrain` command's exit status: 65 (EX_DATAERR) for an input error, 1 for a crash.

Run as the launchers run it (``python -m retrain.cli <stage> --run-uri …`` in a child process) against a
real S3 API (moto server on 127.0.0.1): a train request with a wrong field is an input error; an S3
endpoint that does not answer is not.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from retrain import runs
from retrain.errors import INPUT_ERROR_EXIT, InputError
from tests.support import contracts

REPO = Path(__file__).resolve().parents[1]
RUN_ID = "manual__2026-12-02"


def _retrain(*argv: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "AIRFLOW"))}
    return subprocess.run(
        [sys.executable, "-m", "retrain.cli", *argv],
        env={**base, **env},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_input_error_classes_share_one_base() -> None:
    from retrain.base_models import BaseModelDownloadFailed, BaseModelRefused, BaseModelUnavailable
    from retrain.config import ConfigError
    from retrain.dataset import EmptyDatasetError
    from retrain.evaluate import EvalRequestError
    from retrain.evaluate.parsing import GoldFormatError
    from retrain.runs import ContractError
    from retrain.storage import UnsafeKeyError
    from retrain.train import TrainingFailed, TrainInputError

    for cls in (
        ConfigError,
        ContractError,
        UnsafeKeyError,
        EvalRequestError,
        GoldFormatError,
        TrainInputError,
        BaseModelUnavailable,
        BaseModelRefused,
        EmptyDatasetError,
    ):
        assert issubclass(cls, InputError), cls
    assert not issubclass(TrainingFailed, InputError)  # a failed run of LLaMA-Factory may be retried
    assert not issubclass(BaseModelDownloadFailed, InputError)  # the hub may answer next time
    assert issubclass(ConfigError, ValueError)  # callers catching the old bases still catch them


def test_a_request_with_a_wrong_field_exits_65(moto_server, store) -> None:
    request = contracts.train_request(RUN_ID, store.bucket).model_dump(mode="json")
    request["dataset_version"] = 7  # strict contract: a string
    store.put_json(f"runs/{RUN_ID}/{runs.TRAIN_REQUEST}", request)

    proc = _retrain("train", "--run-uri", f"s3://{store.bucket}/runs/{RUN_ID}", env=moto_server.env())

    assert proc.returncode == INPUT_ERROR_EXIT == 65, proc.stderr
    assert "retrain train: error: " in proc.stderr
    assert "train_request.json" in proc.stderr and "dataset_version" in proc.stderr


def test_a_run_uri_without_a_run_exits_65() -> None:
    proc = _retrain("train", "--run-uri", "s3://only-a-bucket", env={})
    assert proc.returncode == 65, proc.stderr


def test_an_unreachable_s3_endpoint_is_a_crash_not_an_input_error() -> None:
    env = {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",  # discard port: nothing listens
        "AWS_MAX_ATTEMPTS": "1",
    }
    proc = _retrain("train", "--run-uri", f"s3://any-bucket/runs/{RUN_ID}", env=env)
    assert proc.returncode == 1, proc.stderr
    assert "retrain train: error: EndpointConnectionError" in proc.stderr
