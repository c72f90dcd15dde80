"""Stages 1–2: find new or changed batches in S3, parse and validate them, commit the outcome.

The ledger (``<state_prefix>ledger.json``) records every processed object by key and ETag. An
object is processed when its key is new or its ETag changed (a corrected re-upload). The ledger is
written only after a batch's accepted and quarantined records are committed to S3, so a crash in
between reprocesses the batch on the next run instead of losing it; processing is keyed by the
source object, so processing the same object twice overwrites the same outputs (idempotent).

Accounting is checked per object: every input record ends either accepted or quarantined, and
``accepted + quarantined == read`` or the stage fails loudly.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from retrain import runs
from retrain.config import Settings
from retrain.records import Record, Rejection, dumps_jsonl
from retrain.runs import safe_run_id
from retrain.storage import ObjectInfo, ObjectStore, join_key

log = logging.getLogger(__name__)

LEDGER_NAME = "ledger.json"
PENDING_NAME = "dataset_pending.json"


class AccountingError(RuntimeError):
    """accepted + quarantined != read for an object: a record was lost or counted twice."""


def object_slug(key: str) -> str:
    """A short, safe, stable name for a source object: readable stem + hash of the full key.

    Keys are untrusted; the slug never contains ``/`` or ``..`` whatever the key holds."""
    stem = re.sub(r"[^A-Za-z0-9_-]", "_", key.rsplit("/", 1)[-1].rsplit(".", 1)[0])[:40].strip("_") or "obj"
    return f"{stem}-{hashlib.sha256(key.encode('utf-8', 'surrogatepass')).hexdigest()[:12]}"


@dataclass
class PendingObject:
    key: str
    etag: str
    size: int
    change: str  # "new" | "changed"
    previous_etag: str = ""


@dataclass
class IntakePlan:
    objects: list[PendingObject]
    dataset_pending: bool  # accepted data exists that no finished run has trained on yet

    @property
    def has_work(self) -> bool:
        return bool(self.objects) or self.dataset_pending


def read_ledger(store: ObjectStore, settings: Settings) -> dict[str, dict[str, Any]]:
    key = join_key(settings.s3.state_prefix, LEDGER_NAME)
    if not store.exists(key):
        return {}
    return store.get_json(key)["objects"]


def find_new_batches(store: ObjectStore, settings: Settings) -> IntakePlan:
    """Objects under the incoming prefix that are new or changed since the ledger, page by page."""
    ledger = read_ledger(store, settings)
    pending: list[PendingObject] = []
    seen = 0
    for obj in store.iter_objects(settings.s3.incoming_prefix, page_size=settings.intake.page_size):
        seen += 1
        if obj.key.endswith("/"):
            continue  # folder placeholder objects
        prev = ledger.get(obj.key)
        if prev is None:
            pending.append(PendingObject(obj.key, obj.etag, obj.size, "new"))
        elif prev["etag"] != obj.etag:
            pending.append(PendingObject(obj.key, obj.etag, obj.size, "changed", prev["etag"]))
    flag = store.exists(join_key(settings.s3.state_prefix, PENDING_NAME))
    log.info(
        "listed %d objects under %s: %d new, %d changed; untrained accepted data: %s",
        seen,
        store.uri(settings.s3.incoming_prefix),
        sum(p.change == "new" for p in pending),
        sum(p.change == "changed" for p in pending),
        flag,
    )
    return IntakePlan(objects=pending, dataset_pending=flag)


@dataclass
class ObjectOutcome:
    key: str
    etag: str
    change: str
    read: int
    accepted: int
    quarantined: int
    reasons: dict[str, int]
    batch_quarantined: bool
    warnings: list[str]
    accepted_uri: str
    quarantine_uri: str
    docs_uri: str


@dataclass
class IntakeResult:
    run_id: str
    objects: list[ObjectOutcome] = field(default_factory=list)
    report_uri: str = ""

    @property
    def read(self) -> int:
        return sum(o.read for o in self.objects)

    @property
    def accepted(self) -> int:
        return sum(o.accepted for o in self.objects)

    @property
    def quarantined(self) -> int:
        return sum(o.quarantined for o in self.objects)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(read=self.read, accepted=self.accepted, quarantined=self.quarantined)
        return d


def _label_counts_by_object(store: ObjectStore, settings: Settings) -> dict[str, dict[str, int]]:
    """Accepted span counts per label, per source object (reprocessing an object replaces its entry,
    so a retried or cleared intake never counts a batch twice)."""
    key = join_key(settings.s3.state_prefix, "label_counts.json")
    return store.get_json(key).get("by_object", {}) if store.exists(key) else {}


def _history_excluding(by_object: dict[str, dict[str, int]], key: str) -> dict[str, int]:
    total: dict[str, int] = {}
    for obj_key, counts in by_object.items():
        if obj_key != key:
            for label, n in counts.items():
                total[label] = total.get(label, 0) + n
    return total


def _process_object(
    store: ObjectStore,
    settings: Settings,
    pending: PendingObject,
    *,
    run_id: str,
    now: str,
    tmp: str,
    by_object: dict[str, dict[str, int]],
) -> ObjectOutcome:
    """Parse + validate one object; write its accepted and quarantined records and its Data Docs;
    update ``by_object`` with its accepted label counts. Every record read is accounted for."""
    from retrain import formats, validate

    rid = safe_run_id(run_id)
    slug = object_slug(pending.key)
    obj = ObjectInfo(pending.key, pending.etag, pending.size)
    records, parse_rejections, _stats = formats.read_object(store, obj, settings)
    read = len(records) + len(parse_rejections)
    docs_dir = Path(tmp) / slug
    parse_bad, parse_dups = validate.count_parse_rejections(parse_rejections)
    check = validate.validate_batch(
        records,
        settings,
        batch_name=slug,
        docs_dir=docs_dir,
        history_label_counts=_history_excluding(by_object, pending.key),
        parse_rejected=parse_bad,
        parse_duplicates=parse_dups,
    )
    rejected: list[Rejection] = parse_rejections + check.rejected
    accepted: list[Record] = check.accepted
    if len(accepted) + len(rejected) != read:
        raise AccountingError(
            f"{pending.key}: read {read} records but accepted {len(accepted)} + "
            f"quarantined {len(rejected)} = {len(accepted) + len(rejected)}"
        )
    accepted_key = join_key(settings.s3.accepted_prefix, f"{slug}.jsonl")
    rows = []
    for r in accepted:
        d = r.to_json()
        d.update(source_etag=pending.etag, ingested_at=now, run_id=run_id)
        rows.append(d)
    store.put_bytes(accepted_key, dumps_jsonl(rows), "application/x-ndjson")
    quarantine_key = join_key(settings.s3.quarantine_prefix, rid, f"{slug}.jsonl")
    store.put_bytes(quarantine_key, dumps_jsonl([q.to_json() for q in rejected]), "application/x-ndjson")
    docs_uri = ""
    if check.docs_index is not None and Path(check.docs_index).exists():
        prefix = join_key(settings.s3.reports_prefix, rid, slug)
        store.upload_dir(docs_dir, prefix)
        docs_uri = store.uri(join_key(prefix, Path(check.docs_index).relative_to(docs_dir).as_posix()))
    reasons: dict[str, int] = {}
    for q in rejected:
        reasons[q.reason] = reasons.get(q.reason, 0) + 1
    counts: dict[str, int] = {}
    for r in accepted:
        for e in r.entities:
            counts[e.label] = counts.get(e.label, 0) + 1
    by_object[pending.key] = counts
    outcome = ObjectOutcome(
        key=pending.key,
        etag=pending.etag,
        change=pending.change,
        read=read,
        accepted=len(accepted),
        quarantined=len(rejected),
        reasons=reasons,
        batch_quarantined=check.batch_quarantined,
        warnings=list(check.warnings),
        accepted_uri=store.uri(accepted_key),
        quarantine_uri=store.uri(quarantine_key),
        docs_uri=docs_uri,
    )
    return outcome


def process_batches(
    store: ObjectStore,
    settings: Settings,
    objects: list[PendingObject],
    run_id: str,
    workdir: str | Path | None = None,
) -> IntakeResult:
    """Parse + validate each object, write accepted/quarantined records and reports, then the ledger."""
    rid = safe_run_id(run_id)
    result = IntakeResult(run_id=run_id)
    by_object = _label_counts_by_object(store, settings)
    now = datetime.now(UTC).isoformat(timespec="microseconds")  # orders corrections: later wins
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        for i, pending in enumerate(objects, 1):
            outcome = _process_object(
                store, settings, pending, run_id=run_id, now=now, tmp=tmp, by_object=by_object
            )
            result.objects.append(outcome)
            log.info(
                "[%d/%d] %s (%s): read %d, accepted %d, quarantined %d %s%s",
                i,
                len(objects),
                pending.key,
                pending.change,
                outcome.read,
                outcome.accepted,
                outcome.quarantined,
                json.dumps(outcome.reasons, ensure_ascii=False),
                f" — Data Docs: {outcome.docs_uri}" if outcome.docs_uri else "",
            )
            for w in outcome.warnings:
                log.warning("%s: %s", pending.key, w)
        report_key = join_key(settings.s3.quarantine_prefix, rid, "report.md")
        store.put_bytes(report_key, render_intake_report(result).encode("utf-8"), "text/markdown")
        result.report_uri = store.uri(report_key)
        store.put_json(join_key(settings.s3.runs_prefix, rid, runs.INTAKE), result.to_json())
    if result.accepted:
        store.put_json(join_key(settings.s3.state_prefix, PENDING_NAME), {"since_run": run_id, "at": now})
    store.put_json(join_key(settings.s3.state_prefix, "label_counts.json"), {"by_object": by_object})
    commit_ledger(store, settings, objects, run_id)
    log.info(
        "intake done: read %d, accepted %d, quarantined %d; report %s",
        result.read,
        result.accepted,
        result.quarantined,
        result.report_uri,
    )
    return result


def commit_ledger(store: ObjectStore, settings: Settings, objects: list[PendingObject], run_id: str) -> None:
    """Record the processed objects (call only after their outputs are committed)."""
    key = join_key(settings.s3.state_prefix, LEDGER_NAME)
    ledger = read_ledger(store, settings)
    now = datetime.now(UTC).isoformat(timespec="seconds")
    for p in objects:
        ledger[p.key] = {"etag": p.etag, "run_id": run_id, "processed_at": now, "change": p.change}
    store.put_json(key, {"objects": ledger})


def render_intake_report(result: IntakeResult) -> str:
    """A readable Markdown report of what was accepted and quarantined, and why."""
    lines = [
        f"# Intake report — run {result.run_id}",
        "",
        f"Read **{result.read}** records: accepted **{result.accepted}**, "
        f"quarantined **{result.quarantined}**.",
        "",
        "| object | change | read | accepted | quarantined | reasons | Data Docs |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    for o in result.objects:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(o.reasons.items())) or "—"
        flag = " (whole batch quarantined)" if o.batch_quarantined else ""
        lines.append(
            f"| `{o.key}` | {o.change} | {o.read} | {o.accepted} | {o.quarantined}{flag} | {reasons} | "
            f"{o.docs_uri or '—'} |"
        )
    warnings = [(o.key, w) for o in result.objects for w in o.warnings]
    if warnings:
        lines += ["", "## Warnings", ""] + [f"- `{k}`: {w}" for k, w in warnings]
    lines += [
        "",
        "Quarantined records (one JSON object per line, with file, line, field and reason) are "
        "stored next to this report.",
    ]
    return "\n".join(lines) + "\n"


def clear_pending(store: ObjectStore, settings: Settings) -> None:
    """Mark all accepted data as trained on (called once a run has finished training + promotion)."""
    key = join_key(settings.s3.state_prefix, PENDING_NAME)
    if store.exists(key):
        store.delete(key)
