"""The Docker socket proxy (docker/socket-proxy/docker_socket_proxy.py) for tests: the module itself,
and a running proxy process in front of an engine."""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]
PROXY_FILE = REPO / "docker" / "socket-proxy" / "docker_socket_proxy.py"


def load_proxy_module() -> ModuleType:
    """The proxy is a standalone file (its image copies it alone), not a package of the project."""
    name = "docker_socket_proxy"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, PROXY_FILE)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ProxyProcess:
    """``python3 docker_socket_proxy.py`` on 127.0.0.1:<free port>, in front of ``upstream``."""

    def __init__(self, upstream: str, log_path: Path, **settings: str) -> None:
        self.port = free_port()
        self.url = f"tcp://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.env = {
            **os.environ,
            "DOCKER_PROXY_LISTEN": self.url,
            "DOCKER_PROXY_UPSTREAM": upstream,
            **settings,
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> ProxyProcess:
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, str(PROXY_FILE)], env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log()
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.1)
        raise TimeoutError(f"the proxy did not listen on {self.url}:\n{self.log()}")

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")
