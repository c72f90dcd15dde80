"""The nightly DAG with ``train.launcher: docker``: `ner_retrain` under Airflow (`airflow dags test`,
Postgres metadata DB) starts the trainer image on a real Docker engine for `train` and `evaluate`.

Inside the container the tiny Qwen2 model really trains (LLaMA-Factory) and is evaluated against the
base model on the golden set, reading and writing the moto S3 server on the host's 127.0.0.1
(host networking; every other byte stays in the container). Then:

- night 1 (a new batch): train + evaluate in containers, the candidate beats the base model, v1 is
  promoted in the MLflow registry with the trainer image recorded;
- night 2 (forced, base model that is not there): the train container exits 1, the task fails,
  nothing downstream runs and v1 stays champion.

The S3 credentials (random, per server) must appear in no rendered template field and no task log.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.docker.conftest import IMAGE, writable_dir

pytestmark = pytest.mark.docker

DATES = ("2026-11-27T02:00:00+00:00", "2026-11-28T02:00:00+00:00")


@pytest.fixture(scope="module")
def nights(
    trainer_image: str, mechanics_model_host_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    from tests.support.demo import (
        BUCKET,
        MECHANICS_EPOCHS,
        MECHANICS_PROFILE,
        _night,
        _registry_state,
        _upload_batch,
        dev_retrain_env,
    )
    from tests.support.stack import AirflowEnv, MotoServer, drop_database
    from tests.support.synth import make_batch

    workdir = tmp_path_factory.mktemp("docker-dag")
    retrain_env = {
        **dev_retrain_env(workdir, mechanics_model_host_dir),
        **MECHANICS_PROFILE,
        "RETRAIN__DATASET__GOLDEN_FRACTION": "0.25",
        "RETRAIN__TRAIN__LAUNCHER": "docker",
        # paths as the container sees them
        "RETRAIN__TRAIN__BASE_MODEL": "/models/tiny",
        "RETRAIN__TRAIN__MODEL_CACHE_DIR": "/models",
        "RETRAIN__DOCKER__IMAGE": IMAGE,
        "RETRAIN__DOCKER__GPUS": "0",
        "RETRAIN__DOCKER__SHM_SIZE": "1g",
        "RETRAIN__DOCKER__NETWORK_MODE": "host",  # moto listens on the host's 127.0.0.1
        "RETRAIN__DOCKER__MODEL_CACHE_HOST_PATH": str(writable_dir(workdir / "model-cache")),
        "RETRAIN__DOCKER__SCRATCH_HOST_PATH": str(writable_dir(workdir / "scratch")),
        "RETRAIN__DOCKER__MOUNTS": json.dumps(
            [{"source": str(mechanics_model_host_dir), "target": "/models/tiny", "read_only": True}]
        ),
        "RETRAIN__DOCKER__ENVIRONMENT": json.dumps({"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}),
        "RETRAIN__DOCKER__RETRY__RETRIES": "0",
    }
    database = f"retrain_docker_dag_{int(time.time())}"
    with MotoServer() as moto:
        moto.client().create_bucket(Bucket=BUCKET)
        af = AirflowEnv(workdir / "airflow", database, moto, retrain_env)
        try:
            af.migrate()
            _upload_batch(moto, "incoming/2026-11-27/batch-001.json", make_batch(160, seed=1, bad=5))
            t0 = time.monotonic()
            first = _night(af, moto, "docker-first-batch", DATES[0], {"epochs": MECHANICS_EPOCHS}, workdir)
            print(f"\nnight 1 with the docker launcher: {time.monotonic() - t0:.0f} s")
            second = _night(
                af,
                moto,
                "docker-missing-base-model",
                DATES[1],
                {"force": True, "base_model": "/models/missing"},
                workdir,
            )
            from retrain.ingest import safe_run_id

            keys = {
                o["Key"]
                for page in moto.client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
                for o in page.get("Contents", [])
            }
            first_prefix = f"runs/{safe_run_id(first.run_id)}"
            second_prefix = f"runs/{safe_run_id(second.run_id)}"
            report = json.loads(
                moto.client().get_object(Bucket=BUCKET, Key=f"{first_prefix}/eval/report.json")["Body"].read()
            )
            rendered = {
                n.run_id: dict(
                    af.query(
                        "SELECT task_id, rendered_fields FROM rendered_task_instance_fields "
                        "WHERE dag_id = 'ner_retrain' AND run_id = :'run'",
                        run=n.run_id,
                    )
                )
                for n in (first, second)
            }
            logs = {n.run_id: Path(n.log_file).read_text(encoding="utf-8") for n in (first, second)}
            secrets = (moto.secret_key, moto.access_key)
            image_id = subprocess.run(
                ["docker", "image", "inspect", "--format", "{{.Id}}", IMAGE],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
        finally:
            drop_database(database)

    registry, _ = _registry_state(workdir, Path("/models/tiny"))  # the registry the tasks wrote
    return {
        "first": first,
        "second": second,
        "keys": keys,
        "first_prefix": first_prefix,
        "second_prefix": second_prefix,
        "report": report,
        "rendered": rendered,
        "logs": logs,
        "image_ref": f"{IMAGE}@{image_id}",
        "secrets": secrets,
        "registry": registry,
    }


@pytest.mark.timeout(2400)
def test_first_night_trains_and_evaluates_in_containers_and_promotes(nights) -> None:
    first = nights["first"]
    failed = {t: s for t, s in first.states.items() if s not in ("success", "skipped")}
    assert first.returncode == 0 and not failed, (first.states, first.log_file)
    log = nights["logs"][first.run_id]
    # both trainer stages ran in the image (DockerOperator's log lines), not in the local trainer env
    assert f"Starting docker container from image {IMAGE}" in log, log[-3000:]
    assert log.count(f"Starting docker container from image {IMAGE}") == 2
    assert "local launcher:" not in log
    prefix = nights["first_prefix"]
    for name in (
        "train_result.json",
        "train/trainer_log.jsonl",
        "train/train_config.yaml",
        "eval/report.json",
        "eval/per_label_f1.png",
        "summary.json",
    ):
        assert f"{prefix}/{name}" in nights["keys"], name
    adapter_uri = nights["registry"]["champion"]["adapter_uri"]
    digest = nights["registry"]["champion"]["adapter_digest"]
    assert adapter_uri.endswith(f"/adapters/{digest}/")
    assert any(k.endswith(f"adapters/{digest}/adapter_model.safetensors") for k in nights["keys"])
    report = nights["report"]
    assert report["base_model"] == "/models/tiny" and report["base_model_path"] == "/models/tiny"
    assert first.summary["champion_name"] == "base model"
    assert first.summary["decision"]["promote"], first.summary["decision"]["reason"]
    assert report["candidate"]["micro"]["f1"] > report["champion"]["micro"]["f1"]
    champion = nights["registry"]["champion"]
    assert champion["version"] == "1"
    assert champion["airflow_run_id"] == first.run_id
    # the image the adapter was trained in, by its immutable id (the tag alone can move)
    assert champion["tags"]["launcher"] == "docker"
    assert champion["tags"]["trainer_image"] == nights["image_ref"], champion["tags"]
    assert first.note and first.note.startswith("promoted v1: micro F1"), first.note


@pytest.mark.timeout(2400)
def test_a_failing_container_fails_the_run_and_promotes_nothing(nights) -> None:
    second = nights["second"]
    assert second.states["train"] == "failed", second.states
    for task in ("prepare_evaluation", "evaluate", "promote"):
        assert second.states[task] == "upstream_failed", (task, second.states)
    log = nights["logs"][second.run_id]
    assert "base model '/models/missing': no such local directory" in log, log[-3000:]
    registry = nights["registry"]
    assert registry["champion"]["version"] == "1" and len(registry["versions"]) == 1
    second_prefix = nights["second_prefix"]
    assert f"{second_prefix}/train_request.json" in nights["keys"]
    assert not [
        k
        for k in nights["keys"]
        if k in (f"{second_prefix}/train_result.json", f"{second_prefix}/summary.json")
    ]
    assert len([k for k in nights["keys"] if k.endswith("/adapter_model.safetensors")]) == 1  # night 1's only


@pytest.mark.timeout(2400)
def test_no_secret_in_rendered_fields_or_task_logs(nights) -> None:
    secret, access = nights["secrets"]
    rendered = nights["rendered"]
    assert {"train", "evaluate"} <= set(rendered[nights["first"].run_id])
    assert "train" in rendered[nights["second"].run_id]
    for run_id, fields in rendered.items():
        for task, text in fields.items():
            assert secret not in text and access not in text, (run_id, task)
            assert "AWS_SECRET_ACCESS_KEY" not in text, (run_id, task)  # passed privately, not templated
    for text in nights["logs"].values():
        assert secret not in text and access not in text
