"""The Docker socket proxy (docker/socket-proxy/) in front of the real private engine.

Compose gives the worker ``DOCKER_HOST=tcp://socket-proxy:2375`` instead of the host's socket. Here the
proxy runs the same way (a process on 127.0.0.1, and once as its own image with the engine's socket
mounted read-only), and:

- the docker launcher (DockerStageOperator: ping, version, image list and inspect, create, attach,
  start, wait, remove) and a plain DockerOperator work through it unchanged;
- the real docker CLI through it cannot run a privileged container, another image, a bind of ``/``
  or of the engine's socket, a host-network container, nor exec into, stop or remove a container it
  did not create; what is refused never reaches the engine (no container appears).

The image is the project's Debian base (scripts/build_base_image.sh): the proxy checks references,
not contents, so the trainer image is not needed here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.docker.conftest import REPO, containers, run_cmd, writable_dir
from tests.fixtures_trainer import BUCKET, MotoS3, moto_s3  # noqa: F401  (moto_s3 is a fixture)
from tests.support.socket_proxy import ProxyProcess, free_port

pytestmark = pytest.mark.docker

BASE_IMAGE = "retrain/base:bookworm"
OTHER_IMAGE = "retrain/not-the-trainer:proxy-test"
PROXY_IMAGE = "retrain/socket-proxy:test"
CONN_ID = "retrain_proxy_test_s3"
SECRET_KEY = "proxy-test-secret-7c1d"


@pytest.fixture(scope="module")
def base_image(docker_host: str) -> Iterator[str]:
    build = run_cmd([str(REPO / "scripts" / "build_base_image.sh"), BASE_IMAGE], timeout=900)
    assert build.returncode == 0, build.stderr[-3000:]
    # the same files under another name: refused by reference, whatever the contents
    assert run_cmd(["docker", "tag", BASE_IMAGE, OTHER_IMAGE]).returncode == 0
    yield BASE_IMAGE
    run_cmd(["docker", "rmi", OTHER_IMAGE])


@pytest.fixture
def allowed_dir(tmp_path: Path) -> Path:
    return writable_dir(tmp_path / "model-cache")


@pytest.fixture
def proxy(docker_host: str, base_image: str, allowed_dir: Path, tmp_path: Path) -> Iterator[ProxyProcess]:
    with ProxyProcess(
        docker_host,
        tmp_path / "proxy.log",
        DOCKER_PROXY_ALLOWED_IMAGES=base_image,
        DOCKER_PROXY_ALLOWED_NETWORKS="none",
        DOCKER_PROXY_ALLOWED_BIND_SOURCES=str(allowed_dir),
    ) as running:
        yield running


def via(proxy_url: str, *args: str, timeout: float = 120):
    """The docker CLI with DOCKER_HOST at the proxy."""
    return run_cmd(["docker", "-H", proxy_url, *args], timeout=timeout)


@pytest.fixture
def s3_connection(monkeypatch: pytest.MonkeyPatch, moto_s3: MotoS3) -> None:  # noqa: F811
    """The launcher reads this connection when the task runs (and clears the stage's commit on S3)."""
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{CONN_ID.upper()}",
        json.dumps(
            {
                "conn_type": "aws",
                "login": "AKIAPROXYTEST",
                "password": SECRET_KEY,
                "extra": {"endpoint_url": moto_s3.endpoint, "region_name": "us-east-1"},
            }
        ),
    )


def test_the_docker_launcher_works_through_the_proxy(
    proxy: ProxyProcess, allowed_dir: Path, s3_connection: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow.providers.docker.exceptions import DockerContainerFailedException
    from airflow.providers.docker.operators.docker import DockerOperator
    from retrain_airflow.launchers.docker import DockerStageOperator

    from retrain.config import load_settings

    monkeypatch.setenv("DOCKER_HOST", proxy.url)  # what compose gives the worker
    settings = load_settings(
        environ={
            "RETRAIN__AIRFLOW__AWS_CONN_ID": CONN_ID,
            "RETRAIN__DOCKER__IMAGE": BASE_IMAGE,
            "RETRAIN__DOCKER__GPUS": "0",
            "RETRAIN__DOCKER__SHM_SIZE": "64m",
            "RETRAIN__DOCKER__NETWORK_MODE": "none",
            "RETRAIN__DOCKER__MODEL_CACHE_HOST_PATH": str(allowed_dir),
        }
    )
    op = DockerStageOperator.from_settings(
        "train",
        f"s3://{BUCKET}/runs/x",
        settings,
        task_id="proxy_probe",
        command=[
            "sh",
            "-c",
            'echo "probe: secret of ${#AWS_SECRET_ACCESS_KEY} chars, cache $(ls -d /models)"; exit 3',
        ],
    )
    with pytest.raises(DockerContainerFailedException, match="'StatusCode': 3") as failed:
        op.execute({})
    assert f"probe: secret of {len(SECRET_KEY)} chars, cache /models" in failed.value.logs
    assert containers() == []  # auto_remove="success" removes a failed one too, through the proxy

    plain = DockerOperator(
        task_id="plain",
        image=BASE_IMAGE,
        command=["echo", "hello through the proxy"],
        network_mode="none",
        mount_tmp_dir=False,
        auto_remove="success",
        labels={"org.retrain.stage": "probe"},
        docker_url=proxy.url,
    )
    assert plain.execute({}) == "hello through the proxy"
    log = proxy.log()
    for call in ("/containers/create", "/attach", "/start", "/wait", "/images/json", "HEAD /_ping"):
        assert call in log, call
    assert SECRET_KEY not in log  # the create body (with the private environment) is never logged


def test_the_docker_cli_cannot_escape_through_the_proxy(proxy: ProxyProcess, base_image: str) -> None:
    attempts = {
        "privileged": ["--privileged", base_image],
        "another image": [OTHER_IMAGE],
        "host path /": ["-v", "/:/host", base_image],
        "the engine socket": ["-v", f"{proxy.env['DOCKER_PROXY_UPSTREAM'][7:]}:/s", base_image],
        "host network": ["--network", "host", base_image],
        "added capability": ["--cap-add", "SYS_ADMIN", base_image],
        "host pid": ["--pid", "host", base_image],
        "a device": ["--device", "/dev/null:/dev/x", base_image],
        "seccomp off": ["--security-opt", "seccomp=unconfined", base_image],
    }
    for what, args in attempts.items():
        run = via(
            proxy.url, "run", "--rm", "--network", "none", "--label", "org.retrain.stage=x", *args, "true"
        )
        if what == "host network":  # the second --network wins in the CLI
            run = via(proxy.url, "run", "--rm", "--label", "org.retrain.stage=x", *args, "true")
        assert run.returncode != 0, what
        assert "Error response from daemon: docker-socket-proxy:" in run.stderr, (what, run.stderr)
    assert containers() == [], "a refused request reached the engine"

    ok = via(
        proxy.url,
        "run",
        "--rm",
        "--network",
        "none",
        "--label",
        "org.retrain.stage=x",
        base_image,
        "echo",
        "ok",
    )
    assert ok.returncode == 0 and ok.stdout.strip() == "ok", ok.stderr


def test_containers_the_proxy_did_not_create_are_out_of_reach(proxy: ProxyProcess, base_image: str) -> None:
    """A container started on the engine directly (as the stack's own services are) cannot be
    stopped, removed, read or entered through the proxy; nor can the labelled one be entered."""
    other = run_cmd(["docker", "run", "-d", "--network", "none", base_image, "sleep", "60"])
    assert other.returncode == 0, other.stderr
    cid = other.stdout.strip()
    managed = via(
        proxy.url,
        "run",
        "-d",
        "--network",
        "none",
        "--label",
        "org.retrain.stage=x",
        base_image,
        "sleep",
        "60",
    )
    assert managed.returncode == 0, managed.stderr
    mid = managed.stdout.strip()
    try:
        for args in (["rm", "-f", cid], ["stop", cid], ["logs", cid], ["inspect", cid], ["kill", cid]):
            run = via(proxy.url, *args)
            assert run.returncode != 0 and "is not managed" in run.stderr, (args, run.stderr)
        for args in (["exec", mid, "true"], ["cp", f"{mid}:/etc/passwd", "-"], ["commit", mid]):
            run = via(proxy.url, *args)
            assert run.returncode != 0 and "docker-socket-proxy:" in run.stderr, (args, run.stderr)
        assert via(proxy.url, "inspect", mid).returncode == 0
        assert via(proxy.url, "rm", "-f", mid).returncode == 0
    finally:
        run_cmd(["docker", "rm", "-f", cid, mid])
    assert "refused DELETE" in proxy.log()


def test_the_proxy_image_serves_with_the_socket_mounted_read_only(
    docker_host: str, base_image: str, tmp_path: Path
) -> None:
    """docker/socket-proxy/Dockerfile built from the project's Debian base; the container runs as
    nobody with the socket's group, the socket mounted read-only (which does not stop connect(): the
    proxy, not the mount flag, is the protection), and the CLI goes through it."""
    build = run_cmd(
        [
            "docker",
            "build",
            "--network",
            "host",  # apt inside the build (the private engine has no bridge)
            "--build-arg",
            f"BASE_IMAGE={base_image}",
            "-t",
            PROXY_IMAGE,
            str(REPO / "docker" / "socket-proxy"),
        ],
        timeout=900,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    socket_path = docker_host.removeprefix("unix://")
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    started = run_cmd(
        [
            "docker",
            "run",
            "-d",
            "--name",
            "retrain-socket-proxy-test",
            "--network",
            "host",
            "--group-add",
            str(os.stat(socket_path).st_gid),
            "-v",
            f"{socket_path}:/var/run/docker.sock:ro",
            "-e",
            f"DOCKER_PROXY_LISTEN={url}",
            "-e",
            f"DOCKER_PROXY_ALLOWED_IMAGES={base_image}",
            PROXY_IMAGE,
        ]
    )
    assert started.returncode == 0, started.stderr
    try:
        health = run_cmd(
            [
                "docker",
                "exec",
                "retrain-socket-proxy-test",
                "sh",
                "-c",
                "sleep 1; exec python3 /opt/socket-proxy/docker_socket_proxy.py --healthcheck",
            ]
        )
        assert health.returncode == 0, health.stderr
        user = run_cmd(["docker", "exec", "retrain-socket-proxy-test", "id", "-u"])
        assert user.stdout.strip() == "65534"
        bad = via(url, "run", "--rm", "--privileged", "--network", "none", base_image, "true")
        assert "docker-socket-proxy: " in bad.stderr and "Privileged is not allowed" in bad.stderr
        labelled = ["--network", "none", "--label", "org.retrain.stage=x"]
        ok = via(url, "run", "--rm", *labelled, base_image, "echo", "via the image")
        assert ok.returncode == 0 and ok.stdout.strip() == "via the image", ok.stderr
        itself = via(url, "rm", "-f", "retrain-socket-proxy-test")
        assert itself.returncode != 0 and "is not managed" in itself.stderr
    finally:
        run_cmd(["docker", "rm", "-f", "retrain-socket-proxy-test"])  # the image stays (build cache)
