"""Pre-flight check for annotators: ``retrain check PATH…`` judges local files as intake would.

The same parsers (`retrain.formats.parse_chunks`), label map, text-hygiene policy and Great
Expectations suite (`retrain.validate.BatchValidator`, in chunks of ``intake.chunk_records`` as
intake runs it) as the pipeline, on files on disk: each file is one batch, as one uploaded object
would be. Nothing here touches S3, Airflow or MLflow.
What differs from a nightly run: no label-drift check (it needs the accepted history in S3) and
no ``intake.formats`` prefixes (a local path is not a key; ``--format`` fixes the format instead).
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from retrain.config import Settings
from retrain.records import Record, Rejection

if TYPE_CHECKING:  # Great Expectations is imported only when a file is checked
    from retrain.validate import BatchValidator

PROGRESS_MIN_BYTES = 8 * 1024 * 1024  # files at least this large show progress
_SUFFIXES = (".json", ".jsonl", ".ndjson")  # what a folder given as PATH contributes
DUPLICATE = "duplicate_record"


@dataclass
class FileCheck:
    """What intake would make of one file: counts, every rejection, every warning with its line."""

    path: str
    format: str | None
    bytes: int
    read: int
    accepted: int
    quarantined: int  # rejections other than dropped exact duplicates
    duplicates: int  # exact duplicates dropped (reported, not quarantined as bad)
    reasons: dict[str, int]
    batch_quarantined: bool
    batch_reason: str
    rejections: list[Rejection]
    warnings: list[tuple[int, str]]  # (line, message); line 0 = the file as a whole
    docs_index: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.quarantined == 0 and not self.batch_quarantined

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "format": self.format,
            "bytes": self.bytes,
            "read": self.read,
            "accepted": self.accepted,
            "quarantined": self.quarantined,
            "duplicates_dropped": self.duplicates,
            "reasons": self.reasons,
            "batch_quarantined": self.batch_quarantined,
            "batch_reason": self.batch_reason,
            "ok": self.ok,
            "rejections": [r.to_json() for r in self.rejections],
            "warnings": [{"line": line, "message": msg} for line, msg in self.warnings],
            "data_docs": self.docs_index,
            "seconds": round(self.seconds, 3),
        }


@dataclass
class Progress:
    """Progress of a large file on ``stream``: a rewritten line on a terminal, else a line per 10 %."""

    stream: TextIO = field(default_factory=lambda: sys.stderr)
    min_bytes: int = PROGRESS_MIN_BYTES

    def reading(self, chunks: Iterable[bytes], name: str, size: int) -> Iterator[bytes]:
        if size < self.min_bytes:
            yield from chunks
            return
        tty = self.stream.isatty()
        done, shown = 0, -1
        for chunk in chunks:
            done += len(chunk)
            pct = min(100, done * 100 // size)
            if (tty and pct != shown) or (not tty and pct // 10 != shown // 10):
                end = "\r" if tty and pct < 100 else "\n"
                print(
                    f"check {name}: read {pct:3d}% ({done / 2**20:.1f}/{size / 2**20:.1f} MiB)",
                    end=end,
                    file=self.stream,
                    flush=True,
                )
                shown = pct
            yield chunk

    def note(self, name: str, size: int, message: str) -> None:
        if size >= self.min_bytes:
            print(f"check {name}: {message}", file=self.stream, flush=True)


def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Files named, plus the .json/.jsonl/.ndjson files under folders named (sorted). A path that
    does not exist raises FileNotFoundError naming it."""
    out: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in _SUFFIXES)
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"{raw}: no such file or folder")
    return out


def _file_chunks(path: Path, chunk_size: int = 1 << 20) -> Iterator[bytes]:
    with open(path, "rb") as f:
        yield from iter(lambda: f.read(chunk_size), b"")


def _docs_name(path: Path) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", path.as_posix()).strip("_")[-80:] or "file"


@dataclass
class _Tally:
    """One file's outcomes gathered chunk by chunk: every rejection, the records validation accepted
    (held only so that a quarantined batch can name each of them) and their warnings."""

    read: int = 0
    records: int = 0  # parsed into Records, i.e. validated by GX
    duplicates: int = 0
    chunks: int = 0
    rejections: list[Rejection] = field(default_factory=list)
    accepted: list[Record] = field(default_factory=list)


def _validate_chunks(
    items: Iterable[Record | Rejection], validator: BatchValidator, chunk_records: int, tally: _Tally
) -> None:
    """Intake's streaming path: parser outcomes in chunks of ``intake.chunk_records``, each chunk's
    records through the row-level suites (`BatchValidator.add`), duplicates kept out of the bad share."""
    from retrain.validate import count_parse_rejections

    it = iter(items)
    while chunk := list(islice(it, chunk_records)):
        records = [x for x in chunk if isinstance(x, Record)]
        parse_rejections = [x for x in chunk if not isinstance(x, Record)]
        bad, dups = count_parse_rejections(parse_rejections)
        accepted, rejected = validator.add(records, parse_rejected=bad, parse_duplicates=dups)
        tally.read += len(chunk)
        tally.records += len(records)
        tally.duplicates += dups
        tally.chunks += 1
        tally.rejections += parse_rejections + rejected
        tally.accepted += accepted


def check_file(
    path: Path,
    settings: Settings,
    *,
    fmt: str | None = None,
    docs_dir: Path | None = None,
    progress: Progress | None = None,
) -> FileCheck:
    """Parse and validate one local file as intake would an object holding its bytes: streamed, and
    validated in chunks of ``intake.chunk_records`` with the batch judged once on the totals."""
    from retrain.formats import parse_chunks
    from retrain.validate import DOCS_PARTIAL, SUMMARISED_WARNINGS, BatchValidator

    t0 = time.perf_counter()
    name, size = str(path), path.stat().st_size
    chunks: Iterable[bytes] = _file_chunks(path)
    if progress is not None:
        chunks = progress.reading(chunks, name, size)
    stats: dict[str, Any] = {}
    validator = BatchValidator(
        settings,
        batch_name=_docs_name(path),
        docs_dir=docs_dir / _docs_name(path) if docs_dir is not None else None,
        history_label_counts=None,
        docs_max_chunks=settings.intake.docs_max_chunks,
    )
    tally = _Tally()
    items = parse_chunks(chunks, name, "", size, settings, fmt=fmt, stats=stats)
    _validate_chunks(items, validator, settings.intake.chunk_records, tally)
    if progress is not None:
        progress.note(
            name,
            size,
            f"validated {tally.records} records with Great Expectations in {tally.chunks} chunks "
            f"(intake.chunk_records={settings.intake.chunk_records}); judging the file as one batch",
        )
    bv = validator.finish()
    accepted = tally.accepted
    if bv.batch_quarantined:
        tally.rejections += [validator.batch_rejection(r, bv.reason) for r in accepted]
        accepted = []
    rejections = sorted(tally.rejections, key=lambda r: (r.line, r.reason))
    reasons: dict[str, int] = {}
    for r in rejections:
        reasons[r.reason] = reasons.get(r.reason, 0) + 1
    warnings = sorted({(r.line, w) for r in accepted for w in r.warnings})
    # batch warnings, less the drift note (no history here), the summaries of record warnings and
    # the note on Data Docs of some chunks only (not a problem of the data: --strict ignores it)
    skip = ("label drift not judged", DOCS_PARTIAL, *(f"{k}:" for k in SUMMARISED_WARNINGS))
    warnings += [(0, w) for w in bv.warnings if not w.startswith(skip)]
    return FileCheck(
        path=name,
        format=stats.get("format"),
        bytes=size,
        read=tally.read,
        accepted=len(accepted),
        quarantined=len(rejections) - tally.duplicates,
        duplicates=tally.duplicates,
        reasons=dict(sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))),
        batch_quarantined=bv.batch_quarantined,
        batch_reason=bv.reason,
        rejections=rejections,
        warnings=warnings,
        docs_index=str(bv.docs_index) if bv.docs_index is not None else None,
        seconds=time.perf_counter() - t0,
    )


def check_paths(
    paths: Iterable[str | Path],
    settings: Settings,
    *,
    fmt: str | None = None,
    docs_dir: Path | None = None,
    progress: Progress | None = None,
    on_file: Callable[[FileCheck], None] | None = None,
) -> list[FileCheck]:
    """`check_file` for every file of `expand_paths` (``on_file`` is called as each is done)."""
    results = []
    for path in expand_paths(paths):
        result = check_file(path, settings, fmt=fmt, docs_dir=docs_dir, progress=progress)
        if on_file is not None:
            on_file(result)
        results.append(result)
    return results


def exit_code(results: list[FileCheck], *, strict: bool = False) -> int:
    """0 when nothing would be quarantined (with ``strict``: and no warning, no duplicate), else 1."""
    if any(not r.ok for r in results):
        return 1
    if strict and any(r.warnings or r.duplicates for r in results):
        return 1
    return 0


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def render_text(results: list[FileCheck], *, details: int = 20) -> str:
    """The per-file table, then each file's quarantined records and warnings as ``file:line``."""
    out = [
        "| file | format | read | accepted | quarantined | duplicates dropped | reasons | verdict |",
        "|---|---|---:|---:|---:|---:|---|---|",
    ]
    for r in results:
        reasons = ", ".join(f"{k} ×{v}" for k, v in r.reasons.items()) or "—"
        verdict = "whole batch quarantined" if r.batch_quarantined else ("ok" if r.ok else "fix and re-check")
        out.append(
            f"| {_cell(r.path)} | {r.format or '—'} | {r.read} | {r.accepted} | {r.quarantined} | "
            f"{r.duplicates} | {_cell(reasons)} | {verdict} |"
        )
    for r in results:
        shown = [q for q in r.rejections if q.reason != DUPLICATE][:details]
        dup = [q for q in r.rejections if q.reason == DUPLICATE]
        if not (shown or dup or r.warnings or r.batch_quarantined or r.docs_index):
            continue
        out += ["", f"{r.path}:"]
        if r.batch_quarantined:
            out.append(f"  whole batch quarantined: {r.batch_reason}")
        out += [f"  {q.message()}" for q in shown]
        if r.quarantined > len(shown):
            out.append(f"  … and {r.quarantined - len(shown)} more quarantined (--json lists every one)")
        if dup:
            lines = ", ".join(str(q.line) for q in dup[:10]) + (", …" if len(dup) > 10 else "")
            out.append(f"  {len(dup)} exact duplicates dropped (first copy kept): lines {lines}")
        for line, msg in r.warnings[:details]:
            out.append(f"  warning {r.path}:{line}: {msg}" if line else f"  warning {r.path}: {msg}")
        if len(r.warnings) > details:
            out.append(f"  … and {len(r.warnings) - details} more warnings (--json lists every one)")
        if r.docs_index:
            out.append(f"  Data Docs: {r.docs_index}")
    return "\n".join(out) + "\n"
