"""doccano sequence-labeling JSONL.

Two shapes: ``{"text", "label": [[start, end, "LABEL"], ...]}`` (older exports also say
``labels``, and ``data`` for the text) and ``{"text", "entities": [{"start_offset",
"end_offset", "label"}, ...]}``. End offsets are exclusive. doccano exports carry no entity
text, so a span is checked against the sentence only (range, non-empty).
"""

from __future__ import annotations

from typing import Any

from retrain.formats._common import Converted, LabelResolver, add_span, check_text, is_int

NAME = "doccano"


def looks_like(obj: dict[str, Any]) -> bool:
    return any(isinstance(obj.get(k), list) for k in ("entities", "label", "labels"))


def convert(obj: dict[str, Any], labels: LabelResolver, intake: Any = None) -> Converted:
    out = Converted()
    text_field = "data" if "text" not in obj and isinstance(obj.get("data"), str) else "text"
    text = check_text(out, obj.get(text_field), text_field)
    if "entities" in obj:
        key = "entities"
    else:
        key = "label" if "label" in obj or "labels" not in obj else "labels"
    items = obj.get(key)
    if items is None:
        out.problem("missing_field", "label", "no 'label' or 'entities' field")
        return out
    if not isinstance(items, list):
        out.problem("wrong_type", key, f"{key!r} must be a list, got {type(items).__name__}")
        return out
    for k, item in enumerate(items):
        fld = f"{key}[{k}]"
        if key == "entities":
            if not isinstance(item, dict):
                out.problem(
                    "wrong_type",
                    fld,
                    f"must be an object with start_offset/end_offset/label, got {item!r:.60}",
                )
                continue
            missing = [f for f in ("start_offset", "end_offset", "label") if f not in item]
            if missing:
                out.problem("missing_field", f"{fld}.{missing[0]}", f"entity lacks {', '.join(missing)}")
                continue
            start, end, raw_label = item["start_offset"], item["end_offset"], item["label"]
        else:
            if not (isinstance(item, list) and len(item) == 3):
                out.problem("wrong_type", fld, f"must be [start, end, label], got {item!r:.60}")
                continue
            start, end, raw_label = item
        if not (is_int(start) and is_int(end)):
            out.problem("wrong_type", fld, f"offsets must be integers, got {start!r}, {end!r}")
            continue
        if not isinstance(raw_label, str):
            out.problem("wrong_type", fld, f"label must be a string, got {raw_label!r:.40}")
            continue
        label = labels.resolve_or_report(out, raw_label, fld)
        if label is None:
            continue
        if text is not None:
            add_span(out, text, start, end, label, None, fld, inclusive=False)
    return out
