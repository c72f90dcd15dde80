"""plugins/retrain_airflow/approval.py: the approval request's text and the answer promote reads.

The operator itself runs under the real scheduler in tests/e2e/test_celery_approval.py (approve and
reject through the REST API); here: what the request shows, and how an answer (or a timeout's
default, or a skipped approval) becomes the `retrain.runs.ApprovalResponse` the promotion records.
"""

from __future__ import annotations

from datetime import UTC, datetime

from retrain.config import load_settings


def _decision():
    """A close call as the gate writes it: a real gain, but one label regressed beyond the noise."""
    from retrain.runs import LabelDifference, PromotionDecision, RuleOutcome, Significance

    name = LabelDifference(
        label="name", support=50, candidate_f1=0.5, champion_f1=0.9, difference=-0.4, low=-0.55, high=-0.25,
        regressed=True,
    )  # fmt: skip
    sig = Significance(
        reading="strict", n_sentences=200, difference=0.07, low=0.02, high=0.12, confidence=0.95,
        resamples=2000, seed=1, min_delta=0.0, labels=[name],
    )  # fmt: skip
    rules = [
        RuleOutcome(rule="significant_gain", passed=True, detail="+0.0700 (95% CI +0.0200 to +0.1200) > 0.0"),
        RuleOutcome(rule="no_label_regression", passed=False, detail="name -0.400 [-0.550, -0.250]"),
    ]
    return PromotionDecision(
        promote=False, reason="kept champion v3: no_label_regression failed", rules=rules, candidate_f1=0.62,
        champion_f1=0.55, champion_name="champion v3", significance=sig, registered_version="4",
        needs_approval=True,
    )  # fmt: skip


def test_the_body_shows_the_proposal_figures_rules_and_links(monkeypatch):
    from retrain_airflow.approval import approval_body

    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "http://127.0.0.1:8080/")
    settings = load_settings(environ={"RETRAIN__GATE__APPROVAL": "borderline"})
    body = approval_body(_decision(), settings, "manual__2026-12-02T02:00:00+00:00")
    assert "**Proposal:** a close call the gate kept (v4): approving promotes it" in body
    assert "| candidate | 0.6200 |" in body and "| champion v3 | 0.5500 |" in body and "+0.0700" in body
    assert "| no_label_regression | FAIL | name -0.400 [-0.550, -0.250] |" in body
    assert "| significant_gain | pass |" in body
    assert "`gate.approval: borderline`" in body and "No answer within 24 h rejects" in body
    run = "manual__2026-12-02T02%3A00%3A00%2B00%3A00"
    assert f"[run report](http://127.0.0.1:8080/retrain/report/ner_retrain/{run})" in body
    assert "/retrain/s3/runs/manual__2026-12-02T02_00_00_00_00/eval/report.html)" in body
    assert f"[Airflow run](http://127.0.0.1:8080/dags/ner_retrain/runs/{run})" in body


def test_answers_become_approval_responses():
    from retrain_airflow.approval import answer_from_xcom

    at = datetime(2026, 12, 2, 9, 30, tzinfo=UTC)
    alice = {
        "chosen_options": ["Approve"],
        "responded_by_user": {"id": "7", "name": "alice"},
        "responded_at": at,
    }
    a = answer_from_xcom(alice)
    assert (a.approved, a.responded_by, a.responded_at, a.timed_out) == (True, "alice", at.isoformat(), False)
    r = answer_from_xcom({**alice, "chosen_options": ["Reject"], "responded_at": "2026-12-02T10:00:00Z"})
    assert not r.approved and r.responded_at == "2026-12-02T10:00:00Z"
    timeout = answer_from_xcom({"chosen_options": ["Reject"], "responded_by_user": None, "responded_at": at})
    assert timeout.timed_out and not timeout.approved and timeout.describe().startswith("rejected by timeout")
    assert answer_from_xcom(None) is None  # the approval was skipped: none was needed
