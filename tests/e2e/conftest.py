"""The demo's three nights, run once per test session and shared by the modules that look at them
(test_nightly_demo.py: what the runs did; test_ui_real_run.py: the Airflow UI over those runs).

The runs stay available until the session ends: the Airflow metadata DB (dropped here afterwards),
the demo bucket in the session's moto server, the MLflow registry under the demo's RETRAIN_HOME."""

from __future__ import annotations

import time

import pytest


@pytest.fixture(scope="session")
def demo(moto_server, tmp_path_factory):
    from tests.support.demo import run_demo
    from tests.support.stack import drop_database

    t0 = time.monotonic()
    # The demo as `make demo` runs it (its records and epochs): the figures the README quotes.
    result = run_demo(tmp_path_factory.mktemp("demo"), bad=5, keep_db=True, moto=moto_server)
    print(
        f"\ndemo: three nights in {time.monotonic() - t0:.0f}s "
        f"({', '.join(f'{n.name} {n.wall_s:.0f}s' for n in result.nights)}); workdir {result.workdir}"
    )
    try:
        yield result
    finally:
        drop_database(result.database)
