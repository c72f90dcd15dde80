"""Task callables of ``ner_retrain``: thin glue between Airflow (context, params, connection) and
the library's stage functions. XCom carries only small dicts and S3 URIs.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from retrain import runs
from retrain.storage import ObjectStore
from retrain_airflow import assets, notify
from retrain_airflow.s3 import object_store
from retrain_airflow.settings import settings

log = logging.getLogger(__name__)

__all__ = ["settings"]  # re-exported: callers that knew it here keep working


def _context() -> Any:
    from airflow.sdk import get_current_context

    return get_current_context()


def _params() -> dict[str, Any]:
    return dict(_context()["params"])


def _run_id() -> str:
    return str(_context()["run_id"])


def _store() -> ObjectStore:
    return object_store(settings())


def _run() -> runs.RunFolder:
    """This DAG run's folder (`retrain.runs`)."""
    s = settings()
    return runs.RunFolder.for_run(s.s3.bucket, s.s3.runs_prefix, _run_id())


def _base_model() -> str:
    return _params().get("base_model") or settings().train.base_model


def _base_model_choice() -> Any:
    """This run's base model checked against conf ``models`` (`retrain.base_models`). A refused name
    fails the task without retries (retrying cannot make it allowed), naming the allowlist."""
    from airflow.sdk.exceptions import AirflowFailException

    from retrain.base_models import BaseModelRefused, check_base_model

    where = "DAG param base_model" if _params().get("base_model") else "conf train.base_model"
    try:
        return check_base_model(_base_model(), settings().models, where=where)
    except BaseModelRefused as exc:
        raise AirflowFailException(str(exc)) from exc


# -- stage 1 ---------------------------------------------------------------------------------
def find_new_batches() -> dict[str, Any]:
    """Short-circuit callable: a falsy result skips every downstream task (no new data, no force)."""
    from dataclasses import asdict

    from retrain.ingest import find_new_batches as find

    s, store = settings(), _store()
    store.ensure_bucket()
    plan = find(store, s)
    force = bool(_params().get("force"))
    if not plan.has_work and not force:
        log.info(
            "no new or changed batches under %s and nothing pending: skipping this run (no training)",
            store.uri(s.s3.incoming_prefix),
        )
        return {}
    return {
        "objects": [asdict(o) for o in plan.objects],
        "removed": [asdict(r) for r in plan.removed],
        "dataset_pending": plan.dataset_pending,
        "forced": force,
    }


# -- stage 2 ---------------------------------------------------------------------------------
def ingest_batches(plan: dict[str, Any]) -> dict[str, Any]:
    from retrain.ingest import PendingObject, RemovedObject, process_batches

    objects = [PendingObject(**o) for o in plan.get("objects", [])]
    removed = [RemovedObject(**r) for r in plan.get("removed", [])]
    result = process_batches(_store(), settings(), objects, _run_id(), removed=removed)
    out = {
        "read": result.read,
        "accepted": result.accepted,
        "quarantined": result.quarantined,
        "retracted": result.retracted,
        "report_uri": result.report_uri,
        "objects": len(result.objects),
    }
    notify.notify_quarantine(settings(), out)
    return out


# -- stage 3 ---------------------------------------------------------------------------------
def build_dataset() -> dict[str, Any]:
    from retrain.dataset import build_dataset as build

    golden = _params().get("golden_set")
    s = settings()
    if golden:
        s = s.model_copy(update={"dataset": s.dataset.model_copy(update={"golden_file": golden})})
    store = _store()
    result = runs.DatasetRef.model_validate(build(store, s).to_json())
    runs.write(store, _run().key(runs.DATASET), result)
    extra = runs.to_json(result)
    assets.record_dataset_event(settings(), extra)
    return extra


# -- stage 4 ---------------------------------------------------------------------------------
PARAM_TO_LLAMAFACTORY = {
    "epochs": "num_train_epochs",
    "learning_rate": "learning_rate",
    "lora_rank": "lora_rank",
}


def prepare_training(dataset: dict[str, Any]) -> str:
    """Choose the night's mode and examples (`retrain.selection.plan_training`), write
    ``runs/<run>/train_request.json`` (conf + per-run params) and return the run URI."""
    from retrain.selection import PlanInputs, llamafactory_overrides, plan_training

    s, store, params = settings(), _store(), _params()
    choice = _base_model_choice()  # before anything is written or downloaded
    cfg = s.llamafactory_config()
    cfg["trust_remote_code"] = choice.trust_remote_code
    for param, key in PARAM_TO_LLAMAFACTORY.items():
        if params.get(param) is not None:
            cfg[key] = params[param]
    run = _run()
    inputs = PlanInputs(
        run=run,
        dataset=runs.DatasetRef.model_validate(dataset),
        champion=_registry(choice.name).champion(),
        base_model=choice.name,
        base_model_revision=choice.revision,
        llamafactory=cfg,
        mode=params.get("train_mode") or s.train.mode,
        max_samples=params.get("max_samples") or s.train.max_samples,
    )
    selection = plan_training(store, s, inputs)
    cfg.update(llamafactory_overrides(selection, s))
    request = runs.TrainRequest(
        run_id=_run_id(),
        adapter_store_uri=store.uri(s.s3.adapters_prefix),
        dataset_uri=dataset["uri"],
        dataset_version=dataset["version"],
        base_model=choice.name,
        base_model_revision=choice.revision,
        model_cache_dir=s.train.model_cache_dir,
        llamafactory=cfg,
        selection=selection,
        tokenized_cache_dir=s.train.tokenized_cache_dir,
    )
    runs.write(store, run.key(runs.TRAIN_REQUEST), request)
    log.info(
        "train request for dataset %s (train split %d examples), base %s, %s epochs, lr %s, rank %s; %s",
        dataset["version"],
        dataset["train"],
        request.base_model,
        cfg.get("num_train_epochs"),
        cfg.get("learning_rate"),
        cfg.get("lora_rank"),
        selection.describe(),
    )
    return run.uri


# -- stage 5 ---------------------------------------------------------------------------------
def _registry(base_model: str | None = None) -> Any:
    from retrain.registry import Registry

    return Registry.from_settings(settings(), base_model or _base_model())


def prepare_evaluation(dataset: dict[str, Any], run_uri: str) -> str:
    """Check the training committed, choose the baseline, write ``eval_request.json``
    (`retrain.promote.plan_evaluation`)."""
    from retrain.promote import plan_evaluation

    run = runs.RunFolder.from_uri(run_uri)
    plan_evaluation(
        _store(),
        settings(),
        run,
        _registry(),
        run_id=_run_id(),
        base_model=_base_model(),
        baseline_approval=_params().get("baseline_approval"),
    )
    return run_uri


# -- stage 6 ---------------------------------------------------------------------------------
def read_decision(run_id: str) -> runs.PromotionDecision:
    """The run's ``decision.json`` (as ``decide`` wrote it)."""
    s = settings()
    run = runs.RunFolder.for_run(s.s3.bucket, s.s3.runs_prefix, run_id)
    return runs.read(_store(), run.key(runs.DECISION), runs.PromotionDecision)


def decide(dataset: dict[str, Any], intake: dict[str, Any] | None, run_uri: str) -> dict[str, Any]:
    """Apply the gate, log + register in MLflow, write ``decision.json`` (`retrain.promote.decide_run`);
    moves no alias. Returns whether a person must approve (conf ``gate.approval``)."""
    from retrain import promote as promotion

    s, params, ctx = settings(), _params(), _context()
    launcher = s.train.launcher
    provenance = promotion.Provenance(
        dag_id=ctx["dag"].dag_id,
        git_commit=promotion.git_commit(),
        launcher=launcher,
        trainer_image=s.docker.image if launcher != "local" else "local trainer env",
    )
    d = promotion.decide_run(
        _store(),
        s,
        runs.RunFolder.from_uri(run_uri),
        _registry(),
        run_id=_run_id(),
        provenance=provenance,
        dry_run=bool(params.get("dry_run")),
    )
    return {"promote": d.promote, "needs_approval": d.needs_approval, "version": d.registered_version}


def approval_route(decided: dict[str, Any]) -> str:
    """Branch callable: the approval task when a person must answer, else straight to ``promote``."""
    from retrain_airflow.approval import TASK_ID

    return TASK_ID if decided.get("needs_approval") else "promote"


def promote(run_uri: str) -> dict[str, Any]:
    """Carry out the decision (`retrain.promote.commit_run`): with the person's answer when one was
    asked, and only if the champion did not move since the evaluation; then the champion asset
    event and the promotion alert. Runs in the one-slot pool conf ``registry.alias_pool``."""
    from retrain import promote as promotion
    from retrain_airflow.approval import TASK_ID, answer_from_xcom

    s, ctx = settings(), _context()
    answer = answer_from_xcom(ctx["ti"].xcom_pull(task_ids=TASK_ID)) if s.gate.approval != "never" else None
    summary = promotion.commit_run(
        _store(),
        s,
        runs.RunFolder.from_uri(run_uri),
        _registry(),
        run_id=_run_id(),
        actor=f"ner_retrain/{_run_id()}",
        approval=answer,
    )
    summary_json = runs.to_json(summary)
    assets.record_champion_event(s, summary_json, base_model=_base_model())
    notify.notify_promotion(s, summary_json)
    d = summary.decision
    return {
        "promoted": d.promote,
        "reason": d.reason,
        "version": summary.registered_version,
        "candidate_f1": d.candidate_f1,
        "champion_f1": d.champion_f1,
        "refused": d.refused,
    }


# -- optional: merged export ----------------------------------------------------------------
def prepare_export(decision: dict[str, Any], run_uri: str) -> str:
    """Short-circuit callable: only a promoted candidate is exported; writes ``export_request.json``."""
    if not decision.get("promoted"):
        log.info("candidate not promoted: nothing to export")
        return ""
    s, store = settings(), _store()
    run = runs.RunFolder.from_uri(run_uri)
    train = runs.read(store, run.key(runs.TRAIN_RESULT), runs.TrainResult)
    trained = runs.read(store, run.key(runs.TRAIN_REQUEST), runs.TrainRequest)
    request = runs.ExportRequest(
        adapter_uri=train.adapter_uri,
        adapter_digest=train.adapter_digest,
        base_model=trained.base_model,
        base_model_revision=trained.base_model_revision,
        trust_remote_code=bool(trained.llamafactory.get("trust_remote_code", False)),
        model_cache_dir=s.train.model_cache_dir,
        template=s.llamafactory_config().get("template", "qwen"),
    )
    runs.write(store, run.key(runs.EXPORT_REQUEST), request)
    return run_uri


def record_export(decision: dict[str, Any], run_uri: str) -> str:
    """Tag the registered version with the merged model's location."""
    run = runs.RunFolder.from_uri(run_uri)
    result = runs.read(_store(), run.key(runs.EXPORT_RESULT), runs.ExportResult)
    _registry().set_version_tags(decision["version"], {"merged_uri": result.merged_uri})
    return result.merged_uri


# -- ner_rollback ----------------------------------------------------------------------------
def rollback() -> dict[str, Any]:
    """Move ``champion`` to the target version from the trigger params, recording who and why, after
    checking the version's adapter against its digest and that the champion is still the one the
    person saw (param ``expected_champion``) (`retrain.promote.rollback`). Runs in the one-slot pool
    conf ``registry.alias_pool``, like ``promote``."""
    from retrain.promote import rollback as roll_back
    from retrain.registry import ANY_CHAMPION

    params, ctx = _params(), _context()
    registry = _registry(params.get("base_model") or None)
    target = str(params["target"]).strip()
    actor = f"ner_rollback/{ctx['run_id']}"
    # the champion the person saw (the Retraining form sends it); "" or absent: whatever it is now
    seen = str(params.get("expected_champion") or "").strip()
    expected = ANY_CHAMPION if not seen else (None if seen == "none" else seen)
    event = roll_back(
        _store(), registry, target, reason=params["reason"], actor=actor, expected_champion=expected
    )
    assets.record_rollback_event(settings(), event, base_model=params.get("base_model") or None)
    log.info("rollback: %s", json.dumps(event, ensure_ascii=False))
    return event
