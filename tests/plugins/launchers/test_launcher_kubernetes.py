"""The kubernetes launcher (plugins/retrain_airflow/launchers/kubernetes.py), from conf.

The pod spec is rendered with ``build_pod_request_obj(dry_run=True)`` (no cluster here).
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from retrain_airflow.launchers.kubernetes import KubernetesStageOperator

from retrain.config import load_settings
from tests.support.launchers import RENDERED_RUN_URI, RUN_URI_TEMPLATE, XComTI, settings


def _pod(op):
    return op.build_pod_request_obj(dry_run=True)


def test_pod_spec_has_gpu_limits_the_secret_ref_and_the_stage_command() -> None:
    s = load_settings(environ={})
    op = KubernetesStageOperator.from_settings("train", RUN_URI_TEMPLATE, s)
    op.render_template_fields({"ti": XComTI()})
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
    pod = _pod(KubernetesStageOperator.from_settings("train", "s3://b/runs/r1", s))
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
        KubernetesStageOperator.from_settings(
            "evaluate", "s3://b/runs/r1", settings(RETRAIN__KUBERNETES__GPUS="0")
        )
    )
    assert "nvidia.com/gpu" not in (cpu_pod.spec.containers[0].resources.limits or {})


def test_exit_65_fails_the_task_without_retries_and_a_crash_is_retried(monkeypatch) -> None:
    """KubernetesPodOperator reports the base container's exit 65 as AirflowSkipException (its
    ``skip_on_exit_code``, read in ``cleanup`` from the finished pod); the launcher turns that into
    StageInputError (an AirflowFailException: no retries); any other failure stays the provider's
    AirflowException (retried). No cluster here, so the provider's ``execute`` is replaced by the
    exception its ``cleanup`` raises in each case (the messages are the provider's)."""
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException
    from retrain_airflow.launchers.base import StageInputError

    op = KubernetesStageOperator.from_settings("train", "s3://b/runs/r1", settings())
    assert op.skip_on_exit_code == [65] and op.retries == 2

    def ends_with(exc: Exception):
        def execute(self, context):
            raise exc

        return execute

    skip = AirflowSkipException("Pod retrain-train-x returned exit code 65. Skipping.")
    monkeypatch.setattr(KubernetesPodOperator, "execute", ends_with(skip))
    with pytest.raises(StageInputError, match="exited with code 65") as info:
        op.launch({})
    assert isinstance(info.value, AirflowFailException) and info.value.__cause__ is skip

    crash = AirflowException("Pod retrain-train-x returned a failure.")
    monkeypatch.setattr(KubernetesPodOperator, "execute", ends_with(crash))
    with pytest.raises(AirflowException, match="returned a failure") as failed:
        op.launch({})
    assert failed.value is crash and not isinstance(failed.value, AirflowFailException)


def test_the_pod_drops_every_capability_and_a_retry_reattaches_to_a_running_pod() -> None:
    """The pod equivalent of the Docker launcher's hardening: no capabilities, no privilege
    escalation, non-root. For a worker that died, KubernetesPodOperator's ``durable`` (default on
    Airflow 3.3; the label search of ``reattach_on_restart`` before) makes the next try find the
    earlier try's pod by its task labels (try-agnostic) and reattach to it while it runs, or delete it
    once it has ended and start a fresh one: never a second pod for the stage, so no fixed pod name is
    needed (the name keeps its random suffix)."""
    op = KubernetesStageOperator.from_settings("train", RUN_URI_TEMPLATE, load_settings(environ={}))
    op.render_template_fields({"ti": XComTI()})
    pod = _pod(op)
    (container,) = pod.spec.containers
    assert container.security_context.capabilities.drop == ["ALL"]
    assert not container.security_context.capabilities.add
    assert container.security_context.allow_privilege_escalation is False
    assert not container.security_context.privileged
    assert op.durable is True and op.reattach_on_restart is True
    assert op.on_finish_action.value == "delete_pod"
