"""The container launchers of the trainer stages: ``train.launcher: docker`` and ``kubernetes``.

Both run the trainer image (docker/trainer/) with the one command every launcher runs,
``retrain <stage> --run-uri s3://<bucket>/runs/<id>``, and take every setting from conf
(``docker:`` / ``kubernetes:`` in conf/pipeline.yaml):

- `docker_stage_operator` -> `RetrainDockerOperator`, a DockerOperator on the worker's Docker engine:
  GPU device requests, shared memory, the model cache and scratch mounts, retries with exponential
  backoff, an execution timeout, logs streamed into the task log, the container removed afterwards.
  S3 credentials and endpoint come from the Airflow connection ``airflow.aws_conn_id``, read in
  ``execute()`` (never while the DAG is parsed) and handed to the container as AWS_* variables
  through DockerOperator's ``private_environment``: not a template field, so never rendered into
  the UI, the rendered-fields table or the log.
- `kubernetes_stage_operator` -> a KubernetesPodOperator with the same image and command,
  ``nvidia.com/gpu`` limits, node selector and tolerations from conf, and the S3 credentials from a
  Kubernetes Secret (``envFrom``), so Airflow never holds them.

Multi-GPU: a GPU count above 1 sets FORCE_TORCHRUN=1 and NPROC_PER_NODE=<count>, which make
``llamafactory-cli train`` (what `retrain train` runs) start one torchrun process per GPU. With
``gpus: all`` LLaMA-Factory counts the visible GPUs itself and uses torchrun when there are several.
A DeepSpeed config is a LLaMA-Factory argument: set ``deepspeed: <path inside the image>`` in the
LLaMA-Factory profile (conf/llamafactory/*.yaml); the train request carries it to the trainer.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from airflow.providers.docker.operators.docker import DockerOperator
from docker.types import DeviceRequest, Mount

from retrain.config import RetryPolicy, Settings, parse_byte_size
from retrain_airflow.launchers import after_stage, before_stage, stage_command

#: The container's scratch directory (the image's WORKDIR, writable by its user); TMPDIR points
#: there so a stage's temporary files land on the scratch mount when one is configured.
CONTAINER_SCRATCH = "/work"


def gpu_environment(gpus: int | str) -> dict[str, str]:
    """Variables that make ``llamafactory-cli train`` use every requested GPU (torchrun)."""
    if isinstance(gpus, int) and gpus > 1:
        return {"FORCE_TORCHRUN": "1", "NPROC_PER_NODE": str(gpus)}
    return {}


def docker_device_requests(gpus: int | str) -> list[DeviceRequest] | None:
    """``--gpus`` as the Docker API has it: all GPUs (count -1), N GPUs, or none for 0."""
    if gpus == 0:
        return None
    count = -1 if gpus == "all" else int(gpus)
    return [DeviceRequest(count=count, capabilities=[["gpu"]])]


def _retry_kwargs(retry: RetryPolicy, execution_timeout_minutes: int) -> dict[str, Any]:
    return {
        "retries": retry.retries,
        "retry_delay": timedelta(seconds=retry.delay_seconds),
        "retry_exponential_backoff": retry.exponential_backoff,
        "max_retry_delay": timedelta(seconds=retry.max_delay_seconds),
        "execution_timeout": timedelta(minutes=execution_timeout_minutes),
    }


def s3_connection_environment(aws_conn_id: str) -> dict[str, str]:
    """AWS_* variables (credentials, region, endpoint) from the Airflow AWS connection ``aws_conn_id``.

    Secrets: give them to a process privately (DockerOperator's ``private_environment``), never
    through a template field.
    """
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    hook = S3Hook(aws_conn_id=aws_conn_id)
    # Without the connection, the hook falls back to boto3's own credential chain (an instance
    # role, for instance); with neither there is nothing to give the container.
    if hook.get_session().get_credentials() is None:
        raise RuntimeError(
            f"no S3 credentials for the trainer container: the Airflow connection {aws_conn_id!r} "
            "(conf airflow.aws_conn_id) does not exist or has none, and boto3 found none either"
        )
    creds = hook.get_credentials()  # also masks the secret key and token in task logs
    env = {
        "AWS_ACCESS_KEY_ID": creds.access_key,
        "AWS_SECRET_ACCESS_KEY": creds.secret_key,
        "AWS_SESSION_TOKEN": creds.token,
        "AWS_DEFAULT_REGION": hook.conn_region_name or "us-east-1",
        "AWS_ENDPOINT_URL": hook.conn_config.endpoint_url,
    }
    return {k: str(v) for k, v in env.items() if v}


class RetrainDockerOperator(DockerOperator):
    """DockerOperator for a trainer stage whose S3 credentials come from an Airflow connection.

    The connection ``aws_conn_id`` is read when the task runs; its credentials, region and endpoint
    go to the container as AWS_* variables through ``private_environment`` (not templated, never
    logged). The task's XCom is the run URI (as with the local launcher); the container's output
    goes to the task log.
    """

    template_fields: Sequence[str] = (*DockerOperator.template_fields, "run_uri")

    def __init__(self, *, run_uri: str, aws_conn_id: str, stage: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.run_uri = run_uri
        #: The trainer stage whose commit marker is checked around the container (None: no check,
        #: for ad-hoc commands).
        self.stage = stage
        self.aws_conn_id = aws_conn_id
        # docker_url null in conf = the worker's $DOCKER_HOST when the task runs, not at parse time.
        self._docker_url_from_env = kwargs.get("docker_url") is None

    def load_private_environment(self) -> None:
        """Put the connection's AWS_* variables into the container's private environment."""
        self._private_environment = {
            **self._private_environment,
            **s3_connection_environment(self.aws_conn_id),
        }

    def image_reference(self) -> str:
        """``tag@sha256:…``: the immutable id of the image about to run (recorded with the adapter it
        trains), or the tag alone when the engine does not have the image yet (DockerOperator pulls it)."""
        from docker.errors import ImageNotFound

        try:
            return f"{self.image}@{self.cli.inspect_image(self.image)['Id']}"
        except ImageNotFound:
            return self.image

    def execute(self, context: Any) -> str:
        if self._docker_url_from_env:
            self.docker_url = os.environ.get("DOCKER_HOST") or "unix://var/run/docker.sock"
        self.load_private_environment()
        self.environment = {**self.environment, "RETRAIN_TRAINER_IMAGE": self.image_reference()}
        if self.stage:
            before_stage(self.stage, self.run_uri, self.aws_conn_id)
        super().execute(context)  # raises DockerContainerFailedException on a non-zero exit
        if self.stage:
            after_stage(
                self.stage, self.run_uri, self.aws_conn_id
            )  # exit 0 is not enough: the output must be there
        return self.run_uri


def docker_mounts(settings: Settings) -> list[Mount]:
    """The model cache (read-write at ``train.model_cache_dir``), the scratch dir, and conf's extra mounts."""
    dc = settings.docker
    mounts = []
    if dc.model_cache_host_path:
        mounts.append(
            Mount(
                target=settings.train.model_cache_dir,
                source=dc.model_cache_host_path,
                type="bind",
                read_only=False,
            )
        )
    if dc.scratch_host_path:
        mounts.append(
            Mount(target=CONTAINER_SCRATCH, source=dc.scratch_host_path, type="bind", read_only=False)
        )
    mounts += [Mount(target=m.target, source=m.source, type=m.type, read_only=m.read_only) for m in dc.mounts]
    return mounts


def docker_stage_operator(stage: str, run_uri: str, settings: Settings, **kw: Any) -> RetrainDockerOperator:
    """The task running ``retrain <stage> --run-uri <run_uri>`` in the trainer image on Docker.

    ``run_uri`` may be a Jinja template (e.g. ``"{{ ti.xcom_pull(task_ids='prepare_training') }}"``).
    Keyword arguments override the operator arguments built from conf (``task_id`` defaults to
    ``stage``); ``mounts`` and ``environment`` given here are added to conf's.
    """
    dc = settings.docker
    environment = {
        "TMPDIR": CONTAINER_SCRATCH,
        **dc.environment,
        **gpu_environment(dc.gpus),
        **kw.pop("environment", {}),
    }
    args: dict[str, Any] = {
        "task_id": stage,
        "image": dc.image,
        "command": stage_command(stage, run_uri),
        # The image's ENTRYPOINT is ["retrain"]; the command above is the whole argv, as in the pod.
        "entrypoint": [],
        "run_uri": run_uri,
        "stage": stage,
        "aws_conn_id": settings.airflow.aws_conn_id,
        "docker_url": dc.url,
        "environment": environment,
        "device_requests": docker_device_requests(dc.gpus),
        "shm_size": parse_byte_size(dc.shm_size),
        "mounts": docker_mounts(settings) + list(kw.pop("mounts", [])),
        "mount_tmp_dir": False,
        "network_mode": dc.network_mode,
        "mem_limit": dc.mem_limit,
        "user": dc.user,
        "auto_remove": "success",
        "tty": False,
        "force_pull": False,
        "labels": {"org.retrain.stage": stage},
        **_retry_kwargs(dc.retry, dc.execution_timeout_minutes),
    }
    args.update(kw)
    return RetrainDockerOperator(**args)


def kubernetes_stage_operator(stage: str, run_uri: str, settings: Settings, **kw: Any) -> Any:
    """The task running ``retrain <stage> --run-uri <run_uri>`` in the trainer image as a Kubernetes pod.

    The pod gets ``kubernetes.gpus`` GPUs (limits), conf's node selector and tolerations, the S3
    variables from the Secret ``kubernetes.s3_secret_name`` (envFrom), the model cache PVC at
    ``train.model_cache_dir``, a memory-backed /dev/shm and an emptyDir scratch at /work; it runs as
    uid 1000 without privilege escalation. Keyword arguments override what conf gives.
    """
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from kubernetes.client import models as k8s

    kc = settings.kubernetes
    conn_id = settings.airflow.aws_conn_id  # the commit check's S3 access (the pod has its own Secret)
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
    volume_mounts = [
        k8s.V1VolumeMount(name="model-cache", mount_path=settings.train.model_cache_dir),
        k8s.V1VolumeMount(name="scratch", mount_path=CONTAINER_SCRATCH),
        k8s.V1VolumeMount(name="dshm", mount_path="/dev/shm"),
    ]
    tolerations = [
        k8s.V1Toleration(
            key=t.get("key"),
            operator=t.get("operator"),
            value=t.get("value"),
            effect=t.get("effect"),
            toleration_seconds=t.get("toleration_seconds", t.get("tolerationSeconds")),
        )
        for t in kc.tolerations
    ]
    env = {"TMPDIR": CONTAINER_SCRATCH, **kc.environment, **gpu_environment(kc.gpus)}
    args: dict[str, Any] = {
        "task_id": stage,
        "name": f"retrain-{stage}",
        "namespace": kc.namespace,
        "image": kc.image or settings.docker.image,
        "image_pull_policy": kc.image_pull_policy,
        # `command` of the container: replaces the image's ENTRYPOINT, like the Docker launcher.
        "cmds": stage_command(stage, run_uri),
        "arguments": [],
        "env_vars": [k8s.V1EnvVar(name=k, value=v) for k, v in env.items()],
        "env_from": [k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name=kc.s3_secret_name))],
        "container_resources": k8s.V1ResourceRequirements(requests=requests or None, limits=limits or None),
        "volumes": volumes,
        "volume_mounts": volume_mounts,
        "node_selector": dict(kc.node_selector),
        "tolerations": tolerations,
        "security_context": k8s.V1PodSecurityContext(
            run_as_user=1000, run_as_group=1000, fs_group=1000, run_as_non_root=True
        ),
        "container_security_context": k8s.V1SecurityContext(
            allow_privilege_escalation=False, capabilities=k8s.V1Capabilities(drop=["ALL"])
        ),
        "service_account_name": kc.service_account_name,
        "kubernetes_conn_id": kc.kubernetes_conn_id,
        "in_cluster": kc.in_cluster,
        "labels": {"app.kubernetes.io/name": "retrain-trainer", "retrain.stage": stage},
        "get_logs": True,
        "on_finish_action": "delete_pod",
        "startup_timeout_seconds": kc.startup_timeout_seconds,
        "do_xcom_push": False,
        # The same commit check as the other launchers, around the pod (on the rendered command).
        "pre_execute": lambda context: before_stage(stage, _pod_run_uri(context), conn_id),
        "post_execute": lambda context, result=None: after_stage(stage, _pod_run_uri(context), conn_id),
        **_retry_kwargs(kc.retry, kc.execution_timeout_minutes),
    }
    args.update(kw)
    return KubernetesPodOperator(**args)


def _pod_run_uri(context: Any) -> str:
    """The run URI in the pod's rendered command (``retrain <stage> --run-uri <uri>``)."""
    cmds = list(context["task"].cmds)
    return cmds[cmds.index("--run-uri") + 1]
