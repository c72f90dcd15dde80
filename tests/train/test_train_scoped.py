"""`retrain train` on nothing but its per-stage credentials (s3.scoped_credentials: assume_role).

A moto server with IAM checks on (requests must be signed by a known identity and allowed by its
policies; an assumed role is held to its own policies). The launcher's side is played by the library
with the admin keys: the stage's grants from its request, a role per run and stage, its temporary
credentials. The real trainer (LLaMA-Factory, the tiny model) then runs with only those in its
environment: it must read the dataset, publish the adapter and commit its result; the role is gone
afterwards.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("llamafactory")

from retrain.scoped_credentials import role_name, scoped, stage_grants  # noqa: E402
from retrain.storage import ObjectStore  # noqa: E402
from tests.fixtures_trainer import (  # noqa: E402,F401
    BUCKET,
    put_train_request,
    tiny_model_dir,
    upload_alpaca_dataset,
)
from tests.support.stack import MotoServer  # noqa: E402

pytestmark = pytest.mark.trainer

RUN_ID = "scoped-train"


def test_retrain_train_succeeds_on_its_scoped_credentials_alone(tiny_model_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    with MotoServer(iam_checks=True) as moto:
        admin = moto.client()
        admin.create_bucket(Bucket=BUCKET)
        admin.put_object(Bucket=BUCKET, Key="incoming/batch.jsonl", Body=b"{}")
        dataset_uri = upload_alpaca_dataset(admin, BUCKET, "v-scoped", n_train=40)
        run_uri = put_train_request(
            admin,
            BUCKET,
            dataset_uri=dataset_uri,
            dataset_version="v-scoped",
            base_model=str(tiny_model_dir),
            model_cache_dir=str(tmp_path / "cache"),
            llamafactory_overrides={"num_train_epochs": 1.0},  # 5 steps, one loss log: S3 access is the point
            run_id=RUN_ID,
        )
        store = ObjectStore(admin, BUCKET)
        run_prefix = f"runs/{RUN_ID}"
        iam = moto.client("iam")
        name = role_name(RUN_ID, "train")
        with scoped(iam, moto.client("sts"), stage_grants(store, run_prefix, "train"), name, 900) as creds:
            env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
            env.update(AWS_ENDPOINT_URL=moto.endpoint, AWS_DEFAULT_REGION="us-east-1", **creds.environment())
            started = time.monotonic()
            proc = subprocess.run(
                [sys.executable, "-m", "retrain.cli", "train", "--run-uri", run_uri],
                env=env,
                capture_output=True,
                text=True,
                timeout=900,
            )
            print(f"retrain train on scoped credentials took {time.monotonic() - started:.1f}s wall")
            assert proc.returncode == 0, proc.stderr[-4000:]
            # the same credentials, used as the trainer could: refused outside the stage's grants
            read_incoming = (
                f"import boto3; boto3.client('s3').get_object(Bucket={BUCKET!r}, Key='incoming/batch.jsonl')"
            )
            probe = subprocess.run(
                [sys.executable, "-c", read_incoming],
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert probe.returncode != 0 and "AccessDenied" in probe.stderr, probe.stderr[-2000:]
        result = store.get_json(f"{run_prefix}/train_result.json")
        digest = result["adapter_digest"]
        assert result["adapter_uri"] == f"s3://{BUCKET}/adapters/{digest}/"
        assert store.exists(f"adapters/{digest}/adapter_model.safetensors")
        assert iam.list_roles(PathPrefix=f"/retrain/{name}/")["Roles"] == []
