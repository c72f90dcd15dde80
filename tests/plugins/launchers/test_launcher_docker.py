"""The docker launcher (plugins/retrain_airflow/launchers/docker.py), from conf.

Operators are built from the committed conf/pipeline.yaml (plus RETRAIN__* overrides) exactly as
the DAG builds them. The S3 connection is given the way production gives it (an AIRFLOW_CONN_*
variable) with a recognisable secret, which must reach the container's private environment and
nothing else: no template field, rendered or not, no serialized field, no log line. The real engine
runs in tests/docker/test_trainer_image.py.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import timedelta

import pytest
from docker.types import DeviceRequest, Mount
from retrain_airflow.launchers.docker import DockerStageOperator

from retrain.config import load_settings
from tests.support.launchers import (
    ACCESS_KEY,
    ENDPOINT,
    RENDERED_RUN_URI,
    RUN_URI_TEMPLATE,
    SECRET_KEY,
    XComTI,
    settings,
)


def test_production_conf_requests_every_gpu_and_runs_the_stage_command() -> None:
    s = load_settings(environ={})
    op = DockerStageOperator.from_settings("train", RUN_URI_TEMPLATE, s)
    assert isinstance(op, DockerStageOperator)
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
    op = DockerStageOperator.from_settings("train", RUN_URI_TEMPLATE, settings(RETRAIN__DOCKER__GPUS="4"))
    assert op.device_requests == [DeviceRequest(count=4, capabilities=[["gpu"]])]
    assert op.environment["FORCE_TORCHRUN"] == "1"
    assert op.environment["NPROC_PER_NODE"] == "4"

    one = DockerStageOperator.from_settings("evaluate", RUN_URI_TEMPLATE, settings(RETRAIN__DOCKER__GPUS="1"))
    assert one.device_requests == [DeviceRequest(count=1, capabilities=[["gpu"]])]
    assert "FORCE_TORCHRUN" not in one.environment

    cpu = DockerStageOperator.from_settings("train", RUN_URI_TEMPLATE, settings(RETRAIN__DOCKER__GPUS="0"))
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
    op = DockerStageOperator.from_settings("train", RUN_URI_TEMPLATE, s, task_id="train_adapter", retries=0)
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
    op = DockerStageOperator.from_settings(
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
    op = DockerStageOperator.from_settings("train", RUN_URI_TEMPLATE, settings())
    assert "private_environment" not in op.template_fields
    assert "_private_environment" not in op.template_fields

    op.render_template_fields({"ti": XComTI()})
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


def test_exit_65_is_the_operators_input_error_status() -> None:
    """DockerOperator reports exit 65 as DockerContainerFailedSkipException (its skip_on_exit_code), which
    `launch` turns into a failure without retries; any other non-zero exit stays a retried failure. The
    real engine runs both in tests/docker/test_trainer_image.py."""
    op = DockerStageOperator.from_settings("train", RUN_URI_TEMPLATE, settings())
    assert op.skip_on_exit_code == [65]
    assert op.retries == 2  # crashes keep conf's retries


def test_the_container_log_tail_decodes_bytes_and_keeps_the_last_lines() -> None:
    from retrain_airflow.launchers.docker import container_log_tail

    logs: list[str | bytes] = [f"line {i}\n" for i in range(20)] + [b"retrain train: error: X\n"]
    assert container_log_tail(logs, lines=2) == "line 19\nretrain train: error: X"
    assert container_log_tail(None) == ""


def test_the_container_drops_every_capability_and_gains_no_privileges() -> None:
    """cap_drop ALL and no-new-privileges reach the host config the engine gets (DockerOperator itself
    passes neither: `HardenedClient` adds them); conf's cap_add/security_opt are honoured. The real
    engine's view (CapEff 0, NoNewPrivs 1) is in tests/docker/test_container_hardening.py."""
    from docker.api.client import APIClient
    from retrain_airflow.launchers.docker import HardenedClient

    op = DockerStageOperator.from_settings("train", RUN_URI_TEMPLATE, load_settings(environ={}))
    assert (op.cap_add, op.security_opt, op.privileged) == ([], ["no-new-privileges"], False)
    offline = APIClient(base_url="unix:///nonexistent.sock", version="1.41")  # builds configs, no I/O
    hc = HardenedClient(offline, op.cap_add, op.security_opt).create_host_config(
        cap_add=op.cap_add, privileged=op.privileged, shm_size=op.shm_size
    )
    assert hc["CapDrop"] == ["ALL"] and "CapAdd" not in hc
    assert hc["SecurityOpt"] == ["no-new-privileges"]
    assert hc["ShmSize"] == 16 * 1024**3  # the operator's own options still pass through
    assert "CapDrop" not in offline.create_host_config(cap_add=op.cap_add)  # what DockerOperator alone sends

    site = DockerStageOperator.from_settings(
        "train",
        RUN_URI_TEMPLATE,
        settings(
            RETRAIN__DOCKER__CAP_ADD="[IPC_LOCK]",
            RETRAIN__DOCKER__SECURITY_OPT="[no-new-privileges, apparmor=x]",
        ),
    )
    hc = HardenedClient(offline, site.cap_add, site.security_opt).create_host_config(cap_add=site.cap_add)
    assert (hc["CapDrop"], hc["CapAdd"]) == (["ALL"], ["IPC_LOCK"])
    assert hc["SecurityOpt"] == ["no-new-privileges", "apparmor=x"]


def test_the_container_name_is_one_per_run_and_stage_for_every_try() -> None:
    from retrain_airflow.launchers.docker import container_name

    name = container_name("train", RENDERED_RUN_URI)
    assert name == container_name("train", RENDERED_RUN_URI)  # no try number in it
    assert name.startswith("retrain-train-manual__2026-11-29-")
    assert re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+", name)  # Docker's name alphabet
    assert name != container_name("evaluate", RENDERED_RUN_URI)
    assert name != container_name("train", "s3://other-bucket/runs/manual__2026-11-29")
    odd = container_name("train", "s3://b/runs/scheduled__2026-11-29T02:00:00+00:00")
    assert re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+", odd) and ":" not in odd and "+" not in odd
