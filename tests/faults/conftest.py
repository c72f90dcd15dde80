"""Fixtures of the fault-injection tests: a library-level pipeline on the moto server and one
MLflow registry (sqlite) shared by the session, each test with its own bucket and model name."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import mlflow_db


@pytest.fixture(scope="session")
def registry_store(tmp_path_factory) -> tuple[str, str]:
    """(tracking URI, artifact location) of a sqlite MLflow registry for the session."""
    root = tmp_path_factory.mktemp("mlflow")
    return mlflow_db.sqlite_uri(root / "mlflow.db"), (root / "artifacts").as_uri()


@pytest.fixture
def pipeline(moto_server, registry_store, tmp_path: Path, monkeypatch):
    from tests.faults.harness import Pipeline

    uri, artifacts = registry_store
    return Pipeline(
        moto=moto_server, workdir=tmp_path, monkeypatch=monkeypatch, registry_uri=uri, artifact_uri=artifacts
    )
