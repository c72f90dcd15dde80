"""retrain.stages: a trainer stage's success is read from what it committed to S3 (moto server)."""

from __future__ import annotations

import pytest

from retrain.stages import StageNotCommitted, check_committed, commit_problems, marker_key, uncommit

PREFIX = "runs/manual__2026-11-29"


def _commit_train(store, **override):
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        store.put_bytes(f"{PREFIX}/adapter/{name}", b"{}")
    store.put_json(
        f"{PREFIX}/train_result.json",
        {"status": "succeeded", "adapter_uri": store.uri(f"{PREFIX}/adapter/"), **override},
    )


def test_a_complete_train_commit_passes(store):
    _commit_train(store)
    assert commit_problems(store, PREFIX, "train") == []
    check_committed(store, PREFIX, "train")


def test_train_that_committed_nothing_fails_naming_the_marker(store):
    with pytest.raises(
        StageNotCommitted,
        match=r"`retrain train` exited 0 but did not commit its output: "
        r"s3://.*/runs/manual__2026-11-29/train_result.json is missing",
    ):
        check_committed(store, PREFIX, "train")


@pytest.mark.parametrize(
    "override, missing, expected",
    [
        ({"status": "failed"}, None, "has status 'failed'"),
        ({"adapter_uri": "s3://elsewhere/runs/old/adapter/"}, None, "is not this run's"),
        ({}, "adapter_model.safetensors", "adapter/adapter_model.safetensors is missing"),
        ({}, "adapter_config.json", "adapter/adapter_config.json is missing"),
    ],
)
def test_train_commit_problems(store, override, missing, expected):
    _commit_train(store, **override)
    if missing:
        store.client.delete_object(Bucket=store.bucket, Key=f"{PREFIX}/adapter/{missing}")
    problems = commit_problems(store, PREFIX, "train")
    assert len(problems) == 1 and expected in problems[0], problems


def test_a_marker_that_is_not_json_is_a_problem(store):
    store.put_bytes(f"{PREFIX}/train_result.json", b"\xff not json")
    (problem,) = commit_problems(store, PREFIX, "train")
    assert "is not JSON" in problem


def test_uncommit_removes_an_earlier_attempts_marker_only(store):
    _commit_train(store)
    assert uncommit(store, PREFIX, "train") is True
    assert not store.exists(marker_key(PREFIX, "train"))
    assert store.exists(f"{PREFIX}/adapter/adapter_config.json")  # the stage overwrites the rest itself
    assert uncommit(store, PREFIX, "train") is False
    assert "is missing" in commit_problems(store, PREFIX, "train")[0]


def test_evaluate_report_must_be_this_requests(store):
    store.put_json(f"{PREFIX}/eval_request.json", {"run_id": "manual__2026-11-29", "golden_hash": "g2"})
    report = {"run_id": "manual__2026-11-29", "golden_hash": "g2", "candidate": {}, "champion": {}}
    store.put_json(f"{PREFIX}/eval/report.json", report)
    assert commit_problems(store, PREFIX, "evaluate") == []
    store.put_json(f"{PREFIX}/eval/report.json", {**report, "golden_hash": "g1", "champion": None})
    problems = commit_problems(store, PREFIX, "evaluate")
    assert any("golden_hash 'g1' is not the request's 'g2'" in p for p in problems), problems
    assert any("has no champion metrics" in p for p in problems), problems


def test_export_needs_a_merged_model(store):
    store.put_json(f"{PREFIX}/export_result.json", {"status": "succeeded", "files": 3})
    assert "no merged model" in commit_problems(store, PREFIX, "export")[0]
    store.put_bytes(f"{PREFIX}/merged/config.json", b"{}")
    assert commit_problems(store, PREFIX, "export") == []


def test_unknown_stage_is_refused(store):
    with pytest.raises(ValueError, match="unknown trainer stage 'deploy'"):
        commit_problems(store, PREFIX, "deploy")
