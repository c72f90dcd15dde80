"""Fixtures for validation: settings from the committed conf/, records built by hand."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from retrain.config import Settings, load_settings

CLUENER_DIR = Path(
    os.environ.get("RETRAIN_CLUENER_DIR", Path(__file__).resolve().parents[3] / "shared" / "data" / "cluener")
)


@pytest.fixture(scope="session")
def settings() -> Settings:
    return load_settings(environ={})


@pytest.fixture(scope="session")
def cluener_dir() -> Path:
    if not (CLUENER_DIR / "train.json").exists():
        pytest.skip(f"CLUENER data not found at {CLUENER_DIR} (set RETRAIN_CLUENER_DIR)")
    return CLUENER_DIR
