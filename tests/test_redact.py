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
