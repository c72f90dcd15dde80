"""docker-compose.yml, .env.example and docker/airflow/Dockerfile, checked without pulling an image.

When `docker compose` is installed it renders the file (`docker compose config`, which needs no engine).
The structural checks below always run, on the YAML with compose's own variable interpolation
(${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}, $$) done here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
DOCKERFILE = REPO / "docker" / "airflow" / "Dockerfile"

ONE_SHOT = {"airflow-init", "minio-init", "trainer-image", "gpu-check"}
EXPECTED_SERVICES = {
    "postgres",
    "redis",
    "minio",
    "minio-init",
    "mlflow",
    "airflow-init",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
    "socket-proxy",
    "trainer-image",
    "gpu-check",
}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|FERNET|_KEY$|ACCESS_KEY|ROOT_USER", re.I)
# Variables compose itself understands; they may appear in .env.example without being referenced.
COMPOSE_BUILTINS = {"COMPOSE_PROJECT_NAME"}

_VAR = re.compile(
    r"\$(?:\$|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


class MissingVariable(ValueError):
    pass


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's interpolation of one string (no nesting inside defaults; the file uses none)."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group("name") or m.group("bare")
        op, arg = m.group("op"), m.group("arg") or ""
        value = env.get(name)
        unset_or_empty = value is None or (value == "" and op is not None and op.startswith(":"))
        if op in (":-", "-") and (value is None if op == "-" else unset_or_empty):
            return arg
        if op in (":?", "?") and (value is None if op == "?" else unset_or_empty):
            raise MissingVariable(f"{name}: {arg}")
        return value or ""

    return _VAR.sub(sub, text)


def references(text: str) -> list[tuple[str, str | None, str]]:
    """(name, operator, argument) of every ${VAR…}/$VAR in ``text`` ($$ is an escape, not a reference)."""
    return [
        (m.group("name") or m.group("bare"), m.group("op"), m.group("arg") or "")
        for m in _VAR.finditer(text)
        if m.group(0) != "$$"
    ]


def walk(node: Any, path: str = "") -> Any:
    """(path, string) for every string in a YAML tree."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from walk(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from walk(v, f"{path}[{i}]")
    elif isinstance(node, str):
        yield path, node


def render(node: Any, env: dict[str, str]) -> Any:
    if isinstance(node, dict):
        return {k: render(v, env) for k, v in node.items()}
    if isinstance(node, list):
        return [render(v, env) for v in node]
    if isinstance(node, str):
        return interpolate(node, env)
    return node


def read_env_example() -> dict[str, str]:
    out = {}
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            out[name.strip()] = value.strip()
    return out


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def example() -> dict[str, str]:
    return read_env_example()


@pytest.fixture(scope="module")
def filled(example) -> dict[str, str]:
    """.env.example with every empty secret filled in (what a user's .env looks like)."""
    return {k: (v or f"test-{k.lower()}-0123456789abcdef") for k, v in example.items()}


@pytest.fixture(scope="module")
def cfg(raw, filled) -> dict[str, Any]:
    return render(raw, filled)


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


# -- docker compose itself, when installed -------------------------------------------------------------
def _compose_cli() -> list[str] | None:
    for cmd in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(cmd[0]) and subprocess.run([*cmd, "version"], capture_output=True).returncode == 0:
            return cmd
    return None


def test_docker_compose_config_renders(tmp_path, filled):
    """Compose itself parses and validates the file: `docker compose` v2 where installed, else Debian's
    docker-compose 1.29 (scripts/install_test_tools.sh installs it; `make test` runs that script)."""
    cli = _compose_cli()
    if cli is None:
        pytest.fail(
            "neither `docker compose` nor `docker-compose` is installed: run scripts/install_test_tools.sh",
            pytrace=False,
        )
    env_file = tmp_path / ".env"
    # compose checks that a build context exists; the trainer's is assembled by build_trainer_image.sh
    (tmp_path / "trainer-context").mkdir()
    env_file.write_text(
        "".join(
            f"{k}={v}\n"
            for k, v in {**filled, "TRAINER_BUILD_CONTEXT": str(tmp_path / "trainer-context")}.items()
        )
    )
    ok = subprocess.run(
        [*cli, "-f", str(COMPOSE), "--env-file", str(env_file), "config", "--quiet"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert ok.returncode == 0, ok.stderr
    # the committed example alone (empty secrets) is refused, naming a missing variable
    bad = subprocess.run(
        [*cli, "-f", str(COMPOSE), "--env-file", str(ENV_EXAMPLE), "config", "--quiet"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert bad.returncode != 0 and "in .env" in bad.stderr, bad.stderr


# -- structure -------------------------------------------------------------------------------------------
def test_services(raw):
    assert set(raw["services"]) == EXPECTED_SERVICES


def test_every_long_running_service_has_a_healthcheck(cfg):
    for name, svc in cfg["services"].items():
        if name in ONE_SHOT:
            one_shot = svc.get("restart") == "no" or "profiles" in svc
            assert one_shot, f"{name} is exempt from healthchecks only as a one-shot/build-only service"
            continue
        hc = svc.get("healthcheck") or {}
        assert hc.get("test") and not hc.get("disable"), f"{name} has no healthcheck"


def test_published_ports_bind_loopback_only(cfg):
    published = 0
    for name, svc in cfg["services"].items():
        for port in svc.get("ports", []):
            published += 1
            if isinstance(port, dict):
                assert port.get("host_ip") == "127.0.0.1", (name, port)
            else:
                parts = str(port).split(":")
                assert len(parts) == 3 and parts[0] == "127.0.0.1", f"{name}: {port} does not bind 127.0.0.1"
        assert "network_mode" not in svc or svc["network_mode"] != "host", f"{name} uses the host network"
    assert published >= 4  # API server, MLflow, MinIO API + console


def test_one_shot_services_gate_the_others(cfg):
    svcs = cfg["services"]
    for name in (
        "airflow-apiserver",
        "airflow-scheduler",
        "airflow-dag-processor",
        "airflow-triggerer",
        "airflow-worker",
    ):
        deps = svcs[name]["depends_on"]
        assert deps["airflow-init"]["condition"] == "service_completed_successfully", name
        assert deps["minio-init"]["condition"] == "service_completed_successfully", name
        assert deps["postgres"]["condition"] == "service_healthy", name
    assert svcs["minio-init"]["depends_on"]["minio"]["condition"] == "service_healthy"
    assert svcs["mlflow"]["depends_on"]["postgres"]["condition"] == "service_healthy"


# -- secrets -----------------------------------------------------------------------------------------------
def test_no_literal_secrets(raw):
    """Every secret-looking setting is a ${VAR} without a default; URLs carry no literal password."""
    for name, svc in raw["services"].items():
        for key, value in _env(svc).items():
            if SECRET_NAME.search(key) and not key.endswith("_FILE"):  # a path to a secret is not one
                refs = references(value)
                assert refs, f"{name}.{key} is a literal: {value!r}"
                for var, op, _ in refs:
                    assert op in (None, ":?", "?"), f"{name}.{key}: ${{{var}}} has a default ({op})"
    for path, text in walk(raw):
        for m in re.finditer(r"://([^/\s:@'\"]*):([^@\s'\"]+)@", text):
            assert m.group(2).startswith("${") or m.group(2).startswith("$$"), (
                f"{path}: literal password in URL"
            )
        for m in re.finditer(r'"(password|secret_key|token)"\s*:\s*"([^"]*)"', text):
            assert m.group(2).startswith("${"), f"{path}: literal {m.group(1)} in JSON"


def test_variables_match_env_example(raw, example):
    refs = [ref for _, text in walk(raw) for ref in references(text)]  # values only, not comments
    used = {name for name, _, _ in refs}
    assert used <= set(example), (
        f"used in docker-compose.yml, missing from .env.example: {sorted(used - set(example))}"
    )
    assert set(example) - used <= COMPOSE_BUILTINS, (
        f"stale in .env.example: {sorted(set(example) - used - COMPOSE_BUILTINS)}"
    )
    # secrets are required (${VAR:?}) wherever they appear, and .env.example leaves them empty
    for name, op, _ in refs:
        if SECRET_NAME.search(name):
            assert op in (":?", "?"), f"${{{name}}} must be required (${{{name}:?…}}), not {op}"
    for name, value in example.items():
        if SECRET_NAME.search(name):
            assert value == "", f".env.example: {name} holds a value; secrets are placeholders (empty)"


def test_example_env_alone_is_refused(raw, example):
    with pytest.raises(MissingVariable):
        render(raw, example)


def test_dotenv_is_git_ignored():
    proc = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=REPO)
    assert proc.returncode == 0, ".env must be git-ignored"
    proc = subprocess.run(["git", "check-ignore", "-q", ".env.example"], cwd=REPO)
    assert proc.returncode == 1, ".env.example must be committable"


# -- Airflow ------------------------------------------------------------------------------------------------
AIRFLOW_SERVICES = (
    "airflow-init",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
)


def test_airflow_services_share_one_configuration(cfg, filled):
    svcs = cfg["services"]
    for name in AIRFLOW_SERVICES:
        env = _env(svcs[name])
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        assert env["AIRFLOW__CORE__AUTH_MANAGER"].endswith("SimpleAuthManager"), name
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://"), name
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].endswith(
            f"@postgres:5432/{filled['AIRFLOW_DB']}"
        ), name
        assert (
            env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://:")
            and "@redis:6379/" in env["AIRFLOW__CELERY__BROKER_URL"]
        )
        assert env["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql://"), name
        assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-apiserver:8080/execution/"
        assert env["AIRFLOW__API_AUTH__JWT_SECRET"] == filled["AIRFLOW_JWT_SECRET"], name
        assert svcs[name]["image"] == filled["AIRFLOW_IMAGE"], name
    assert _env(svcs["airflow-init"])["AIRFLOW_ADMIN_PASSWORD"] == filled["AIRFLOW_ADMIN_PASSWORD"]
    assert "passwords.json" in svcs["airflow-init"]["command"][-1]
    assert (
        "airflow" in svcs["airflow-init"]["command"][-1]
        and _env(svcs["airflow-init"])["_AIRFLOW_DB_MIGRATE"] == "true"
    )


def test_aws_default_connection_and_retrain_settings(cfg, filled):
    from retrain.config import load_settings

    env = _env(cfg["services"]["airflow-worker"])
    conn = json.loads(env["AIRFLOW_CONN_AWS_DEFAULT"])
    assert conn["conn_type"] == "aws"
    assert (
        conn["login"] == filled["RETRAIN_S3_ACCESS_KEY"]
        and conn["password"] == filled["RETRAIN_S3_SECRET_KEY"]
    )
    assert conn["extra"]["endpoint_url"] == "http://minio:9000"
    # every RETRAIN__ override is a key conf accepts (extra keys are forbidden there)
    retrain_env = {k: v for k, v in env.items() if k.startswith("RETRAIN__")}
    settings = load_settings(environ=retrain_env)
    assert settings.s3.bucket == filled["RETRAIN_BUCKET"]
    assert settings.train.launcher == "docker"
    assert settings.registry.tracking_uri == "http://mlflow:5000"
    assert settings.schedule.cron == filled["RETRAIN_SCHEDULE_CRON"]
    assert settings.alerts.channels == []
    # the docker launcher's trainer containers: image, the trainers network, the model cache
    assert settings.docker.image == filled["TRAINER_IMAGE"]
    assert settings.docker.network_mode == filled["TRAINER_NETWORK"] == cfg["networks"]["trainers"]["name"]
    assert settings.docker.model_cache_host_path == filled["MODELS_HOST_PATH"]


def _networks(service: dict[str, Any]) -> set[str]:
    nets = service.get("networks")
    if nets is None:
        return {"default"} if "network_mode" not in service else set()
    return set(nets)


def _mounts_socket(service: dict[str, Any]) -> bool:
    return any("docker.sock" in str(v) for v in service.get("volumes", []))


def test_worker_reaches_docker_only_through_the_socket_proxy(cfg, filled):
    """The host's Docker socket is root on the host: only socket-proxy mounts it (read-only, as
    nobody with the socket's group); the worker, where task code runs, talks to the proxy over an
    internal network and has neither the socket nor its group."""
    services = cfg["services"]
    worker = services["airflow-worker"]
    assert not _mounts_socket(worker), "the worker must not mount the Docker socket (use socket-proxy)"
    assert "group_add" not in worker, "the worker needs no Docker group without the socket"
    assert _env(worker)["DOCKER_HOST"] == "tcp://socket-proxy:2375"
    assert "celery worker" in worker["command"]
    assert worker["depends_on"]["socket-proxy"]["condition"] == "service_healthy"
    assert [name for name, svc in services.items() if _mounts_socket(svc)] == ["socket-proxy"]

    proxy = services["socket-proxy"]
    assert proxy["volumes"] == [f"{filled['DOCKER_SOCKET']}:/var/run/docker.sock:ro"]
    assert proxy["user"] == "65534:65534" and proxy["group_add"] == [filled["DOCKER_GID"]]
    assert proxy["read_only"] is True and proxy["cap_drop"] == ["ALL"]
    assert "ports" not in proxy, "the proxy is reached on the internal network only"
    env = _env(proxy)
    assert (
        env["DOCKER_PROXY_ALLOWED_IMAGES"]
        == filled["TRAINER_IMAGE"]
        == _env(worker)["RETRAIN__DOCKER__IMAGE"]
    )
    assert env["DOCKER_PROXY_ALLOWED_NETWORKS"] == filled["TRAINER_NETWORK"]
    assert env["DOCKER_PROXY_ALLOWED_BIND_SOURCES"] == filled["MODELS_HOST_PATH"]
    assert env["DOCKER_PROXY_LISTEN"] == "tcp://socket-proxy:2375"  # the internal network only
    assert proxy["build"]["context"] == "docker/socket-proxy"
    assert (REPO / "docker" / "socket-proxy" / "Dockerfile").is_file()

    assert cfg["networks"]["docker-api"]["internal"] is True
    on_api = {name for name, svc in services.items() if "docker-api" in _networks(svc)}
    assert on_api == {"socket-proxy", "airflow-worker"}
    assert _networks(proxy) == {"docker-api"}


def test_trainers_are_on_a_network_that_reaches_only_object_storage(cfg, filled):
    """The launcher's trainer containers join the `trainers` network: internal (no internet, no route
    out), with MinIO as its only member, so a trainer (which runs model code next to S3 credentials)
    reaches no database, broker, MLflow or Airflow service."""
    trainers = cfg["networks"]["trainers"]
    assert trainers["internal"] is True and trainers["name"] == filled["TRAINER_NETWORK"]
    members = {name for name, svc in cfg["services"].items() if "trainers" in _networks(svc)}
    assert members == {"minio"}
    assert _networks(cfg["services"]["minio"]) == {"default", "trainers"}
    worker_env = _env(cfg["services"]["airflow-worker"])
    assert worker_env["RETRAIN__DOCKER__NETWORK_MODE"] == filled["TRAINER_NETWORK"]
    assert json.loads(worker_env["AIRFLOW_CONN_AWS_DEFAULT"])["extra"]["endpoint_url"] == "http://minio:9000"


def test_the_admin_password_file_is_mounted_only_where_it_is_used(cfg):
    """airflow-init writes it, the api-server's auth manager reads it (read-only); no other container,
    the worker that runs task code above all, can read the admin password."""
    mounts = {
        name: [v for v in svc.get("volumes", []) if str(v).startswith("airflow-auth:")]
        for name, svc in cfg["services"].items()
    }
    assert mounts.pop("airflow-init") == ["airflow-auth:/opt/airflow/auth"]
    # read-write: SimpleAuthManager opens the file "a+" at start (a read-only mount stops the api-server)
    assert mounts.pop("airflow-apiserver") == ["airflow-auth:/opt/airflow/auth"]
    assert {name: m for name, m in mounts.items() if m} == {}


# -- MinIO and MLflow ------------------------------------------------------------------------------------
def test_minio_init_creates_the_buckets_and_a_scoped_user(raw, cfg, filled):
    init = cfg["services"]["minio-init"]
    script = init["command"][0]
    assert 'mc mb --ignore-existing "local/$RETRAIN_BUCKET" "local/$MLFLOW_BUCKET"' in script
    assert _env(init)["RETRAIN_BUCKET"] == filled["RETRAIN_BUCKET"]
    assert "mc admin user add local" in script and "mc admin policy attach" in script
    assert "http://minio:9000" in script


def test_mlflow_uses_postgres_and_s3_artifacts(cfg, filled):
    ml = cfg["services"]["mlflow"]
    env = _env(ml)
    assert env["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert env["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg2://")
    assert env["MLFLOW_BACKEND_STORE_URI"].endswith(f"@postgres:5432/{filled['MLFLOW_DB']}")
    assert env["MLFLOW_ARTIFACTS_DESTINATION"] == f"s3://{filled['MLFLOW_BUCKET']}/"
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"  # no unused job runner processes
    cmd = ml["command"][0]
    for flag in (
        '--backend-store-uri "$MLFLOW_BACKEND_STORE_URI"',
        "--serve-artifacts",
        '--artifacts-destination "$MLFLOW_ARTIFACTS_DESTINATION"',
        "--allowed-hosts",
    ):
        assert flag in cmd, flag
    assert "mlflow:5000" in cmd  # the Host header the workers send must be allowed
    # behind authentication, on its own database role (not the Airflow one)
    assert "exec mlflow server --app-name basic-auth" in cmd
    assert "default_permission = NO_PERMISSIONS" in cmd
    db_user = filled.get("MLFLOW_DB_USER", "mlflow")
    assert env["MLFLOW_BACKEND_STORE_URI"].startswith(f"postgresql+psycopg2://{db_user}:")
    assert db_user != filled["POSTGRES_USER"]
    assert env["MLFLOW_AUTH_ADMIN_PASSWORD"] == filled["MLFLOW_ADMIN_PASSWORD"]
    for name in AIRFLOW_SERVICES:  # the pipeline signs in as the MLflow admin
        airflow_env = _env(cfg["services"][name])
        assert airflow_env["MLFLOW_TRACKING_USERNAME"] == env["MLFLOW_AUTH_ADMIN_USERNAME"], name
        assert airflow_env["MLFLOW_TRACKING_PASSWORD"] == filled["MLFLOW_ADMIN_PASSWORD"], name
    # the database MLflow uses is created by the postgres init script (run below against a real server)
    pg = cfg["services"]["postgres"]
    assert _env(pg)["MLFLOW_DB"] == filled["MLFLOW_DB"]
    assert "./docker/compose/postgres-init.sh:/docker-entrypoint-initdb.d/10-mlflow.sh:ro" in pg["volumes"]


def test_postgres_init_script_gives_mlflow_its_own_role_and_databases():
    """docker/compose/postgres-init.sh as the postgres image runs it, against this machine's PostgreSQL
    (throwaway names, all quoted): MLflow's role owns its two databases, cannot open Airflow's, and a
    second run is a no-op rather than an error."""
    if not shutil.which("psql"):
        pytest.fail("psql is not installed (the script is a psql script)", pytrace=False)
    tag = uuid.uuid4().hex[:8]
    names = {"MLFLOW_DB": f'mlflow test "{tag}"', "MLFLOW_AUTH_DB": f"mlflow auth {tag}"}
    airflow_db, role = f"airflow test {tag}", f"mlflow role {tag}"
    env = {
        **os.environ,
        "PGHOST": os.environ.get("RETRAIN_PG_HOST", "127.0.0.1"),
        "POSTGRES_USER": os.environ.get("RETRAIN_PG_USER", "postgres"),
        "POSTGRES_DB": "postgres",
        "AIRFLOW_DB": airflow_db,
        "MLFLOW_DB_USER": role,
        "MLFLOW_DB_PASSWORD": f"pw-{tag}",
        **names,
    }
    script = REPO / "docker" / "compose" / "postgres-init.sh"

    def psql(sql: str, user: str | None = None, db: str = "postgres") -> subprocess.CompletedProcess[str]:
        cmd = ["psql", "-U", user or env["POSTGRES_USER"], "-d", db, "-tA", "-v", "ON_ERROR_STOP=1"]
        return subprocess.run(cmd, input=sql, capture_output=True, text=True, env=env)

    def owner(db: str) -> str:
        q = psql(f"SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = '{db}';")
        return q.stdout.strip()

    try:
        assert psql(f'CREATE DATABASE "{airflow_db}";').returncode == 0
        for _ in range(2):
            run = subprocess.run(["sh", str(script)], capture_output=True, text=True, env=env)
            assert run.returncode == 0, run.stderr
            assert owner(names["MLFLOW_DB"]) == owner(names["MLFLOW_AUTH_DB"]) == role
        assert psql("SELECT 1;", user=role, db=names["MLFLOW_DB"]).returncode == 0
        refused = psql("SELECT 1;", user=role, db=airflow_db)
        assert refused.returncode != 0 and "permission denied" in refused.stderr
    finally:
        for db in (*names.values(), airflow_db):
            psql(f'DROP DATABASE IF EXISTS "{db.replace(chr(34), chr(34) * 2)}";')
        psql(f'DROP ROLE IF EXISTS "{role}";')
    assert owner(names["MLFLOW_DB"]) == ""


# -- images ---------------------------------------------------------------------------------------------
def test_trainer_image_is_build_only(cfg):
    trainer = cfg["services"]["trainer-image"]
    assert trainer["profiles"] == ["build"]
    assert trainer["build"]["dockerfile"] == "docker/trainer/Dockerfile"
    assert (REPO / "docker" / "trainer" / "Dockerfile").exists()
    gpu = cfg["services"]["gpu-check"]
    assert gpu["profiles"] == ["gpu"]
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]


def test_airflow_dockerfile(cfg, filled):
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert re.search(r"^ARG AIRFLOW_BASE_IMAGE=apache/airflow:3\.3\.2-python3\.11$", text, re.M)
    assert re.search(r"^FROM \$\{AIRFLOW_BASE_IMAGE\}$", text, re.M)
    assert "--no-deps -r /opt/retrain/requirements/airflow.lock.txt" in text
    assert "--no-deps /opt/retrain" in text
    for src, dest in (
        ("conf", "/opt/retrain/conf"),
        ("dags", "/opt/airflow/dags"),
        ("plugins", "/opt/airflow/plugins"),
    ):
        assert re.search(rf"^COPY --chown=airflow:0 {src} {dest}$", text, re.M), src
    lock = (REPO / "requirements" / "airflow.lock.txt").read_text()
    assert re.search(r"^apache-airflow==3\.3\.2 ", lock, re.M)
    build = cfg["services"]["airflow-apiserver"]["build"]
    assert build["dockerfile"] == "docker/airflow/Dockerfile" and build["context"] == "."
    assert build["args"]["AIRFLOW_BASE_IMAGE"] == filled["AIRFLOW_BASE_IMAGE"]
    # the context is the repository root: the ignore file keeps the virtualenvs out of it
    ignore = (DOCKERFILE.parent / "Dockerfile.dockerignore").read_text().splitlines()
    assert ignore[ignore.index("*") + 1 :].count("!src/") == 1 and ".venv-af" not in "".join(
        line for line in ignore if line.startswith("!")
    )
