"""docker-compose.yml brought up for real (-m docker), on the session's private Docker engine.

The production compose file plus docker/compose/local.override.yml, which replaces only what cannot be
had without a registry (local images, the moto server in MinIO's place, the tiny model, no GPU, short
health-check intervals). Every image is built locally: scripts/build_compose_images.sh (Airflow from the
lock with the production Dockerfile, Postgres and Redis from Debian packages) and the trainer image the
other docker tests already build in the session (scripts/build_trainer_image.sh --variant cpu).

In order: `up` and every long-running service healthy; `ner_retrain` triggered through the REST API
trains the tiny model in a trainer container started by the Celery worker through the socket-proxy
service (docker launcher; the trainer reaches only moto, as `minio`, on the `trainers` network) and
evaluates it in another, and MLflow (behind its basic-auth app) shows version 1 as `champion`, tagged
with the trainer image by its immutable id; a second run whose base model is missing fails in its
train container, runs nothing downstream and leaves v1 champion; no secret of the stack's .env shows in
either run's rendered template fields or task logs; `down -v` leaves no container, network or volume
behind (images stay cached in the engine's data root). This module is the docker launcher's end-to-end
test under Airflow (until 3 December a second one, test_ner_retrain_docker.py, ran the same night with
`airflow dags test` on the host; its checks are here now, which saves that night's ~300 s of training
and evaluation in containers).
Times (build, up to healthy, up to promotion) are printed (`-s`).

Collected by `make test` (docker lane: marked docker). Passed end to end on 2 December 2026 on the shared
2-core machine (load average ~14), images cached: `up` to every service healthy 196 s, `up` to the
promotion 957 s, the module 1035 s; a cold image build: trainer 353 s, compose images 292 s (see
docker/compose/README.md, "Without a registry", Status). Since 3 December the compose images build while
the trainer image does (`compose_build`), and the run trains the "demo" tiny model for
tests/support/demo.py MECHANICS_EPOCHS (20) instead of the plain one for 40. Alone:
``.venv-af/bin/python -m pytest -p no:cacheprovider -s tests/docker/test_compose_stack.py``.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.docker.conftest import REPO, containers, run_cmd, writable_dir
from tests.support.demo import MECHANICS_EPOCHS
from tests.support.stack import fernet_key, free_port
from tests.test_compose import EXPECTED_SERVICES
from tests.test_compose import ONE_SHOT as COMPOSE_ONE_SHOT

pytestmark = pytest.mark.docker

COMPOSE_FILES = [REPO / "docker-compose.yml", REPO / "docker" / "compose" / "local.override.yml"]
DAG = "ner_retrain"
BUCKET = "ner-retrain"
EPOCHS = MECHANICS_EPOCHS  # enough for the model to beat its base (tests/support/demo.py)
# the compose file's long-running services (tests/test_compose.py lists every service the file has)
LONG_RUNNING = EXPECTED_SERVICES - COMPOSE_ONE_SHOT
# the one-shot services this stack runs (trainer-image and gpu-check sit behind compose profiles)
ONE_SHOT = ("airflow-init", "minio-init")


class _ImageBuild:
    """scripts/build_compose_images.sh running in the background (started before the trainer image's
    build, so the two overlap: most of each waits on pip and on layers being written)."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        script = str(REPO / "scripts" / "build_compose_images.sh")
        self.proc = subprocess.Popen([script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def images(self) -> dict[str, str]:
        out, err = self.proc.communicate(timeout=3600)
        if self.proc.returncode != 0:
            pytest.fail(f"scripts/build_compose_images.sh failed:\n{err[-6000:]}", pytrace=False)
        print(f"\ncompose images: build step {time.monotonic() - self.started:.0f} s\n{err.strip()}")
        airflow, postgres, redis, proxy = out.split()
        return {"airflow": airflow, "postgres": postgres, "redis": redis, "socket-proxy": proxy}


@pytest.fixture(scope="session")
def compose_build(docker_host: str) -> Iterator[_ImageBuild]:
    build = _ImageBuild()
    try:
        yield build
    finally:
        if build.proc.poll() is None:
            build.proc.kill()
            build.proc.wait()


@pytest.fixture(scope="session")
def compose_images(compose_build: _ImageBuild, trainer_image: str) -> dict[str, str]:
    """retrain/airflow, retrain/postgres, retrain/redis, retrain/socket-proxy built (or found cached) by
    the project's script, which started before the trainer image (`compose_build`)."""
    return compose_build.images()


def _env_file(path: Path, images: dict[str, str], trainer: str, models: Path, sock: Path) -> dict[str, str]:
    """The stack's settings (what a user's .env holds), with fresh random secrets and free ports."""
    project = f"retrain-compose-{uuid.uuid4().hex[:8]}"
    env = {
        "COMPOSE_PROJECT_NAME": project,
        "COMPOSE_NETWORK": project,
        "AIRFLOW_IMAGE": images["airflow"],
        "POSTGRES_IMAGE": images["postgres"],
        "REDIS_IMAGE": images["redis"],
        "SOCKET_PROXY_IMAGE": images["socket-proxy"],
        "TRAINER_IMAGE": trainer,
        "AIRFLOW_UID": "50000",
        "DOCKER_SOCKET": str(sock),
        "DOCKER_GID": str(sock.stat().st_gid),
        "MODELS_HOST_PATH": str(models),
        "TRAINER_GPUS": "0",
        "RETRAIN_BASE_MODEL": "/models/tiny",
        "RETRAIN_PROFILE": "cpu_demo",  # tests/support/demo.py MECHANICS_PROFILE
        "RETRAIN_SCHEDULE_CRON": "null",  # REST-triggered only: unpausing must not start a cron run
        "AIRFLOW_API_WORKERS": "1",
        "AIRFLOW_API_PORT": str(free_port()),
        "MLFLOW_PORT": str(free_port()),
        "MINIO_API_PORT": str(free_port()),
        "MINIO_CONSOLE_PORT": str(free_port()),
        "AIRFLOW_ADMIN_USER": "admin",
        "AIRFLOW_FERNET_KEY": fernet_key(),
        "RETRAIN_BUCKET": BUCKET,
    }
    for name in (
        "POSTGRES_PASSWORD",
        "MLFLOW_DB_PASSWORD",
        "REDIS_PASSWORD",
        "MLFLOW_ADMIN_PASSWORD",
        "MLFLOW_FLASK_SECRET_KEY",
        "AIRFLOW_ADMIN_PASSWORD",
        "AIRFLOW_JWT_SECRET",
        "AIRFLOW_API_SECRET_KEY",
        "MINIO_ROOT_USER",
        "MINIO_ROOT_PASSWORD",
        "RETRAIN_S3_ACCESS_KEY",
        "RETRAIN_S3_SECRET_KEY",
    ):
        env[name] = secrets.token_hex(16)
    path.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    path.chmod(0o600)
    return env


class Compose:
    """docker-compose (Debian's 1.29) on the production file plus the local override."""

    def __init__(self, env_file: Path, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.base = ["docker-compose", "--project-directory", str(REPO), "--env-file", str(env_file)]
        self.base += ["-p", env["COMPOSE_PROJECT_NAME"]]
        for f in COMPOSE_FILES:
            self.base += ["-f", str(f)]

    def __call__(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        return run_cmd([*self.base, *args], timeout=timeout)

    def container_ids(self) -> dict[str, str]:
        project = f"label=com.docker.compose.project={self.env['COMPOSE_PROJECT_NAME']}"
        fmt = '{{.ID}} {{.Label "com.docker.compose.service"}}'
        out = run_cmd(["docker", "ps", "-a", "--filter", project, "--format", fmt])
        return {svc: cid for cid, svc in (line.split() for line in out.stdout.splitlines() if line.strip())}

    def health(self) -> dict[str, str]:
        """Service -> health status (or the state for a container without a health check)."""
        states = {}
        for svc, cid in self.container_ids().items():
            fmt = "{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}"
            states[svc] = run_cmd(["docker", "inspect", "-f", fmt, cid]).stdout.strip()
        return states

    def logs(self, name: str = "compose", failing: tuple[str, ...] = ()) -> str:
        """Every service's log, to a file; returns (for an assertion message) the last lines of the
        failing services' logs, or of all of them when none is named."""
        out = self("logs", "--no-color", "--tail", "300", timeout=180)
        path = self.log_dir / f"{name}.log"
        path.write_text(out.stdout + out.stderr)
        shown = [f"(every service's log: {path})"]
        for svc in failing:
            tail = self("logs", "--no-color", "--tail", "40", svc, timeout=180)
            shown.append(f"--- {svc} (last 40 lines) ---\n{tail.stdout.rstrip()}")
        if not failing:
            shown.append("\n".join(out.stdout.splitlines()[-60:]))
        return "\n".join(shown)


def _wait_healthy(compose: Compose, timeout: float = 900) -> dict[str, str]:
    """Every long-running service healthy; fails at once on an unhealthy or stopped one, else after
    `timeout` (generous: a cold start of Airflow on a loaded 2-core machine takes minutes)."""
    deadline = time.monotonic() + timeout
    while True:
        states = compose.health()
        if all(states.get(svc) == "healthy" for svc in LONG_RUNNING):
            return states
        bad = tuple(
            s for s, v in states.items() if s in LONG_RUNNING and v in ("unhealthy", "exited", "dead")
        )
        if bad or time.monotonic() > deadline:
            waiting = tuple(s for s in sorted(LONG_RUNNING) if states.get(s) != "healthy")
            why = "failed" if bad else f"not healthy after {timeout:.0f} s"
            logs = compose.logs("not-healthy", bad or waiting)
            pytest.fail(f"services {why}: {states}\n{logs}", pytrace=False)
        time.sleep(3)


@pytest.fixture(autouse=True)
def _no_container_left_behind() -> Iterator[None]:
    """The docker tests' check, for this module: no container but the stack's own between its tests
    (the trainer containers are gone); test_down_leaves_nothing_behind checks that `down` removes those."""
    yield
    project = run_cmd(
        ["docker", "ps", "-a", "--format", '{{.ID}} {{.Image}} {{.Label "com.docker.compose.project"}}']
    )
    strays = [
        line for line in project.stdout.splitlines() if not line.split()[-1].startswith("retrain-compose-")
    ]
    assert strays == [], f"containers left behind (not the stack's): {strays}"


@pytest.fixture(scope="module")
def stack(
    docker_host: str,
    compose_build: _ImageBuild,  # first: the compose images build while the trainer image does
    trainer_image: str,
    compose_images: dict[str, str],
    mechanics_model_host_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, Any]]:
    work = tmp_path_factory.mktemp("compose-stack")
    models = writable_dir(work / "models")  # the model cache the trainer containers mount at /models
    shutil.copytree(mechanics_model_host_dir, models / "tiny")
    for path in [models / "tiny", *(models / "tiny").rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    sock = Path(docker_host.removeprefix("unix://"))
    env = _env_file(work / "stack.env", compose_images, trainer_image, models, sock)
    compose = Compose(work / "stack.env", env, work)
    volumes_before = set(_volumes())  # what `down -v` must not leave more of (a reused data root has some)
    t0 = time.monotonic()
    try:
        # `up -d` itself waits for the health and completion conditions of depends_on
        up = compose("up", "-d", "--no-build", timeout=1500)
        if up.returncode != 0:
            states = compose.health()
            failing = tuple(s for s, v in states.items() if v not in ("healthy", "running", "exited"))
            failing += tuple(s for s in ONE_SHOT if s in states)  # their exit status is in their log
            pytest.fail(
                f"compose up failed: {states}\n{up.stderr[-4000:]}\n{compose.logs('up', failing)}",
                pytrace=False,
            )
        states = _wait_healthy(compose)
        healthy_s = time.monotonic() - t0
        print(f"\ncompose up -> every service healthy: {healthy_s:.0f} s")
        yield {
            "compose": compose,
            "env": env,
            "t0": t0,
            "healthy_s": healthy_s,
            "states": states,
            "volumes_before": volumes_before,
        }
    finally:
        if compose.container_ids():  # still up: a test failed before test_down_leaves_nothing_behind
            compose.logs("final")
        compose("down", "-v", "--remove-orphans", "--timeout", "20", timeout=300)


def _airflow(env: dict[str, str]) -> Any:
    from tests.support.celery_stack import AirflowClient

    url = f"http://127.0.0.1:{env['AIRFLOW_API_PORT']}"
    # one API worker on a loaded 2-core machine, which also serves the tasks' execution API: a read
    # took over 30 s while the DAG run started
    return AirflowClient(url, env["AIRFLOW_ADMIN_USER"], env["AIRFLOW_ADMIN_PASSWORD"], timeout=120)


def _run_state(client: Any, run_id: str) -> str | None:
    """The run's state; None when the API did not answer in time (polled again until the deadline)."""
    import httpx

    try:
        return str(client.run(DAG, run_id)["state"])
    except httpx.TransportError:
        return None


def test_stack_up_and_healthy(stack: dict[str, Any]) -> None:
    env = stack["env"]
    assert set(stack["states"]) >= LONG_RUNNING | {"airflow-init", "minio-init"}
    one_shot = {s: v for s, v in stack["compose"].health().items() if s in ("airflow-init", "minio-init")}
    assert one_shot == {"airflow-init": "exited", "minio-init": "exited"}
    client = _airflow(env)
    health = client.health()
    assert health["metadatabase"]["status"] == "healthy" and health["scheduler"]["status"] == "healthy"
    client.wait_for_dag(DAG, timeout=300)
    assert client.import_errors() == []
    # MLflow runs its server only: no job runner, no huey consumers (MLFLOW_SERVER_ENABLE_JOB_EXECUTION)
    top = stack["compose"]("top", "mlflow", timeout=60)
    assert top.returncode == 0 and "mlflow server" in top.stdout, top.stdout + top.stderr
    assert "huey" not in top.stdout and "_job_runner" not in top.stdout, top.stdout


def _mlflow(env: dict[str, str], path: str, params: dict[str, str] | None = None, auth: bool = True) -> Any:
    import httpx

    creds = (env.get("MLFLOW_ADMIN_USER", "retrain"), env["MLFLOW_ADMIN_PASSWORD"]) if auth else None
    return httpx.get(f"http://127.0.0.1:{env['MLFLOW_PORT']}{path}", params=params, auth=creds, timeout=30)


def _s3(env: dict[str, str]) -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{env['MINIO_API_PORT']}",
        aws_access_key_id=env["RETRAIN_S3_ACCESS_KEY"],
        aws_secret_access_key=env["RETRAIN_S3_SECRET_KEY"],
        region_name="us-east-1",
    )


def _run(stack: dict[str, Any], conf: dict[str, Any], name: str) -> dict[str, Any]:
    """Trigger ``ner_retrain`` through the REST API and wait for it to end (30 min at most); returns
    the run, its task instances, the trainer images seen running meanwhile and every key in the bucket
    then (the run's own under `prefix`)."""
    env, compose = stack["env"], stack["compose"]
    client = _airflow(env)
    client.wait_for_dag(DAG, timeout=300)
    client.set_paused(DAG, False)
    run_id = f"compose-{name}-{uuid.uuid4().hex[:6]}"
    client.trigger(DAG, conf, run_id=run_id)
    seen_trainer: set[str] = set()
    deadline = time.monotonic() + 1800
    while (state := _run_state(client, run_id)) not in ("success", "failed"):
        # the trainer containers the worker starts (not compose services) while the run goes on
        seen_trainer |= {c.split()[1] for c in containers() if env["TRAINER_IMAGE"] in c}
        if time.monotonic() > deadline:
            logs = compose.logs(f"{name}-timeout", ("airflow-worker", "airflow-scheduler", "minio"))
            pytest.fail(f"run not done after 30 min: {client.task_states(DAG, run_id)}\n{logs}")
        time.sleep(3)
    s3 = _s3(env)
    prefix = f"runs/{_safe(run_id)}/"
    keys = {
        o["Key"]
        for p in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
        for o in p.get("Contents", [])
    }
    return {
        "run_id": run_id,
        "state": state,
        "run": client.run(DAG, run_id),
        "tis": client.task_instances(DAG, run_id),
        "seen_trainer": seen_trainer,
        "prefix": prefix,
        "keys": keys,
        "done_s": time.monotonic() - stack["t0"],
    }


@pytest.fixture(scope="module")
def first(stack: dict[str, Any]) -> dict[str, Any]:
    """Night 1: a new batch (160 records, 5 bad); train and evaluate in trainer containers."""
    from tests.support.synth import make_batch

    batch = "\n".join(make_batch(160, seed=1, bad=5)) + "\n"
    _s3(stack["env"]).put_object(
        Bucket=BUCKET, Key="incoming/2026-11-27/batch-001.json", Body=batch.encode("utf-8")
    )
    return _run(stack, {"epochs": EPOCHS}, "first")


@pytest.fixture(scope="module")
def second(stack: dict[str, Any], first: dict[str, Any]) -> dict[str, Any]:
    """Night 2, after night 1: forced, with a base model that is not in the model cache."""
    return _run(stack, {"force": True, "base_model": "/models/missing"}, "missing-base-model")


def _worker_log(stack: dict[str, Any], run_id: str, task_id: str) -> str:
    """Every attempt's log of one task, read where the Celery worker wrote it (the airflow-logs volume)."""
    path = f"/opt/airflow/logs/dag_id={DAG}/run_id={run_id}/task_id={task_id}"
    out = stack["compose"]("exec", "-T", "airflow-worker", "sh", "-c", f"cat '{path}'/*.log", timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def _model_name(env: dict[str, str]) -> str:
    """The name of the one model the stack's runs register (as the admin sees the registry)."""
    found = _mlflow(env, "/api/2.0/mlflow/registered-models/search").json()["registered_models"]
    assert len(found) == 1, found
    return str(found[0]["name"])


def _champion_version(env: dict[str, str], name: str) -> str:
    alias = {"name": name, "alias": "champion"}
    return str(
        _mlflow(env, "/api/2.0/mlflow/registered-models/alias", alias).json()["model_version"]["version"]
    )


def _model_version(env: dict[str, str], name: str, version: str) -> Any:
    """MLflow's answer for one version of the model (an httpx response)."""
    return _mlflow(env, "/api/2.0/mlflow/model-versions/get", {"name": name, "version": version})


def test_rest_trigger_trains_in_a_trainer_container_and_promotes(
    stack: dict[str, Any], first: dict[str, Any]
) -> None:
    env = stack["env"]
    states = {t: ti["state"] for t, ti in first["tis"].items()}
    if first["state"] != "success":
        logs = stack["compose"].logs("run-failed", ("airflow-worker", "airflow-scheduler", "minio", "mlflow"))
        pytest.fail(f"{DAG} {first['state']}: {states}\n{logs}", pytrace=False)
    failed = {t: s for t, s in states.items() if s not in ("success", "skipped")}
    assert not failed, states
    assert {t: states[t] for t in ("train", "evaluate", "promote")} == dict.fromkeys(
        ("train", "evaluate", "promote"), "success"
    )
    assert first["seen_trainer"] == {env["TRAINER_IMAGE"]}, "no trainer container was seen running"
    print(f"\ncompose up -> promotion in MLflow: {first['done_s']:.0f} s")
    # both trainer stages ran in the image (DockerOperator's log lines), not in a local trainer env
    for task in ("train", "evaluate"):
        log = _worker_log(stack, first["run_id"], task)
        assert log.count(f"Starting docker container from image {env['TRAINER_IMAGE']}") == 1, log[-3000:]
        assert "local launcher:" not in log
    prefix, keys = first["prefix"], first["keys"]
    for name in (
        "train_result.json",
        "train/trainer_log.jsonl",
        "train/train_config.yaml",
        "eval/report.json",
        "eval/per_label_f1.png",
        "summary.json",
    ):
        assert prefix + name in keys, name
    s3 = _s3(env)
    report = json.loads(s3.get_object(Bucket=BUCKET, Key=prefix + "eval/report.json")["Body"].read())
    assert report["base_model"] == "/models/tiny" and report["base_model_path"] == "/models/tiny"
    assert report["candidate"]["micro"]["f1"] > report["champion"]["micro"]["f1"]
    summary = json.loads(s3.get_object(Bucket=BUCKET, Key=prefix + "summary.json")["Body"].read())
    assert summary["champion_name"] == "base model"
    assert summary["decision"]["promote"], summary["decision"]
    note = first["run"].get("note") or ""
    assert note.startswith("promoted v1: micro F1"), note

    # MLflow: the registry answers nobody without credentials; the admin sees v1 as champion
    assert _mlflow(env, "/api/2.0/mlflow/registered-models/search", auth=False).status_code == 401
    name = _model_name(env)
    assert _champion_version(env, name) == "1"
    v1 = _model_version(env, name, "1").json()["model_version"]
    tags = {t["key"]: t["value"] for t in v1.get("tags", [])}
    assert tags["airflow_run_id"] == first["run_id"]
    assert tags["adapter_uri"].endswith(f"/adapters/{tags['adapter_digest']}/")
    assert f"adapters/{tags['adapter_digest']}/adapter_model.safetensors" in keys
    # the image the adapter was trained in, by its immutable id (the tag alone can move)
    image_id = run_cmd(["docker", "image", "inspect", "--format", "{{.Id}}", env["TRAINER_IMAGE"]])
    assert tags["launcher"] == "docker"
    assert tags["trainer_image"] == f"{env['TRAINER_IMAGE']}@{image_id.stdout.strip()}", tags


def test_a_failing_trainer_container_fails_the_run_and_promotes_nothing(
    stack: dict[str, Any], second: dict[str, Any]
) -> None:
    states = {t: ti["state"] for t, ti in second["tis"].items()}
    assert second["state"] == "failed" and states["train"] == "failed", states
    for task in ("prepare_evaluation", "evaluate", "promote"):
        assert states[task] == "upstream_failed", (task, states)
    log = _worker_log(stack, second["run_id"], "train")
    assert "base model '/models/missing': no such local directory" in log, log[-3000:]
    assert "Starting docker container from image" in log  # it was the container that failed
    env = stack["env"]
    name = _model_name(env)
    assert _champion_version(env, name) == "1"
    assert _model_version(env, name, "2").status_code == 404
    prefix, keys = second["prefix"], second["keys"]
    assert prefix + "train_request.json" in keys
    assert prefix + "train_result.json" not in keys and prefix + "summary.json" not in keys
    assert len([k for k in keys if k.endswith("/adapter_model.safetensors")]) == 1  # night 1's only


def test_no_secret_in_rendered_fields_or_task_logs(
    stack: dict[str, Any], first: dict[str, Any], second: dict[str, Any]
) -> None:
    """Every secret of the stack's .env (S3 keys, passwords, signing keys) stays out of what Airflow
    shows: the rendered template fields and the task logs of both runs."""
    env = stack["env"]
    secret_values = [v for k, v in env.items() if k.endswith(("PASSWORD", "SECRET", "_KEY", "ROOT_USER"))]
    secret_values = [v for v in secret_values if len(v) >= 16]
    assert env["RETRAIN_S3_SECRET_KEY"] in secret_values and env["RETRAIN_S3_ACCESS_KEY"] in secret_values
    for run in (first, second):
        rendered = {t: json.dumps(ti.get("rendered_fields") or {}) for t, ti in run["tis"].items()}
        assert "train" in rendered and rendered["train"] != "{}", rendered.keys()
        for task, text in rendered.items():
            assert not [v for v in secret_values if v in text], (run["run_id"], task)
            assert "AWS_SECRET_ACCESS_KEY" not in text, (run["run_id"], task)  # passed privately
        for task in ("train", "evaluate") if run is first else ("train",):
            log = _worker_log(stack, run["run_id"], task)
            assert not [v for v in secret_values if v in log], (run["run_id"], task)


def _safe(run_id: str) -> str:
    from retrain.ingest import safe_run_id

    return safe_run_id(run_id)


def test_down_leaves_nothing_behind(stack: dict[str, Any]) -> None:
    compose, project = stack["compose"], stack["env"]["COMPOSE_PROJECT_NAME"]
    compose.logs("final")
    down = compose("down", "-v", "--remove-orphans", "--timeout", "20", timeout=300)
    assert down.returncode == 0, down.stderr[-3000:]
    assert containers() == []
    networks = run_cmd(["docker", "network", "ls", "--format", "{{.Name}}"]).stdout.split()
    assert set(networks) <= {"bridge", "host", "none"}, networks
    left = sorted(set(_volumes()) - stack["volumes_before"])
    assert left == [], f"{project}: volumes left {left}"


def _volumes() -> list[str]:
    return run_cmd(["docker", "volume", "ls", "--format", "{{.Name}}"]).stdout.split()
