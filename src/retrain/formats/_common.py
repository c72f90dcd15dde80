"""What every format converter shares: label resolution, span checks, the problem list."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeGuard

from retrain.records import Entity, strip_invisible


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an input record (a record with several gets one Rejection)."""

    reason: str
    field: str
    detail: str


@dataclass
class Converted:
    """A format converter's output for one input record."""

    text: str | None = None
    entities: list[Entity] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # spans whose entity text differs from the sentence's characters only by invisible characters:
    # (field, span as written, sentence characters, entity text); `formats.hygiene` applies the policy
    invisible_mismatches: list[tuple[str, str, str, str]] = field(default_factory=list)

    def problem(self, reason: str, fld: str, detail: str) -> None:
        self.problems.append(Problem(reason, fld, detail))


class LabelResolver:
    """Maps an annotation tool's label to one of the canonical labels (conf/prompt.yaml).

    Canonical names and conf/label_map.yaml keys match case-insensitively after stripping
    whitespace (``PER``, ``per``, ``人名`` -> ``name``). Anything else resolves to None.
    """

    def __init__(self, labels: list[str], label_map: dict[str, str]) -> None:
        self.labels = list(labels)
        self._map = {k.strip().casefold(): v for k, v in label_map.items()}
        self._map.update({lab.casefold(): lab for lab in labels})

    @classmethod
    def from_settings(cls, settings: Any) -> LabelResolver:
        return cls(settings.prompt.labels, settings.label_map)

    def resolve(self, raw: str) -> str | None:
        return self._map.get(raw.strip().casefold())

    def resolve_or_report(self, out: Converted, raw: str, fld: str) -> str | None:
        """The canonical label, or None with an ``unknown_label`` problem recorded on ``out``."""
        label = self.resolve(raw)
        if label is None:
            out.problem(
                "unknown_label",
                fld,
                f"label {raw!r} is not one of {self.labels} nor a key of conf/label_map.yaml",
            )
        return label


def is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_control(ch: str) -> bool:
    """C0/C1 control characters other than tab/newline/CR (zero-width and bidi marks are format
    characters, not controls: `formats.hygiene` applies intake.invisible_characters to them)."""
    o = ord(ch)
    return (o < 0x20 and ch not in "\t\n\r") or 0x7F <= o <= 0x9F


def check_text(out: Converted, value: Any, fld: str) -> str | None:
    """The sentence, or None with a problem recorded (missing / wrong type / empty)."""
    if value is None:
        out.problem("missing_field", fld, f"no {fld!r} field")
        return None
    if not isinstance(value, str):
        out.problem("wrong_type", fld, f"{fld!r} must be a string, got {type(value).__name__}")
        return None
    if not value.strip():
        out.problem("empty_text", fld, f"{fld!r} is empty" if not value else f"{fld!r} is only whitespace")
        return None
    bad = next((ch for ch in value if _is_control(ch)), None)
    if bad is not None:
        out.problem(
            "control_characters", fld, f"{fld!r} holds control character {bad!a} at index {value.index(bad)}"
        )
        return None
    out.text = value
    return value


def _fmt_span(start: int, end: int, inclusive: bool) -> str:
    return f"[{start}, {end}]" if inclusive else f"[{start}, {end})"


def add_span(
    out: Converted,
    text: str,
    start: int,
    end_exclusive: int,
    label: str,
    entity_text: str | None,
    fld: str,
    *,
    inclusive: bool,
) -> None:
    """Check one span against the sentence and add it as an Entity, or record why not.

    ``inclusive`` says how the source wrote its end offset (CLUENER: inclusive; doccano and
    Label Studio: exclusive), so the messages quote offsets as the annotator wrote them and the
    inclusive/exclusive off-by-one is named when it is the explanation.
    """
    src_end = end_exclusive - 1 if inclusive else end_exclusive
    shown = _fmt_span(start, src_end, inclusive)
    if start < 0 or end_exclusive > len(text) or start >= end_exclusive:
        why = "empty or reversed span" if start >= end_exclusive else f"sentence has {len(text)} characters"
        out.problem("offsets_out_of_range", fld, f"span {shown} outside the sentence ({why})")
        return
    actual = text[start:end_exclusive]
    if (
        entity_text is not None
        and actual != entity_text
        and strip_invisible(actual) == strip_invisible(entity_text)
    ):
        out.invisible_mismatches.append((fld, shown, actual, entity_text))
    elif entity_text is not None and actual != entity_text:
        out.problem(
            "span_text_mismatch", fld, _mismatch_detail(text, start, src_end, entity_text, actual, inclusive)
        )
        return
    out.entities.append(Entity(start=start, end=end_exclusive, label=label, text=actual))


def _mismatch_detail(text: str, start: int, src_end: int, entity: str, actual: str, inclusive: bool) -> str:
    shown = _fmt_span(start, src_end, inclusive)
    base = f"span {shown} is {actual!r} but the entity text is {entity!r}"
    if inclusive and text[start:src_end] == entity:
        return (
            f"{base}: the end offset looks exclusive; this format's end is inclusive "
            f"(expected [{start}, {src_end - 1}])"
        )
    if not inclusive and text[start : src_end + 1] == entity:
        return (
            f"{base}: the end offset looks inclusive; this format's end is exclusive "
            f"(expected [{start}, {src_end + 1}))"
        )
    found = text.find(entity) if entity else -1
    clean = strip_invisible(text)
    if found < 0 and clean != text and clean[start : src_end + (1 if inclusive else 0)] == entity:
        return (
            f"{base}: the offsets fit the sentence with its invisible characters removed "
            "(zero-width/bidi/soft hyphen); compute them on the sentence as stored"
        )
    if found >= 0:
        at = _fmt_span(found, found + len(entity) - (1 if inclusive else 0), inclusive)
        return f"{base}: the entity text occurs at {at}"
    return f"{base}: the entity text does not occur in the sentence"


def utf16_to_str_offset(text: str, offset: int) -> int | None:
    """A UTF-16 code-unit offset (JavaScript's, as Label Studio writes) as a str index."""
    units = 0
    for i, ch in enumerate(text):
        if units == offset:
            return i
        units += 2 if ord(ch) > 0xFFFF else 1
    return len(text) if units == offset else None
