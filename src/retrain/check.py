"""Pre-flight check for annotators: ``retrain check PATH…`` judges local files as intake would.

The same parsers (`retrain.formats.parse_chunks`), label map, text-hygiene policy and Great
Expectations suite (`retrain.validate.validate_batch`) as the pipeline, on files on disk: each
file is one batch, as one uploaded object would be. Nothing here touches S3, Airflow or MLflow.
What differs from a nightly run: no label-drift check (it needs the accepted history in S3) and
no ``intake.formats`` prefixes (a local path is not a key; ``--format`` fixes the format instead).
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from retrain.config import Settings
from retrain.records import Record, Rejection

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


def check_file(
    path: Path,
    settings: Settings,
    *,
    fmt: str | None = None,
    docs_dir: Path | None = None,
    progress: Progress | None = None,
) -> FileCheck:
    """Parse and validate one local file as intake would an object holding its bytes."""
    from retrain.formats import parse_chunks
    from retrain.validate import SUMMARISED_WARNINGS, count_parse_rejections, validate_batch

    t0 = time.perf_counter()
    name, size = str(path), path.stat().st_size
    chunks: Iterable[bytes] = _file_chunks(path)
    if progress is not None:
        chunks = progress.reading(chunks, name, size)
    stats: dict[str, Any] = {}
    records: list[Record] = []
    parse_rejections: list[Rejection] = []
    for item in parse_chunks(chunks, name, "", size, settings, fmt=fmt, stats=stats):
        if isinstance(item, Record):
            records.append(item)
        else:
            parse_rejections.append(item)
    if progress is not None:
        progress.note(name, size, f"validating {len(records)} records with Great Expectations")
    bad, dups = count_parse_rejections(parse_rejections)
    bv = validate_batch(
        records,
        settings,
        batch_name=_docs_name(path),
        docs_dir=docs_dir / _docs_name(path) if docs_dir is not None else None,
        history_label_counts=None,
        parse_rejected=bad,
        parse_duplicates=dups,
    )
    rejections = sorted(parse_rejections + bv.rejected, key=lambda r: (r.line, r.reason))
    reasons: dict[str, int] = {}
    for r in rejections:
        reasons[r.reason] = reasons.get(r.reason, 0) + 1
    warnings = sorted({(r.line, w) for r in bv.accepted for w in r.warnings})
    # batch warnings, less the drift note (no history here) and the summaries of record warnings
    skip = ("label drift not judged", *(f"{k}:" for k in SUMMARISED_WARNINGS))
    warnings += [(0, w) for w in bv.warnings if not w.startswith(skip)]
    return FileCheck(
        path=name,
        format=stats.get("format"),
        bytes=size,
        read=len(records) + len(parse_rejections),
        accepted=len(bv.accepted),
        quarantined=len(rejections) - dups,
        duplicates=dups,
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
