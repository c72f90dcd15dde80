"""Per-stage S3 credentials (src/retrain/scoped_credentials.py) on a store that enforces IAM.

A moto server of its own with IAM checks on (`MotoServer(iam_checks=True)`): every request must be
signed by a known identity whose policies allow it, and an assumed role is held to its own policies.
The launcher's identity (an admin user) makes the per-stage role; the stage's credentials must reach
what the stage reads and writes and nothing else, expire after ``s3.scoped_duration_seconds``, and
stop working when the role is deleted after the stage or by a relaunch.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import boto3
import pytest
from botocore.exceptions import ClientError

from retrain import runs
from retrain.config import ConfigError, load_settings
from retrain.scoped_credentials import (
    Grants,
    ScopedCredentials,
    issue,
    revoke,
    role_name,
    scoped,
    stage_grants,
    stage_policy,
    wait_until_usable,
)
from retrain.storage import ObjectStore
from tests.support import contracts
from tests.support.stack import MotoServer

RUN_ID = "manual__2026-12-02T02_00_00"
OTHER_RUN = "manual__2026-12-01T02_00_00"
DATASET = "d" * 16


@pytest.fixture(scope="module")
def iam_moto():
    with MotoServer(iam_checks=True) as server:
        yield server


@pytest.fixture
def admin_store(iam_moto):
    store = ObjectStore(iam_moto.client(), f"scoped-{uuid.uuid4().hex[:10]}")
    store.ensure_bucket()
    return store


def _as(iam_moto: MotoServer, creds: ScopedCredentials, bucket: str) -> ObjectStore:
    client = boto3.client(
        "s3",
        endpoint_url=iam_moto.endpoint,
        region_name="us-east-1",
        aws_access_key_id=creds.access_key_id,
        aws_secret_access_key=creds.secret_access_key,
        aws_session_token=creds.session_token,
    )
    return ObjectStore(client, bucket)


def _allowed(action) -> bool:
    try:
        action()
        return True
    except ClientError as exc:
        if exc.response["Error"]["Code"] in ("AccessDenied", "403"):
            return False
        raise


def _seed(store: ObjectStore) -> tuple[str, str]:
    """A bucket as a night leaves it: incoming batches, the ledger, two dataset versions, another
    run, the champion's adapter; returns the champion adapter (uri, digest)."""
    for key in (
        "incoming/batch-1.jsonl",
        "state/ledger.json",
        f"datasets/{DATASET}/train.json",
        f"datasets/{DATASET}/golden.json",
        "datasets/eeeeeeeeeeeeeeee/train.json",
        f"runs/{OTHER_RUN}/train_result.json",
        f"runs/{RUN_ID}-x/note.json",
    ):
        store.put_bytes(key, b"{}")
    return contracts.put_adapter(store, b"champion weights")


def test_the_store_enforces_iam(iam_moto, admin_store) -> None:
    """Without this, every refusal below would prove nothing."""
    stranger = boto3.client(
        "s3",
        endpoint_url=iam_moto.endpoint,
        region_name="us-east-1",
        aws_access_key_id="AKIANOTAUSER00000000",
        aws_secret_access_key="nope",
    )
    with pytest.raises(ClientError):
        stranger.list_objects_v2(Bucket=admin_store.bucket)


def test_train_credentials_reach_the_dataset_and_the_run_and_nothing_else(iam_moto, admin_store) -> None:
    champion_uri, champion_digest = _seed(admin_store)
    run = f"runs/{RUN_ID}"
    runs.write(
        admin_store, f"{run}/{runs.TRAIN_REQUEST}", contracts.train_request(RUN_ID, admin_store.bucket)
    )
    grants = stage_grants(admin_store, run, "train")
    iam, sts = iam_moto.client("iam"), iam_moto.client("sts")
    name = role_name(RUN_ID, "train")

    before = datetime.now(UTC)
    with scoped(iam, sts, grants, name, 900) as creds:
        assert creds.access_key_id != iam_moto.access_key
        lifetime = (creds.expiration - before).total_seconds()
        assert 890 <= lifetime <= 960, lifetime  # DurationSeconds, not the connection's forever
        s = _as(iam_moto, creds, admin_store.bucket)
        # what `retrain train` does
        assert s.get_bytes(f"datasets/{DATASET}/train.json") == b"{}"
        assert [o.key for o in s.iter_objects(f"datasets/{DATASET}/")]
        assert s.exists(f"{run}/checkpoint_hashes.json") is False  # 404, not 403
        s.put_json(f"{run}/train/versions.json", {})
        s.delete(f"{run}/train/versions.json")
        s.put_bytes("adapters/" + "f" * 64 + "/adapter_config.json", b"{}")  # publish a new adapter
        assert s.exists(f"{champion_uri.split('/', 3)[3]}adapter_config.json")
        # and what it must not do
        refused = {
            "write another run": lambda: s.put_bytes(f"runs/{OTHER_RUN}/train_result.json", b"x"),
            "read another run": lambda: s.get_bytes(f"runs/{OTHER_RUN}/train_result.json"),
            "write a look-alike run prefix": lambda: s.put_bytes(f"runs/{RUN_ID}-x/note.json", b"x"),
            "write incoming/": lambda: s.put_bytes("incoming/batch-2.jsonl", b"x"),
            "read incoming/": lambda: s.get_bytes("incoming/batch-1.jsonl"),
            "delete incoming/": lambda: s.delete("incoming/batch-1.jsonl"),
            "write the ledger": lambda: s.put_bytes("state/ledger.json", b"x"),
            "read another dataset": lambda: s.get_bytes("datasets/eeeeeeeeeeeeeeee/train.json"),
            "delete the champion's adapter": lambda: s.delete(
                f"adapters/{champion_digest}/adapter_config.json"
            ),
            "write the eval cache": lambda: s.put_bytes("eval_cache/x.json", b"{}"),
        }
        allowed = [what for what, action in refused.items() if _allowed(action)]
        assert allowed == []
    # the stage is over: the role is gone and its credentials with it
    with pytest.raises(iam.exceptions.NoSuchEntityException):
        iam.get_role(RoleName=creds.role_name)
    assert iam.list_roles(PathPrefix=f"/retrain/{name}/")["Roles"] == []
    with pytest.raises(ClientError):
        s.get_bytes(f"datasets/{DATASET}/train.json")
    assert admin_store.exists(f"adapters/{champion_digest}/adapter_config.json")


def test_evaluate_credentials_read_the_two_adapters_and_the_golden_set_only(iam_moto, admin_store) -> None:
    champion = _seed(admin_store)
    candidate = contracts.put_adapter(admin_store, b"candidate weights")
    stranger = contracts.put_adapter(admin_store, b"some other adapter")
    run = f"runs/{RUN_ID}"
    request = contracts.eval_request(
        RUN_ID,
        candidate,
        golden_uri=f"s3://{admin_store.bucket}/datasets/{DATASET}/golden.json",
        champion={
            "name": "champion",
            "adapter_uri": champion[0],
            "adapter_digest": champion[1],
            "version": "1",
        },
    )
    runs.write(admin_store, f"{run}/{runs.EVAL_REQUEST}", request)
    grants = stage_grants(admin_store, run, "evaluate")
    with scoped(
        iam_moto.client("iam"), iam_moto.client("sts"), grants, role_name(RUN_ID, "evaluate"), 900
    ) as c:
        s = _as(iam_moto, c, admin_store.bucket)
        assert runs.read(s, f"{run}/{runs.EVAL_REQUEST}", runs.EvalRequest).run_id == RUN_ID
        s.get_bytes(f"datasets/{DATASET}/golden.json")
        for _uri, digest in (candidate, champion):
            s.get_bytes(f"adapters/{digest}/adapter_model.safetensors")
        s.put_json("eval_cache/" + "a" * 64 + ".json", {})
        s.put_json(f"{run}/eval/report.json", {})
        refused = {
            "read a third adapter": lambda: s.get_bytes(f"adapters/{stranger[1]}/adapter_model.safetensors"),
            "overwrite the champion's adapter": lambda: s.put_bytes(
                f"adapters/{champion[1]}/adapter_model.safetensors", b"x"
            ),
            "read the training split": lambda: s.get_bytes(f"datasets/{DATASET}/train.json"),
            "write another run": lambda: s.put_bytes(f"runs/{OTHER_RUN}/eval/report.json", b"{}"),
            "delete from the eval cache": lambda: s.delete("eval_cache/" + "a" * 64 + ".json"),
        }
        assert [what for what, action in refused.items() if _allowed(action)] == []


def test_a_relaunch_revokes_the_earlier_attempts_role(iam_moto, admin_store) -> None:
    """A worker that died left its container running with the first credentials: the relaunch
    deletes that role before making its own, so the orphan loses S3 at once."""
    admin_store.put_bytes(f"runs/{RUN_ID}/x", b"1")
    iam, sts = iam_moto.client("iam"), iam_moto.client("sts")
    grants = Grants(write=(f"s3://{admin_store.bucket}/runs/{RUN_ID}/",))
    name = role_name(RUN_ID, "train")
    orphan = issue(iam, sts, grants, name, 900)
    assert _as(iam_moto, orphan, admin_store.bucket).get_bytes(f"runs/{RUN_ID}/x") == b"1"
    retry = issue(iam, sts, grants, name, 900)
    try:
        with pytest.raises(ClientError):
            _as(iam_moto, orphan, admin_store.bucket).get_bytes(f"runs/{RUN_ID}/x")
        # in moto (as in IAM) the new role's own policy is what counts; the retry works
        assert _as(iam_moto, retry, admin_store.bucket).get_bytes(f"runs/{RUN_ID}/x") == b"1"
    finally:
        assert revoke(iam, retry.role_name)
    assert iam.list_roles(PathPrefix=f"/retrain/{name}/")["Roles"] == []


def test_the_launcher_waits_until_the_credentials_read_the_request(iam_moto, admin_store) -> None:
    """`wait_until_usable` returns once the stage's request is readable; a key outside the grants stays
    AccessDenied and is raised when the wait is over (here at once)."""
    admin_store.put_bytes(f"runs/{RUN_ID}/{runs.TRAIN_REQUEST}", b"{}")
    admin_store.put_bytes("incoming/batch-1.jsonl", b"{}")
    grants = Grants(write=(f"s3://{admin_store.bucket}/runs/{RUN_ID}/",))
    with scoped(iam_moto.client("iam"), iam_moto.client("sts"), grants, role_name(RUN_ID, "train"), 900) as c:
        wait_until_usable(admin_store, c, f"runs/{RUN_ID}/{runs.TRAIN_REQUEST}")
        with pytest.raises(ClientError, match="Forbidden|AccessDenied"):  # HEAD: 403, no body
            wait_until_usable(admin_store, c, "incoming/batch-1.jsonl", timeout_s=0)


def test_policy_has_no_bucket_wide_object_access() -> None:
    grants = Grants(read=("s3://b/datasets/v/",), write=("s3://b/runs/r/",), put=("s3://b/adapters/",))
    resources = [r for st in stage_policy(grants)["Statement"] for r in st["Resource"]]
    assert "arn:aws:s3:::b/*" not in resources
    assert sorted({r for r in resources if "/" in r.split(":::")[1]}) == sorted(
        {"arn:aws:s3:::b/datasets/v/*", "arn:aws:s3:::b/runs/r/*", "arn:aws:s3:::b/adapters/*"}
    )
    assert json.dumps(stage_policy(grants))  # a valid JSON document for PutRolePolicy


def test_role_names_are_valid_and_one_per_run_and_stage() -> None:
    long_id = "scheduled__2026-12-02T02:00:00+00:00" + "x" * 80
    name = role_name(long_id, "evaluate")
    assert len(name) <= 57 and name == role_name(long_id, "evaluate")  # + "-" and 6 hex per attempt
    assert name != role_name(long_id + "y", "evaluate") and name != role_name(long_id, "train")
    assert ":" not in role_name("scheduled__2026-12-02T02:00:00+00:00", "train")


def test_conf_refuses_a_duration_sts_would_refuse() -> None:
    with pytest.raises(ConfigError, match="scoped_duration_seconds"):
        load_settings(environ={"RETRAIN__S3__SCOPED_DURATION_SECONDS": "600"})
    assert load_settings().s3.scoped_credentials == "off"
