"""The optional human approval of a promotion (conf ``gate.approval``): Airflow 3's human-in-the-loop
``ApprovalOperator`` (standard provider), with the decision as its body.

The ``approve_promotion`` task runs only when ``decide`` set ``needs_approval`` (the DAG branches
around it otherwise). It waits in Airflow's ``awaiting_input`` state for someone to choose Approve or
Reject in the UI ("Required actions") or through the REST API; after ``gate.approval_timeout_hours``
the scheduler applies the default, **Reject**. Unlike the stock operator it skips nothing on a
rejection: ``promote`` always runs, reads the answer from this task's XCom (`answer_from_xcom`) and
records who answered, and when, in the decision, the summary and the registry's alias history.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.providers.standard.operators.hitl import ApprovalOperator, HITLOperator

from retrain import runs
from retrain.config import Settings

TASK_ID = "approve_promotion"


def _links(settings: Settings, run_id: str) -> dict[str, str]:
    """Absolute URLs (conf [api] base_url) of the run's report pages in the Retraining UI."""
    from airflow.configuration import conf

    from retrain_airflow.ui.links import URL_PREFIX, Links

    base = (conf.get("api", "base_url", fallback="") or "").rstrip("/")
    links = Links(base + URL_PREFIX, settings)
    folder = runs.RunFolder.for_run(settings.s3.bucket, settings.s3.runs_prefix, run_id).prefix
    folder = folder.rsplit("/", 1)[-1]
    return {
        "run report": links.report(run_id),
        "evaluation report": links.run_file(folder, runs.EVAL_HTML),
        "decision.json": links.run_file(folder, runs.DECISION),
        "Airflow run": links.airflow_run(run_id),
    }


def approval_body(decision: runs.PromotionDecision, settings: Settings, run_id: str) -> str:
    """The request's Markdown: what the gate proposed, its figures, every rule's outcome, links."""
    proposal = (
        f"promote v{decision.registered_version}"
        if decision.promote
        else f"a close call the gate kept (v{decision.registered_version}): approving promotes it"
    )
    lines = [
        f"**Proposal:** {proposal}",
        "",
        f"**Gate:** {decision.reason}",
        "",
        f"| | micro F1 |\n|---|---|\n| candidate | {decision.candidate_f1:.4f} |\n"
        f"| {decision.champion_name or 'champion'} | {decision.champion_f1:.4f} |\n"
        f"| difference | {decision.candidate_f1 - decision.champion_f1:+.4f} |",
        "",
        "| rule | outcome | detail |\n|---|---|---|",
    ]
    lines += [f"| {r.rule} | {'pass' if r.passed else 'FAIL'} | {r.detail} |" for r in decision.rules]
    lines += [
        "",
        f"Policy `gate.approval: {settings.gate.approval}`. No answer within "
        f"{settings.gate.approval_timeout_hours:g} h rejects. The promotion also refuses if the champion "
        "moved since the evaluation.",
        "",
        " · ".join(f"[{name}]({url})" for name, url in _links(settings, run_id).items()),
    ]
    return "\n".join(lines)


class PromotionApprovalOperator(ApprovalOperator):
    """``ApprovalOperator`` whose subject and body are the run's decision (read when it runs) and
    whose Reject skips nothing (``promote`` records the answer)."""

    def __init__(self, *, settings: Settings, **kwargs: Any) -> None:
        super().__init__(
            task_id=TASK_ID,
            subject="Promote the NER candidate?",
            body="(the decision is filled in when the task runs)",
            defaults=ApprovalOperator.REJECT,
            response_timeout=timedelta(hours=settings.gate.approval_timeout_hours),
            **kwargs,
        )
        self._settings = settings

    def execute(self, context: Any) -> Any:
        from retrain_airflow.tasks import read_decision

        run_id = str(context["run_id"])
        decision = read_decision(run_id)
        self.subject = (
            f"Promote NER candidate v{decision.registered_version} "
            f"(micro F1 {decision.candidate_f1:.4f} vs {decision.champion_name} {decision.champion_f1:.4f})?"
        )
        self.body = approval_body(decision, self._settings, run_id)
        return super().execute(context)

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        ret = HITLOperator.execute_complete(self, context=context, event=event)  # no skipping
        self.hitl_summary_extra["approved"] = ret["chosen_options"][0] == self.APPROVE
        self.log.info("answer: %s by %s", ret["chosen_options"], ret["responded_by_user"] or "timeout")
        return ret


def answer_from_xcom(payload: dict[str, Any] | None) -> runs.ApprovalResponse | None:
    """The approval task's result (None: the task was skipped, no approval was needed)."""
    if not payload:
        return None
    user = payload.get("responded_by_user") or {}
    at = payload.get("responded_at")
    return runs.ApprovalResponse(
        approved=list(payload.get("chosen_options") or []) == [ApprovalOperator.APPROVE],
        responded_by=str(user.get("name") or user.get("id") or "timeout") if user else "timeout",
        responded_at=at.isoformat() if hasattr(at, "isoformat") else str(at),
        timed_out=not user,
    )
