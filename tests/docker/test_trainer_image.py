"""The trainer image on a real Docker engine: build, run as non-root, fail a task, train for real.

Run: ``.venv-af/bin/python -m pytest -m docker tests/docker`` (as root: the private engine and
debootstrap need it). The session starts a private dockerd with scripts/dockerd.sh (socket and
state in pytest's temp dir; images kept in $RETRAIN_DOCKER_DATA_ROOT, default ~/.cache/retrain/docker,
so a second session reuses them, see tests/docker/conftest.py) and stops it at the end, checking that
nothing is left. It builds the local base image and retrain/trainer:cpu with the scripts a developer
uses. An engine or a build that cannot start FAILS the tests with the reason: nothing here is skipped.

The S3 server is moto on 127.0.0.1 (a random port); containers that talk to it use host networking,
every other container runs without a network. No container outlives its test.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest

from retrain.config import load_settings
from tests.docker.conftest import IMAGE, docker_run, run_cmd, writable_dir
from tests.fixtures_trainer import (  # noqa: F401  (moto_s3 is a fixture)
    BUCKET,
    MotoS3,
    moto_s3,
    put_train_request,
    upload_alpaca_dataset,
)

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parents[2]
CONN_ID = "retrain_docker_test_s3"
# moto accepts any credentials; recognisable ones let the tests look for leaks.
ACCESS_KEY = "AKIADOCKERLAUNCHTEST"
SECRET_KEY = "docker-launch-secret-5f1e9a3c"


@pytest.fixture
def s3_connection(monkeypatch: pytest.MonkeyPatch, moto_s3: MotoS3) -> MotoS3:  # noqa: F811
    """The Airflow connection the launcher reads, pointing at the moto server (as AIRFLOW_CONN_*)."""
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{CONN_ID.upper()}",
        json.dumps(
            {
                "conn_type": "aws",
                "login": ACCESS_KEY,
                "password": SECRET_KEY,
                "extra": {"endpoint_url": moto_s3.endpoint, "region_name": "us-east-1"},
            }
        ),
    )
    return moto_s3


def _settings(**overrides: str):
    return load_settings(
        environ={
            "RETRAIN__AIRFLOW__AWS_CONN_ID": CONN_ID,
            "RETRAIN__DOCKER__IMAGE": IMAGE,
            "RETRAIN__DOCKER__GPUS": "0",
            "RETRAIN__DOCKER__SHM_SIZE": "1g",
            "RETRAIN__DOCKER__MODEL_CACHE_HOST_PATH": "null",
            **overrides,
        }
    )


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


# ------------------------------------------------------------------------------------ (a)


def test_help_runs_as_uid_1000_without_capabilities(trainer_image: str) -> None:
    run = docker_run(
        [
            "--cap-drop",
            "ALL",
            "--security-opt",
            "no-new-privileges",
            trainer_image,
            "--help",
        ]
    )
    assert run.returncode == 0, run.stderr
    assert "usage: retrain" in run.stdout and "train" in run.stdout

    who = docker_run(
        [
            "--cap-drop",
            "ALL",
            "--entrypoint",
            "id",
            trainer_image,
        ]
    )
    assert who.stdout.strip() == "uid=1000(trainer) gid=1000(trainer) groups=1000(trainer)"

    config = json.loads(run_cmd(["docker", "image", "inspect", trainer_image]).stdout)[0]["Config"]
    assert config["User"] == "1000:1000"
    assert config["Entrypoint"] == ["retrain"]
    assert config["WorkingDir"] == "/work"
    assert "/models" in config["Volumes"]
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["MODELSCOPE_CACHE"] == "/models" and env["HF_HOME"] == "/models/hf"
    assert not [k for k in env if k.startswith("AWS_")], "no credentials may be baked into the image"

    # The trainer's imports work in the image (the CPU torchvision/torchaudio fixes are in place).
    imports = docker_run(
        [
            "--entrypoint",
            "python",
            trainer_image,
            "-c",
            "import llamafactory.train.tuner, peft; from transformers import PreTrainedModel; "
            "import torch, sys; print(sys.version_info[:2], torch.__version__)",
        ],
        timeout=300,
    )
    assert imports.returncode == 0, imports.stderr[-3000:]
    assert "(3, 11) 2.13.0" in imports.stdout


def test_the_image_has_exactly_its_variant_lock(trainer_image: str) -> None:
    """The parity check the build ran, run again on the built image: every installed distribution at the
    version of requirements/trainer-cpu.lock.txt (the image keeps its requirement list and the checker)."""
    parity = docker_run(
        [
            "--entrypoint",
            "python",
            trainer_image,
            "/opt/retrain/check_parity.py",
            "/opt/retrain/image-requirements.txt",
            "--project",
            "retrain",
        ]
    )
    assert parity.returncode == 0, parity.stderr
    assert "installed packages match image-requirements.txt" in parity.stdout
    locked = docker_run(["--entrypoint", "cat", trainer_image, "/opt/retrain/image-requirements.txt"]).stdout
    assert "\ntorch==2.13.0+cpu\n" in locked and "pinned to trainer-cpu.lock.txt" in locked
    cpu_lock = {
        re.sub(r"[-_.]+", "-", name).lower(): version
        for name, version in re.findall(
            r"^([A-Za-z0-9][\w.-]*)(?:\[[^\]]*\])?==(\S+)",
            (REPO / "requirements" / "trainer-cpu.lock.txt").read_text(),
            re.M,
        )
    }
    for line in locked.splitlines():
        if not line.startswith("#"):
            name, version = line.split("==")
            if (
                name == "pip"
            ):  # the build tool, the trainer env's version (the script's TOOLS), not a lock pin
                continue
            assert cpu_lock.get(name) == version, f"{line} is not the CPU lock's"


@pytest.mark.timeout(1800)
def test_cu122_variant_layers_on_the_debian_base(trainer_image: str) -> None:
    """The cu122 variant built here as far as it can be: its lock and Dockerfile steps on the Debian base
    (the nvidia/cuda base cannot be pulled) with the CPU torch (the cu126 index is unreachable). The parity
    check must report exactly that one difference; the rest of the image must run: --help, imports, uid."""
    tag = "retrain/trainer:cu122-layers"
    started = time.monotonic()
    build = run_cmd(
        [
            str(REPO / "scripts" / "build_trainer_image.sh"),
            "--variant",
            "cu122",
            "--tag",
            tag,
            "--base",
            "retrain/base:bookworm",
            "--build-arg",
            "TORCH_SOURCE=wheelhouse",
            "--build-arg",
            "TORCH_SPEC=torch==2.13.0+cpu",
            "--build-arg",
            "PARITY=warn",
        ],
        timeout=1800,
    )
    print(f"\n{tag}: build {time.monotonic() - started:.0f} s\n{build.stderr.strip()[-600:]}")
    try:
        assert build.returncode == 0, build.stderr[-4000:]
        # The build's parity step (cached on a rebuild, so run again here): one difference, torch's.
        parity = docker_run(
            [
                "--entrypoint",
                "python",
                tag,
                "/opt/retrain/check_parity.py",
                "/opt/retrain/image-requirements.txt",
                "--project",
                "retrain",
            ]
        )
        problems = [line.strip() for line in parity.stderr.splitlines()[1:] if line.strip()]
        assert parity.returncode == 1, parity.stdout + parity.stderr
        assert problems == ["version: torch is 2.13.0+cpu, the lock says 2.13.0+cu126"], parity.stderr
        labels = json.loads(run_cmd(["docker", "image", "inspect", tag]).stdout)[0]["Config"]["Labels"]
        assert labels["retrain.parity"] == "warn"
        locked = docker_run(["--entrypoint", "cat", tag, "/opt/retrain/image-requirements.txt"]).stdout
        assert "\ntorch==2.13.0+cu126\n" in locked and "pinned to trainer-cu122.lock.txt" in locked

        assert "usage: retrain" in docker_run(["--cap-drop", "ALL", tag, "--help"]).stdout
        who = docker_run(["--cap-drop", "ALL", "--entrypoint", "id", tag])
        assert who.stdout.strip() == "uid=1000(trainer) gid=1000(trainer) groups=1000(trainer)"
        imports = docker_run(
            [
                "--entrypoint",
                "python",
                tag,
                "-c",
                "import llamafactory.train.tuner, peft, torch, retrain.cli; "
                "from transformers import PreTrainedModel; print('imports ok', torch.__version__)",
            ],
            timeout=300,
        )
        assert imports.returncode == 0 and "imports ok 2.13.0+cpu" in imports.stdout, imports.stderr[-3000:]
    finally:
        run_cmd(["docker", "image", "rm", "-f", tag])


# ------------------------------------------------------------------------------------ (b)


def test_a_failing_container_fails_the_task(trainer_image: str, s3_connection: MotoS3, caplog) -> None:
    from airflow.providers.docker.exceptions import DockerContainerFailedException
    from retrain_airflow.launchers.docker import DockerStageOperator

    op = DockerStageOperator.from_settings(
        "train",
        f"s3://{BUCKET}/runs/x",
        _settings(RETRAIN__DOCKER__NETWORK_MODE="none"),
        task_id="failing_probe",
        # Proves the credentials arrived without printing them, then fails like a crashed stage.
        command=[
            "sh",
            "-c",
            'echo "probe: secret of ${#AWS_SECRET_ACCESS_KEY} chars at $AWS_ENDPOINT_URL"; exit 3',
        ],
    )
    with pytest.raises(DockerContainerFailedException, match="'StatusCode': 3") as failed:
        op.execute({})
    assert f"probe: secret of {len(SECRET_KEY)} chars at {s3_connection.endpoint}" in failed.value.logs
    assert SECRET_KEY not in caplog.text and SECRET_KEY not in "\n".join(failed.value.logs)


def test_a_container_that_exits_0_without_an_adapter_fails_the_task(
    trainer_image: str, s3_connection: MotoS3
) -> None:
    """Exit status 0 is not success: the task reads the stage's commit from S3. A train_result.json an
    earlier attempt left is removed before the container starts, so it cannot pass for this one's."""
    from retrain_airflow.launchers.docker import DockerStageOperator

    from retrain.stages import StageNotCommitted

    client = s3_connection.client()
    client.put_object(Bucket=BUCKET, Key="runs/silent/train_result.json", Body=b'{"status": "succeeded"}')
    op = DockerStageOperator.from_settings(
        "train",
        f"s3://{BUCKET}/runs/silent",
        _settings(RETRAIN__DOCKER__NETWORK_MODE="none"),
        command=["sh", "-c", "echo 'training... done (but nothing saved)'; exit 0"],
    )
    with pytest.raises(StageNotCommitted, match=f"s3://{BUCKET}/runs/silent/train_result.json is missing"):
        op.execute({})
    assert "Contents" not in client.list_objects_v2(Bucket=BUCKET, Prefix="runs/silent/")


def test_a_stage_with_bad_input_fails_the_task_without_retries(
    trainer_image: str, s3_connection: MotoS3
) -> None:
    """The real command on a run that has no train request: `retrain train` exits 65 (an input error),
    and the task fails with StageInputError, an AirflowFailException: Airflow does not retry it."""
    from airflow.sdk.exceptions import AirflowFailException
    from retrain_airflow.launchers.base import StageInputError
    from retrain_airflow.launchers.docker import DockerStageOperator

    run_uri = f"s3://{BUCKET}/runs/no-such-run"
    op = DockerStageOperator.from_settings("train", run_uri, _settings(RETRAIN__DOCKER__NETWORK_MODE="host"))
    with pytest.raises(StageInputError, match="exited with code 65") as failed:
        op.execute({})
    assert isinstance(failed.value, AirflowFailException)
    text = "\n".join(str(line) for line in failed.value.__cause__.logs)
    assert "retrain train: error:" in text and "train_request.json" in text, text[-2000:]


PROBE_DAG = """
from airflow.sdk import DAG
from retrain.config import load_settings
from retrain_airflow.launchers.docker import DockerStageOperator

with DAG("docker_launcher_probe", schedule=None, catchup=False):
    DockerStageOperator.from_settings(
        "train", "s3://{bucket}/runs/{{{{ ds_nodash }}}}-missing", load_settings(), retries=0
    )
"""


@pytest.mark.timeout(600)
def test_a_failing_stage_is_a_failed_task_under_airflow(
    trainer_image: str, s3_connection: MotoS3, tmp_path
) -> None:
    """`airflow dags test` of a one-task DAG built like ner_retrain's: the task fails, and neither the
    rendered fields (what the UI shows) nor the task's log hold the connection's credentials."""
    import sqlite3
    import sys

    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "docker_launcher_probe.py").write_text(PROBE_DAG.format(bucket=BUCKET))
    home = tmp_path / "airflow"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "RETRAIN__"))}
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/db.sqlite",
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
            "PYTHONPATH": str(REPO / "plugins"),
            f"AIRFLOW_CONN_{CONN_ID.upper()}": os.environ[f"AIRFLOW_CONN_{CONN_ID.upper()}"],
            "RETRAIN__AIRFLOW__AWS_CONN_ID": CONN_ID,
            "RETRAIN__DOCKER__IMAGE": IMAGE,
            "RETRAIN__DOCKER__GPUS": "0",
            "RETRAIN__DOCKER__SHM_SIZE": "1g",
            "RETRAIN__DOCKER__MODEL_CACHE_HOST_PATH": "null",
            "RETRAIN__DOCKER__NETWORK_MODE": "host",
        }
    )
    airflow = str(Path(sys.executable).parent / "airflow")
    migrate = run_cmd([airflow, "db", "migrate"], env=env, timeout=300)
    assert migrate.returncode == 0, migrate.stderr[-3000:]
    proc = run_cmd(
        [airflow, "dags", "test", "docker_launcher_probe", "2026-11-28T02:00:00+00:00"], env=env, timeout=400
    )
    output = proc.stdout + proc.stderr
    assert "train_request.json is missing" in output, output[-3000:]

    with sqlite3.connect(home / "db.sqlite") as db:
        states = db.execute(
            "SELECT task_id, state FROM task_instance WHERE dag_id = 'docker_launcher_probe'"
        ).fetchall()
        (run_state,) = db.execute(
            "SELECT state FROM dag_run WHERE dag_id = 'docker_launcher_probe'"
        ).fetchone()
        rendered = [
            r[0]
            for r in db.execute(
                "SELECT rendered_fields FROM rendered_task_instance_fields "
                "WHERE dag_id = 'docker_launcher_probe'"
            )
        ]
    assert states == [("train", "failed")], output[-3000:]
    assert run_state == "failed"
    assert rendered and "s3://ner-retrain-test/runs/20261128-missing" in rendered[0]
    # `dags test` runs the task in-process: its log is this output (the container's lines included).
    assert "retrain train: error: TrainInputError" in output
    for text in (*rendered, output):
        assert SECRET_KEY not in text and ACCESS_KEY not in text


# ------------------------------------------------------------------------------------ (c)


@pytest.mark.timeout(1800)
def test_train_in_the_container_commits_an_adapter_to_s3(
    trainer_image: str, tiny_model_host_dir: Path, s3_connection: MotoS3, tmp_path: Path
) -> None:
    from retrain_airflow.launchers.docker import DockerStageOperator

    client = s3_connection.client()
    version = f"v-docker-{tmp_path.name[-8:]}"
    dataset_uri = upload_alpaca_dataset(client, BUCKET, version, n_train=60)
    run_uri = put_train_request(
        client,
        BUCKET,
        dataset_uri=dataset_uri,
        dataset_version=version,
        base_model="/models/tiny",
        model_cache_dir="/models",
        llamafactory_overrides={"num_train_epochs": 1.0},
    )
    run_prefix = run_uri.split(f"s3://{BUCKET}/", 1)[1]
    cache = writable_dir(tmp_path / "model-cache")
    scratch = writable_dir(tmp_path / "scratch")
    s = _settings(
        RETRAIN__DOCKER__NETWORK_MODE="host",  # moto listens on the host's 127.0.0.1
        RETRAIN__DOCKER__MODEL_CACHE_HOST_PATH=str(cache),
        RETRAIN__DOCKER__SCRATCH_HOST_PATH=str(scratch),
        RETRAIN__DOCKER__MOUNTS=json.dumps([{"source": str(tiny_model_host_dir), "target": "/models/tiny"}]),
    )
    op = DockerStageOperator.from_settings("train", run_uri, s)
    model_before = _snapshot(tiny_model_host_dir)
    started = time.monotonic()
    assert op.execute({}) == run_uri
    print(f"\ntrain in the container: {time.monotonic() - started:.0f} s")

    keys = {
        o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix=run_prefix + "/").get("Contents", [])
    }
    for name in (
        "train_result.json",
        "train/trainer_log.jsonl",
        "train/train_config.yaml",
    ):
        assert f"{run_prefix}/{name}" in keys, sorted(keys)
    result = json.loads(
        client.get_object(Bucket=BUCKET, Key=f"{run_prefix}/train_result.json")["Body"].read()
    )
    assert result["status"] == "succeeded"
    assert result["adapter_uri"] == f"s3://{BUCKET}/adapters/{result['adapter_digest']}/"
    adapter_keys = client.list_objects_v2(Bucket=BUCKET, Prefix=f"adapters/{result['adapter_digest']}/")
    assert {o["Key"].rsplit("/", 1)[1] for o in adapter_keys["Contents"]} == {
        "adapter_model.safetensors",
        "adapter_config.json",
    }
    assert result["steps"] > 0 and result["train_loss"] is not None
    assert _snapshot(tiny_model_host_dir) == model_before  # mounted read-only: untouched
    # TMPDIR=/work is the scratch mount: the stage's temporary directory was made there and removed
    # (torch may leave its compile cache, torchinductor_trainer/, which is a cache, not a leftover).
    assert not [p.name for p in scratch.iterdir() if p.name.startswith("retrain-")]
