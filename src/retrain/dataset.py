"""Stage 3: build the versioned alpaca dataset (LLaMA-Factory's format) from all accepted history.

- Accepted records accumulate per source object under ``accepted/``; the dataset is built from all
  of them. The same sentence seen twice: the later ingest wins (a correction); a different labeling
  of the same text is counted as a conflict in the manifest.
- The split is by a salted hash of the normalised text, so a sentence never moves between train,
  validation and golden across runs. A fixed golden file (conf ``dataset.golden_file``) replaces
  the hash-chosen golden part; any golden sentence found in the training data is removed from
  training and validation and counted.
- Fixed benchmark files (conf ``dataset.benchmark_files``: a team's own dev sets, CLUENER JSON lines)
  are written as ``benchmark_<name>.json`` in the same alpaca form; the evaluation scores candidate
  and champion on each of them every run, beside the golden set. Their sentences never train.
- Retractions (`retrain.ingest`): an object removed from the incoming prefix has its accepted
  records moved out of ``accepted/``, so the next version simply does not hold them; the manifest
  counts them (``retracted``, from the ledger), and a golden sentence only that object held leaves
  the hash-chosen golden set, which changes its hash.
- The version is a content hash of the files written: same inputs give the same version and
  byte-identical files, and a version folder once written is never rewritten.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from retrain.config import Settings
from retrain.errors import InputError
from retrain.prompt import alpaca_example
from retrain.records import Record, normalise_text
from retrain.storage import ObjectStore, join_key

log = logging.getLogger(__name__)

TRAIN_NAME = "alpaca_clue_train"
VALIDATION_NAME = "alpaca_clue_validation"
GOLDEN_NAME = "alpaca_clue_golden"


class EmptyDatasetError(InputError, RuntimeError):
    """No accepted record is available to train on."""


def split_of(text: str, seed: str, validation_fraction: float, golden_fraction: float) -> str:
    """'train' | 'validation' | 'golden' from a salted SHA-256 of the normalised text (stable)."""
    h = hashlib.sha256(f"{seed}\x00{normalise_text(text)}".encode()).digest()
    u = int.from_bytes(h[:8], "big") / 2**64
    if u < golden_fraction:
        return "golden"
    if u < golden_fraction + validation_fraction:
        return "validation"
    return "train"


def _canonical_json(obj: Any) -> bytes:
    return (json.dumps(obj, ensure_ascii=False, indent=1, sort_keys=True) + "\n").encode("utf-8")


@dataclass
class DatasetResult:
    version: str
    uri: str
    train: int
    validation: int
    golden: int
    golden_hash: str
    golden_removed_from_train: int
    conflicts: int
    duplicates: int
    label_counts: dict[str, int]
    created: bool
    benchmarks: list[dict[str, Any]] = field(default_factory=list)  # runs.BenchmarkRef fields
    benchmark_removed_from_train: int = 0
    retracted: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def load_accepted(
    store: ObjectStore, settings: Settings
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """All accepted rows (each with ingested_at) and the source list (key, etag) they came from."""
    rows: list[dict[str, Any]] = []
    sources: dict[str, str] = {}
    for obj in store.iter_objects(settings.s3.accepted_prefix, page_size=settings.intake.page_size):
        body = store.open_stream(obj.key)
        for line in body.iter_lines():
            if line.strip():
                row = json.loads(line)
                rows.append(row)
                sources[row["source_key"]] = row.get("source_etag", "")
    return rows, [{"key": k, "etag": v} for k, v in sorted(sources.items())]


def retracted_sources(store: ObjectStore, settings: Settings) -> list[dict[str, Any]]:
    """The retracted objects the ledger records (key, etag, records, when, by which run), by key."""
    from retrain.ingest import read_ledger

    return [
        {
            "key": key,
            "etag": e["etag"],
            "records": int(e.get("retracted_records", 0)),
            "retracted_at": e.get("retracted_at", ""),
            "retracted_by_run": e.get("retracted_by_run", ""),
        }
        for key, e in sorted(read_ledger(store, settings).items())
        if e.get("retracted")
    ]


def _load_fixed_file(path: str, settings: Settings, store: ObjectStore, what: str) -> list[Record]:
    """A fixed evaluation file (CLUENER JSON lines, a local path or s3://); every line must be valid."""
    from retrain import formats

    if path.startswith("s3://"):
        from retrain.storage import parse_s3_uri

        bucket, key = parse_s3_uri(path)
        data = store.for_bucket(bucket).get_bytes(key)
    else:
        data = Path(path).read_bytes()
    records: list[Record] = []
    rejections: list[Any] = []
    for item in formats.parse_stream(data.splitlines(), path, "", settings, fmt="cluener"):
        if isinstance(item, Record):
            records.append(item)
        else:
            rejections.append(item)
    if rejections:
        first = rejections[0].message()
        raise ValueError(f"{what} {path}: {len(rejections)} invalid records, first: {first}")
    if not records:
        raise ValueError(f"{what} {path}: no records")
    return records


def _latest_records(rows: list[dict[str, Any]]) -> tuple[dict[str, Record], int, int]:
    """One record per normalised text, the later ingest winning; (records, conflicts, duplicates):
    a relabeled text counts as a conflict, the same labels again as a duplicate."""
    rows.sort(key=lambda r: (r.get("ingested_at", ""), r["source_key"], r["line"]))
    latest: dict[str, Record] = {}
    conflicts = duplicates = 0
    for row in rows:
        rec = Record.from_json(row)
        key = normalise_text(rec.text)
        prev = latest.get(key)
        if prev is not None:
            if sorted(prev.entities) != sorted(rec.entities):
                conflicts += 1
            else:
                duplicates += 1
        latest[key] = rec
    return latest, conflicts, duplicates


def benchmark_name(path: str) -> str:
    """A benchmark's name: its file name without extension, as a slug (``dev.jsonl`` -> ``dev``)."""
    stem = path.rstrip("/").rsplit("/", 1)[-1].split(".", 1)[0]
    return re.sub(r"[^A-Za-z0-9_-]+", "-", stem).strip("-") or "benchmark"


def _load_benchmarks(settings: Settings, store: ObjectStore) -> dict[str, tuple[str, list[Record]]]:
    """name -> (source path, records) for every ``dataset.benchmark_files`` entry; names must differ."""
    out: dict[str, tuple[str, list[Record]]] = {}
    for path in settings.dataset.benchmark_files:
        name = benchmark_name(path)
        if name in out:
            raise ValueError(
                f"benchmark files {out[name][0]} and {path} have the same name {name!r}: rename one"
            )
        out[name] = (path, _load_fixed_file(path, settings, store, "benchmark file"))
    return out


def _partition(
    latest: dict[str, Record], settings: Settings, store: ObjectStore, held_out: set[str]
) -> tuple[dict[str, list[Record]], int, int]:
    """(train/validation/golden records, golden sentences removed from training, benchmark sentences
    removed from training): the hash split, or a fixed golden file (its texts removed from
    training). ``held_out``: normalised texts of the benchmark files."""
    cfg = settings.dataset
    parts: dict[str, list[Record]] = {"train": [], "validation": [], "golden": []}
    golden_removed = bench_removed = 0
    golden_texts: set[str] = set()
    if cfg.golden_file:
        parts["golden"] = _load_fixed_file(cfg.golden_file, settings, store, "golden file")
        golden_texts = {normalise_text(r.text) for r in parts["golden"]}
    for key, rec in latest.items():
        if key in golden_texts:
            golden_removed += 1
            continue
        split = split_of(rec.text, cfg.split_seed, cfg.validation_fraction, cfg.golden_fraction)
        if cfg.golden_file and split == "golden":
            split = "train"
        if split != "golden" and key in held_out:
            bench_removed += 1
            continue
        parts[split].append(rec)
    if not parts["train"]:
        raise EmptyDatasetError("all accepted records fell into validation/golden; nothing to train on")
    return parts, golden_removed, bench_removed


def _alpaca_file(recs: list[Record], instruction: str, settings: Settings) -> bytes:
    examples = [
        alpaca_example(instruction, r.text, r.entities, settings.dataset.system_prompt)
        for r in sorted(recs, key=lambda r: r.id)
    ]
    return _canonical_json(examples)


def _dataset_files(
    parts: dict[str, list[Record]],
    benchmarks: dict[str, tuple[str, list[Record]]],
    instruction: str,
    settings: Settings,
) -> dict[str, bytes]:
    """The version's files: train/validation/golden.json and benchmark_<name>.json (alpaca), and
    LLaMA-Factory's dataset_info.json."""
    files = {f"{name}.json": _alpaca_file(recs, instruction, settings) for name, recs in parts.items()}
    for name, (_, recs) in benchmarks.items():
        files[f"benchmark_{name}.json"] = _alpaca_file(recs, instruction, settings)
    columns = {"prompt": "instruction", "query": "input", "response": "output"}
    if settings.dataset.system_prompt:
        columns["system"] = "system"
    files["dataset_info.json"] = _canonical_json(
        {
            TRAIN_NAME: {"file_name": "train.json", "columns": columns},
            VALIDATION_NAME: {"file_name": "validation.json", "columns": columns},
            GOLDEN_NAME: {"file_name": "golden.json", "columns": columns},
        }
    )
    return files


def _benchmark_refs(
    store: ObjectStore, prefix: str, benchmarks: dict[str, tuple[str, list[Record]]], files: dict[str, bytes]
) -> list[dict[str, Any]]:
    return [
        {
            "name": name,
            "source": path,
            "uri": store.uri(join_key(prefix, f"benchmark_{name}.json")),
            "hash": hashlib.sha256(files[f"benchmark_{name}.json"]).hexdigest()[:16],
            "size": len(recs),
        }
        for name, (path, recs) in benchmarks.items()
    ]


def _content_version(files: dict[str, bytes]) -> str:
    """The dataset version: a hash over every file's name and content."""
    content_hash = hashlib.sha256()
    for name in sorted(files):
        content_hash.update(name.encode() + b"\x00" + hashlib.sha256(files[name]).digest())
    return content_hash.hexdigest()[:16]


def build_dataset(store: ObjectStore, settings: Settings) -> DatasetResult:
    """Build (or find) the dataset version for the current accepted history and upload it."""
    rows, sources = load_accepted(store, settings)
    if not rows:
        raise EmptyDatasetError(f"no accepted records under {store.uri(settings.s3.accepted_prefix)}")
    latest, conflicts, duplicates = _latest_records(rows)
    retracted = retracted_sources(store, settings)
    cfg = settings.dataset
    instruction = settings.prompt.render_instruction()
    benchmarks = _load_benchmarks(settings, store)
    held_out = {normalise_text(r.text) for _, recs in benchmarks.values() for r in recs}
    parts, golden_removed, bench_removed = _partition(latest, settings, store, held_out)
    files = _dataset_files(parts, benchmarks, instruction, settings)
    label_counts = dict(Counter(e.label for rec in parts["train"] for e in rec.entities))
    version = _content_version(files)
    golden_hash = hashlib.sha256(files["golden.json"]).hexdigest()[:16]
    prompt_hash = hashlib.sha256(instruction.encode("utf-8")).hexdigest()[:16]
    manifest = {
        "version": version,
        "sources": sources,
        "counts": {k: len(v) for k, v in parts.items()},
        "label_counts_train": dict(sorted(label_counts.items())),
        "golden_hash": golden_hash,
        "golden_source": cfg.golden_file or f"hash split ({cfg.golden_fraction:.0%})",
        "golden_removed_from_train": golden_removed,
        "benchmarks": {name: path for name, (path, _) in benchmarks.items()},
        "benchmark_removed_from_train": bench_removed,
        "conflicts": conflicts,
        "duplicates": duplicates,
        "retracted": {"records": sum(r["records"] for r in retracted), "objects": retracted},
        "prompt_template_hash": prompt_hash,
        "split_seed": cfg.split_seed,
        "files": {name: hashlib.sha256(data).hexdigest() for name, data in sorted(files.items())},
    }
    prefix = join_key(settings.s3.datasets_prefix, version)
    manifest_key = join_key(prefix, "manifest.json")
    created = not store.exists(manifest_key)
    if created:
        for name, data in sorted(files.items()):
            store.put_bytes(join_key(prefix, name), data, "application/json")
        store.put_bytes(
            manifest_key, _canonical_json(manifest), "application/json"
        )  # last: commits the version
    counts = ", ".join(f"{k} {len(v)}" for k, v in parts.items())
    log.info(
        "dataset %s %s: %s (golden %s); %d conflicts, %d duplicates, %d golden sentences removed from "
        "training; %d records retracted so far",
        version,
        "written" if created else "already exists",
        counts,
        golden_hash,
        conflicts,
        duplicates,
        golden_removed,
        sum(r["records"] for r in retracted),
    )
    return DatasetResult(
        version=version,
        uri=store.uri(prefix + "/"),
        train=len(parts["train"]),
        validation=len(parts["validation"]),
        golden=len(parts["golden"]),
        golden_hash=golden_hash,
        golden_removed_from_train=golden_removed,
        conflicts=conflicts,
        duplicates=duplicates,
        label_counts=label_counts,
        created=created,
        benchmarks=_benchmark_refs(store, prefix, benchmarks, files),
        benchmark_removed_from_train=bench_removed,
        retracted=sum(r["records"] for r in retracted),
    )
