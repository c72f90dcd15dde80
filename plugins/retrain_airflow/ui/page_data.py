"""What the pages show, read from where the pipeline leaves it: S3 and the MLflow registry.

S3 is read through the Airflow connection of conf ``airflow.aws_conn_id``: ``runs/<run>/summary.json``
(written by the promote task) and ``runs/<run>/intake.json`` (per-object counts, reasons, GX Data Docs).
Summaries are read as dicts. boto3, botocore and MLflow are imported when a page is served.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from retrain.redact import mask_summary, mask_text
from retrain.storage import ObjectStore

log = logging.getLogger(__name__)

MAX_RUNS = 60  # runs shown on the overview (newest), each costs two small S3 reads
STORE_TTL_S = 300.0  # how long one boto3 client (and the connection it was made from) is reused
MODEL_NAME = re.compile(r"^[A-Za-z0-9._-]{1,200}$")  # what retrain.registry.model_name produces
DATE_IN_RUN_ID = re.compile(r"(\d{4}-\d{2}-\d{2})T(\d{2})[_:](\d{2})[_:](\d{2})")


@dataclass
class RunRecord:
    """What S3 holds about one ``ner_retrain`` run."""

    folder: str  # the run's folder name under runs/ (the safe run id)
    summary: dict[str, Any] | None
    intake: dict[str, Any] | None
    written: datetime | None  # when summary.json (else intake.json) was written

    @property
    def run_id(self) -> str:
        """The Airflow run id the reports name (else the folder name)."""
        for doc in (self.summary, self.intake):
            if doc and doc.get("run_id"):
                return str(doc["run_id"])
        return self.folder

    @property
    def exam(self) -> str:
        """The golden-set version ("exam") this run's scores are on, ``<golden hash>/<sentences>``: the
        decision's, else the summary's dataset's (runs decided before decisions named it); "" without
        an evaluation."""
        summary = self.summary or {}
        named = (summary.get("decision") or {}).get("exam")
        if isinstance(named, str) and named:
            return named
        ds = summary.get("dataset") or {}
        if ds.get("golden_hash") and ds.get("golden") is not None:
            return f"{ds['golden_hash']}/{ds['golden']}"
        return ""

    @property
    def intake_counts(self) -> dict[str, Any]:
        """Records read/accepted/quarantined: intake.json, else the summary's copy."""
        if self.intake:
            return self.intake
        return (self.summary or {}).get("intake") or {}


def exam_label(exam: str) -> str:
    """``3f2a9c1b/43`` (hash prefix / sentences) for an exam version, "" for none."""
    if not isinstance(exam, str) or "/" not in exam:
        return ""
    digest, _, size = exam.partition("/")
    return f"{digest[:8]}/{size}"


@dataclass
class Overview:
    """The Retraining page's data; each side survives the other being down (its error says why)."""

    runs: list[RunRecord]
    registry: dict[str, Any] | None  # {"describe": Registry.describe(), "history": Registry.history()}
    registry_error: str
    s3_error: str


def run_label(run: RunRecord) -> str:
    """A short x-axis label for a run: its date when the run id carries one."""
    m = DATE_IN_RUN_ID.search(run.run_id) or DATE_IN_RUN_ID.search(run.folder)
    if m:
        return f"{m.group(1)[5:]} {m.group(2)}:{m.group(3)}"
    return run.run_id[:16]


# --------------------------------------------------------------------------- S3
def _folder_sort_key(folder: str) -> tuple[str, str]:
    m = DATE_IN_RUN_ID.search(folder)
    return (f"{m.group(1)}T{m.group(2)}:{m.group(3)}:{m.group(4)}" if m else "", folder)


def _get_json(store: ObjectStore, key: str) -> tuple[dict[str, Any] | None, datetime | None]:
    """The JSON object at ``key`` and when it was written; (None, None) when missing, a warning and
    None for the document when it is not a JSON object (the page shows what it can)."""
    obj = store.get_object(key)
    if obj is None:
        return None, None
    try:
        doc = json.loads(obj["Body"].read().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        log.warning("s3://%s/%s is not JSON: %s", store.bucket, key, exc)
        return None, obj.get("LastModified")
    return (doc if isinstance(doc, dict) else None), obj.get("LastModified")


def run_folders(store: ObjectStore, runs_prefix: str) -> list[str]:
    """The run folders under ``runs_prefix`` (one S3 listing with a delimiter: no per-file walk)."""
    return store.folders(runs_prefix)


def load_run(store: Any, runs_prefix: str, folder: str) -> RunRecord:
    """The summary and intake report of the run in ``runs_prefix/folder`` (None where missing)."""
    from retrain import runs

    base = runs_prefix.rstrip("/") + "/" + folder
    summary, s_at = _get_json(store, f"{base}/{runs.SUMMARY}")
    intake, i_at = _get_json(store, f"{base}/{runs.INTAKE}")
    return RunRecord(folder=folder, summary=mask_summary(summary), intake=intake, written=s_at or i_at)


def load_runs(store: Any, runs_prefix: str, limit: int = MAX_RUNS) -> list[RunRecord]:
    """The newest ``limit`` runs that left a summary or an intake report, oldest first."""
    folders = sorted(run_folders(store, runs_prefix), key=_folder_sort_key)[-limit * 2 :]
    with ThreadPoolExecutor(max_workers=8) as pool:
        runs = list(pool.map(lambda f: load_run(store, runs_prefix, f), folders))
    runs = [r for r in runs if r.summary or r.intake]
    epoch = datetime.min.replace(tzinfo=UTC)
    runs.sort(key=lambda r: (r.written or epoch, _folder_sort_key(r.folder)))
    return runs[-limit:]


def list_keys(store: Any, prefix: str, limit: int = 200) -> list[str]:
    """The first ``limit`` object keys under ``prefix``."""
    keys = []
    for obj in store.iter_objects(prefix):
        keys.append(obj.key)
        if len(keys) >= limit:
            break
    return keys


def validation_pages(store: Any, bucket: str, intake: dict[str, Any] | None) -> dict[str, list[str]]:
    """For each GX Data Docs index of a run's intake, the keys of its validation result pages (linked
    directly: the Data Docs index needs scripts from a CDN)."""
    pages: dict[str, list[str]] = {}
    for o in (intake or {}).get("objects") or []:
        docs = o.get("docs_uri") if isinstance(o, dict) else None
        if docs and docs.startswith(f"s3://{bucket}/"):
            base = docs[len(f"s3://{bucket}/") :].rsplit("/", 1)[0]
            pages[docs] = [k for k in list_keys(store, base + "/validations/") if k.endswith(".html")]
    return pages


_STORE_CACHE: dict[tuple[str, str], tuple[float, Any]] = {}
_STORE_LOCK = threading.Lock()


def cached_object_store(settings: Any) -> Any:
    """The bucket through the Airflow connection, reused for a few minutes (one boto3 client)."""
    from retrain_airflow.s3 import object_store

    key = (settings.airflow.aws_conn_id, settings.s3.bucket)
    now = time.monotonic()
    with _STORE_LOCK:
        hit = _STORE_CACHE.get(key)
        if hit and now - hit[0] < STORE_TTL_S:
            return hit[1]
    store = object_store(settings)
    with _STORE_LOCK:
        _STORE_CACHE[key] = (now, store)
    return store


# --------------------------------------------------------------------------- the registry
def registry_for(settings: Any, model: str | None = None) -> Any:
    """The registry of conf ``train.base_model``, or of the registered model ``model`` (another base
    model, from the ``?model=`` of a page)."""
    from retrain.registry import Registry

    if model and not MODEL_NAME.match(model):
        raise ValueError(f"model: {model!r} is not a registered model name")

    reg = Registry.from_settings(settings, settings.train.base_model)
    if model and model != reg.name:
        reg = Registry(reg.tracking_uri, model, reg.artifact_location)
    return reg


def read_overview(settings: Any, model: str | None) -> Overview:
    """The runs in S3 and the registry's versions and alias history, each with its error if it is down."""
    try:
        runs, s3_error = load_runs(cached_object_store(settings), settings.s3.runs_prefix), ""
    except Exception as exc:  # the page still shows the registry when S3 is down
        log.exception("reading run reports from S3 failed")
        runs, s3_error = [], f"{type(exc).__name__}: {exc}"
    registry, error = read_registry(settings, model)
    return Overview(runs=runs, registry=registry, registry_error=error, s3_error=s3_error)


def read_registry(settings: Any, model: str | None) -> tuple[dict[str, Any] | None, str]:
    """``({"describe": …, "history": …}, "")``, or ``(None, error)`` when MLflow cannot be read; the
    error has the tracking URI's password masked."""
    try:
        reg = registry_for(settings, model)
        return {"describe": reg.describe(), "history": reg.history()}, ""
    except Exception as exc:  # the page still shows the S3 side when MLflow is down
        # no traceback: MLflow's errors can quote the tracking URI, password included
        error = mask_text(f"{type(exc).__name__}: {exc}", settings.registry.tracking_uri)
        log.error("reading the MLflow registry failed: %s", error)
        return None, error
