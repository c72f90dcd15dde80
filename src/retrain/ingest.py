"""Stages 1–2: find new, changed and removed batches in S3, parse and validate them, commit the outcome.

The ledger (``<state_prefix>ledger.json``) records every processed object by key and ETag. An
object is processed when its key is new or its ETag changed (a corrected re-upload). An object
the ledger holds that is no longer listed under the incoming prefix was **retracted**: its
accepted records leave the next dataset version (see `retract_object`); the ledger keeps the
key, marked retracted, with when, by which run and how many records, and where those records
were kept. Removal is found by listing against the ledger, never from events alone.

Objects are processed one at a time and committed one at a time: an object's records are
streamed in chunks of ``intake.chunk_records`` (parsed, validated, written to local spool files,
then uploaded), so memory does not grow with the object; the object's ledger entry is written as
soon as its accepted and quarantined records are stored, so a crash (or one huge object that
fails) leaves the objects already done committed and reprocesses only the rest; outputs are
keyed by the source object, so processing the same object twice overwrites the same outputs.

Accounting is checked per object: every input record ends either accepted or quarantined, and
``accepted + quarantined == read`` or the stage fails loudly.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from retrain import runs
from retrain.config import Settings
from retrain.records import Record, Rejection, dumps_jsonl
from retrain.runs import IntakeSummary, ObjectOutcome, RetractionOutcome, safe_run_id
from retrain.storage import ObjectInfo, ObjectStore, join_key

log = logging.getLogger(__name__)

LEDGER_NAME = "ledger.json"
PENDING_NAME = "dataset_pending.json"
LABEL_COUNTS_NAME = "label_counts.json"
RETRACTED_DIR = "retracted"


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
class RemovedObject:
    """An object the ledger processed that is no longer under the incoming prefix."""

    key: str
    etag: str  # the version the ledger processed (whose accepted records are removed)


@dataclass
class IntakePlan:
    objects: list[PendingObject]
    dataset_pending: bool  # accepted data exists that no finished run has trained on yet
    removed: list[RemovedObject] = field(default_factory=list)

    @property
    def has_work(self) -> bool:
        return bool(self.objects) or self.dataset_pending or bool(self.removed)


def read_ledger(store: ObjectStore, settings: Settings) -> dict[str, dict[str, Any]]:
    key = join_key(settings.s3.state_prefix, LEDGER_NAME)
    if not store.exists(key):
        return {}
    return store.get_json(key)["objects"]


def is_live(entry: dict[str, Any] | None) -> bool:
    """A ledger entry whose records are in the accepted data (processed, not retracted)."""
    return entry is not None and not entry.get("retracted")


def find_new_batches(store: ObjectStore, settings: Settings) -> IntakePlan:
    """Objects under the incoming prefix that are new or changed since the ledger, page by page,
    and (``intake.retract_removed``) the ledger's live objects that are no longer listed."""
    ledger = read_ledger(store, settings)
    prefix = settings.s3.incoming_prefix
    unseen = {k for k, e in ledger.items() if is_live(e) and k.startswith(prefix)}
    pending: list[PendingObject] = []
    seen = 0
    for obj in store.iter_objects(prefix, page_size=settings.intake.page_size):
        seen += 1
        unseen.discard(obj.key)
        if obj.key.endswith("/"):
            continue  # folder placeholder objects
        prev = ledger.get(obj.key)
        if prev is None or not is_live(prev):  # never seen, or retracted and uploaded again
            pending.append(PendingObject(obj.key, obj.etag, obj.size, "new"))
        elif prev["etag"] != obj.etag:
            pending.append(PendingObject(obj.key, obj.etag, obj.size, "changed", prev["etag"]))
    removed = [RemovedObject(k, ledger[k]["etag"]) for k in sorted(unseen)]
    if removed and not settings.intake.retract_removed:
        log.warning(
            "%d ledger objects are no longer under %s; intake.retract_removed is false: their records stay",
            len(removed),
            store.uri(prefix),
        )
        removed = []
    flag = store.exists(join_key(settings.s3.state_prefix, PENDING_NAME))
    log.info(
        "listed %d objects under %s: %d new, %d changed, %d removed (retractions); "
        "untrained accepted data: %s",
        seen,
        store.uri(prefix),
        sum(p.change == "new" for p in pending),
        sum(p.change == "changed" for p in pending),
        len(removed),
        flag,
    )
    return IntakePlan(objects=pending, dataset_pending=flag, removed=removed)


@dataclass
class IntakeResult:
    run_id: str
    objects: list[ObjectOutcome] = field(default_factory=list)
    retractions: list[RetractionOutcome] = field(default_factory=list)
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

    @property
    def retracted(self) -> int:
        return sum(r.records for r in self.retractions)

    def summary(self) -> IntakeSummary:
        """The ``intake.json`` contract of this result."""
        return IntakeSummary(
            run_id=self.run_id,
            objects=list(self.objects),
            retractions=list(self.retractions),
            report_uri=self.report_uri,
            read=self.read,
            accepted=self.accepted,
            quarantined=self.quarantined,
            retracted=self.retracted,
        )

    def to_json(self) -> dict[str, Any]:
        return runs.to_json(self.summary())


def _label_counts_by_object(store: ObjectStore, settings: Settings) -> dict[str, dict[str, int]]:
    """Accepted span counts per label, per source object (reprocessing an object replaces its entry,
    so a retried or cleared intake never counts a batch twice)."""
    key = join_key(settings.s3.state_prefix, LABEL_COUNTS_NAME)
    return store.get_json(key).get("by_object", {}) if store.exists(key) else {}


def _history_excluding(by_object: dict[str, dict[str, int]], key: str) -> dict[str, int]:
    total: dict[str, int] = {}
    for obj_key, counts in by_object.items():
        if obj_key != key:
            for label, n in counts.items():
                total[label] = total.get(label, 0) + n
    return total


def _chunked(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class _Commits:
    """The intake state one run updates object by object: ledger, label counts, pending marker and
    this run's ``intake.json``, written in that order after each object so that whatever is in the
    ledger is accounted for in its run's ``intake.json`` and flagged for training."""

    def __init__(self, store: ObjectStore, settings: Settings, result: IntakeResult) -> None:
        self.store, self.settings, self.result = store, settings, result
        self.ledger = read_ledger(store, settings)
        self.by_object = _label_counts_by_object(store, settings)
        self.pending_set = False
        rid = safe_run_id(result.run_id)
        self.intake_key = join_key(settings.s3.runs_prefix, rid, runs.INTAKE)
        self.earlier = runs.read_if_exists(store, self.intake_key, IntakeSummary)  # an earlier attempt

    def key(self, name: str) -> str:
        return join_key(self.settings.s3.state_prefix, name)

    def done_before(self, key: str, etag: str, retracted: bool) -> bool:
        """True when the ledger already has ``key`` at ``etag`` in that state (an earlier attempt or
        another run did it); this run's earlier outcome, if any, is carried into the result."""
        entry = self.ledger.get(key)
        if entry is None or entry["etag"] != etag or bool(entry.get("retracted")) != retracted:
            return False
        if (
            self.earlier is not None
            and entry.get("retracted_by_run" if retracted else "run_id") == self.result.run_id
        ):
            if retracted:
                self.result.retractions += [r for r in self.earlier.retractions if r.key == key]
            else:
                self.result.objects += [o for o in self.earlier.objects if o.key == key]
        log.info(
            "%s at ETag %s was already %s by run %s: skipped",
            key,
            etag,
            "retracted" if retracted else "ingested",
            entry.get("retracted_by_run" if retracted else "run_id"),
        )
        return True

    def commit(
        self, key: str, entry: dict[str, Any], counts: dict[str, int] | None, data_changed: bool
    ) -> None:
        """Label counts, pending marker, intake.json, then the ledger entry (the commit)."""
        if counts is None:
            self.by_object.pop(key, None)
        else:
            self.by_object[key] = counts
        self.store.put_json(self.key(LABEL_COUNTS_NAME), {"by_object": self.by_object})
        if data_changed and not self.pending_set:
            at = datetime.now(UTC).isoformat(timespec="microseconds")
            self.store.put_json(self.key(PENDING_NAME), {"since_run": self.result.run_id, "at": at})
            self.pending_set = True
        runs.write(self.store, self.intake_key, self.result.summary())
        self.ledger[key] = entry
        self.store.put_json(self.key(LEDGER_NAME), {"objects": self.ledger})


def process_batches(
    store: ObjectStore,
    settings: Settings,
    objects: list[PendingObject],
    run_id: str,
    workdir: str | Path | None = None,
    *,
    removed: list[RemovedObject] | None = None,
) -> IntakeResult:
    """Retract the ``removed`` objects, then parse + validate each of ``objects`` in chunks, write its
    accepted/quarantined records and reports, and commit it to the ledger, one object at a time.

    An object (or removal) the ledger already holds at that ETag is skipped: a retried task or a
    second run never ingests a record twice; this run's earlier outcome for it is kept."""
    rid = safe_run_id(run_id)
    result = IntakeResult(run_id=run_id)
    commits = _Commits(store, settings, result)
    now = datetime.now(UTC).isoformat(timespec="microseconds")  # orders corrections: later wins
    for gone in removed or []:
        if commits.done_before(gone.key, gone.etag, retracted=True):
            continue
        retraction = retract_object(store, settings, gone, run_id)
        result.retractions.append(retraction)
        entry = dict(commits.ledger.get(gone.key) or {"etag": gone.etag, "run_id": ""})
        entry.update(
            retracted=True,
            retracted_at=retraction.retracted_at,
            retracted_by_run=run_id,
            retracted_records=retraction.records,
            retracted_uri=retraction.evidence_uri,
        )
        commits.commit(gone.key, entry, None, data_changed=retraction.records > 0)
        log.info(
            "retracted %s (ETag %s, ingested by run %s): %d accepted records removed from the next dataset; "
            "kept at %s",
            gone.key,
            gone.etag,
            retraction.processed_by_run,
            retraction.records,
            retraction.evidence_uri,
        )
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        for i, pending in enumerate(objects, 1):
            if commits.done_before(pending.key, pending.etag, retracted=False):
                continue
            history = _history_excluding(commits.by_object, pending.key)
            outcome, counts = _ingest_object(store, settings, pending, run_id, now, Path(tmp), history)
            result.objects.append(outcome)
            done_at = datetime.now(UTC).isoformat(timespec="seconds")
            entry = {
                "etag": pending.etag,
                "run_id": run_id,
                "processed_at": done_at,
                "change": pending.change,
            }
            commits.commit(pending.key, entry, counts, data_changed=outcome.accepted > 0)
            _log_outcome(i, len(objects), pending, outcome)
    report_key = join_key(settings.s3.quarantine_prefix, rid, "report.md")
    store.put_bytes(report_key, render_intake_report(result).encode("utf-8"), "text/markdown")
    result.report_uri = store.uri(report_key)
    runs.write(store, commits.intake_key, result.summary())
    log.info(
        "intake done: read %d, accepted %d, quarantined %d; retracted %d records of %d removed objects; "
        "report %s",
        result.read,
        result.accepted,
        result.quarantined,
        result.retracted,
        len(result.retractions),
        result.report_uri,
    )
    return result


def _log_outcome(i: int, n: int, pending: PendingObject, o: ObjectOutcome) -> None:
    log.info(
        "[%d/%d] %s (%s): read %d, accepted %d, quarantined %d %s%s",
        i,
        n,
        pending.key,
        pending.change,
        o.read,
        o.accepted,
        o.quarantined,
        json.dumps(o.reasons, ensure_ascii=False),
        f" — Data Docs: {o.docs_uri}" if o.docs_uri else "",
    )
    for w in o.warnings:
        log.warning("%s: %s", pending.key, w)


@dataclass
class _Spool:
    """One object's outcomes on local disk: accepted rows and quarantined records, as JSON lines."""

    accepted_path: Path
    quarantine_path: Path
    read: int = 0
    accepted: int = 0
    quarantined: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def reject(self, rejections: list[Rejection], out: IO[bytes]) -> None:
        out.write(dumps_jsonl([q.to_json() for q in rejections]))
        self.quarantined += len(rejections)
        for q in rejections:
            self.reasons[q.reason] = self.reasons.get(q.reason, 0) + 1


def _ingest_object(
    store: ObjectStore,
    settings: Settings,
    pending: PendingObject,
    run_id: str,
    now: str,
    tmp: Path,
    history: dict[str, int],
) -> tuple[ObjectOutcome, dict[str, int]]:
    """Parse and validate one object in chunks of ``intake.chunk_records``, spool the outcomes to
    disk, then upload them: at most one chunk of records is in memory at a time. Returns the
    outcome and the accepted span counts per label."""
    from retrain import formats, validate

    slug = object_slug(pending.key)
    docs_dir = tmp / slug
    validator = validate.BatchValidator(
        settings,
        batch_name=slug,
        docs_dir=docs_dir,
        history_label_counts=history,
        docs_max_chunks=settings.intake.docs_max_chunks,
    )
    spool = _Spool(tmp / f"{slug}.accepted.jsonl", tmp / f"{slug}.quarantine.jsonl")
    stamp = {"source_etag": pending.etag, "ingested_at": now, "run_id": run_id}
    items = formats.iter_object(store, ObjectInfo(pending.key, pending.etag, pending.size), settings)
    with spool.accepted_path.open("wb") as acc, spool.quarantine_path.open("wb") as quar:
        for chunk in _chunked(items, settings.intake.chunk_records):
            records = [x for x in chunk if isinstance(x, Record)]
            parse_rejections = [x for x in chunk if not isinstance(x, Record)]
            bad, dups = validate.count_parse_rejections(parse_rejections)
            accepted, rejected = validator.add(records, parse_rejected=bad, parse_duplicates=dups)
            spool.read += len(chunk)
            acc.write(dumps_jsonl([{**r.to_json(), **stamp} for r in accepted]))
            spool.accepted += len(accepted)
            spool.reject(parse_rejections + rejected, quar)
        verdict = validator.finish()
    if verdict.batch_quarantined:  # every record accepted chunk by chunk goes to quarantine
        with spool.accepted_path.open("rb") as acc, spool.quarantine_path.open("ab") as quar:
            for batch in _chunked((line for line in acc if line.strip()), settings.intake.chunk_records):
                recs = [Record.from_json(json.loads(line)) for line in batch]
                spool.reject([validator.batch_rejection(r, verdict.reason) for r in recs], quar)
        spool.accepted_path.write_bytes(b"")
        spool.accepted = 0
    if spool.accepted + spool.quarantined != spool.read:
        raise AccountingError(
            f"{pending.key}: read {spool.read} records but accepted {spool.accepted} + "
            f"quarantined {spool.quarantined} = {spool.accepted + spool.quarantined}"
        )
    accepted_key = join_key(settings.s3.accepted_prefix, f"{slug}.jsonl")
    store.upload_file(spool.accepted_path, accepted_key, "application/x-ndjson")
    quarantine_key = join_key(settings.s3.quarantine_prefix, safe_run_id(run_id), f"{slug}.jsonl")
    store.upload_file(spool.quarantine_path, quarantine_key, "application/x-ndjson")
    docs_uri = ""
    if verdict.docs_index is not None and Path(verdict.docs_index).exists():
        prefix = join_key(settings.s3.reports_prefix, safe_run_id(run_id), slug)
        store.upload_dir(docs_dir, prefix)
        docs_uri = store.uri(join_key(prefix, Path(verdict.docs_index).relative_to(docs_dir).as_posix()))
    outcome = ObjectOutcome(
        key=pending.key,
        etag=pending.etag,
        change=pending.change,
        read=spool.read,
        accepted=spool.accepted,
        quarantined=spool.quarantined,
        reasons=spool.reasons,
        batch_quarantined=verdict.batch_quarantined,
        warnings=list(verdict.warnings),
        accepted_uri=store.uri(accepted_key),
        quarantine_uri=store.uri(quarantine_key),
        docs_uri=docs_uri,
    )
    return outcome, {} if verdict.batch_quarantined else verdict.label_counts


def retracted_key(settings: Settings, key: str, etag: str) -> str:
    """Where the accepted records of ``key`` at ``etag`` are kept once retracted (stable across runs,
    so a retraction interrupted after moving the records finds them again)."""
    tag = hashlib.sha256(etag.encode("utf-8")).hexdigest()[:12]
    return join_key(settings.s3.state_prefix, RETRACTED_DIR, f"{object_slug(key)}.{tag}.jsonl")


def retract_object(
    store: ObjectStore, settings: Settings, gone: RemovedObject, run_id: str
) -> RetractionOutcome:
    """Move the accepted records of a removed object out of ``accepted/`` (copy to
    `retracted_key`, then delete), so no later dataset version holds them, and count them.

    A sentence another live object also holds stays in the data through that object; a golden
    sentence that only the removed object held leaves the golden set (its hash changes)."""
    accepted_key = join_key(settings.s3.accepted_prefix, f"{object_slug(gone.key)}.jsonl")
    evidence = retracted_key(settings, gone.key, gone.etag)
    if store.exists(accepted_key):
        store.copy(accepted_key, evidence)
        store.delete(accepted_key)
    records, processed_by = 0, ""
    if store.exists(evidence):
        from retrain.formats import iter_bounded_lines

        body = store.open_stream(evidence)
        try:
            for line in iter_bounded_lines(iter(lambda: body.read(256 * 1024), b""), 1 << 30):
                if line.strip():
                    records += 1
                    processed_by = processed_by or json.loads(line).get("run_id", "")
        finally:
            body.close()
    return RetractionOutcome(
        key=gone.key,
        etag=gone.etag,
        processed_by_run=processed_by,
        records=records,
        retracted_at=datetime.now(UTC).isoformat(timespec="seconds"),
        evidence_uri=store.uri(evidence),
    )


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
    if result.retractions:
        lines += [
            "",
            f"## Retracted: {result.retracted} accepted records of {len(result.retractions)} removed objects",
            "",
            "Removed from the incoming prefix; their records leave the next dataset version.",
            "",
            "| object | ETag | ingested by run | records removed | kept at |",
            "|---|---|---|---:|---|",
        ]
        lines += [
            f"| `{r.key}` | `{r.etag}` | {r.processed_by_run or '—'} | {r.records} | {r.evidence_uri} |"
            for r in result.retractions
        ]
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
