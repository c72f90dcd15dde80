"""retrain.stages: a trainer stage's success is read from what it committed to S3 (moto server)."""

from __future__ import annotations

import pytest

from retrain import runs
from retrain.stages import StageNotCommitted, check_committed, commit_problems, marker_key, uncommit
from tests.support import contracts

PREFIX = "runs/manual__2026-11-29"
RUN_ID = "manual__2026-11-29"


def _commit_train(store, **override):
    adapter = contracts.put_adapter(store)
    runs.write(store, f"{PREFIX}/train_request.json", contracts.train_request(RUN_ID, store.bucket))
    result = contracts.train_result(RUN_ID, adapter).model_dump()
    result.update(override)
    store.put_json(f"{PREFIX}/train_result.json", result)
    return adapter


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
        ({"status": "failed"}, None, "status: Input should be 'succeeded'"),
        ({"run_id": "manual__2026-11-28"}, None, "is run 'manual__2026-11-28''s, not this request's"),
        ({"adapter_uri": "s3://elsewhere/runs/old/adapter/"}, None, "is not the content address of"),
        ({}, "adapter_model.safetensors", "adapter_model.safetensors is missing"),
        ({}, "adapter_config.json", "adapter_config.json is missing"),
    ],
)
def test_train_commit_problems(store, override, missing, expected):
    uri, digest = _commit_train(store, **override)
    if missing:
        store.delete(f"adapters/{digest}/{missing}")
    problems = commit_problems(store, PREFIX, "train")
    assert len(problems) == 1 and expected in problems[0], problems


def test_a_marker_that_is_not_json_is_a_problem(store):
    store.put_bytes(f"{PREFIX}/train_result.json", b"\xff not json")
    problems = commit_problems(store, PREFIX, "train")
    assert any("is not JSON" in p for p in problems), problems


def test_uncommit_removes_an_earlier_attempts_marker_only(store):
    uri, digest = _commit_train(store)
    assert uncommit(store, PREFIX, "train") is True
    assert not store.exists(marker_key(PREFIX, "train"))
    assert store.exists(f"adapters/{digest}/adapter_config.json")  # published adapters are never touched
    assert uncommit(store, PREFIX, "train") is False
    assert "is missing" in commit_problems(store, PREFIX, "train")[0]


def test_evaluate_report_must_be_this_requests(store):
    adapter = contracts.put_adapter(store)
    request = contracts.eval_request(RUN_ID, adapter, golden_hash="g2")
    runs.write(store, f"{PREFIX}/eval_request.json", request)
    cand, champ = contracts.model_scores(0.5), contracts.model_scores(0.4, name="base model")
    report = contracts.eval_report(RUN_ID, cand, champ, golden_hash="g2")
    runs.write(store, f"{PREFIX}/eval/report.json", report)
    assert commit_problems(store, PREFIX, "evaluate") == []
    bad = report.model_dump()
    bad.update(golden_hash="g1")
    store.put_json(f"{PREFIX}/eval/report.json", bad)
    problems = commit_problems(store, PREFIX, "evaluate")
    assert any("golden_hash 'g1' is not the request's 'g2'" in p for p in problems), problems
    bad.update(champion=None)
    store.put_json(f"{PREFIX}/eval/report.json", bad)
    problems = commit_problems(store, PREFIX, "evaluate")
    assert any("champion: Input should be a valid dictionary" in p for p in problems), problems


def test_export_needs_a_merged_model(store):
    result = {
        "status": "succeeded",
        "merged_uri": store.uri(f"{PREFIX}/merged/"),
        "files": 3,
        "adapter_uri": "s3://b/adapters/x/",
        "wall_s": 1.0,
    }
    store.put_json(f"{PREFIX}/export_result.json", result)
    assert "no merged model" in commit_problems(store, PREFIX, "export")[0]
    store.put_bytes(f"{PREFIX}/merged/config.json", b"{}")
    assert commit_problems(store, PREFIX, "export") == []


def test_unknown_stage_is_refused(store):
    with pytest.raises(ValueError, match="unknown trainer stage 'deploy'"):
        commit_problems(store, PREFIX, "deploy")
