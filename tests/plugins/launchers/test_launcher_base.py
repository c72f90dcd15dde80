"""The launcher registry and the shape every launcher shares (plugins/retrain_airflow/launchers/).

``train.launcher`` picks the operator class from `LAUNCHERS`; each class removes the stage's commit
marker before the stage and requires the stage's committed output after it, against a real S3 API
(moto server on 127.0.0.1), through the Airflow connection the task would use.
"""

from __future__ import annotations

import json

import pytest
from retrain_airflow.launchers import LAUNCHERS, launcher_class, stage_operator
from retrain_airflow.launchers.base import StageLauncher, stage_command
from retrain_airflow.launchers.docker import DockerStageOperator
from retrain_airflow.launchers.kubernetes import KubernetesStageOperator
from retrain_airflow.launchers.local import LocalStageOperator

from retrain.config import load_settings
from retrain.stages import StageNotCommitted
from retrain.storage import ObjectStore
from tests.support.launchers import CONN_ID, RENDERED_RUN_URI, RUN_URI_TEMPLATE, XComTI, settings

CLASSES = {"local": LocalStageOperator, "docker": DockerStageOperator, "kubernetes": KubernetesStageOperator}


def test_every_configurable_launcher_is_registered() -> None:
    from typing import get_args

    from retrain.config import TrainConfig

    assert set(LAUNCHERS) == set(get_args(TrainConfig.model_fields["launcher"].annotation))
    for name, cls in CLASSES.items():
        assert launcher_class(name) is cls
        assert issubclass(cls, StageLauncher)
    with pytest.raises(ValueError, match="unknown train.launcher 'slurm' \\(known: local, docker"):
        launcher_class("slurm")


@pytest.mark.parametrize("name", list(CLASSES))
def test_stage_operator_builds_the_configured_launcher(name: str) -> None:
    op = stage_operator("evaluate", RUN_URI_TEMPLATE, settings(RETRAIN__TRAIN__LAUNCHER=name))
    assert type(op) is CLASSES[name]
    assert (op.task_id, op.stage, op.aws_conn_id) == ("evaluate", "evaluate", CONN_ID)
    assert "run_uri" in op.template_fields
    op.render_template_fields({"ti": XComTI()})
    assert op.run_uri == RENDERED_RUN_URI
    custom = stage_operator("train", "s3://b/runs/r", settings(RETRAIN__TRAIN__LAUNCHER=name), task_id="t2")
    assert custom.task_id == "t2"  # keyword arguments win over conf


def test_the_container_launchers_run_the_one_stage_command() -> None:
    uri = "s3://b/runs/r"
    assert DockerStageOperator.from_settings("train", uri, settings()).command == stage_command("train", uri)
    assert KubernetesStageOperator.from_settings("train", uri, settings()).cmds == stage_command("train", uri)


@pytest.mark.parametrize("name", list(CLASSES))
def test_each_launcher_uncommits_before_and_checks_the_commit_after(
    name: str, moto_server, bucket_name, monkeypatch
) -> None:
    """before_stage removes a marker an earlier attempt left; after_stage fails naming what is missing."""
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", moto_server.airflow_connection())
    store = ObjectStore(moto_server.client(), bucket_name)
    store.ensure_bucket()
    run_uri = f"s3://{bucket_name}/runs/manual__{name}"
    marker = f"runs/manual__{name}/eval/report.json"
    store.put_json(marker, {"run_id": "an earlier attempt"})

    op = CLASSES[name].from_settings("evaluate", run_uri, settings())
    op.before_stage()
    assert not store.exists(marker)
    with pytest.raises(StageNotCommitted, match="eval/report.json is missing"):
        op.after_stage()

    from airflow.serialization.serialized_objects import OperatorSerialization

    json.dumps(OperatorSerialization.serialize_operator(op), default=str)  # a DAG with it serializes


def test_the_production_conf_uses_the_local_launcher() -> None:
    assert type(stage_operator("train", RUN_URI_TEMPLATE, load_settings(environ={}))) is LocalStageOperator
