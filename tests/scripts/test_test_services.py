"""scripts/test_services.sh: private PostgreSQL and Redis when none answers, stopped by PID afterwards.

Pointed at ports where nothing listens, the script must start its own servers on other loopback ports,
hand them to the command (RETRAIN_PG_*, PGHOST/PGPORT, RETRAIN_REDIS_*), and stop them when the command
ends, with the command's exit status. The machine's servers (if any) are not touched: the script is
never pointed at them here.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess

import pytest

from tests.support.stack import REPO_ROOT, free_port

SCRIPT = REPO_ROOT / "scripts" / "test_services.sh"


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.skipif(os.geteuid() != 0 and shutil.which("sudo") is None, reason="needs root or sudo")
def test_private_services_are_started_used_and_stopped(tmp_path):
    probe = (
        'psql -U postgres -d postgres -tAc "SELECT 6*7" && '
        'echo "redis $(redis-cli -h "$RETRAIN_REDIS_HOST" -p "$RETRAIN_REDIS_PORT" ping)" && '
        "echo PORTS $RETRAIN_PG_PORT $PGPORT $RETRAIN_REDIS_PORT && exit 3"
    )
    env = {**os.environ, "RETRAIN_PG_PORT": str(free_port()), "RETRAIN_REDIS_PORT": str(free_port())}
    env.pop("RETRAIN_PG_HOST", None)
    env.pop("RETRAIN_REDIS_HOST", None)
    proc = subprocess.run(
        [str(SCRIPT), str(tmp_path / "services"), "bash", "-c", probe],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 3, proc.stderr  # the command's own exit status
    lines = proc.stdout.split()
    assert "42" in lines and "PONG" in lines, proc.stdout
    pg_port, pgport, redis_port = (int(p) for p in proc.stdout.split("PORTS")[1].split())
    assert pg_port == pgport and pg_port != int(env["RETRAIN_PG_PORT"])
    assert redis_port != int(env["RETRAIN_REDIS_PORT"])
    assert "private PostgreSQL on 127.0.0.1" in proc.stderr and "private Redis on 127.0.0.1" in proc.stderr
    assert "stopped private postgres" in proc.stderr and "stopped private redis" in proc.stderr
    assert not _listening(pg_port) and not _listening(redis_port)
