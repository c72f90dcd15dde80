"""Label Studio JSON export: a JSON array of tasks.

Task: ``{"id", "data": {"text": str}, "annotations": [{"id", "was_cancelled", "updated_at",
"result": [{"type": "labels", "value": {"start", "end", "text", "labels": [...]}}]}]}``.
The latest non-cancelled annotation is used (by ``updated_at``/``created_at``, then position);
a task without one is quarantined as ``no_annotation``. End offsets are exclusive. Offsets
written in UTF-16 code units (the browser's, differing from Python's only for characters
outside the BMP) are converted when that is what makes ``value.text`` match.
"""

from __future__ import annotations

from typing import Any

from retrain.formats._common import (
    Converted,
    LabelResolver,
    add_span,
    check_text,
    is_int,
    utf16_to_str_offset,
)

NAME = "label_studio"


def looks_like(obj: dict[str, Any]) -> bool:
    return isinstance(obj.get("data"), dict) and ("annotations" in obj or "completions" in obj)


def _latest(annotations: list[Any]) -> tuple[int, dict[str, Any]] | None:
    live = [(i, a) for i, a in enumerate(annotations) if isinstance(a, dict) and not a.get("was_cancelled")]
    if not live:
        return None
    return max(live, key=lambda ia: (str(ia[1].get("updated_at") or ia[1].get("created_at") or ""), ia[0]))


def _add_result(out: Converted, labels: LabelResolver, text: str | None, item: Any, fld: str) -> bool:
    """Add one ``result`` entry's spans (or its problems) to ``out``; True when it is not a span."""
    value = item.get("value") if isinstance(item, dict) else None
    if not isinstance(value, dict):
        out.problem("wrong_type", fld, f"a result must be an object with a 'value', got {item!r:.60}")
        return False
    if item.get("type") not in (None, "labels") or "labels" not in value:
        return True  # choices, relations, text areas: not spans
    start, end, span_labels = value.get("start"), value.get("end"), value.get("labels")
    if not (is_int(start) and is_int(end)):
        out.problem(
            "wrong_type" if "start" in value and "end" in value else "missing_field",
            f"{fld}.value",
            f"value.start/value.end must be integers, got {start!r}, {end!r}",
        )
        return False
    if not (isinstance(span_labels, list) and span_labels and all(isinstance(x, str) for x in span_labels)):
        out.problem(
            "wrong_type",
            f"{fld}.value.labels",
            f"must be a non-empty list of strings, got {span_labels!r:.60}",
        )
        return False
    entity_text = value.get("text")
    if entity_text is not None and not isinstance(entity_text, str):
        out.problem("wrong_type", f"{fld}.value.text", f"must be a string, got {type(entity_text).__name__}")
        return False
    if text is not None and entity_text is not None and text[start:end] != entity_text:
        s16, e16 = utf16_to_str_offset(text, start), utf16_to_str_offset(text, end)
        if (
            s16 is not None
            and e16 is not None
            and (s16, e16) != (start, end)
            and text[s16:e16] == entity_text
        ):
            out.warnings.append(f"{fld}: UTF-16 offsets [{start}, {end}) converted to [{s16}, {e16})")
            start, end = s16, e16
    for raw_label in span_labels:
        label = labels.resolve_or_report(out, raw_label, f"{fld}.value.labels")
        if label is None:
            continue
        if text is not None:
            add_span(out, text, start, end, label, entity_text, fld, inclusive=False)
    return False


def convert(obj: dict[str, Any], labels: LabelResolver) -> Converted:
    out = Converted()
    data = obj.get("data")
    if not isinstance(data, dict):
        out.problem("missing_field" if data is None else "wrong_type", "data", "a task needs a 'data' object")
        return out
    text = check_text(out, data.get("text"), "data.text")
    key = "annotations" if "annotations" in obj or "completions" not in obj else "completions"
    annotations = obj.get(key)
    if annotations is None:
        out.problem("no_annotation", key, "the task has no annotations")
        return out
    if not isinstance(annotations, list):
        out.problem("wrong_type", key, f"{key!r} must be a list, got {type(annotations).__name__}")
        return out
    chosen = _latest(annotations)
    if chosen is None:
        why = "no annotations" if not annotations else f"all {len(annotations)} annotations were cancelled"
        out.problem("no_annotation", key, f"the task has {why}")
        return out
    index, annotation = chosen
    live = sum(1 for a in annotations if isinstance(a, dict) and not a.get("was_cancelled"))
    if live > 1:
        out.warnings.append(
            f"{live} live annotations; used the latest ({key}[{index}], id={annotation.get('id')})"
        )
    results = annotation.get("result")
    if not isinstance(results, list):
        out.problem(
            "missing_field" if results is None else "wrong_type",
            f"{key}[{index}].result",
            "the annotation needs a 'result' list",
        )
        return out
    skipped = 0
    for k, item in enumerate(results):
        skipped += _add_result(out, labels, text, item, f"{key}[{index}].result[{k}]")
    if skipped:
        out.warnings.append(f"ignored {skipped} non-span results (choices, relations, ...)")
    if "id" in obj:
        out.problems = [type(p)(p.reason, p.field, f"task id={obj['id']}: {p.detail}") for p in out.problems]
    return out
