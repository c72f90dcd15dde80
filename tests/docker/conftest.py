"""The Docker engine the docker tests share (-m docker): a private dockerd for the session, the
trainer image built by the developer's own script, the tiny model made inside that image.

The engine starts with scripts/dockerd.sh (socket and state in pytest's temp dir; images kept in
$RETRAIN_DOCKER_DATA_ROOT, default the user's cache, ~/.cache/retrain/docker, so a later session, also
in a fresh clone, reuses them: `docker build` still runs every step and rebuilds each one whose inputs
changed) and stops at the end of the session, checking that no container is left. Set the variable
empty (RETRAIN_DOCKER_DATA_ROOT=) to build everything from nothing. An engine or a build that cannot
start FAILS the tests with the reason: nothing here is skipped.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
IMAGE = "retrain/trainer:cpu"
# the engine's images and build cache, shared by every checkout of this user (one engine at a time:
# scripts/dockerd.sh locks it and a second engine builds in its own state dir)
DATA_ROOT = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "retrain" / "docker"


def run_cmd(cmd: list[str], timeout: float = 120, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


def docker_run(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``docker run --rm --network none ARGS``: a throwaway container without a network."""
    return run_cmd(["docker", "run", "--rm", "--network", "none", *args], timeout=timeout)


def containers() -> list[str]:
    out = run_cmd(["docker", "ps", "-a", "--format", "{{.ID}} {{.Image}} {{.Status}}"])
    assert out.returncode == 0, out.stderr
    return [line for line in out.stdout.splitlines() if line.strip()]


@pytest.fixture(scope="session")
def docker_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private Docker engine for the session; DOCKER_HOST points at it while the session runs."""
    state = tmp_path_factory.mktemp("dockerd")
    env = dict(os.environ)
    env.setdefault("RETRAIN_DOCKER_DATA_ROOT", str(DATA_ROOT))
    start = run_cmd([str(REPO / "scripts" / "dockerd.sh"), "start", str(state)], timeout=300, env=env)
    if start.returncode != 0:
        pytest.fail(
            f"the Docker engine did not start (scripts/dockerd.sh start):\n{start.stderr}", pytrace=False
        )
    host = start.stdout.strip().splitlines()[-1]
    previous = os.environ.get("DOCKER_HOST")
    os.environ["DOCKER_HOST"] = host
    try:
        yield host
        left = containers()
    finally:
        if previous is None:
            os.environ.pop("DOCKER_HOST", None)
        else:
            os.environ["DOCKER_HOST"] = previous
        stop = run_cmd([str(REPO / "scripts" / "dockerd.sh"), "stop", str(state)], timeout=120, env=env)
    assert not left, f"containers left behind: {left}"
    assert stop.returncode == 0, f"scripts/dockerd.sh stop: {stop.stderr}"


@pytest.fixture(scope="session")
def trainer_image(docker_host: str) -> str:
    """retrain/trainer:cpu built (or found up to date) by scripts/build_trainer_image.sh."""
    started = time.monotonic()
    build = run_cmd([str(REPO / "scripts" / "build_trainer_image.sh"), "--variant", "cpu"], timeout=3600)
    if build.returncode != 0:
        pytest.fail(f"building {IMAGE} failed:\n{build.stderr[-6000:]}", pytrace=False)
    print(f"\n{IMAGE}: build step {time.monotonic() - started:.0f} s\n{build.stderr.strip()}")
    return IMAGE


@pytest.fixture(autouse=True)
def _no_container_left_behind(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "docker_host" in request.fixturenames:
        assert containers() == [], "the test left a container behind"


def writable_dir(path: Path) -> Path:
    """A host directory the image's user (uid 1000) can write through a bind mount."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o777)
    return path


def _host_model(out: Path, size: str) -> Path:
    """The tiny Qwen2 model of ``size`` built on the host by the trainer environment (the same lock the
    image installs), readable by the image's user (uid 1000) through a read-only mount."""
    build = run_cmd(
        [
            str(REPO / ".venv-tr" / "bin" / "python"),
            "-m",
            "tests.support",
            "tiny-model",
            "--out",
            str(out / "tiny"),
            "--size",
            size,
        ],
        timeout=600,
        cwd=REPO,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    assert (out / "tiny" / "config.json").is_file()
    for path in [out, *out.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return out / "tiny"


@pytest.fixture(scope="session")
def tiny_model_host_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random Qwen2 model, mounted read-only into the containers as a real model cache would be."""
    return _host_model(tmp_path_factory.mktemp("tiny-model-host"), "tiny")


@pytest.fixture(scope="session")
def mechanics_model_host_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The model the tests that need a first promotion train (tests/support/demo.py MECHANICS_MODEL_SIZE)."""
    from tests.support.demo import MECHANICS_MODEL_SIZE

    return _host_model(tmp_path_factory.mktemp("mechanics-model-host"), MECHANICS_MODEL_SIZE)


PROBE_IMAGE = "retrain/probe:host-binaries"
PROBE_BINARIES = ("sh", "cat", "sleep", "grep")


def _probe_rootfs(root: Path) -> None:
    """A minimal root filesystem: the host's sh/cat/sleep/grep and the shared libraries they load
    (`ldd`), at the same paths. Enough to read /proc inside a container; no registry needed."""
    import shutil

    files: set[str] = set()
    for name in PROBE_BINARIES:
        binary = shutil.which(name)
        assert binary, f"{name} not found on the host"
        files.add(os.path.realpath(binary))
        files.add(binary)
        ldd = run_cmd(["ldd", binary])
        files.update(part for part in ldd.stdout.split() if part.startswith("/"))
    for src in files:
        dest = root / src.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(os.path.realpath(src), dest)
    for name in PROBE_BINARIES:  # /bin/<name> whatever the host's layout
        link = root / "bin" / name
        if not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(os.path.realpath(shutil.which(name) or ""), link)
    for folder in ("proc", "sys", "dev", "etc", "tmp", "work"):
        (root / folder).mkdir(exist_ok=True)
    (root / "tmp").chmod(0o1777)
    (root / "work").chmod(0o1777)


@pytest.fixture(scope="session")
def probe_image(docker_host: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A tiny image made from the host's own binaries (`_probe_rootfs`, ``docker import``, < 1 s) for
    tests about how the launcher runs a container rather than what runs in it; removed at the end."""
    root = tmp_path_factory.mktemp("probe-rootfs")
    _probe_rootfs(root)
    tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
    made = run_cmd(
        ["docker", "import", "--change", "USER 1000:1000", "--change", "WORKDIR /work", "-", PROBE_IMAGE],
        stdin=tar.stdout,
    )
    tar.wait()
    assert made.returncode == 0, made.stderr
    yield PROBE_IMAGE
    run_cmd(["docker", "rmi", "-f", PROBE_IMAGE])
