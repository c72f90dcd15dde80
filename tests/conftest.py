"""Shared fixtures: a real S3 API (moto server on 127.0.0.1, stopped by PID) and settings."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "plugins"))

CLUENER = REPO.parent / "shared" / "data" / "cluener"


@pytest.fixture(scope="session")
def moto_server():
    from retrain.devtools.stack import MotoServer

    with MotoServer() as server:
        yield server


@pytest.fixture
def bucket_name() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def settings(bucket_name, tmp_path, monkeypatch):
    from retrain.config import load_settings

    monkeypatch.setenv("RETRAIN_HOME", str(tmp_path / "home"))
    return load_settings(environ={"RETRAIN__S3__BUCKET": bucket_name})


@pytest.fixture
def store(moto_server, settings):
    from retrain.storage import ObjectStore

    s = ObjectStore(moto_server.client(), settings.s3.bucket)
    s.ensure_bucket()
    return s


@pytest.fixture(scope="session")
def cluener_dir() -> Path:
    if not (CLUENER / "train.json").exists():
        pytest.fail(f"real CLUENER data expected at {CLUENER} (../shared beside the repository)")
    return CLUENER
