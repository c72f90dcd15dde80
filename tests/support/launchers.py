"""What the launcher tests share: conf with overrides, a recognisable S3 connection, a rendering context."""

from __future__ import annotations

import json
from typing import Any

from retrain.config import Settings, load_settings

RUN_URI_TEMPLATE = "{{ ti.xcom_pull(task_ids='prepare_training') }}"
RENDERED_RUN_URI = "s3://ner-retrain/runs/manual__2026-11-29"
CONN_ID = "retrain_launcher_test_s3"
ACCESS_KEY = "AKIALAUNCHERTEST0001"
SECRET_KEY = "s3cr3t-launcher-9f2c7be41d"
ENDPOINT = "http://127.0.0.1:9000"


def settings(**overrides: str) -> Settings:
    """The committed conf with RETRAIN__SECTION__KEY overrides (values parsed as YAML)."""
    return load_settings(environ={"RETRAIN__AIRFLOW__AWS_CONN_ID": CONN_ID, **overrides})


def connection_json() -> str:
    """The AIRFLOW_CONN_* value of the launcher tests' S3 connection (recognisable credentials)."""
    return json.dumps(
        {
            "conn_type": "aws",
            "login": ACCESS_KEY,
            "password": SECRET_KEY,
            "extra": {"endpoint_url": ENDPOINT, "region_name": "eu-west-1"},
        }
    )


class XComTI:
    """The ``ti`` of a template context: what prepare_training pushed (the run URI)."""

    def xcom_pull(self, task_ids: str | None = None, **_: Any) -> str:
        assert task_ids == "prepare_training"
        return RENDERED_RUN_URI
