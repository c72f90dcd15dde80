"""Did a trainer stage do its work? Decided from what it committed to the run's S3 prefix.

Every trainer stage (``retrain train|evaluate|export --run-uri s3://…/runs/<id>``) writes one file
last, its commit marker; the launchers (local subprocess, Docker, Kubernetes) remove that marker
before they start the stage and, when the stage exits 0, require it back and consistent with the
stage's request. So a process or container that exits 0 without doing the work (a swallowed error, a
replaced entrypoint, a wrapper script) fails its task with the reason, and a marker left by an earlier
attempt can never pass for this one's.

    train     train_result.json   this run's TrainResult; its adapter's files at the content address
                                  its digest names (`retrain.adapters`)
    evaluate  eval/report.json    this run's EvalReport, on the golden set eval_request.json names
    export    export_result.json  ExportResult with a merged model under runs/<id>/merged/

File names and shapes are `retrain.runs`'s.
"""

from __future__ import annotations

import logging

from retrain import runs
from retrain.adapters import ADAPTER_FILES, digest_of_uri
from retrain.storage import ObjectStore, join_key, parse_s3_uri

log = logging.getLogger(__name__)

#: The file each stage writes last, relative to the run prefix.
COMMIT_MARKERS = {
    "train": runs.TRAIN_RESULT,
    "evaluate": runs.EVAL_REPORT,
    "export": runs.EXPORT_RESULT,
}


class StageNotCommitted(RuntimeError):
    """A stage ended with exit status 0 but its output is missing or not this run's."""


def marker_key(run_prefix: str, stage: str) -> str:
    if stage not in COMMIT_MARKERS:
        raise ValueError(f"unknown trainer stage {stage!r} (known: {', '.join(COMMIT_MARKERS)})")
    return join_key(run_prefix, COMMIT_MARKERS[stage])


def uncommit(store: ObjectStore, run_prefix: str, stage: str) -> bool:
    """Remove the stage's marker before a (re)launch; True when an earlier attempt had left one."""
    key = marker_key(run_prefix, stage)
    if not store.exists(key):
        return False
    log.info("%s: removing %s of an earlier attempt before launching", stage, store.uri(key))
    store.delete(key)
    return True


def _read(store: ObjectStore, key: str, model: type[runs.M], problems: list[str]) -> runs.M | None:
    try:
        return runs.read(store, key, model)
    except runs.ContractError as exc:
        problems.append(str(exc))
        return None


def _train_problems(store: ObjectStore, run_prefix: str, problems: list[str]) -> None:
    result = _read(store, join_key(run_prefix, runs.TRAIN_RESULT), runs.TrainResult, problems)
    request = _read(store, join_key(run_prefix, runs.TRAIN_REQUEST), runs.TrainRequest, problems)
    if result is None or request is None:
        return
    if result.run_id != request.run_id:
        problems.append(
            f"train_result.json is run {result.run_id!r}'s, not this request's {request.run_id!r}"
        )
    if digest_of_uri(result.adapter_uri) != result.adapter_digest:
        problems.append(
            f"adapter_uri {result.adapter_uri} is not the content address of {result.adapter_digest}"
        )
        return
    bucket, prefix = parse_s3_uri(result.adapter_uri)
    a_store = store.for_bucket(bucket)
    for name in ADAPTER_FILES:
        if not a_store.exists(join_key(prefix.rstrip("/"), name)):
            problems.append(f"{a_store.uri(join_key(prefix.rstrip('/'), name))} is missing")


def _evaluate_problems(store: ObjectStore, run_prefix: str, problems: list[str]) -> None:
    report = _read(store, join_key(run_prefix, runs.EVAL_REPORT), runs.EvalReport, problems)
    request = _read(store, join_key(run_prefix, runs.EVAL_REQUEST), runs.EvalRequest, problems)
    if report is None or request is None:
        return
    for field in ("run_id", "golden_hash"):
        if getattr(report, field) != getattr(request, field):
            problems.append(
                f"{store.uri(join_key(run_prefix, runs.EVAL_REPORT))}: {field} {getattr(report, field)!r} "
                f"is not the request's {getattr(request, field)!r}"
            )


def _export_problems(store: ObjectStore, run_prefix: str, problems: list[str]) -> None:
    result = _read(store, join_key(run_prefix, runs.EXPORT_RESULT), runs.ExportResult, problems)
    merged = join_key(run_prefix, runs.MERGED_DIR)
    if result is not None and (not result.files or not store.exists(join_key(merged, "config.json"))):
        problems.append(f"no merged model under {store.uri(merged + '/')}")


_CHECKS = {"train": _train_problems, "evaluate": _evaluate_problems, "export": _export_problems}


def commit_problems(store: ObjectStore, run_prefix: str, stage: str) -> list[str]:
    """What is wrong with the stage's committed output (empty when it is complete)."""
    marker_key(run_prefix, stage)  # an unknown stage is an error, not "no problems"
    problems: list[str] = []
    _CHECKS[stage](store, run_prefix, problems)
    return problems


def check_committed(store: ObjectStore, run_prefix: str, stage: str) -> None:
    """Raise `StageNotCommitted` naming every problem when the stage's output is incomplete."""
    problems = commit_problems(store, run_prefix, stage)
    if problems:
        raise StageNotCommitted(
            f"`retrain {stage}` exited 0 but did not commit its output: " + "; ".join(problems)
        )
    log.info("%s committed %s", stage, store.uri(marker_key(run_prefix, stage)))
