# ruff: noqa: F811  (pytest fixtures imported from tests.fixtures_trainer are used as arguments)
"""A ModelScope id pinned to a revision, served from the ModelScope cache under train.model_cache_dir
with no network: resolved by id and revision, then through real training and evaluation (trainer env).

The tiny model is laid out exactly where modelscope's own ``snapshot_download(local_files_only=True)``
looks (``<cache>/models/<owner>--<name>/snapshots/<revision>/``, modelscope-hub's layout); the
test asks modelscope itself to confirm the layout before relying on it. The hub endpoint is pointed
at a closed local port, so any download attempt would fail at once instead of passing by accident.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("llamafactory")
pytest.importorskip("modelscope")

from retrain.base_models import BaseModelDownloadFailed, BaseModelRefused, resolve_base_model  # noqa: E402
from retrain.errors import InputError  # noqa: E402
from tests.fixtures_trainer import (  # noqa: E402,F401
    BUCKET,
    moto_s3,
    put_train_request,
    tiny_model_dir,
    upload_alpaca_dataset,
)

pytestmark = pytest.mark.trainer

MODEL_ID = "retrain-test/tiny-qwen2"
REVISION = "v1.0.0"
#: no hub: a closed port on loopback (connection refused at once)
NO_HUB = {"MODELSCOPE_DOMAIN": "127.0.0.1:9", "HTTPS_PROXY": "", "https_proxy": ""}


def _modelscope_cache(tiny: Path, cache: Path, model_id: str = MODEL_ID, revision: str = REVISION) -> Path:
    owner, name = model_id.split("/")
    snapshot = cache / "models" / f"{owner}--{name}" / "snapshots" / revision
    shutil.copytree(tiny, snapshot)
    return snapshot


@pytest.fixture
def no_hub(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for key, value in NO_HUB.items():
        monkeypatch.setenv(key, value)
    return NO_HUB


def test_layout_is_modelscopes_own(tiny_model_dir: Path, tmp_path: Path, no_hub) -> None:
    from modelscope import snapshot_download

    snapshot = _modelscope_cache(tiny_model_dir, tmp_path)
    found = snapshot_download(MODEL_ID, revision=REVISION, cache_dir=str(tmp_path), local_files_only=True)
    assert Path(found) == snapshot


def test_cache_hit_by_id_and_revision(tiny_model_dir: Path, tmp_path: Path, no_hub) -> None:
    snapshot = _modelscope_cache(tiny_model_dir, tmp_path)
    assert resolve_base_model(MODEL_ID, tmp_path, REVISION) == snapshot


def test_another_revision_is_not_taken_from_the_cache(tiny_model_dir: Path, tmp_path: Path, no_hub) -> None:
    _modelscope_cache(tiny_model_dir, tmp_path)
    with pytest.raises(BaseModelDownloadFailed) as info:
        resolve_base_model(MODEL_ID, tmp_path, "v2.0.0", connect_timeout_s=3)
    assert "'v2.0.0'" in str(info.value) and "unreachable" in str(info.value)
    assert not isinstance(info.value, InputError)  # a network condition: the task is retried


def test_an_unpinned_id_is_refused_before_any_lookup(tiny_model_dir: Path, tmp_path: Path, no_hub) -> None:
    _modelscope_cache(tiny_model_dir, tmp_path)  # even a cached copy is not taken without a revision
    with pytest.raises(BaseModelRefused, match="pinned revision"):
        resolve_base_model(MODEL_ID, tmp_path, None)


def test_train_and_evaluate_from_the_cache(moto_s3, tiny_model_dir: Path, tmp_path: Path, no_hub) -> None:
    """`retrain train` and `retrain evaluate` on a ModelScope id: both resolve the cached snapshot."""
    client = moto_s3.client()
    cache = tmp_path / "model-cache"
    snapshot = _modelscope_cache(tiny_model_dir, cache)
    dataset_uri = upload_alpaca_dataset(client, BUCKET, "v-cache", n_train=16)
    run_uri = put_train_request(
        client,
        BUCKET,
        dataset_uri=dataset_uri,
        dataset_version="v-cache",
        base_model=MODEL_ID,
        model_cache_dir=str(cache),
        llamafactory_overrides={"num_train_epochs": 1.0, "logging_steps": 1},  # 2 steps: log each
    )
    prefix = run_uri.split(f"s3://{BUCKET}/", 1)[1]
    request = json.loads(client.get_object(Bucket=BUCKET, Key=f"{prefix}/train_request.json")["Body"].read())
    request["base_model_revision"] = REVISION
    client.put_object(Bucket=BUCKET, Key=f"{prefix}/train_request.json", Body=json.dumps(request).encode())
    env = moto_s3.env() | NO_HUB

    proc = _cli("train", run_uri, env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert f"found in the ModelScope cache: {snapshot}" in proc.stderr
    train = json.loads(client.get_object(Bucket=BUCKET, Key=f"{prefix}/train_result.json")["Body"].read())
    assert train["base_model"] == MODEL_ID

    golden = f"{dataset_uri}golden.json"
    golden_key = golden.split(f"s3://{BUCKET}/", 1)[1]
    golden_bytes = client.get_object(Bucket=BUCKET, Key=golden_key)["Body"].read()
    eval_request = {
        "run_id": request["run_id"],
        "golden_uri": golden,
        "golden_hash": hashlib.sha256(golden_bytes).hexdigest()[:16],
        "base_model": MODEL_ID,
        "base_model_revision": REVISION,
        "model_cache_dir": str(cache),
        "candidate": {
            "name": "candidate",
            "adapter_uri": train["adapter_uri"],
            "adapter_digest": train["adapter_digest"],
        },
        "champion": {"name": "base model", "adapter_uri": None, "version": None},
        "labels": ["name", "organization", "address"],
        "max_new_tokens": 8,
        "batch_size": 8,
    }
    client.put_object(
        Bucket=BUCKET, Key=f"{prefix}/eval_request.json", Body=json.dumps(eval_request).encode()
    )
    proc = _cli("evaluate", run_uri, env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(client.get_object(Bucket=BUCKET, Key=f"{prefix}/eval/report.json")["Body"].read())
    assert report["base_model"] == MODEL_ID and report["base_model_path"] == str(snapshot)
    assert report["n"] == 8


def _cli(stage: str, run_uri: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "retrain.cli", stage, "--run-uri", run_uri],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
