"""Parse one object's bytes into canonical Records and Rejections, one outcome per input record."""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from itertools import chain
from typing import Any

from retrain.formats import cluener, doccano, hygiene, label_studio
from retrain.formats._common import Converted, LabelResolver
from retrain.formats._lines import (
    BOM,
    OversizedLine,
    binary_hint,
    decode_utf8,
    iter_bounded_lines,
    line_size,
    raw_excerpt,
)
from retrain.records import Record, Rejection, normalise_text

# Shape checks in order: a Label Studio task also may carry a "label" key in its data.
_FORMATS = (label_studio, cluener, doccano)
_SNIFF_BYTES = 8192
_BY_NAME = {m.NAME: m for m in _FORMATS}
FORMATS = tuple(_BY_NAME)

REASONS: dict[str, str] = {
    "empty_object": "the object holds no records (empty or only blank lines); line 0",
    "binary": "NUL bytes: not a text file (line 0 = the whole object)",
    "object_too_large": "a JSON-array object above intake.max_object_bytes (line 0 = the whole object)",
    "line_too_long": "a line above intake.max_line_bytes, not parsed",
    "bad_encoding": "bytes that are not UTF-8 (often GBK)",
    "not_json": "not valid JSON",
    "truncated": "JSON that ends early (a cut line or object)",
    "wrong_type": "a field of the wrong JSON type or shape",
    "missing_field": "a required field is absent",
    "empty_text": "the sentence is empty or only whitespace",
    "offsets_out_of_range": "a span outside the sentence, empty or reversed",
    "span_text_mismatch": "the span's characters differ from the entity text (off-by-one named)",
    "unknown_label": "a label neither canonical nor in conf/label_map.yaml",
    "no_annotation": "a Label Studio task without a non-cancelled annotation",
    "mixed_format": "a record in another format than the rest of its object",
    "duplicate_record": "an exact repeat of an earlier record of the same object: dropped (the first "
    "is kept), reported, not a bad row (validation.duplicates_are_bad_rows)",
    "conflicting_duplicate": "the same sentence earlier in the same object with other entities "
    "(the first is kept; a person must say which is right)",
    "invisible_characters": "zero-width, bidi or soft-hyphen characters "
    "(intake.invisible_characters: quarantine)",
    "control_characters": "C0/C1 control characters (e.g. an escaped NUL or ESC) in the sentence",
}


def format_for_key(key: str, settings: Any) -> str | None:
    """The format conf/pipeline.yaml ``intake.formats`` fixes for ``key`` (longest prefix), or None.

    The key is compared as an opaque string: nothing here normalises or resolves it.
    """
    best: tuple[int, str] | None = None
    for prefix, fmt in settings.intake.formats.items():
        if key.startswith(prefix) and (best is None or len(prefix) > best[0]):
            best = (len(prefix), fmt)
    if best is None or best[1] == "auto":
        return None
    return best[1]


def _shape(obj: dict[str, Any]) -> str | None:
    for module in _FORMATS:
        if module.looks_like(obj):
            return module.NAME
    return None


class _Judge:
    """Turns decoded JSON values into Records/Rejections, tracking the object's format and dups."""

    def __init__(self, key: str, etag: str, settings: Any, fmt: str | None, stats: dict[str, Any]) -> None:
        self.key, self.etag, self.stats = key, etag, stats
        self.labels = LabelResolver.from_settings(settings)
        self.intake = settings.intake
        self.invisible_policy = settings.intake.invisible_characters
        self.fmt = fmt
        self.fmt_source = "conf intake.formats" if fmt else ""
        # digest of the normalised text -> (first line, digest of its entities): 32 bytes a sentence
        self.seen_text: dict[bytes, tuple[int, bytes]] = {}
        self.bom_line: int | None = None

    def reject(self, line: int, reason: str, detail: str, fld: str = "", raw: bytes | str = b"") -> Rejection:
        # lone surrogates (from JSON escapes such as "\\ud800") cannot be written as UTF-8: escape them
        excerpt = raw_excerpt(raw).encode("utf-8", "backslashreplace").decode("utf-8")
        return Rejection(self.key, line, reason, detail, field=fld, raw=excerpt)

    def judge(self, value: Any, line: int, raw: bytes | str) -> Record | Rejection:
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as exc:
            return self.reject(
                line,
                "bad_encoding",
                f"a lone surrogate escape ({exc.object[exc.start : exc.end]!a}) "
                "in the record: not representable as UTF-8",
                "",
                raw,
            )
        if not isinstance(value, dict):
            return self.reject(
                line, "wrong_type", f"expected a JSON object per record, got {type(value).__name__}", "", raw
            )
        shape = _shape(value)
        if self.fmt is None and shape is not None:
            self.fmt, self.fmt_source = shape, f"record at line {line}"
            self.stats["format"] = shape
        fmt = self.fmt or shape
        if fmt is None:
            return self.reject(
                line,
                "missing_field",
                "no 'label' (CLUENER, doccano), 'entities' (doccano) or 'data'+'annotations' (Label Studio): "
                "cannot tell the format",
                "label",
                raw,
            )
        if shape is not None and shape != fmt:
            return self.reject(
                line,
                "mixed_format",
                f"this record is {shape} but the object is {fmt} (decided by {self.fmt_source})",
                "",
                raw,
            )
        out: Converted = _BY_NAME[fmt].convert(value, self.labels, self.intake)
        hygiene.apply(out, self.invisible_policy)
        if out.problems:
            first, rest = out.problems[0], out.problems[1:]
            detail = first.detail
            if rest:
                detail += "; also: " + "; ".join(f"{p.field}: {p.reason}: {p.detail}" for p in rest[:5])
                if len(rest) > 5:
                    detail += f"; and {len(rest) - 5} more"
            return self.reject(line, first.reason, detail, first.field, raw)
        assert out.text is not None
        entities = sorted(out.entities)
        dup = self._duplicate(out.text, entities, line, raw)
        if dup is not None:
            return dup
        warnings = list(out.warnings)
        if not entities:
            warnings.append(
                "no_entities: the sentence has no entity; kept as a sentence without any, but a tool also "
                "exports examples nobody annotated like this (doccano: export only approved examples)"
            )
        if self.bom_line == line:
            warnings.append("utf8_bom_stripped")
        return Record(
            text=out.text,
            entities=entities,
            source_key=self.key,
            line=line,
            source_etag=self.etag,
            fmt=fmt,
            warnings=warnings,
        )

    def _duplicate(self, text: str, entities: list[Any], line: int, raw: bytes | str) -> Rejection | None:
        """A Rejection when this sentence came earlier in the object (an exact repeat is a dropped
        ``duplicate_record``; other entities are a ``conflicting_duplicate``), else None (and it is
        remembered: 32 bytes a sentence)."""
        norm = normalise_text(text)
        text_key = norm.encode("utf-8")
        digest = hashlib.blake2b(
            text_key + b"\x00" + json.dumps(_spans_in_normalised(text, norm, entities)).encode(),
            digest_size=16,
        ).digest()
        text_digest = hashlib.blake2b(text_key, digest_size=16).digest()
        first_line, first_digest = self.seen_text.get(text_digest, (0, b""))
        if first_line and first_digest == digest:
            return self.reject(
                line,
                "duplicate_record",
                f"same text and entities as line {first_line} (kept): dropped",
                "",
                raw,
            )
        if first_line:
            spans = ", ".join(f"[{e.start}, {e.end}) {e.label}" for e in entities) or "none"
            return self.reject(
                line,
                "conflicting_duplicate",
                f"the same sentence as line {first_line} (kept) with other entities ({spans}): "
                "one of the two annotations is wrong; fix the file and upload it again",
                "",
                raw,
            )
        self.seen_text[text_digest] = (line, digest)
        return None


def _spans_in_normalised(text: str, norm: str, entities: list[Any]) -> list[list[Any]]:
    """[start, end, label] of each entity in the coordinates of ``norm`` = `normalise_text` (text),
    so a sentence and its twin with leading blanks or a kept zero-width space compare equal."""
    if norm == text:
        return [[e.start, e.end, e.label] for e in entities]

    def pos(i: int) -> int:
        return len(normalise_text(text[:i] + "\x00")) - 1  # the NUL keeps trailing blanks from the strip

    return [[pos(e.start), pos(e.end), e.label] for e in entities]


def _new_stats(key: str, etag: str, fmt: str | None) -> dict[str, Any]:
    return {
        "key": key,
        "etag": etag,
        "format": fmt,
        "format_source": "",
        "lines": 0,
        "blank_lines": 0,
        "bytes": 0,
        "records": 0,
        "accepted": 0,
        "rejected": 0,
        "reasons": {},
        "bom_stripped": False,
    }


def parse_stream(
    lines: Iterable[bytes],
    key: str,
    etag: str,
    settings: Any,
    fmt: str | None = None,
    stats: dict[str, Any] | None = None,
) -> Iterator[Record | Rejection]:
    """Yield exactly one Record or Rejection per input record of one object.

    ``lines`` are the object's lines without their line breaks (e.g. `iter_bounded_lines`, or
    botocore's ``iter_lines``). JSON lines are judged one at a time, never the whole object in
    memory; an object whose first non-blank byte is ``[`` is a JSON array (Label Studio's export)
    and is parsed whole, up to ``intake.max_object_bytes``. For JSON lines ``Rejection.line`` is
    the 1-based line; for an array it is the 1-based element index; 0 means the whole object.
    ``fmt`` (a name in FORMATS, or None to detect) fixes the object's format. ``stats``, when
    given, is filled with counts (lines, blank lines, bytes, outcomes per reason, format, BOM).
    """
    if fmt is not None and fmt not in _BY_NAME:
        raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
    st = stats if stats is not None else {}
    st.update(_new_stats(key, etag, fmt))
    judge = _Judge(key, etag, settings, fmt, st)
    reasons: Counter[str] = Counter()
    for item in _outcomes(lines, judge, settings, st):
        if isinstance(item, Record):
            st["accepted"] += 1
        else:
            st["rejected"] += 1
            reasons[item.reason] += 1
        st["records"] += 1
        yield item
    st["reasons"] = dict(reasons)
    st["format_source"] = judge.fmt_source


def _outcomes(
    lines: Iterable[bytes], judge: _Judge, settings: Any, st: dict[str, Any]
) -> Iterator[Record | Rejection]:
    max_line = settings.intake.max_line_bytes
    it = iter(lines)
    lineno = 0
    first: bytes | None = None
    for raw in it:
        lineno += 1
        st["lines"] += 1
        st["bytes"] += line_size(raw) + 1
        if lineno == 1 and raw.startswith(BOM) and not isinstance(raw, OversizedLine):
            raw = raw[len(BOM) :]
            st["bom_stripped"] = True
            judge.bom_line = 1
        if isinstance(raw, OversizedLine) or raw.strip():
            first = raw
            break
        st["blank_lines"] += 1
    if first is None:
        yield judge.reject(
            0, "empty_object", f"the object has no records ({st['bytes']} bytes, {lineno} blank lines)"
        )
        return
    # Like git, sniff the first 8 KiB: NUL bytes in bytes that are not UTF-8 text (or a known binary
    # signature, or many NULs) make a binary object, one Rejection rather than one per "line". A stray
    # NUL in otherwise UTF-8 text only rejects its own line.
    head = [first]
    sniffed = len(first)
    for raw in it:
        head.append(raw)
        sniffed += len(raw) + 1
        if sniffed >= _SNIFF_BYTES:
            break
    sample = b"\n".join(head)[:_SNIFF_BYTES]
    if _looks_binary(sample):
        nul_line = lineno + sample[: sample.index(b"\x00")].count(b"\n")
        yield judge.reject(
            0, "binary", f"{binary_hint(sample)} (NUL byte in line {nul_line}); not parsed", "", first
        )
        return
    rest = chain(head, it)
    if first.lstrip().startswith(b"["):
        yield from _array(rest, lineno, judge, settings, st)
        return
    yield from _json_lines(rest, lineno, judge, max_line, st)


def _looks_binary(sample: bytes) -> bool:
    if b"\x00" not in sample:
        return False
    if sample.startswith((b"\xff\xfe", b"\xfe\xff", b"\x1f\x8b", b"PK\x03\x04", b"\x89PNG")):
        return True
    if sample.count(b"\x00") * 100 > len(sample):
        return True
    try:
        sample.decode("utf-8")
    except UnicodeDecodeError as exc:
        return not (exc.reason == "unexpected end of data" and exc.start >= len(sample) - 3)
    return False


def _json_lines(
    lines: Iterable[bytes], lineno: int, judge: _Judge, max_line: int, st: dict[str, Any]
) -> Iterator[Record | Rejection]:
    first = True
    for raw in lines:
        if first:
            first = False  # already counted by the caller
        else:
            lineno += 1
            st["lines"] += 1
            st["bytes"] += line_size(raw) + 1
        size = line_size(raw)
        if isinstance(raw, OversizedLine) or size > max_line:
            yield judge.reject(
                lineno,
                "line_too_long",
                f"{size} bytes > intake.max_line_bytes={max_line}; not parsed",
                "",
                raw,
            )
            continue
        if raw.startswith(BOM):
            raw = raw[len(BOM) :]
            st["bom_stripped"] = True
            judge.bom_line = lineno
        if not raw.strip():
            st["blank_lines"] += 1
            continue
        if b"\x00" in raw:
            yield judge.reject(lineno, "binary", binary_hint(raw), "", raw)
            continue
        text, why = decode_utf8(raw)
        if text is None:
            yield judge.reject(lineno, "bad_encoding", why, "", raw)
            continue
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            yield judge.reject(lineno, *_json_error(exc, text), "", text)
            continue
        except RecursionError:
            yield judge.reject(lineno, "not_json", "JSON nested too deeply to parse safely", "", text)
            continue
        yield judge.judge(value, lineno, text)


def _json_error(exc: json.JSONDecodeError, text: str) -> tuple[str, str]:
    stripped = len(text.rstrip())
    at_end = exc.pos >= stripped or exc.msg.startswith("Unterminated string")
    reason = "truncated" if at_end and stripped > 0 and text.lstrip()[:1] in "[{" else "not_json"
    where = f"line {exc.lineno} column {exc.colno}" if exc.lineno > 1 else f"column {exc.colno}"
    suffix = " (the input ends before the JSON does)" if reason == "truncated" else ""
    return reason, f"{exc.msg} at {where}{suffix}"


def _array(
    lines: Iterable[bytes], lineno: int, judge: _Judge, settings: Any, st: dict[str, Any]
) -> Iterator[Record | Rejection]:
    limit = settings.intake.max_object_bytes
    parts: list[bytes] = []
    total = 0
    for i, raw in enumerate(lines):
        if i:
            lineno += 1
            st["lines"] += 1
            st["bytes"] += line_size(raw) + 1
        total += line_size(raw) + 1
        if isinstance(raw, OversizedLine) and total <= limit:
            yield judge.reject(
                0,
                "line_too_long",
                f"line {lineno} of a JSON array ({raw.size} bytes) was cut by the line reader; an array is "
                f"parsed whole: read it with read_object (bounded by intake.max_object_bytes)",
                "",
                raw,
            )
            return
        if total > limit:
            head = b"\n".join(parts)[:1024] if parts else raw
            yield judge.reject(
                0,
                "object_too_large",
                f"a JSON array is parsed whole and this one exceeds intake.max_object_bytes={limit} "
                f"(more than {total} bytes by line {lineno}); split the export",
                "",
                head,
            )
            return
        parts.append(raw)
    data = b"\n".join(parts)
    del parts
    text, why = decode_utf8(data)
    if text is None:
        bad_at = int(why.split(" at byte ")[1].split(";")[0]) if " at byte " in why else 0
        line = data.count(b"\n", 0, bad_at) + 1
        yield judge.reject(
            line,
            "bad_encoding",
            f"{why} (line {line} of the JSON array; the object is not parsed)",
            "",
            data[max(0, bad_at - 40) :],
        )
        return
    try:
        value = json.loads(text)
    except RecursionError:
        yield judge.reject(
            0,
            "not_json",
            "JSON nested too deeply to parse safely; the JSON array object is not parsed",
            "",
            text,
        )
        return
    except json.JSONDecodeError as exc:
        reason, detail = _json_error(exc, text)
        yield judge.reject(
            exc.lineno,
            reason,
            f"{detail}; the JSON array object is not parsed",
            "",
            text[max(0, exc.pos - 80) :],
        )
        return
    if not isinstance(value, list):
        yield judge.reject(
            0, "wrong_type", f"expected a JSON array of tasks, got {type(value).__name__}", "", text
        )
        return
    if not value:
        yield judge.reject(0, "empty_object", "the JSON array is empty")
        return
    for index, element in enumerate(value, start=1):
        excerpt = json.dumps(element, ensure_ascii=False)[:400]
        yield judge.judge(element, index, excerpt)


def _chunks(body: Any, chunk_size: int) -> Iterator[bytes]:
    if hasattr(body, "iter_chunks"):
        yield from body.iter_chunks(chunk_size)
    else:
        yield from iter(lambda: body.read(chunk_size), b"")


def parse_chunks(
    chunks: Iterable[bytes],
    key: str,
    etag: str,
    size: int,
    settings: Any,
    fmt: str | None = None,
    stats: dict[str, Any] | None = None,
) -> Iterator[Record | Rejection]:
    """`parse_stream` over an object's raw byte chunks (an S3 body, a local file), split into lines by
    `iter_bounded_lines`: JSON lines with lines bounded by ``intake.max_line_bytes``, a JSON array
    (first non-blank byte ``[``) read whole and refused unread above ``intake.max_object_bytes``
    when ``size`` (the object's length) already says so. ``stats`` as for `parse_stream`."""
    st = stats if stats is not None else {}
    it = iter(chunks)
    peeked: list[bytes] = []
    lead = b""
    for chunk in it:
        peeked.append(chunk)
        lead = b"".join(peeked).removeprefix(BOM).lstrip()
        if lead:
            break
    stream = chain(peeked, it)
    if lead.startswith(b"["):
        limit = settings.intake.max_object_bytes
        if size > limit:
            st.update(_new_stats(key, etag, fmt), records=1, rejected=1, reasons={"object_too_large": 1})
            yield Rejection(
                key,
                0,
                "object_too_large",
                f"{key}: {size} bytes > intake.max_object_bytes={limit}; "
                "a JSON array is parsed whole; split the export (or export JSON lines, which stream)",
                raw=raw_excerpt(lead),
            )
            return
        lines = iter_bounded_lines(stream, limit)
    else:
        lines = iter_bounded_lines(stream, settings.intake.max_line_bytes)
    yield from parse_stream(lines, key, etag, settings, fmt=fmt, stats=st)


def read_object(
    store: Any, obj: Any, settings: Any, *, chunk_size: int = 256 * 1024
) -> tuple[list[Record], list[Rejection], dict[str, Any]]:
    """`iter_object`, collected: (records, rejections, stats); ``stats["seconds"]`` is the wall time.

    Holds every outcome of the object in memory; intake uses `iter_object` in bounded chunks."""
    t0 = time.perf_counter()
    stats: dict[str, Any] = {}
    records: list[Record] = []
    rejections: list[Rejection] = []
    for item in iter_object(store, obj, settings, chunk_size=chunk_size, stats=stats):
        if isinstance(item, Record):
            records.append(item)
        else:
            rejections.append(item)
    stats["seconds"] = time.perf_counter() - t0
    return records, rejections, stats


def iter_object(
    store: Any, obj: Any, settings: Any, *, chunk_size: int = 256 * 1024, stats: dict[str, Any] | None = None
) -> Iterator[Record | Rejection]:
    """Stream one S3 object (``store.open_stream(key, etag)``) and yield `parse_chunks`' outcomes.

    The format comes from ``intake.formats`` for the key's prefix, else from the content. JSON
    lines are split by `iter_bounded_lines` (not botocore's ``iter_lines``, which re-copies a
    pending line on every chunk and holds any line whole), so no line above
    ``intake.max_line_bytes`` is ever held, and one outcome at a time is produced: memory does not
    grow with the object. A JSON array is read whole, refused unread above
    ``intake.max_object_bytes`` when the listing's size already says so. The ETag is sent as
    ``If-Match``: an object replaced since it was listed raises botocore's ClientError
    (PreconditionFailed) instead of being parsed as the listed version. ``stats`` (when given) is
    filled as the stream is consumed.
    """
    fmt = format_for_key(obj.key, settings)
    stats = stats if stats is not None else {}
    body = store.open_stream(obj.key, obj.etag or None)
    try:
        chunks = _chunks(body, chunk_size)
        yield from parse_chunks(chunks, obj.key, obj.etag, obj.size, settings, fmt=fmt, stats=stats)
    finally:
        body.close()
