"""CLUENER2020 JSON lines: ``{"text": str, "label": {label: {entity_text: [[start, end], ...]}}}``.

End offsets are INCLUSIVE (``text[start:end + 1] == entity_text``); records get end-exclusive
`Entity` offsets.
"""

from __future__ import annotations

from typing import Any

from retrain.formats._common import Converted, LabelResolver, add_span, check_text, is_int
from retrain.records import Entity

NAME = "cluener"


def looks_like(obj: dict[str, Any]) -> bool:
    return isinstance(obj.get("label"), dict)


def convert(obj: dict[str, Any], labels: LabelResolver, intake: Any = None) -> Converted:
    out = Converted()
    text = check_text(out, obj.get("text"), "text")
    spans = obj.get("label")
    if spans is None:
        out.problem("missing_field", "label", "no 'label' field (CLUENER: {label: {entity: [[start, end]]}})")
        return out
    if not isinstance(spans, dict):
        out.problem("wrong_type", "label", f"'label' must be an object, got {type(spans).__name__}")
        return out
    for raw_label, entities in spans.items():
        fld = f"label.{raw_label}"
        label = labels.resolve_or_report(out, raw_label, fld)
        if label is None:
            continue
        if not isinstance(entities, dict):
            out.problem("wrong_type", fld, f"must map entity text to offsets, got {type(entities).__name__}")
            continue
        for entity_text, offsets in entities.items():
            efld = f"{fld}.{entity_text}"
            if not isinstance(offsets, list) or not offsets:
                out.problem(
                    "wrong_type", efld, f"must be a non-empty list of [start, end] pairs, got {offsets!r:.60}"
                )
                continue
            for k, pair in enumerate(offsets):
                pfld = f"{efld}[{k}]"
                if not (isinstance(pair, list) and len(pair) == 2 and is_int(pair[0]) and is_int(pair[1])):
                    out.problem("wrong_type", pfld, f"must be [start, end] integers, got {pair!r:.60}")
                    continue
                if text is not None:
                    add_span(out, text, pair[0], pair[1] + 1, label, entity_text, pfld, inclusive=True)
    return out


def entities(obj: dict[str, Any], labels: list[str]) -> list[Entity]:
    """The entities of a CLUENER record known to be well formed (benchmarks, and tests that build a
    golden set from CLUENER files), through the same converter as intake; ValueError naming every
    problem otherwise. Labels are the canonical ones (conf/prompt.yaml), no label map."""
    out = convert(obj, LabelResolver(labels, {}))
    if out.problems:
        found = "; ".join(f"{p.field}: {p.detail}" for p in out.problems)
        raise ValueError(f"not a well-formed CLUENER record ({found}): {obj.get('text')!r:.60}")
    return out.entities
