"""Fixtures of the launcher tests (tests/support/launchers.py holds their constants)."""

from __future__ import annotations

import pytest

from tests.support.launchers import CONN_ID, connection_json


@pytest.fixture
def s3_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    """The S3 connection given the way production gives it: an AIRFLOW_CONN_* variable."""
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", connection_json())
