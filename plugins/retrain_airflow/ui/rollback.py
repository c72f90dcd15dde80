"""The rollback form's one write: check the request, then trigger ``ner_rollback`` as the user.

The run is triggered with the resolved version number (never ``previous``, which a promotion may
move before the run starts) and the champion the page showed as ``expected_champion``: the run
refuses if the champion moved in between (a promotion, another rollback).

The alias itself moves in the ``ner_rollback`` run (its task calls the registry); the page only
triggers it with Airflow's own trigger function, so the DAG's Param schema and Airflow's permissions
apply. Refusals are `HTTPException`s whose text tells the person what to change.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from fastapi import HTTPException

from retrain_airflow.run_notes import one_line
from retrain_airflow.ui.links import ROLLBACK_DAG_ID
from retrain_airflow.ui.page_data import registry_for

log = logging.getLogger(__name__)


@dataclass
class RollbackPlan:
    """A checked rollback request: what to trigger ``ner_rollback`` with."""

    target: str  # as the form said it: a version or "previous"
    resolved: str  # the version it names: what ner_rollback is triggered with
    reason: str
    base_model: str | None  # set when the model is not conf's train.base_model's
    expected_champion: str  # the champion the page showed ("none": no champion); the run re-checks it


def same_origin_or_403(request: Any) -> None:
    """Refuse a cross-site form post (the session cookie is SameSite=Lax already; this is the second lock)."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        raise HTTPException(403, f"cross-site request refused (Sec-Fetch-Site: {site})")
    origin = request.headers.get("origin")
    if origin and origin != "null":
        host = request.headers.get("x-forwarded-host") or request.headers.get("host", "")
        if urlsplit(origin).netloc != host.split(",")[0].strip():
            raise HTTPException(403, f"cross-origin request refused (Origin {origin})")
    elif origin == "null":
        raise HTTPException(403, "request from an opaque origin refused")


def plan_rollback(
    settings: Any, target: str, reason: str, model: str | None, *, seen_champion: str = ""
) -> RollbackPlan:
    """Check the form against the registry: a reason of 3 to 500 characters, a target that exists,
    has an adapter and is not already the champion (and, for another base model's registered model,
    carries its base_model tag), and a champion that is still the one the page showed
    (``seen_champion``; empty: the champion now)."""
    target, reason = target.strip(), " ".join(reason.split())
    if len(reason) < 3 or len(reason) > 500:
        raise HTTPException(400, "reason: 3 to 500 characters, please (it is kept in the alias history)")
    reg = registry_for(settings, model)
    versions = {v["version"]: v for v in reg.versions()}
    champion = reg.champion()
    if target == "previous":
        prev = reg.get_alias("previous")
        if prev is None:
            raise HTTPException(400, f"{reg.name} has no 'previous' version to roll back to")
        resolved = prev["version"]
    elif target in versions:
        resolved = target
    else:
        raise HTTPException(
            400,
            f"target: {target!r} is not a version of {reg.name} "
            f"(have {', '.join(sorted(versions, key=int)) or 'none'})",
        )
    if not versions.get(resolved, {}).get("adapter_uri"):
        raise HTTPException(400, f"v{resolved} has no adapter_uri tag: it cannot become champion")
    now = champion["version"] if champion else "none"
    seen = seen_champion.strip() or now
    if seen != now:
        raise HTTPException(
            409,
            f"the champion changed since the page was shown (it showed {_v(seen)}, it is {_v(now)} now): "
            "reload the page and choose again",
        )
    if champion and champion["version"] == resolved:
        raise HTTPException(400, f"v{resolved} is already the champion")
    base_model = None
    if reg.name != registry_for(settings).name:
        base_model = versions[resolved]["tags"].get("base_model") or None
        if base_model is None:
            raise HTTPException(
                400,
                f"{reg.name} v{resolved} has no base_model tag: roll back from the "
                f"{ROLLBACK_DAG_ID} trigger form instead",
            )
    return RollbackPlan(
        target=target, resolved=resolved, reason=reason, base_model=base_model, expected_champion=now
    )


def _v(version: str) -> str:
    return "no champion" if version == "none" else f"v{version}"


def trigger_rollback(plan: RollbackPlan, user_name: str) -> tuple[str, bool]:
    """Trigger ``ner_rollback`` in-process with Airflow's own trigger function (the DAG's params are
    validated against its Param schema there); returns (run id, DAG paused?)."""
    from airflow.api.common.trigger_dag import trigger_dag
    from airflow.exceptions import DagNotFound, DagRunAlreadyExists, ParamValidationError
    from airflow.models.dag import DagModel
    from airflow.utils.types import DagRunTriggeredByType

    conf = {
        "target": plan.resolved,  # the version the page showed, never "previous" (which may move)
        "reason": plan.reason,
        "base_model": plan.base_model,
        "expected_champion": plan.expected_champion,
    }
    note = one_line(
        f"rollback to v{plan.resolved} requested by {user_name} on the Retraining page: {plan.reason}", 900
    )
    try:
        dag_run = trigger_dag(
            ROLLBACK_DAG_ID,
            triggered_by=DagRunTriggeredByType.UI,
            triggering_user_name=user_name,
            conf=conf,
            note=note,
        )
    except DagNotFound as exc:
        raise HTTPException(
            409, f"{ROLLBACK_DAG_ID} is not known to Airflow yet (not parsed?): {exc}"
        ) from None
    except (ParamValidationError, ValueError, DagRunAlreadyExists) as exc:
        raise HTTPException(400, f"{ROLLBACK_DAG_ID} refused the trigger: {exc}") from None
    if dag_run is None:
        raise HTTPException(500, f"{ROLLBACK_DAG_ID} was not triggered")
    model = DagModel.get_current(ROLLBACK_DAG_ID)
    log.info(
        "%s triggered %s run %s: target %s (v%s), reason %r",
        user_name,
        ROLLBACK_DAG_ID,
        dag_run.run_id,
        plan.target,
        plan.resolved,
        plan.reason,
    )
    return str(dag_run.run_id), bool(model and model.is_paused)
