"""Task callables of ``ner_retrain``: thin glue between Airflow (context, params, connection) and
the library's stage functions. XCom carries only small dicts and S3 URIs.
"""

from __future__ import annotations

import json
import logging
from functools import lru_cache
from typing import Any

from retrain import runs
from retrain.config import Settings, load_settings
from retrain.storage import ObjectStore

log = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def settings() -> Settings:
    return load_settings()


def _context() -> Any:
    from airflow.sdk import get_current_context

    return get_current_context()


def _params() -> dict[str, Any]:
    return dict(_context()["params"])


def _run_id() -> str:
    return str(_context()["run_id"])


def _store() -> ObjectStore:
    from retrain_airflow.s3 import object_store

    return object_store(settings())


def _run() -> runs.RunFolder:
    """This DAG run's folder (`retrain.runs`)."""
    s = settings()
    return runs.RunFolder.for_run(s.s3.bucket, s.s3.runs_prefix, _run_id())


def _base_model() -> str:
    return _params().get("base_model") or settings().train.base_model


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
        "dataset_pending": plan.dataset_pending,
        "forced": force,
    }


# -- stage 2 ---------------------------------------------------------------------------------
def ingest_batches(plan: dict[str, Any]) -> dict[str, Any]:
    from retrain.ingest import PendingObject, process_batches

    objects = [PendingObject(**o) for o in plan.get("objects", [])]
    from retrain_airflow import notify

    result = process_batches(_store(), settings(), objects, _run_id())
    out = {
        "read": result.read,
        "accepted": result.accepted,
        "quarantined": result.quarantined,
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
    from retrain_airflow import assets

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
    "max_samples": "max_samples",
}


def prepare_training(dataset: dict[str, Any]) -> str:
    """Write ``runs/<run>/train_request.json`` (conf + per-run params) and return the run URI."""
    s, store, params = settings(), _store(), _params()
    cfg = s.llamafactory_config()
    for param, key in PARAM_TO_LLAMAFACTORY.items():
        if params.get(param) is not None:
            cfg[key] = params[param]
    run = _run()
    request = runs.TrainRequest(
        run_id=_run_id(),
        adapter_store_uri=store.uri(s.s3.adapters_prefix),
        dataset_uri=dataset["uri"],
        dataset_version=dataset["version"],
        base_model=_base_model(),
        model_cache_dir=s.train.model_cache_dir,
        llamafactory=cfg,
    )
    runs.write(store, run.key(runs.TRAIN_REQUEST), request)
    log.info(
        "train request for dataset %s (train %d examples), base %s, %s epochs, lr %s, rank %s",
        dataset["version"],
        dataset["train"],
        request.base_model,
        cfg.get("num_train_epochs"),
        cfg.get("learning_rate"),
        cfg.get("lora_rank"),
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
def promote(dataset: dict[str, Any], intake: dict[str, Any] | None, run_uri: str) -> dict[str, Any]:
    """Decide with the gate, log + register in MLflow, move the alias when the candidate wins
    (`retrain.promote.promote_run`); then the champion asset event and the promotion alert."""
    from retrain import promote as promotion

    s, params, ctx = settings(), _params(), _context()
    launcher = s.train.launcher
    provenance = promotion.Provenance(
        dag_id=ctx["dag"].dag_id,
        git_commit=promotion.git_commit(),
        launcher=launcher,
        trainer_image=s.docker.image if launcher != "local" else "local trainer env",
    )
    summary = promotion.promote_run(
        _store(),
        s,
        runs.RunFolder.from_uri(run_uri),
        _registry(),
        run_id=_run_id(),
        actor=f"ner_retrain/{_run_id()}",
        provenance=provenance,
        dry_run=bool(params.get("dry_run")),
    )
    summary_json = runs.to_json(summary)
    from retrain_airflow import assets, notify

    assets.record_champion_event(s, summary_json, base_model=_base_model())
    notify.notify_promotion(s, summary_json)
    d = summary.decision
    return {
        "promoted": d.promote,
        "reason": d.reason,
        "version": summary.registered_version,
        "candidate_f1": d.candidate_f1,
        "champion_f1": d.champion_f1,
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
    request = runs.ExportRequest(
        adapter_uri=train.adapter_uri,
        adapter_digest=train.adapter_digest,
        base_model=_base_model(),
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
    checking the version's adapter against its digest (`retrain.promote.rollback`)."""
    from retrain.promote import rollback as roll_back

    params, ctx = _params(), _context()
    registry = _registry(params.get("base_model") or None)
    target = str(params["target"]).strip()
    actor = f"ner_rollback/{ctx['run_id']}"
    event = roll_back(_store(), registry, target, reason=params["reason"], actor=actor)
    from retrain_airflow import assets

    assets.record_rollback_event(settings(), event, base_model=params.get("base_model") or None)
    log.info("rollback: %s", json.dumps(event, ensure_ascii=False))
    return event
