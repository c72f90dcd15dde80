"""The registry behind MLflow's authentication (docker-compose runs `mlflow server --app-name
basic-auth`): a real server on 127.0.0.1 with its basic-auth app. The pipeline's credentials
(MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD, from the environment) register and promote;
without them nobody on the network can read the registry or move `champion`."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request

import pytest

from retrain.registry import Registry
from tests.support.stack import free_port, stop_by_pid, wait_for_port
from tests.test_registry import _version  # one way to log and register a test version

ADMIN, ADMIN_PASSWORD = "retrain-admin", "adm-9f3c1e7a"
MODEL = "clue-ner-auth-test"


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    d = tmp_path_factory.mktemp("mlflow-auth")
    ini = d / "basic_auth.ini"
    ini.write_text(
        "[mlflow]\ndefault_permission = NO_PERMISSIONS\n"
        f"database_uri = sqlite:///{d / 'auth.db'}\nadmin_username = {ADMIN}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    port = free_port()
    env = {
        **os.environ,
        "MLFLOW_AUTH_CONFIG_PATH": str(ini),
        "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-secret-key",
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # as docker-compose.yml: no job runner processes
    }
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        env.pop(name, None)
    cmd = [sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth"]
    cmd += ["--backend-store-uri", f"sqlite:///{d / 'mlflow.db'}", "--serve-artifacts"]
    cmd += ["--artifacts-destination", (d / "artifacts").as_uri()]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    log = (d / "server.log").open("w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(
            port, timeout=600
        )  # MLflow migrates two databases first: ~30 s idle, minutes under load
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:  # the port opens before the app has migrated its databases
            try:
                urllib.request.urlopen(f"{url}/health", timeout=5)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        yield url, d
    finally:
        stop_by_pid(proc, "mlflow server (basic-auth)")
        log.close()


def test_with_the_pipeline_credentials_register_and_promote_work(auth_server, tmp_path, monkeypatch):
    url, _ = auth_server
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ADMIN)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN_PASSWORD)
    reg = Registry(url, MODEL)
    version = _version(reg, tmp_path, 1)
    reg.move_champion(version, reason="test", actor="ner_retrain")
    assert reg.champion()["version"] == str(version)


def test_without_credentials_nobody_reads_the_registry_or_moves_champion(auth_server, tmp_path, monkeypatch):
    from mlflow.exceptions import MlflowException

    url, _ = auth_server
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ADMIN)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN_PASSWORD)
    reg = Registry(url, MODEL)
    target = _version(reg, tmp_path, 2)
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    anonymous = Registry(url, MODEL)
    with pytest.raises(MlflowException, match="401|Unauthorized|credentials"):
        anonymous.client.set_registered_model_alias(MODEL, "champion", str(target))
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ADMIN)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "wrong-password")
    with pytest.raises(MlflowException, match="401|Unauthorized|credentials"):
        Registry(url, MODEL).client.get_registered_model(MODEL)
