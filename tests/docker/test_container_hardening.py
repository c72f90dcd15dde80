"""The Docker launcher's container on a real engine: no capabilities, no new privileges, one name per
run and stage, and an orphan of an earlier try replaced (plugins/retrain_airflow/launchers/docker.py).

Run with the docker tests (``-m docker``, the session's private dockerd). The container is the probe
image (the host's sh/cat/sleep/grep, tests/docker/conftest.py): what is tested is how the launcher runs
a container, not the trainer in it; the trainer image trains with the same settings in
tests/docker/test_compose_stack.py. The S3 server is moto on 127.0.0.1; the containers run
without a network.
"""

from __future__ import annotations

import json
import logging
import subprocess
import time

import pytest

from retrain.config import load_settings
from tests.docker.conftest import run_cmd
from tests.docker.test_trainer_image import CONN_ID, s3_connection  # noqa: F401  (a fixture)
from tests.fixtures_trainer import BUCKET, MotoS3, moto_s3  # noqa: F401  (a fixture)

pytestmark = pytest.mark.docker


def _operator(image: str, run_uri: str, command: list[str], **overrides: str):
    from retrain_airflow.launchers.docker import DockerStageOperator

    settings = load_settings(
        environ={
            "RETRAIN__AIRFLOW__AWS_CONN_ID": CONN_ID,
            "RETRAIN__DOCKER__IMAGE": image,
            "RETRAIN__DOCKER__GPUS": "0",
            "RETRAIN__DOCKER__SHM_SIZE": "64m",
            "RETRAIN__DOCKER__MODEL_CACHE_HOST_PATH": "null",
            "RETRAIN__DOCKER__NETWORK_MODE": "none",
            **overrides,
        }
    )
    return DockerStageOperator.from_settings("train", run_uri, settings, command=command, retries=0)


def _status_fields(lines: list[str]) -> dict[str, str]:
    fields = {}
    for line in lines:
        key, sep, value = str(line).partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


@pytest.mark.parametrize("user", [None, "0"], ids=["image-user", "root"])
def test_the_container_has_no_capabilities_and_no_new_privileges(
    probe_image: str,
    s3_connection: MotoS3,  # noqa: F811
    user: str | None,
) -> None:
    """/proc/self/status inside the launched container: every capability set empty (the bounding set
    too, which a non-root user alone does not empty), NoNewPrivs 1. As root (``docker.user: "0"``) the
    effective set is empty only because the launcher dropped them: Docker's default keeps 14."""
    from airflow.providers.docker.exceptions import DockerContainerFailedException

    overrides = {"RETRAIN__DOCKER__USER": f"'{user}'"} if user else {}  # YAML: a string
    op = _operator(
        probe_image, f"s3://{BUCKET}/runs/caps", ["sh", "-c", "cat /proc/self/status; exit 3"], **overrides
    )
    op.clear_earlier_try()
    op.before_stage()
    # exit 3 hands the container's output over in the exception (and the container is removed).
    with pytest.raises(DockerContainerFailedException) as failed:
        op.launch({})
    status = _status_fields(failed.value.logs or [])
    assert status["CapEff"] == status["CapPrm"] == status["CapBnd"] == "0000000000000000", status
    assert status["NoNewPrivs"] == "1"
    assert status["Uid"].split()[0] == (user or "1000")

    # Docker's default for the same container, as the control: capabilities kept, privileges may grow.
    default = run_cmd(
        [
            "docker",
            "run",
            "--rm",
            "--network",
            "none",
            "--user",
            user or "1000",
            probe_image,
            "cat",
            "/proc/self/status",
        ]
    )
    control = _status_fields(default.stdout.splitlines())
    assert control["CapBnd"] != "0000000000000000" and control["NoNewPrivs"] == "0"


def _events(name: str, since: float) -> list[tuple[str, str]]:
    """(action, container id) of the engine's events for containers called ``name`` since ``since``."""
    out = run_cmd(
        [
            "docker",
            "events",
            "--since",
            f"{since:.3f}",
            "--until",
            f"{time.time():.3f}",
            "--filter",
            f"container={name}",
            "--format",
            "{{json .}}",
        ]
    )
    assert out.returncode == 0, out.stderr
    return [(e["Action"], e["id"]) for e in map(json.loads, out.stdout.splitlines())]


def test_an_orphan_of_an_earlier_try_is_killed_and_replaced(
    probe_image: str,
    s3_connection: MotoS3,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A container with the run's and stage's name still running (its worker was SIGKILLed) is killed
    and removed, with a warning in the task log, before the new try removes the commit marker and
    starts its own container under the same name. Without the removal the create would fail with 409
    Conflict; without a fixed name the orphan would run on beside the new try."""
    from retrain_airflow.launchers.docker import container_name

    run_uri = f"s3://{BUCKET}/runs/orphaned"
    name = container_name("train", run_uri)
    since = time.time() - 1
    orphan = run_cmd(
        ["docker", "run", "-d", "--name", name, "--network", "none", probe_image, "sleep", "600"]
    ).stdout.strip()
    assert orphan, "the orphan did not start"
    client = s3_connection.client()
    client.put_object(Bucket=BUCKET, Key="runs/orphaned/train_result.json", Body=b'{"status": "succeeded"}')

    op = _operator(probe_image, run_uri, ["sh", "-c", "echo new try in $(cat /etc/hostname)"])
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="retrain_airflow.launchers.docker"):
        op.clear_earlier_try()
    op.before_stage()
    removal_s = time.monotonic() - started
    op.launch({})

    assert op.container_name == name
    assert f"removing container {name} ({orphan[:12]}, status running" in caplog.text
    gone = run_cmd(["docker", "inspect", orphan])
    assert gone.returncode != 0, "the orphan is still there"
    assert "Contents" not in client.list_objects_v2(Bucket=BUCKET, Prefix="runs/orphaned/")
    events = _events(name, since)
    new = [cid for action, cid in events if action == "create" and cid != orphan]
    assert len(new) == 1, events
    actions = [action for action, _ in events]
    # the orphan is killed and destroyed before the new container is created under its name
    assert actions.index("destroy") < actions.index("create", 1), events
    assert ("destroy", new[0]) in events  # and the new one is removed after its run
    print(f"\norphan kill + remove, then the commit marker: {removal_s:.2f} s")


def test_without_an_orphan_nothing_is_removed(
    probe_image: str,
    s3_connection: MotoS3,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    op = _operator(probe_image, f"s3://{BUCKET}/runs/clean", ["sh", "-c", "true"])
    with caplog.at_level(logging.WARNING, logger="retrain_airflow.launchers.docker"):
        op.clear_earlier_try()
    op.before_stage()
    op.launch({})
    assert "removing container" not in caplog.text
    assert subprocess.run(["docker", "inspect", op.container_name], capture_output=True).returncode != 0
