"""The trainer container runs as a non-root user, with no extra capabilities, unprivileged, and with
only the mounts it needs, as the operators are built from the committed conf (the DAG's way).

The real engine runs the image in tests/docker/test_trainer_image.py; here the operator arguments
(what DockerOperator hands to the Docker API's host config) and the rendered pod spec are checked.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ROOT_USERS = {"0", "root", "0:0", "root:root"}
DANGEROUS_SOURCES = (
    "/",
    "/etc",
    "/root",
    "/home",
    "/proc",
    "/sys",
    "/dev",
    "/var/run/docker.sock",
    "/run/docker.sock",
    "/var/lib/docker",
)


def _settings(**env: str):
    from retrain.config import load_settings

    return load_settings(environ=env)


def _image_user() -> str:
    """The USER the trainer image finally runs as (docker/trainer/Dockerfile)."""
    users = re.findall(r"^USER\s+(\S+)", (REPO / "docker" / "trainer" / "Dockerfile").read_text(), re.M)
    assert users, "the trainer Dockerfile sets no USER: the container would run as root"
    return users[-1]


def _mount_tuple(m) -> tuple[str, str, str, bool]:
    return m["Source"], m["Target"], m["Type"], bool(m.get("ReadOnly"))


@pytest.mark.parametrize("stage", ["train", "evaluate"])
def test_docker_trainer_runs_unprivileged_as_a_non_root_user(stage):
    from retrain_airflow.launchers.docker import DockerStageOperator

    s = _settings()
    op = DockerStageOperator.from_settings(stage, "s3://ner-retrain/runs/x", s)

    user = op.user if op.user is not None else _image_user()
    assert user not in ROOT_USERS and not user.startswith("0:"), user
    assert op.privileged is False
    assert not op.cap_add  # no extra capability (DockerOperator passes cap_add to the host config)
    assert op.ipc_mode in (None, "private", "shareable") and op.network_mode != "host"
    assert not getattr(op, "devices", None)  # no raw device node; GPUs only through the device request
    for request in op.device_requests or []:
        assert request["Capabilities"] == [["gpu"]]
    assert op.mount_tmp_dir is False  # no host temp dir bound in
    assert not any(k.startswith("AWS_") for k in op.environment)  # credentials only in private_environment


def test_docker_trainer_gets_only_the_mounts_it_needs():
    from retrain_airflow.launchers.docker import DockerStageOperator

    s = _settings()
    op = DockerStageOperator.from_settings("train", "s3://ner-retrain/runs/x", s)
    assert [_mount_tuple(m) for m in op.mounts] == [
        (s.docker.model_cache_host_path, s.train.model_cache_dir, "bind", False)
    ]

    s = _settings(
        RETRAIN__DOCKER__SCRATCH_HOST_PATH="/srv/retrain/scratch",
        RETRAIN__DOCKER__MOUNTS="[{source: /srv/golden, target: /golden, read_only: true}]",
    )
    op = DockerStageOperator.from_settings("train", "s3://ner-retrain/runs/x", s)
    mounts = [_mount_tuple(m) for m in op.mounts]
    assert mounts == [
        (s.docker.model_cache_host_path, "/models", "bind", False),
        ("/srv/retrain/scratch", "/work", "bind", False),
        ("/srv/golden", "/golden", "bind", True),
    ]
    for source, target, _, _ in mounts:
        assert source.rstrip("/") not in DANGEROUS_SOURCES and target.rstrip("/") not in ("", "/etc", "/usr")


def test_kubernetes_trainer_pod_drops_every_capability_and_uses_no_host_resources():
    from retrain_airflow.launchers.kubernetes import KubernetesStageOperator

    op = KubernetesStageOperator.from_settings("train", "s3://ner-retrain/runs/x", _settings())
    pod = op.build_pod_request_obj(dry_run=True)
    (container,) = pod.spec.containers
    assert pod.spec.security_context.run_as_non_root is True and pod.spec.security_context.run_as_user != 0
    sc = container.security_context
    assert sc.allow_privilege_escalation is False and not sc.privileged
    assert sc.capabilities.drop == ["ALL"] and not sc.capabilities.add
    assert not pod.spec.host_network and not pod.spec.host_pid and not pod.spec.host_ipc
    assert all(v.host_path is None for v in pod.spec.volumes)
