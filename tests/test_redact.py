"""retrain.redact: tracking URIs and error texts without their secrets."""

from __future__ import annotations

import pytest

from retrain.redact import mask_text, mask_uri


@pytest.mark.parametrize(
    "uri, masked",
    [
        ("postgresql://mlflow:s3cr3t@db:5432/mlflow", "postgresql://mlflow:***@db:5432/mlflow"),
        ("https://ci-bot:tok-123@mlflow.example/", "https://ci-bot:***@mlflow.example/"),
        ("http://mlflow:5000/?token=abc&x=1", "http://mlflow:5000/?token=***&x=1"),
        (
            "postgresql://u@db/m?sslmode=require&password=pw",
            "postgresql://u@db/m?sslmode=require&password=***",
        ),
        ("sqlite:////tmp/mlflow.db", "sqlite:////tmp/mlflow.db"),
        ("http://host:5000", "http://host:5000"),
        (None, ""),
    ],
)
def test_mask_uri(uri, masked):
    assert mask_uri(uri) == masked


def test_mask_text_masks_the_uri_and_any_quoted_password():
    uri = "postgresql://mlflow:pw1@db/mlflow"
    text = f"OperationalError: could not connect to {uri} (also tried postgresql://other:pw2@db2/x)"
    out = mask_text(text, uri)
    assert "pw1" not in out and "pw2" not in out
    assert "postgresql://mlflow:***@db/mlflow" in out


def test_uri_secrets_are_the_password_and_the_secret_query_values():
    from retrain.redact import uri_secrets

    assert uri_secrets("postgresql://mlflow:pw-9f@db:5432/mlflow") == ["pw-9f"]
    assert uri_secrets("https://u:tok@mlflow.example/?token=abc&x=1") == ["tok", "abc"]
    assert uri_secrets("http://mlflow:5000") == [] and uri_secrets(None) == []


def test_an_old_summary_is_masked_on_the_way_out():
    from retrain.redact import mask_summary

    old = {"run_id": "r", "registry": {"model": "m", "tracking_uri": "postgresql://mlflow:pw-9f@db/mlflow"}}
    shown = mask_summary(old)
    assert shown["registry"]["tracking_uri"] == "postgresql://mlflow:***@db/mlflow"
    assert old["registry"]["tracking_uri"].endswith("pw-9f@db/mlflow")  # the stored copy is untouched
    assert mask_summary(None) is None and mask_summary({"run_id": "r"}) == {"run_id": "r"}
