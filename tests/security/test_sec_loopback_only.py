"""No dev/test service listens on anything but the loopback interface.

The moto S3 servers the tests and the demo start (``MotoServer``: a moto_server process;
``ThreadedMotoServer`` in tests/fixtures_trainer.py: a thread) are checked with psutil while they
run. The project's scripts and configs are searched for all-interface binds: the only one allowed
is a service inside docker-compose.yml listening on its container network whose published ports are
bound to 127.0.0.1. (The Airflow stacks: tests/e2e/test_celery_scheduler.py checks the running
components' sockets.)
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LOOPBACK = {"127.0.0.1", "::1"}


def _listening(pid: int) -> list[tuple[str, int]]:
    import psutil

    return [
        (c.laddr.ip, c.laddr.port)
        for c in psutil.Process(pid).net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    ]


def test_moto_server_process_listens_on_loopback_only():
    from tests.support.stack import MotoServer

    with MotoServer() as moto:
        sockets = _listening(moto.proc.pid)
        assert ("127.0.0.1", moto.port) in sockets, sockets
        assert {ip for ip, _ in sockets} <= LOOPBACK, sockets
        ss = subprocess.run(["ss", "-ltnH", f"sport = :{moto.port}"], capture_output=True, text=True)
        if ss.returncode == 0:  # the same, as the kernel reports it
            assert all(line.split()[3].startswith("127.0.0.1:") for line in ss.stdout.splitlines()), ss.stdout


def test_threaded_moto_server_of_the_trainer_tests_listens_on_loopback_only():
    import os

    from moto.server import ThreadedMotoServer

    source = (REPO / "tests" / "fixtures_trainer.py").read_text()
    assert 'ThreadedMotoServer(ip_address="127.0.0.1"' in source
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        sockets = [s for s in _listening(os.getpid()) if s[1] == port]
        assert sockets and {ip for ip, _ in sockets} <= LOOPBACK, sockets
    finally:
        server.stop()


ALL_INTERFACES = re.compile(r"0\.0\.0\.0|(?<![\w:])\[?::\]?(?=[:\s\"'])|INADDR_ANY|--host[= ]+\*")


def _project_files() -> list[Path]:
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    keep = (
        ".py",
        ".sh",
        ".yml",
        ".yaml",
        ".toml",
        ".cfg",
        ".ini",
        ".env",
        ".example",
        "Makefile",
        "Dockerfile",
        "run",
    )
    # Test modules may name 0.0.0.0 on purpose (to check it is refused); the harness that starts the
    # demo's and the tests' servers (tests/support/) is searched like product code.
    return [
        REPO / p
        for p in out
        if p.endswith(keep)
        and (not p.startswith("tests/") or p.startswith("tests/support/"))
        and (REPO / p).is_file()
    ]


def test_no_script_or_config_binds_every_interface():
    import yaml

    files = _project_files()
    assert any(f.name == "stack.py" for f in files)  # the search does see the project
    offenders = []
    for path in files:
        for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if ALL_INTERFACES.search(line) and not line.lstrip().startswith("#"):
                offenders.append((path.relative_to(REPO).as_posix(), n, line.strip()))
    # A compose service listens on every interface of its own container (other services reach it on the
    # compose network); from the host it is reached only through ports published on 127.0.0.1. The
    # overrides under docker/compose/ inherit a service's ports from docker-compose.yml.
    compose_files = [REPO / "docker-compose.yml", *sorted((REPO / "docker" / "compose").glob("*.yml"))]
    base = yaml.safe_load(compose_files[0].read_text())["services"]
    for compose in compose_files:
        rel = compose.relative_to(REPO).as_posix()
        explained = 0
        for name, svc in (yaml.safe_load(compose.read_text()) or {}).get("services", {}).items():
            ports = svc.get("ports", (base.get(name) or {}).get("ports", []))
            for port in ports:
                assert str(port).startswith("127.0.0.1:"), f"{rel} {name}: port {port} is not loopback-only"
            if ports:
                explained += len(ALL_INTERFACES.findall(str(svc.get("command", ""))))
        in_file = [o for o in offenders if o[0] == rel]
        assert len(in_file) <= explained, in_file
    others = [o for o in offenders if o[0] not in {f.relative_to(REPO).as_posix() for f in compose_files}]
    assert not others, others
