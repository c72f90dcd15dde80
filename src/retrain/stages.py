"""Did a trainer stage do its work? Decided from what it committed to the run's S3 prefix.

Every trainer stage (``retrain train|evaluate|export --run-uri s3://…/runs/<id>``) writes one file
last, its commit marker; the launchers (local subprocess, Docker, Kubernetes) remove that marker
before they start the stage and, when the stage exits 0, require it back and consistent with the
stage's request. So a process or container that exits 0 without doing the work (a swallowed error, a
replaced entrypoint, a wrapper script) fails its task with the reason, and a marker left by an earlier
attempt can never pass for this one's.

    train     train_result.json         status succeeded, the adapter files under runs/<id>/adapter/
    evaluate  eval/report.json          this run's, on the golden set eval_request.json names
    export    export_result.json        status succeeded, a merged model under runs/<id>/merged/
"""

from __future__ import annotations

import logging
from typing import Any

from retrain.storage import ObjectStore, join_key
from retrain.train import ADAPTER_FILES, RESULT_FILE

log = logging.getLogger(__name__)

#: The file each stage writes last, relative to the run prefix.
COMMIT_MARKERS = {
    "train": RESULT_FILE,
    "evaluate": "eval/report.json",
    "export": "export_result.json",
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
    store.client.delete_object(Bucket=store.bucket, Key=key)
    return True


def _get_json(store: ObjectStore, key: str, problems: list[str]) -> dict[str, Any] | None:
    if not store.exists(key):
        problems.append(f"{store.uri(key)} is missing")
        return None
    try:
        value = store.get_json(key)
    except ValueError as exc:
        problems.append(f"{store.uri(key)} is not JSON ({exc})")
        return None
    if not isinstance(value, dict):
        problems.append(f"{store.uri(key)} is not a JSON object")
        return None
    return value


def _succeeded(result: dict[str, Any], key: str, store: ObjectStore, problems: list[str]) -> bool:
    if result.get("status") != "succeeded":
        problems.append(f"{store.uri(key)} has status {result.get('status')!r}, not 'succeeded'")
        return False
    return True


def commit_problems(store: ObjectStore, run_prefix: str, stage: str) -> list[str]:
    """What is wrong with the stage's committed output (empty when it is complete)."""
    problems: list[str] = []
    key = marker_key(run_prefix, stage)
    marker = _get_json(store, key, problems)
    if marker is None:
        return problems
    if stage == "train":
        if _succeeded(marker, key, store, problems):
            adapter_prefix = join_key(run_prefix, "adapter")
            if marker.get("adapter_uri") != store.uri(adapter_prefix + "/"):
                problems.append(
                    f"adapter_uri {marker.get('adapter_uri')!r} is not this run's "
                    f"{store.uri(adapter_prefix + '/')}"
                )
            for name in ADAPTER_FILES:
                if not store.exists(join_key(adapter_prefix, name)):
                    problems.append(f"{store.uri(join_key(adapter_prefix, name))} is missing")
    elif stage == "evaluate":
        request = _get_json(store, join_key(run_prefix, "eval_request.json"), problems)
        if request is not None:
            for field in ("run_id", "golden_hash"):
                if marker.get(field) != request.get(field):
                    problems.append(
                        f"{store.uri(key)}: {field} {marker.get(field)!r} is not the request's "
                        f"{request.get(field)!r}"
                    )
        for role in ("candidate", "champion"):
            if not isinstance(marker.get(role), dict):
                problems.append(f"{store.uri(key)} has no {role} metrics")
    elif stage == "export":
        if _succeeded(marker, key, store, problems):
            merged = join_key(run_prefix, "merged")
            if not marker.get("files") or not store.exists(join_key(merged, "config.json")):
                problems.append(f"no merged model under {store.uri(merged + '/')}")
    return problems


def check_committed(store: ObjectStore, run_prefix: str, stage: str) -> None:
    """Raise `StageNotCommitted` naming every problem when the stage's output is incomplete."""
    problems = commit_problems(store, run_prefix, stage)
    if problems:
        raise StageNotCommitted(
            f"`retrain {stage}` exited 0 but did not commit its output: " + "; ".join(problems)
        )
    log.info("%s committed %s", stage, store.uri(marker_key(run_prefix, stage)))
