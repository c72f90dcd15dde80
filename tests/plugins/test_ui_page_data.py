"""The UI's page data and report proxy helpers (plugins/retrain_airflow/ui/page_data.py, proxy.py) that
need no server: run labels and ordering, URI masking, the object-store cache, key checks, content types.
Reading runs from a real S3 API is tested through the app in test_ui.py."""

from __future__ import annotations

import pytest


def test_run_record_prefers_the_reports_run_id_and_the_intake_counts():
    from retrain_airflow.ui.page_data import RunRecord

    both = RunRecord("f", {"run_id": "from-summary", "intake": {"read": 1}}, {"run_id": "x", "read": 2}, None)
    assert both.run_id == "from-summary" and both.intake_counts["read"] == 2
    summary_only = RunRecord("f", {"intake": {"read": 1}}, None, None)
    assert summary_only.run_id == "f" and summary_only.intake_counts == {"read": 1}
    assert RunRecord("f", None, None, None).intake_counts == {}


@pytest.mark.parametrize(
    "run_id, folder, label",
    [
        ("scheduled__2026-11-27T02:00:00+00:00", "x", "11-27 02:00"),
        ("x", "manual__2026-11-28T10_05_00_00_00", "11-28 10:05"),
        ("a-run-id-without-any-date", "f", "a-run-id-without"),
    ],
)
def test_run_label(run_id, folder, label):
    from retrain_airflow.ui.page_data import RunRecord, run_label

    assert run_label(RunRecord(folder, {"run_id": run_id}, None, None)) == label


def test_folders_sort_by_the_date_in_their_run_id():
    from retrain_airflow.ui.page_data import _folder_sort_key

    folders = ["manual__2026-11-28T10_00_00", "zzz", "scheduled__2026-11-27T02_00_00", "asset_triggered"]
    assert sorted(folders, key=_folder_sort_key) == [
        "asset_triggered",
        "zzz",
        "scheduled__2026-11-27T02_00_00",
        "manual__2026-11-28T10_00_00",
    ]


def test_registry_error_on_the_page_never_shows_the_tracking_password(monkeypatch):
    """MLflow down (nothing listens on port 1): the overview keeps the error, password masked."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    from retrain_airflow.ui.page_data import read_registry

    from retrain.config import load_settings

    uri = "http://mlflow:s3cr3t-pw@127.0.0.1:1/?token=s3cr3t-q"
    settings = load_settings(environ={"RETRAIN__REGISTRY__TRACKING_URI": uri})
    registry, error = read_registry(settings, None)
    assert registry is None and "127.0.0.1" in error
    assert "s3cr3t" not in error


def test_object_store_is_cached_per_connection_and_bucket(monkeypatch):
    from retrain_airflow.ui import page_data

    from retrain.config import load_settings

    # a connection that is never contacted: making a boto3 client does not connect
    monkeypatch.setenv(
        "AIRFLOW_CONN_AWS_CACHE_TEST",
        '{"conn_type": "aws", "login": "k", "password": "s", "extra": {"endpoint_url": "http://127.0.0.1:9"}}',
    )
    monkeypatch.setattr(page_data, "_STORE_CACHE", {})
    one = load_settings(
        environ={"RETRAIN__AIRFLOW__AWS_CONN_ID": "aws_cache_test", "RETRAIN__S3__BUCKET": "b1"}
    )
    two = load_settings(
        environ={"RETRAIN__AIRFLOW__AWS_CONN_ID": "aws_cache_test", "RETRAIN__S3__BUCKET": "b2"}
    )
    store = page_data.cached_object_store(one)
    assert store.bucket == "b1" and page_data.cached_object_store(one) is store
    assert page_data.cached_object_store(two).bucket == "b2"
    now = page_data.time.monotonic()
    monkeypatch.setattr(page_data.time, "monotonic", lambda: now + page_data.STORE_TTL_S + 1)
    assert page_data.cached_object_store(one) is not store, "a stale client is replaced"


def test_registry_for_refuses_names_that_are_not_model_names():
    from retrain_airflow.ui.page_data import registry_for

    from retrain.config import load_settings

    with pytest.raises(ValueError, match="is not a registered model name"):
        registry_for(load_settings(environ={}), "x' OR name LIKE '%")


@pytest.mark.parametrize(
    "key, error",
    [
        # what the UI links (plugins/retrain_airflow/ui/links.py, views.py, approval.py)
        ("runs/a/eval/report.html", None),
        ("runs/a/train/training_loss.png", None),
        ("runs/a/decision.json", None),
        ("reports/r/b/index.html", None),
        ("reports/r/b/validations/suite/run/20261129T020000.000000Z/abc.html", None),
        ("reports/r/b/static/vendor/bootstrap/css/bootstrap.min.css", None),
        ("reports/r/b/static/vendor/fontawesome/webfonts/fa-solid-900.woff2", None),
        ("reports/r/b/static/images/logo-long.png", None),
        ("quarantine/r/report.md", None),
        ("quarantine/r/batch-a-0123456789ab.jsonl", None),
        # malformed keys
        ("runs/../state/ledger.json", "UnsafeKeyError"),
        ("runs/./a", "UnsafeKeyError"),
        ("runs//a", "UnsafeKeyError"),
        ("/runs/a", "UnsafeKeyError"),
        ("runs\\a", "UnsafeKeyError"),
        ("runs/a\x00", "UnsafeKeyError"),
        ("", "UnsafeKeyError"),
        # well-formed, but not a report the UI links: models, checkpoints, data, state
        ("runs/a/adapter/adapter_model.safetensors", "PermissionError"),
        ("runs/a/adapter/adapter_config.json", "PermissionError"),
        ("runs/a/checkpoints/checkpoint-4/adapter_model.safetensors", "PermissionError"),
        ("runs/a/checkpoints/hashes.json", "PermissionError"),
        ("runs/a/merged/model.safetensors", "PermissionError"),
        ("runs/a/merged/tokenizer.json", "PermissionError"),
        ("runs/a/train_request.json", "PermissionError"),
        ("runs/a/eval/predictions_candidate.jsonl", "PermissionError"),
        ("runs/a/summary.json", "PermissionError"),
        ("runs/a/b/eval/report.html", "PermissionError"),
        ("runs/eval/report.html", "PermissionError"),
        ("reports/r/b/data.parquet", "PermissionError"),
        ("reports/r/index.json", "PermissionError"),
        ("quarantine/r/sub/x.jsonl", "PermissionError"),
        ("quarantine/r/model.safetensors", "PermissionError"),
        ("datasets/v1/train.json", "PermissionError"),
        ("state/ledger.json", "PermissionError"),
        ("runsX/a/decision.json", "PermissionError"),
    ],
)
def test_check_report_key(key, error):
    from retrain_airflow.ui.proxy import ReportAllowlist, check_report_key

    from retrain.config import load_settings
    from retrain.storage import UnsafeKeyError

    allowlist = ReportAllowlist.from_settings(load_settings(environ={}))
    if error is None:
        assert check_report_key(key, allowlist) == key
    else:
        with pytest.raises({"UnsafeKeyError": UnsafeKeyError, "PermissionError": PermissionError}[error]):
            check_report_key(key, allowlist)


def test_the_proxy_policy_sandboxes_without_scripts_and_loads_nothing_from_elsewhere():
    from retrain_airflow.ui.proxy import PROXY_CSP

    directives = {d.split()[0]: d.split()[1:] for d in (x.strip() for x in PROXY_CSP.split(";")) if d}
    assert directives["sandbox"] == ["allow-same-origin"]  # no allow-scripts, forms, popups, top nav
    assert directives["script-src"] == ["'none'"] and directives["default-src"] == ["'none'"]
    sources = [src for values in directives.values() for src in values]
    assert not [s for s in sources if s in ("*", "https:", "http:") or "://" in s or s.startswith("*.")]


def test_content_types_never_serve_text_reports_as_html():
    from retrain_airflow.ui.proxy import content_type_for

    assert content_type_for("r/index.HTML") == "text/html; charset=utf-8"
    for key in ("q/report.md", "q/x.jsonl", "r/log.txt", "conf.yaml", "a.csv"):
        assert content_type_for(key) == "text/plain; charset=utf-8", key
    assert content_type_for("runs/a/summary.json") == "application/json"
    assert content_type_for("runs/a/train/training_loss.png") == "image/png"
    assert content_type_for("runs/a/adapter/adapter_model.safetensors") == "application/octet-stream"
