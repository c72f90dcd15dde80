"""The launchers with ``s3.scoped_credentials: assume_role``: the trainer gets the stage's own
short-lived credentials, never the connection's keys, and the role is gone when the task ends.

The local launcher runs for real against a moto server with IAM checks on (requests must be signed
by a known identity and allowed by its policies); the trainer is a script of this environment that
reports what it was given and what S3 let it do. The Docker launcher's private environment is
checked without an engine (tests/docker/ runs the real one).
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime

import pytest
from retrain_airflow import settings as glue
from retrain_airflow.launchers.docker import DockerStageOperator
from retrain_airflow.launchers.kubernetes import KubernetesStageOperator
from retrain_airflow.launchers.local import LocalStageOperator

from retrain import runs
from retrain.scoped_credentials import ScopedCredentials, role_name
from retrain.storage import ObjectStore
from tests.support import contracts
from tests.support.launchers import ACCESS_KEY, RENDERED_RUN_URI, SECRET_KEY, settings
from tests.support.stack import MotoServer

RUN_ID = "manual__2026-12-02"
CONN = "retrain_scoped_test_s3"

PROBE = """
import json, os, sys, boto3
from botocore.exceptions import ClientError
bucket, run = sys.argv[-1][5:].split("/", 1)
s3 = boto3.client("s3")
given = {"key": os.environ["AWS_ACCESS_KEY_ID"], "token": bool(os.environ.get("AWS_SESSION_TOKEN"))}
s3.put_object(Bucket=bucket, Key=run + "/probe.json", Body=json.dumps(given).encode())
for what, key in (("incoming", "incoming/evil.jsonl"), ("other run", "runs/other/train_result.json")):
    try:
        s3.put_object(Bucket=bucket, Key=key, Body=b"x")
        print(what, "written")
    except ClientError as exc:
        print(what, exc.response["Error"]["Code"])
sys.exit(3)
"""


@pytest.fixture(scope="module")
def iam_moto():
    with MotoServer(iam_checks=True) as server:
        yield server


def test_the_local_trainer_gets_only_the_stages_credentials(iam_moto, tmp_path, monkeypatch) -> None:
    store = ObjectStore(iam_moto.client(), "scoped-launcher")
    store.ensure_bucket()
    runs.write(store, f"runs/{RUN_ID}/{runs.TRAIN_REQUEST}", contracts.train_request(RUN_ID, store.bucket))
    script = tmp_path / "probe-python"
    script.write_text(f"#!{sys.executable}\n{PROBE}")
    script.chmod(0o755)
    for key, value in {
        "RETRAIN__TRAIN__TRAINER_PYTHON": str(script),
        "RETRAIN__AIRFLOW__AWS_CONN_ID": CONN,
        "RETRAIN__S3__BUCKET": store.bucket,
        "RETRAIN__S3__SCOPED_CREDENTIALS": "assume_role",
        "RETRAIN__S3__SCOPED_DURATION_SECONDS": "900",
        f"AIRFLOW_CONN_{CONN.upper()}": iam_moto.airflow_connection(),
    }.items():
        monkeypatch.setenv(key, value)
    glue.settings.cache_clear()
    try:
        op = LocalStageOperator.from_settings("train", f"s3://{store.bucket}/runs/{RUN_ID}", glue.settings())
        with pytest.raises(RuntimeError, match="exited with code 3") as info:
            op.execute({})
    finally:
        glue.settings.cache_clear()
    assert "incoming AccessDenied" in str(info.value) and "other run AccessDenied" in str(info.value)
    given = store.get_json(f"runs/{RUN_ID}/probe.json")
    assert given["key"] != iam_moto.access_key and given["token"] is True
    assert iam_moto.secret_key not in str(info.value)
    iam = iam_moto.client("iam")
    assert iam.list_roles(PathPrefix=f"/retrain/{role_name(RUN_ID, 'train')}/")["Roles"] == []
    assert op.scoped_credentials is None


def test_the_docker_container_gets_the_scoped_credentials_not_the_connections(s3_connection) -> None:
    op = DockerStageOperator.from_settings("train", RENDERED_RUN_URI, settings())
    op.scoped_credentials = ScopedCredentials(
        role_name="retrain-train-x-abcdef",
        access_key_id="ASIASCOPEDTEST000001",
        secret_access_key="scoped-secret",
        session_token="scoped-token",
        expiration=datetime.now(UTC),
    )
    op.load_private_environment()
    env = op._private_environment
    assert env["AWS_ACCESS_KEY_ID"] == "ASIASCOPEDTEST000001" and env["AWS_SESSION_TOKEN"] == "scoped-token"
    assert ACCESS_KEY not in env.values() and SECRET_KEY not in env.values()
    assert env["AWS_ENDPOINT_URL"] and env["AWS_DEFAULT_REGION"] == "eu-west-1"  # still the connection's


def test_kubernetes_refuses_scoped_credentials_it_cannot_hand_over(monkeypatch) -> None:
    monkeypatch.setenv("RETRAIN__S3__SCOPED_CREDENTIALS", "assume_role")
    glue.settings.cache_clear()
    try:
        op = KubernetesStageOperator.from_settings("train", RENDERED_RUN_URI, settings())
        with pytest.raises(Exception, match="not supported by KubernetesStageOperator"):
            with op.scoped():
                pass
    finally:
        glue.settings.cache_clear()
