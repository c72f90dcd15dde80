"""The docker and kubernetes launchers (plugins/retrain_airflow/container_launchers.py), from conf.

Operators are built from the committed conf/pipeline.yaml (plus RETRAIN__* overrides) exactly as
the DAG builds them. The S3 connection is given the way production gives it (an AIRFLOW_CONN_*
variable) with a recognisable secret, which must reach the container's private environment and
nothing else: no template field, rendered or not, no serialized field, no log line. The pod spec
is rendered with ``build_pod_request_obj(dry_run=True)`` (no cluster here). The real engine runs
in tests/docker/test_trainer_image.py.
"""

from __future__ import annotations

import json
import logging
from datetime import timedelta

import pytest
from docker.types import DeviceRequest, Mount
from retrain_airflow.container_launchers import (
    RetrainDockerOperator,
    docker_stage_operator,
    kubernetes_stage_operator,
)

from retrain.config import load_settings

RUN_URI_TEMPLATE = "{{ ti.xcom_pull(task_ids='prepare_training') }}"
RENDERED_RUN_URI = "s3://ner-retrain/runs/manual__2026-11-29"
CONN_ID = "retrain_launcher_test_s3"
ACCESS_KEY = "AKIALAUNCHERTEST0001"
SECRET_KEY = "s3cr3t-launcher-9f2c7be41d"
ENDPOINT = "http://127.0.0.1:9000"


def settings(**overrides: str):
    """The committed conf with RETRAIN__SECTION__KEY overrides (values parsed as YAML)."""
    return load_settings(environ={"RETRAIN__AIRFLOW__AWS_CONN_ID": CONN_ID, **overrides})


@pytest.fixture
def s3_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{CONN_ID.upper()}",
        json.dumps(
            {
                "conn_type": "aws",
                "login": ACCESS_KEY,
                "password": SECRET_KEY,
                "extra": {"endpoint_url": ENDPOINT, "region_name": "eu-west-1"},
            }
        ),
    )


class _TI:
    def xcom_pull(self, task_ids: str | None = None, **_: object) -> str:
        assert task_ids == "prepare_training"
        return RENDERED_RUN_URI


# ---------------------------------------------------------------------------------- docker


def test_production_conf_requests_every_gpu_and_runs_the_stage_command() -> None:
    s = load_settings(environ={})
    op = docker_stage_operator("train", RUN_URI_TEMPLATE, s)
    assert isinstance(op, RetrainDockerOperator)
    assert op.task_id == "train"
    assert op.image == "retrain/trainer:cu122" == s.docker.image
    assert op.command == ["retrain", "train", "--run-uri", RUN_URI_TEMPLATE]
    assert op.entrypoint == []  # the command is the whole argv (the image's ENTRYPOINT is `retrain`)
    assert op.device_requests == [DeviceRequest(count=-1, capabilities=[["gpu"]])]
    assert op.shm_size == 16 * 1024**3
    assert op.mounts == [
        Mount(target="/models", source="/var/lib/retrain/models", type="bind", read_only=False)
    ]
    assert op.mount_tmp_dir is False
    assert op.auto_remove == "success"
    assert op.tty is False
    assert op.network_mode is None
    assert op.aws_conn_id == "aws_default"
    assert op.environment == {"TMPDIR": "/work"}  # gpus: all -> LLaMA-Factory counts the GPUs itself
    assert op.retries == 2
    assert op.retry_delay == timedelta(minutes=5)
    assert op.retry_exponential_backoff == 2.0
    assert op.max_retry_delay == timedelta(hours=1)
    assert op.execution_timeout == timedelta(hours=24)


def test_gpu_count_sets_the_device_request_and_torchrun() -> None:
    op = docker_stage_operator("train", RUN_URI_TEMPLATE, settings(RETRAIN__DOCKER__GPUS="4"))
    assert op.device_requests == [DeviceRequest(count=4, capabilities=[["gpu"]])]
    assert op.environment["FORCE_TORCHRUN"] == "1"
    assert op.environment["NPROC_PER_NODE"] == "4"

    one = docker_stage_operator("evaluate", RUN_URI_TEMPLATE, settings(RETRAIN__DOCKER__GPUS="1"))
    assert one.device_requests == [DeviceRequest(count=1, capabilities=[["gpu"]])]
    assert "FORCE_TORCHRUN" not in one.environment

    cpu = docker_stage_operator("train", RUN_URI_TEMPLATE, settings(RETRAIN__DOCKER__GPUS="0"))
    assert cpu.device_requests is None
    assert "FORCE_TORCHRUN" not in cpu.environment and "NPROC_PER_NODE" not in cpu.environment


def test_mounts_network_and_overrides_from_conf() -> None:
    s = settings(
        RETRAIN__DOCKER__SCRATCH_HOST_PATH="/srv/scratch",
        RETRAIN__DOCKER__MOUNTS="[{source: /srv/models/tiny, target: /models/tiny}]",
        RETRAIN__DOCKER__NETWORK_MODE="host",
        RETRAIN__DOCKER__SHM_SIZE="512m",
        RETRAIN__DOCKER__ENVIRONMENT='{HF_HUB_OFFLINE: "1"}',
        RETRAIN__TRAIN__MODEL_CACHE_DIR="/cache",
    )
    op = docker_stage_operator("train", RUN_URI_TEMPLATE, s, task_id="train_adapter", retries=0)
    assert op.mounts == [
        Mount(target="/cache", source="/var/lib/retrain/models", type="bind", read_only=False),
        Mount(target="/work", source="/srv/scratch", type="bind", read_only=False),
        Mount(target="/models/tiny", source="/srv/models/tiny", type="bind", read_only=True),
    ]
    assert op.network_mode == "host"
    assert op.shm_size == 512 * 1024**2
    assert op.environment == {"TMPDIR": "/work", "HF_HUB_OFFLINE": "1"}
    assert (op.task_id, op.retries) == ("train_adapter", 0)  # keyword arguments win over conf


def test_bad_docker_conf_is_rejected_with_the_field_named() -> None:
    from retrain.config import ConfigError

    with pytest.raises(ConfigError, match="docker.shm_size"):
        settings(RETRAIN__DOCKER__SHM_SIZE="lots")
    with pytest.raises(ConfigError, match="docker.gpus"):
        settings(RETRAIN__DOCKER__GPUS="-1")
    with pytest.raises(ConfigError, match="docker.gpu_count"):
        settings(RETRAIN__DOCKER__GPU_COUNT="2")  # unknown key (typo)


def test_no_connection_is_read_while_the_dag_is_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    # The connection does not exist: building the operator must still work (parse time) ...
    op = docker_stage_operator(
        "train", RUN_URI_TEMPLATE, settings(RETRAIN__AIRFLOW__AWS_CONN_ID="no_such_conn")
    )
    assert op._private_environment == {}
    # ... and reading it is what execute() does first: with no connection and no other
    # credentials (boto3's chain finds none here), a clear error names the connection.
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(RuntimeError, match="'no_such_conn'.*does not exist"):
        op.load_private_environment()


def test_credentials_go_only_to_the_private_environment(s3_connection, caplog) -> None:
    op = docker_stage_operator("train", RUN_URI_TEMPLATE, settings())
    assert "private_environment" not in op.template_fields
    assert "_private_environment" not in op.template_fields

    op.render_template_fields({"ti": _TI()})
    assert op.run_uri == RENDERED_RUN_URI
    assert op.command == ["retrain", "train", "--run-uri", RENDERED_RUN_URI]

    with caplog.at_level(logging.DEBUG):
        op.load_private_environment()
    assert op._private_environment == {
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_DEFAULT_REGION": "eu-west-1",
        "AWS_ENDPOINT_URL": ENDPOINT,
    }
    for field in op.template_fields:
        assert SECRET_KEY not in repr(getattr(op, field)), field
        assert ACCESS_KEY not in repr(getattr(op, field)), field
    assert not any(k.startswith("AWS_") for k in op.environment)
    assert SECRET_KEY not in caplog.text

    from airflow.serialization.serialized_objects import OperatorSerialization

    serialized = json.dumps(OperatorSerialization.serialize_operator(op), default=str)
    assert SECRET_KEY not in serialized and ACCESS_KEY not in serialized


def test_stage_operator_dispatches_on_the_launcher_setting() -> None:
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from retrain_airflow.launchers import stage_operator

    docker_op = stage_operator("train", RUN_URI_TEMPLATE, settings(RETRAIN__TRAIN__LAUNCHER="docker"))
    assert isinstance(docker_op, RetrainDockerOperator)
    k8s_op = stage_operator("evaluate", RUN_URI_TEMPLATE, settings(RETRAIN__TRAIN__LAUNCHER="kubernetes"))
    assert isinstance(k8s_op, KubernetesPodOperator)
    assert k8s_op.task_id == "evaluate"


# ---------------------------------------------------------------------------------- kubernetes


def _pod(op):
    return op.build_pod_request_obj(dry_run=True)


def test_pod_spec_has_gpu_limits_the_secret_ref_and_the_stage_command() -> None:
    s = load_settings(environ={})
    op = kubernetes_stage_operator("train", RUN_URI_TEMPLATE, s)
    op.render_template_fields({"ti": _TI()})
    pod = _pod(op)
    (container,) = pod.spec.containers
    assert pod.metadata.namespace == "retrain"
    assert container.image == s.docker.image
    assert container.command == ["retrain", "train", "--run-uri", RENDERED_RUN_URI]
    assert not container.args
    assert container.resources.limits == {"nvidia.com/gpu": "1"}
    assert container.resources.requests == {"cpu": "8", "memory": "64Gi"}
    assert [e.secret_ref.name for e in container.env_from] == ["retrain-s3"]
    env = {e.name: e.value for e in container.env}
    assert not any(name.startswith("AWS_") for name in env)  # credentials only through the Secret
    assert "FORCE_TORCHRUN" not in env
    assert [(t.key, t.operator, t.effect) for t in pod.spec.tolerations] == [
        ("nvidia.com/gpu", "Exists", "NoSchedule")
    ]
    volumes = {v.name: v for v in pod.spec.volumes}
    assert volumes["model-cache"].persistent_volume_claim.claim_name == "retrain-models"
    assert volumes["dshm"].empty_dir.medium == "Memory"
    assert volumes["dshm"].empty_dir.size_limit == "16Gi"
    mounts = {m.mount_path: m.name for m in container.volume_mounts}
    assert mounts == {"/models": "model-cache", "/work": "scratch", "/dev/shm": "dshm"}
    assert pod.spec.security_context.run_as_user == 1000
    assert pod.spec.security_context.run_as_non_root is True
    assert container.security_context.allow_privilege_escalation is False
    assert pod.metadata.labels["retrain.stage"] == "train"
    assert op.retries == 2 and op.retry_exponential_backoff == 2.0
    assert op.execution_timeout == timedelta(hours=24)


def test_pod_spec_multi_gpu_node_selector_and_cpu_only() -> None:
    s = settings(
        RETRAIN__KUBERNETES__GPUS="8",
        RETRAIN__KUBERNETES__NODE_SELECTOR='{"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}',
        RETRAIN__KUBERNETES__TOLERATIONS=(
            "[{key: dedicated, operator: Equal, value: training, effect: NoExecute}]"
        ),
        RETRAIN__KUBERNETES__S3_SECRET_NAME="minio-trainer",
        RETRAIN__KUBERNETES__IMAGE="registry.example/retrain/trainer:cu122-1",
        RETRAIN__KUBERNETES__MODEL_CACHE_PVC="null",
    )
    pod = _pod(kubernetes_stage_operator("train", "s3://b/runs/r1", s))
    (container,) = pod.spec.containers
    assert container.image == "registry.example/retrain/trainer:cu122-1"
    assert container.resources.limits == {"nvidia.com/gpu": "8"}
    env = {e.name: e.value for e in container.env}
    assert env["FORCE_TORCHRUN"] == "1" and env["NPROC_PER_NODE"] == "8"
    assert pod.spec.node_selector == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert [(t.key, t.operator, t.value, t.effect) for t in pod.spec.tolerations] == [
        ("dedicated", "Equal", "training", "NoExecute")
    ]
    assert container.env_from[0].secret_ref.name == "minio-trainer"
    cache = next(v for v in pod.spec.volumes if v.name == "model-cache")
    assert cache.persistent_volume_claim is None and cache.empty_dir is not None

    cpu_pod = _pod(
        kubernetes_stage_operator("evaluate", "s3://b/runs/r1", settings(RETRAIN__KUBERNETES__GPUS="0"))
    )
    assert "nvidia.com/gpu" not in (cpu_pod.spec.containers[0].resources.limits or {})


def test_both_container_launchers_check_the_commit_around_the_stage(
    moto_server, bucket_name, monkeypatch
) -> None:
    """Docker and Kubernetes tasks remove the stage's commit marker before the container and require it
    after an exit 0 (the pod's run URI read from its rendered command). The real engine exercises the
    Docker side in tests/docker; here the Kubernetes hooks run against a real S3 API."""
    from retrain.stages import StageNotCommitted
    from retrain.storage import ObjectStore

    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", moto_server.airflow_connection())
    store = ObjectStore(moto_server.client(), bucket_name)
    store.ensure_bucket()
    run_uri = f"s3://{bucket_name}/runs/manual__k8s"
    store.put_json("runs/manual__k8s/eval/report.json", {"run_id": "an earlier attempt"})

    docker_op = docker_stage_operator("evaluate", RUN_URI_TEMPLATE, settings())
    assert docker_op.stage == "evaluate"
    pod_op = kubernetes_stage_operator("evaluate", run_uri, settings(RETRAIN__TRAIN__LAUNCHER="kubernetes"))
    context = {"task": pod_op}
    pod_op._pre_execute_hook(context)
    assert not store.exists("runs/manual__k8s/eval/report.json")
    with pytest.raises(StageNotCommitted, match="eval/report.json is missing"):
        pod_op._post_execute_hook(context, None)

    from airflow.serialization.serialized_objects import OperatorSerialization

    json.dumps(OperatorSerialization.serialize_operator(pod_op), default=str)  # the hooks do not break it
