"""``train.launcher: kubernetes``: the trainer image as a Kubernetes pod (KubernetesPodOperator).

`KubernetesStageOperator` runs the same image and command as the Docker launcher
(``retrain <stage> --run-uri s3://…/runs/<id>``) with every setting from conf (``kubernetes:`` in
conf/pipeline.yaml): ``nvidia.com/gpu`` limits, node selector and tolerations, the model cache PVC,
a memory-backed /dev/shm, and the S3 credentials from a Kubernetes Secret (``envFrom``), so Airflow
never holds them (the commit check around the pod reads S3 through ``airflow.aws_conn_id``). An exit
status of 65 (input error) reaches the operator as KubernetesPodOperator's ``skip_on_exit_code`` and
fails the task without retries (`retrain_airflow.launchers.base`). The pod runs synchronously
(not deferrable): the commit check follows it in the same ``execute``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.sdk.exceptions import AirflowSkipException
from kubernetes.client import models as k8s

from retrain.config import KubernetesConfig, Settings
from retrain.errors import INPUT_ERROR_EXIT
from retrain_airflow.launchers.base import StageLauncher, input_error, stage_command
from retrain_airflow.launchers.docker import CONTAINER_SCRATCH, gpu_environment, retry_kwargs


def pod_resources(kc: KubernetesConfig) -> k8s.V1ResourceRequirements:
    """GPU, CPU and memory requests/limits from conf (None where conf sets none)."""
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    if kc.gpus:
        limits[kc.gpu_resource] = str(kc.gpus)
    if kc.cpu_request:
        requests["cpu"] = kc.cpu_request
    if kc.memory_request:
        requests["memory"] = kc.memory_request
    if kc.memory_limit:
        limits["memory"] = kc.memory_limit
    return k8s.V1ResourceRequirements(requests=requests or None, limits=limits or None)


def pod_volumes(settings: Settings) -> tuple[list[k8s.V1Volume], list[k8s.V1VolumeMount]]:
    """The model cache (PVC, or an emptyDir without one), the scratch dir and a memory-backed /dev/shm."""
    kc = settings.kubernetes
    cache_source: dict[str, Any] = (
        {"persistent_volume_claim": k8s.V1PersistentVolumeClaimVolumeSource(claim_name=kc.model_cache_pvc)}
        if kc.model_cache_pvc
        else {"empty_dir": k8s.V1EmptyDirVolumeSource()}
    )
    volumes = [
        k8s.V1Volume(name="model-cache", **cache_source),
        k8s.V1Volume(name="scratch", empty_dir=k8s.V1EmptyDirVolumeSource()),
        k8s.V1Volume(
            name="dshm", empty_dir=k8s.V1EmptyDirVolumeSource(medium="Memory", size_limit=kc.shm_size)
        ),
    ]
    mounts = [
        k8s.V1VolumeMount(name="model-cache", mount_path=settings.train.model_cache_dir),
        k8s.V1VolumeMount(name="scratch", mount_path=CONTAINER_SCRATCH),
        k8s.V1VolumeMount(name="dshm", mount_path="/dev/shm"),
    ]
    return volumes, mounts


def pod_tolerations(kc: KubernetesConfig) -> list[k8s.V1Toleration]:
    return [
        k8s.V1Toleration(
            key=t.get("key"),
            operator=t.get("operator"),
            value=t.get("value"),
            effect=t.get("effect"),
            toleration_seconds=t.get("toleration_seconds", t.get("tolerationSeconds")),
        )
        for t in kc.tolerations
    ]


def pod_security() -> dict[str, Any]:
    """uid 1000, not root, no privilege escalation, no capabilities."""
    return {
        "security_context": k8s.V1PodSecurityContext(
            run_as_user=1000, run_as_group=1000, fs_group=1000, run_as_non_root=True
        ),
        "container_security_context": k8s.V1SecurityContext(
            allow_privilege_escalation=False, capabilities=k8s.V1Capabilities(drop=["ALL"])
        ),
    }


class KubernetesStageOperator(StageLauncher, KubernetesPodOperator):
    """KubernetesPodOperator for a trainer stage, with the commit check around the pod."""

    # The pod reads S3 credentials from the Secret kubernetes.s3_secret_name; per-stage credentials
    # would need a per-run Secret (or IRSA on EKS), which this launcher does not make.
    takes_scoped_credentials = False

    template_fields: Sequence[str] = (*KubernetesPodOperator.template_fields, "run_uri")

    def __init__(self, *, stage: str, run_uri: str, aws_conn_id: str, **kwargs: Any) -> None:
        # The provider's own exit-status hook: exit 65 raises AirflowSkipException in cleanup(),
        # which `launch` turns into a failure without retries.
        kwargs.setdefault("skip_on_exit_code", INPUT_ERROR_EXIT)
        super().__init__(**kwargs)
        self.stage = stage
        self.run_uri = run_uri
        self.aws_conn_id = aws_conn_id

    @classmethod
    def from_settings(
        cls, stage: str, run_uri: str, settings: Settings, **kwargs: Any
    ) -> KubernetesStageOperator:
        """The task running ``retrain <stage> --run-uri <run_uri>`` in the trainer image as a pod.

        The pod gets ``kubernetes.gpus`` GPUs (limits), conf's node selector and tolerations, the S3
        variables from the Secret ``kubernetes.s3_secret_name`` (envFrom), the model cache PVC at
        ``train.model_cache_dir``, a memory-backed /dev/shm and an emptyDir scratch at /work; it runs
        as uid 1000 without privilege escalation. Keyword arguments override what conf gives.
        """
        kc = settings.kubernetes
        env = {"TMPDIR": CONTAINER_SCRATCH, **kc.environment, **gpu_environment(kc.gpus)}
        volumes, volume_mounts = pod_volumes(settings)
        args: dict[str, Any] = {
            "task_id": stage,
            "stage": stage,
            "run_uri": run_uri,
            "aws_conn_id": settings.airflow.aws_conn_id,  # the commit check's S3 (the pod has its Secret)
            "name": f"retrain-{stage}",
            "namespace": kc.namespace,
            "image": kc.image or settings.docker.image,
            "image_pull_policy": kc.image_pull_policy,
            # `command` of the container: replaces the image's ENTRYPOINT, like the Docker launcher.
            "cmds": stage_command(stage, run_uri),
            "arguments": [],
            "env_vars": [k8s.V1EnvVar(name=k, value=v) for k, v in env.items()],
            "env_from": [k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name=kc.s3_secret_name))],
            "container_resources": pod_resources(kc),
            "volumes": volumes,
            "volume_mounts": volume_mounts,
            "node_selector": dict(kc.node_selector),
            "tolerations": pod_tolerations(kc),
            **pod_security(),
            "service_account_name": kc.service_account_name,
            "kubernetes_conn_id": kc.kubernetes_conn_id,
            "in_cluster": kc.in_cluster,
            "labels": {"app.kubernetes.io/name": "retrain-trainer", "retrain.stage": stage},
            "get_logs": True,
            "on_finish_action": "delete_pod",
            "startup_timeout_seconds": kc.startup_timeout_seconds,
            "do_xcom_push": False,
            **retry_kwargs(kc.retry, kc.execution_timeout_minutes),
        }
        args.update(kwargs)
        return cls(**args)

    def launch(self, context: Any) -> None:
        try:
            KubernetesPodOperator.execute(self, context)  # AirflowException when the pod fails
        except AirflowSkipException as exc:  # exit 65: see __init__
            raise input_error(self.stage, str(exc)) from exc
