"""The glue's settings (plugins/retrain_airflow/settings.py) hand the tracking URI's secrets to
Airflow's secrets masker: any log line of the process that quotes the URI shows ``***``."""

from __future__ import annotations

import pytest
from retrain_airflow import settings as glue

PASSWORD = "pw-tracking-7c2d9e"
TOKEN = "tok-query-41ab"


@pytest.fixture
def tracking_uri(monkeypatch: pytest.MonkeyPatch):
    uri = f"postgresql://mlflow:{PASSWORD}@db:5432/mlflow?sslmode=require&token={TOKEN}"
    monkeypatch.setenv("RETRAIN__REGISTRY__TRACKING_URI", uri)
    glue.settings.cache_clear()
    yield uri
    glue.settings.cache_clear()


def test_the_tracking_uri_secrets_are_masked_in_logs(tracking_uri: str, caplog) -> None:
    from airflow.sdk._shared.secrets_masker import redact
    from airflow.sdk.log import mask_logs

    assert PASSWORD in redact(f"could not connect to {tracking_uri}")  # before: the masker knows nothing
    glue.settings()
    text = redact(f"OperationalError: could not connect to {tracking_uri}")
    assert PASSWORD not in text and TOKEN not in text and "***" in text
    assert "db:5432/mlflow" in text  # the rest stays readable

    # the processor Airflow's task logging runs on every event (airflow.sdk.log.mask_logs)
    event = mask_logs(None, "error", {"event": f"registry down: {tracking_uri}", "uri": tracking_uri})
    assert PASSWORD not in str(event) and TOKEN not in str(event)
