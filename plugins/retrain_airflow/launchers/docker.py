"""``train.launcher: docker``: the trainer image (docker/trainer/) on the worker's Docker engine.

`DockerStageOperator` is a DockerOperator running the one command every launcher runs,
``retrain <stage> --run-uri s3://<bucket>/runs/<id>``, with every setting from conf (``docker:`` in
conf/pipeline.yaml): GPU device requests, shared memory, the model cache and scratch mounts, retries
with exponential backoff, an execution timeout, logs streamed into the task log, the container
removed afterwards. S3 credentials and endpoint come from the Airflow connection
``airflow.aws_conn_id``, read in ``execute()`` (never while the DAG is parsed; with
``s3.scoped_credentials: assume_role`` the stage's own short-lived ones instead, `launchers.base`) and
handed to the container as AWS_* variables through DockerOperator's ``private_environment``: not a
template field, so never rendered into the UI, the rendered-fields table or the log. An exit status
of 65 (input error) reaches the operator as DockerOperator's ``skip_on_exit_code`` and fails the task without
retries (`retrain_airflow.launchers.base`).

Multi-GPU: a GPU count above 1 sets FORCE_TORCHRUN=1 and NPROC_PER_NODE=<count>, which make
``llamafactory-cli train`` (what `retrain train` runs) start one torchrun process per GPU. With
``gpus: all`` LLaMA-Factory counts the visible GPUs itself and uses torchrun when there are several.
A DeepSpeed config is a LLaMA-Factory argument: set ``deepspeed: <path inside the image>`` in the
LLaMA-Factory profile (conf/llamafactory/*.yaml); the train request carries it to the trainer.

Hardening: the container drops every Linux capability (``cap_drop: [ALL]``; conf's
``docker.cap_add`` adds some back, none by default: the trainer runs as uid 1000 and needs none) and
runs with conf's ``docker.security_opt`` (``no-new-privileges`` by default: no setuid binary can raise
its privileges). DockerOperator 4.6 passes neither to the engine, so `HardenedClient` adds them to the
host config it creates. The container has a fixed name per run and stage (`container_name`, the same
for every try); before a try starts, a container of that name left by an earlier try (its worker was
killed, so DockerOperator's on_kill and clean-up never ran) is killed and removed (`remove_orphan`,
logged), before the stage's commit marker is removed, so an orphan can no longer write into the run's
prefix or commit for this try.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from airflow.providers.docker.exceptions import DockerContainerFailedSkipException
from airflow.providers.docker.operators.docker import DockerOperator
from docker.api.client import APIClient
from docker.types import DeviceRequest, Mount

from retrain.config import RetryPolicy, Settings, parse_byte_size
from retrain.errors import INPUT_ERROR_EXIT
from retrain_airflow.launchers.base import StageLauncher, input_error, stage_command
from retrain_airflow.s3 import s3_environment

#: The container's scratch directory (the image's WORKDIR, writable by its user); TMPDIR points
#: there so a stage's temporary files land on the scratch mount when one is configured.
CONTAINER_SCRATCH = "/work"
#: Every capability is dropped; conf's ``docker.cap_add`` adds back only what it names.
CAP_DROP = ["ALL"]

log = logging.getLogger(__name__)


def container_name(stage: str, run_uri: str) -> str:
    """``retrain-<stage>-<run folder>-<8 hex of the run URI>``: one name per run and stage, the same
    for every try (Docker's name alphabet ``[a-zA-Z0-9][a-zA-Z0-9_.-]+``; the digest keeps two
    buckets' runs of the same folder name apart)."""
    folder = run_uri.rstrip("/").rsplit("/", 1)[-1]
    safe = re.sub(r"[^a-zA-Z0-9_.-]+", "-", f"{stage}-{folder}").strip("-.")[:100]
    digest = hashlib.sha256(run_uri.encode()).hexdigest()[:8]
    return f"retrain-{safe}-{digest}"


def remove_orphan(cli: Any, name: str) -> bool:
    """Kill and remove the container called ``name`` if there is one (an earlier try's); True if so.

    No graceful stop: the orphan's work is discarded anyway (the new try starts the stage over), and a
    SIGTERM grace period would only let it write into the run's prefix for longer."""
    from docker.errors import NotFound

    try:
        found = cli.inspect_container(name)
    except NotFound:
        return False
    state = found.get("State", {})
    log.warning(
        "removing container %s (%s, status %s, started %s) left by an earlier try of this stage",
        name,
        found.get("Id", "")[:12],
        state.get("Status"),
        state.get("StartedAt"),
    )
    try:
        cli.remove_container(name, force=True)  # force: SIGKILL first when it still runs
    except NotFound:  # it had auto-remove set, or went on its own meanwhile
        pass
    return True


class HardenedClient:
    """The engine's API client with ``cap_drop``/``cap_add``/``security_opt`` added to every host
    config it creates (DockerOperator does not pass them); everything else goes to the client."""

    def __init__(self, client: APIClient, cap_add: list[str], security_opt: list[str]) -> None:
        self._client = client
        self._hardening = {"cap_drop": CAP_DROP, "cap_add": cap_add or None, "security_opt": security_opt}

    def create_host_config(self, **kwargs: Any) -> Any:
        return self._client.create_host_config(**{**kwargs, **self._hardening})

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


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


def retry_kwargs(retry: RetryPolicy, execution_timeout_minutes: int) -> dict[str, Any]:
    return {
        "retries": retry.retries,
        "retry_delay": timedelta(seconds=retry.delay_seconds),
        "retry_exponential_backoff": retry.exponential_backoff,
        "max_retry_delay": timedelta(seconds=retry.max_delay_seconds),
        "execution_timeout": timedelta(minutes=execution_timeout_minutes),
    }


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


class DockerStageOperator(StageLauncher, DockerOperator):
    """DockerOperator for a trainer stage whose S3 credentials come from an Airflow connection.

    The connection ``aws_conn_id`` is read when the task runs; its credentials, region and endpoint
    go to the container as AWS_* variables through ``private_environment`` (not templated, never
    logged). The task's XCom is the run URI (as with every launcher); the container's output goes to
    the task log.
    """

    template_fields: Sequence[str] = (*DockerOperator.template_fields, "run_uri")

    def __init__(
        self,
        *,
        stage: str,
        run_uri: str,
        aws_conn_id: str,
        security_opt: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        # The provider's own exit-status hook: exit 65 raises DockerContainerFailedSkipException,
        # which `launch` turns into a failure without retries.
        kwargs.setdefault("skip_on_exit_code", INPUT_ERROR_EXIT)
        super().__init__(**kwargs)
        self.security_opt = list(security_opt if security_opt is not None else ["no-new-privileges"])
        self.stage = stage
        self.run_uri = run_uri
        self.aws_conn_id = aws_conn_id
        # docker_url null in conf = the worker's $DOCKER_HOST when the task runs, not at parse time.
        self._docker_url_from_env = kwargs.get("docker_url") is None

    @classmethod
    def from_settings(
        cls, stage: str, run_uri: str, settings: Settings, **kwargs: Any
    ) -> DockerStageOperator:
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
            **kwargs.pop("environment", {}),
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
            "mounts": docker_mounts(settings) + list(kwargs.pop("mounts", [])),
            "mount_tmp_dir": False,
            "network_mode": dc.network_mode,
            "mem_limit": dc.mem_limit,
            "user": dc.user,
            "cap_add": list(dc.cap_add),
            "security_opt": list(dc.security_opt),
            "auto_remove": "success",
            "tty": False,
            "force_pull": False,
            "labels": {"org.retrain.stage": stage},
            **retry_kwargs(dc.retry, dc.execution_timeout_minutes),
        }
        args.update(kwargs)
        return cls(**args)

    @property
    def cli(self) -> Any:
        """The engine's client, adding the capability and security options to the container."""
        return HardenedClient(self.hook.api_client, list(self.cap_add or []), self.security_opt)

    def clear_earlier_try(self) -> None:
        """Kill and remove an earlier try's container of this run and stage (`remove_orphan`)."""
        if self._docker_url_from_env:
            self.docker_url = os.environ.get("DOCKER_HOST") or "unix://var/run/docker.sock"
        if not self.container_name:
            self.container_name = container_name(self.stage, self.run_uri)
        remove_orphan(self.cli, self.container_name)

    def load_private_environment(self) -> None:
        """Put the connection's AWS_* variables into the container's private environment."""
        self._private_environment = {
            **self._private_environment,
            **s3_environment(self.aws_conn_id, self.scoped_credentials),
        }

    def image_reference(self) -> str:
        """``tag@sha256:…``: the immutable id of the image about to run (recorded with the adapter it
        trains), or the tag alone when the engine does not have the image yet (DockerOperator pulls it)."""
        from docker.errors import ImageNotFound

        try:
            return f"{self.image}@{self.cli.inspect_image(self.image)['Id']}"
        except ImageNotFound:
            return self.image

    def launch(self, context: Any) -> None:
        self.load_private_environment()
        self.environment = {**self.environment, "RETRAIN_TRAINER_IMAGE": self.image_reference()}
        try:
            DockerOperator.execute(self, context)  # DockerContainerFailedException on a non-zero exit
        except DockerContainerFailedSkipException as exc:  # exit 65: see __init__
            raise input_error(self.stage, container_log_tail(exc.logs)) from exc


def container_log_tail(logs: list[str | bytes] | None, lines: int = 15) -> str:
    """The last lines a failed container printed (DockerOperator hands them over as str or bytes)."""
    text = [x.decode(errors="replace") if isinstance(x, bytes) else str(x) for x in logs or []]
    return "\n".join(line.rstrip("\n") for line in text[-lines:])
