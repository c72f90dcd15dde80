"""The DAG-run listener's S3 reads (plugins/retrain_airflow/listeners.py, s3.listener_object_store):
they run inside the scheduler, so a slow S3 must cost one short attempt, never boto's default
60 s read timeout times its retries."""

from __future__ import annotations

import json
import socket
import threading

import pytest


@pytest.fixture
def silent_s3():
    """A TCP server on 127.0.0.1 that accepts connections and never answers; yields (url, accepted)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            accepted.append(conn)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.getsockname()[1]}", accepted
    stop.set()
    t.join()
    for c in accepted:
        c.close()
    srv.close()


def test_listener_s3_reads_time_out_after_one_attempt(silent_s3, monkeypatch):
    from botocore.exceptions import ReadTimeoutError
    from retrain_airflow.s3 import listener_object_store

    from retrain.config import load_settings

    url, accepted = silent_s3
    extra = {"endpoint_url": url, "region_name": "us-east-1"}
    conn = {"conn_type": "aws", "login": "k", "password": "s", "extra": extra}
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps(conn))
    settings = load_settings(environ={"RETRAIN__AIRFLOW__LISTENER_S3_TIMEOUT_S": "0.5"})
    store = listener_object_store(settings)
    with pytest.raises(ReadTimeoutError):
        store.get_json("runs/r1/summary.json")
    assert len(accepted) == 1  # one attempt, no retry


def test_the_listener_reads_the_summary_through_the_listener_store(monkeypatch):
    import retrain_airflow.s3 as s3
    from retrain_airflow import listeners

    class Refused(Exception):
        pass

    def refuse(settings):
        raise Refused(settings.airflow.listener_s3_timeout_s)

    monkeypatch.setattr(s3, "listener_object_store", refuse)
    with pytest.raises(Refused):
        listeners._summary("manual__2026-12-02")
