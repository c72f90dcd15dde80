"""Task callables of ``ner_retrain``: thin glue between Airflow (context, params, connection) and
the library's stage functions. XCom carries only small dicts and S3 URIs.
"""

from __future__ import annotations

import json
import logging
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

from retrain.config import Settings, load_settings
from retrain.storage import ObjectStore, join_key, parse_s3_uri

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


def _run_prefix(run_id: str | None = None) -> str:
    from retrain.ingest import safe_run_id

    return join_key(settings().s3.runs_prefix, safe_run_id(run_id or _run_id()))


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

    result = build(_store(), s).to_json()
    assets.record_dataset_event(settings(), result)
    return result


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
    prefix = _run_prefix()
    request = {
        "run_id": _run_id(),
        "dataset_uri": dataset["uri"],
        "dataset_version": dataset["version"],
        "base_model": _base_model(),
        "model_cache_dir": s.train.model_cache_dir,
        "llamafactory": cfg,
    }
    store.put_json(join_key(prefix, "train_request.json"), request)
    log.info(
        "train request for dataset %s (train %d examples), base %s, %s epochs, lr %s, rank %s",
        dataset["version"],
        dataset["train"],
        request["base_model"],
        cfg.get("num_train_epochs"),
        cfg.get("learning_rate"),
        cfg.get("lora_rank"),
    )
    return store.uri(prefix)


# -- stage 5 ---------------------------------------------------------------------------------
def _registry(base_model: str | None = None) -> Any:
    from retrain.registry import Registry

    return Registry.from_settings(settings(), base_model or _base_model())


def prepare_evaluation(dataset: dict[str, Any], run_uri: str) -> str:
    """Check the training committed, find the champion, write ``eval_request.json``."""
    s, store = settings(), _store()
    _, prefix = parse_s3_uri(run_uri)
    result_key = join_key(prefix, "train_result.json")
    if not store.exists(result_key):
        raise RuntimeError(f"{store.uri(result_key)} is missing: training did not commit its artifacts")
    train = store.get_json(result_key)
    registry = _registry()
    champion = registry.champion()
    if champion and champion["airflow_run_id"] == _run_id():
        # A re-run of a run whose candidate already became champion: compare against the champion it
        # replaced (what the first attempt compared against), never against itself.
        log.info(
            "champion v%s came from this run; comparing against the model it replaced", champion["version"]
        )
        champion = registry.get_alias("previous")
        if champion and champion["airflow_run_id"] == _run_id():
            champion = None
    request = {
        "run_id": _run_id(),
        "golden_uri": dataset["uri"].rstrip("/") + "/golden.json",
        "golden_hash": dataset["golden_hash"],
        "base_model": _base_model(),
        "model_cache_dir": s.train.model_cache_dir,
        "candidate": {"name": "candidate", "adapter_uri": train["adapter_uri"], "version": None},
        "champion": (
            {
                "name": f"champion v{champion['version']}",
                "adapter_uri": champion["adapter_uri"],
                "version": champion["version"],
            }
            if champion
            else {"name": "base model", "adapter_uri": None, "version": None}
        ),
        "max_new_tokens": s.evaluate.max_new_tokens,
        "batch_size": s.evaluate.batch_size,
        "backend": s.evaluate.backend,
        "labels": s.prompt.labels,
    }
    store.put_json(join_key(prefix, "eval_request.json"), request)
    log.info(
        "evaluating candidate %s against %s on golden %s (%d sentences)",
        train["adapter_uri"],
        request["champion"]["name"],
        dataset["golden_hash"],
        dataset["golden"],
    )
    return run_uri


# -- stage 6 ---------------------------------------------------------------------------------
def promote(dataset: dict[str, Any], intake: dict[str, Any] | None, run_uri: str) -> dict[str, Any]:
    """Decide with the gate, log + register in MLflow, move the alias when the candidate wins."""
    from retrain.ingest import clear_pending
    from retrain.promote import decide

    s, store, params, ctx = settings(), _store(), _params(), _context()
    _, prefix = parse_s3_uri(run_uri)
    report = store.get_json(join_key(prefix, "eval", "report.json"))
    train = store.get_json(join_key(prefix, "train_result.json"))
    request = store.get_json(join_key(prefix, "eval_request.json"))
    champion_name = request["champion"]["name"]
    decision = decide(
        report["candidate"],
        report["champion"],
        s.gate,
        champion_name=champion_name,
        dry_run=bool(params.get("dry_run")),
    )
    for rule in decision.rules:
        log.info("gate %-20s %s  %s", rule.rule, "PASS" if rule.passed else "FAIL", rule.detail)
    log.info("decision: %s", decision.reason)

    registry = _registry()
    version = None
    if not decision.dry_run:
        with tempfile.TemporaryDirectory() as tmp:
            for sub in ("adapter", "train", "eval"):
                store.download_prefix(join_key(prefix, sub), Path(tmp) / sub)
            manifest_key = join_key(parse_s3_uri(dataset["uri"])[1], "manifest.json")
            store.download_file(manifest_key, Path(tmp) / "manifest.json")
            cand = report["candidate"]
            metrics = {
                "eval_micro_f1": cand["micro"]["f1"],
                "eval_micro_precision": cand["micro"]["precision"],
                "eval_micro_recall": cand["micro"]["recall"],
                "eval_macro_f1": cand["macro_f1"],
                "eval_cluener_score": cand["cluener_score"],
                "eval_parse_failure_rate": cand.get("parse_failure_rate", 0.0),
                "champion_micro_f1": report["champion"]["micro"]["f1"],
            }
            metrics.update({f"eval_f1_{label}": m["f1"] for label, m in cand.get("per_label", {}).items()})
            metrics = {
                k: v for k, v in metrics.items() if v is not None
            }  # labels with no gold/pred have no F1
            if train.get("train_loss") is not None:
                metrics["train_loss_final"] = train["train_loss"]
            tags = {
                "dataset_version": dataset["version"],
                "golden_hash": dataset["golden_hash"],
                "base_model": _base_model(),
                "run_uri": run_uri,
                "git_commit": _git_commit(),
                "launcher": s.train.launcher,
                "trainer_image": train.get("trainer_image")
                or (s.docker.image if s.train.launcher != "local" else "local trainer env"),
            }
            mlflow_run = registry.log_training_run(
                airflow_run_id=_run_id(),
                dag_id=ctx["dag"].dag_id,
                params=train.get("llamafactory", {})
                or store.get_json(join_key(prefix, "train_request.json"))["llamafactory"],
                metrics=metrics,
                loss_curve=[tuple(x) for x in train.get("loss_curve", [])],
                tags=tags,
                artifacts={
                    "adapter": Path(tmp) / "adapter",
                    "train": Path(tmp) / "train",
                    "eval": Path(tmp) / "eval",
                    "dataset": Path(tmp) / "manifest.json",
                },
            )
            version = registry.register(
                adapter_uri=train["adapter_uri"],
                adapter_hash=report["candidate"].get("adapter_hash", ""),
                mlflow_run_id=mlflow_run,
                airflow_run_id=_run_id(),
                tags={**tags, "micro_f1": f"{cand['micro']['f1']:.6f}", "airflow_dag_id": ctx["dag"].dag_id},
            )
            registry.set_version_tags(
                version,
                {"decision": "promoted" if decision.promote else "kept", "decision_reason": decision.reason},
            )
        if decision.promote:
            registry.move_champion(version, reason=decision.reason, actor=f"ner_retrain/{_run_id()}")
    champ = registry.champion()
    summary = {
        "run_id": _run_id(),
        "run_uri": run_uri,
        "intake": intake or {},
        "dataset": dataset,
        "train": {k: train.get(k) for k in ("train_loss", "steps", "epochs", "runtime_s", "loss_curve")},
        "evaluation": {side: _short_metrics(report[side]) for side in ("candidate", "champion")},
        "champion_name": champion_name,
        "decision": decision.to_json(),
        "registered_version": version,
        "registry": {
            "model": registry.name,
            "tracking_uri": registry.tracking_uri,
            "champion_version": champ["version"] if champ else None,
        },
    }
    store.put_json(join_key(prefix, "decision.json"), decision.to_json())
    store.put_json(join_key(prefix, "summary.json"), summary)
    from retrain_airflow import assets, notify

    assets.record_champion_event(s, summary, base_model=_base_model())
    notify.notify_promotion(s, summary)
    if not decision.dry_run:
        clear_pending(store, s)
    log.info("run summary: %s", json.dumps({k: summary[k] for k in ("registered_version", "registry")}))
    return {
        "promoted": decision.promote,
        "reason": decision.reason,
        "version": version,
        "candidate_f1": decision.candidate_f1,
        "champion_f1": decision.champion_f1,
    }


def _git_commit() -> str:
    """The deployed code's commit: $RETRAIN_GIT_COMMIT (images), else `git rev-parse` of the checkout."""
    import os
    import subprocess

    if os.environ.get("RETRAIN_GIT_COMMIT"):
        return os.environ["RETRAIN_GIT_COMMIT"]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _short_metrics(m: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": m.get("name", ""),
        "micro_f1": m["micro"]["f1"],
        "precision": m["micro"]["precision"],
        "recall": m["micro"]["recall"],
        "macro_f1": m.get("macro_f1"),
        "cluener_score": m.get("cluener_score"),
        "parse_failure_rate": m.get("parse_failure_rate"),
        "per_label_f1": {k: v["f1"] for k, v in m.get("per_label", {}).items()},
    }


# -- optional: merged export ----------------------------------------------------------------
def prepare_export(decision: dict[str, Any], run_uri: str) -> str:
    """Short-circuit callable: only a promoted candidate is exported; writes ``export_request.json``."""
    if not decision.get("promoted"):
        log.info("candidate not promoted: nothing to export")
        return ""
    s, store = settings(), _store()
    _, prefix = parse_s3_uri(run_uri)
    train = store.get_json(join_key(prefix, "train_result.json"))
    store.put_json(
        join_key(prefix, "export_request.json"),
        {
            "adapter_uri": train["adapter_uri"],
            "base_model": _base_model(),
            "model_cache_dir": s.train.model_cache_dir,
            "template": s.llamafactory_config().get("template", "qwen"),
        },
    )
    return run_uri


def record_export(decision: dict[str, Any], run_uri: str) -> str:
    """Tag the registered version with the merged model's location."""
    store = _store()
    _, prefix = parse_s3_uri(run_uri)
    result = store.get_json(join_key(prefix, "export_result.json"))
    _registry().set_version_tags(decision["version"], {"merged_uri": result["merged_uri"]})
    return result["merged_uri"]


# -- ner_rollback ----------------------------------------------------------------------------
def rollback() -> dict[str, Any]:
    """Move ``champion`` to the target version from the trigger params, recording who and why."""
    params, ctx = _params(), _context()
    registry = _registry(params.get("base_model") or None)
    target = str(params["target"]).strip()
    actor = f"ner_rollback/{ctx['run_id']}"
    event = registry.rollback(target, reason=params["reason"], actor=actor)
    from retrain_airflow import assets

    assets.record_rollback_event(settings(), event, base_model=params.get("base_model") or None)
    log.info("rollback: %s", json.dumps(event, ensure_ascii=False))
    return event
