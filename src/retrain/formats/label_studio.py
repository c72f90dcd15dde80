"""Label Studio JSON export: a JSON array of tasks, as the export ("JSON") writes them.

Task: ``{"id", "data": {"text": str, ...}, "annotations": [{"id", "result": [...], "was_cancelled",
"ground_truth", "created_at", "updated_at", ...}], "drafts": [...], "predictions": [...], "meta",
...}``. Span results are ``{"id", "from_name", "to_name", "type": "labels", "value": {"start",
"end", "text", "labels": [...]}}``; other results (``choices``, ``textarea``, ``rating``, relations
``{"type": "relation", "from_id", "to_id", "direction", "labels"}`` which carry no ``value``) are
not spans and are skipped, with a count in the record's warnings. ``intake.label_studio_controls``
names the ``from_name`` of the ``<Labels>`` controls that hold the NER spans when a project has
others (e.g. a second span-level control); empty = every ``labels`` result.

The annotation used is a live (not ``was_cancelled``) one: the ``ground_truth`` one when one is
marked, else the latest (by ``updated_at``/``created_at``, then position). Drafts and predictions
are never used (not submitted by a person); a task without a live annotation is quarantined as
``no_annotation``, its detail saying what drafts or predictions it has. End offsets are exclusive.
Offsets written in UTF-16 code units (the browser's, differing from Python's only for characters
outside the BMP) are converted when that is what makes ``value.text`` match.
"""

from __future__ import annotations

from collections import Counter
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
    return max(
        live,
        key=lambda ia: (
            ia[1].get("ground_truth") is True,
            str(ia[1].get("updated_at") or ia[1].get("created_at") or ""),
            ia[0],
        ),
    )


def _unused(obj: dict[str, Any]) -> str:
    """What a task without a live annotation does carry (drafts, predictions), for the detail."""
    parts = [
        f"{len(obj[k])} {k}" for k in ("drafts", "predictions") if isinstance(obj.get(k), list) and obj[k]
    ]
    return f" ({' and '.join(parts)}, never used: not submitted by a person)" if parts else ""


def convert(obj: dict[str, Any], labels: LabelResolver, intake: Any = None) -> Converted:
    out = Converted()
    data = obj.get("data")
    if not isinstance(data, dict):
        out.problem("missing_field" if data is None else "wrong_type", "data", "a task needs a 'data' object")
        return out
    text = check_text(out, data.get("text"), "data.text")
    key = "annotations" if "annotations" in obj or "completions" not in obj else "completions"
    annotations = obj.get(key)
    if annotations is None:
        out.problem("no_annotation", key, f"the task has no annotations{_unused(obj)}")
        return out
    if not isinstance(annotations, list):
        out.problem("wrong_type", key, f"{key!r} must be a list, got {type(annotations).__name__}")
        return out
    chosen = _latest(annotations)
    if chosen is None:
        why = "no annotations" if not annotations else f"all {len(annotations)} annotations were cancelled"
        out.problem("no_annotation", key, f"the task has {why}{_unused(obj)}")
        return out
    index, annotation = chosen
    live = sum(1 for a in annotations if isinstance(a, dict) and not a.get("was_cancelled"))
    if live > 1:
        which = "the ground_truth one" if annotation.get("ground_truth") is True else "the latest"
        out.warnings.append(
            f"{live} live annotations; used {which} ({key}[{index}], id={annotation.get('id')})"
        )
    results = annotation.get("result")
    if not isinstance(results, list):
        out.problem(
            "missing_field" if results is None else "wrong_type",
            f"{key}[{index}].result",
            "the annotation needs a 'result' list",
        )
        return out
    controls = set(getattr(intake, "label_studio_controls", None) or ())
    skipped: Counter[str] = Counter()
    for k, item in enumerate(results):
        fld = f"{key}[{index}].result[{k}]"
        if isinstance(item, dict) and item.get("type") == "relation":
            skipped["relation"] += 1  # {"from_id", "to_id", "direction", "labels"}: no value, not a span
            continue
        value = item.get("value") if isinstance(item, dict) else None
        if not isinstance(value, dict):
            out.problem("wrong_type", fld, f"a result must be an object with a 'value', got {item!r:.60}")
            continue
        if item.get("type") not in (None, "labels") or "labels" not in value:
            skipped[str(item.get("type") or "unlabeled")] += 1  # choices, text areas, ratings: not spans
            continue
        if controls and item.get("from_name") not in controls:
            skipped[f"labels from {item.get('from_name')!r}"] += 1  # another <Labels> control
            continue
        _add_result(out, text, value, str(item.get("from_name")), fld, labels)
    if skipped:
        kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(skipped.items()))
        out.warnings.append(f"ignored {sum(skipped.values())} results that are not NER spans ({kinds})")
    if "id" in obj:
        out.problems = [type(p)(p.reason, p.field, f"task id={obj['id']}: {p.detail}") for p in out.problems]
    return out


def _add_result(
    out: Converted, text: str | None, value: dict[str, Any], control: str, fld: str, labels: LabelResolver
) -> None:
    """One ``labels`` result: its span under each of its labels, or the problems with it."""
    start, end, span_labels = value.get("start"), value.get("end"), value.get("labels")
    if not (is_int(start) and is_int(end)):
        out.problem(
            "wrong_type" if "start" in value and "end" in value else "missing_field",
            f"{fld}.value",
            f"value.start/value.end must be integers, got {start!r}, {end!r}",
        )
        return
    if not (isinstance(span_labels, list) and span_labels and all(isinstance(x, str) for x in span_labels)):
        out.problem(
            "wrong_type",
            f"{fld}.value.labels",
            f"must be a non-empty list of strings, got {span_labels!r:.60}",
        )
        return
    entity_text = value.get("text")
    if entity_text is not None and not isinstance(entity_text, str):
        out.problem("wrong_type", f"{fld}.value.text", f"must be a string, got {type(entity_text).__name__}")
        return
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
            last = out.problems[-1]
            out.problems[-1] = type(last)(
                last.reason,
                last.field,
                f"{last.detail} (control {control!r}; intake.label_studio_controls names the controls "
                "that hold NER spans)",
            )
            continue
        if text is not None:
            add_span(out, text, start, end, label, entity_text, fld, inclusive=False)
