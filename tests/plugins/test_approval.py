"""plugins/retrain_airflow/approval.py: the approval request's text and the answer promote reads.

The operator itself runs under the real scheduler in tests/e2e/test_celery_approval.py (approve and
reject through the REST API); here: what the request shows, and how an answer (or a timeout's
default, or a skipped approval) becomes the `retrain.runs.ApprovalResponse` the promotion records.
"""

from __future__ import annotations

from datetime import UTC, datetime

from retrain.config import GateConfig, load_settings
from retrain.gate import decide
from tests.support.contracts import model_scores as metrics


def _decision(**gate):
    d = decide(
        metrics(0.62, {"name": (0.5, 50)}),
        metrics(0.55, {"name": (0.9, 50)}),
        GateConfig(max_label_drop=0.1, **gate),
        champion_name="champion v3",
    )
    return d.model_copy(update={"registered_version": "4", "needs_approval": True})


def test_the_body_shows_the_proposal_figures_rules_and_links(monkeypatch):
    from retrain_airflow.approval import approval_body

    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "http://127.0.0.1:8080/")
    settings = load_settings(environ={"RETRAIN__GATE__APPROVAL": "borderline"})
    body = approval_body(_decision(), settings, "manual__2026-12-02T02:00:00+00:00")
    assert "**Proposal:** a close call the gate kept (v4): approving promotes it" in body
    assert "| candidate | 0.6200 |" in body and "| champion v3 | 0.5500 |" in body and "+0.0700" in body
    assert "| no_label_regression | FAIL | labels dropping more than 0.1: name -0.400 |" in body
    assert "| beats_champion | pass |" in body
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
