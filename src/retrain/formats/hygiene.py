"""Text hygiene: invisible and direction-changing characters in a sentence or its entities.

Zero-width spaces and joiners, a byte-order mark inside a line, bidi marks, embeddings, overrides
and isolates, soft hyphens (`retrain.records.INVISIBLE_CHARS`) are never accepted silently.
``intake.invisible_characters`` in conf/pipeline.yaml decides what happens to a record holding
them (after its format converter, before Great Expectations):

``normalise``  remove them from the sentence and re-map every entity's offsets onto the cleaned
               sentence; the record is accepted with a warning naming what was removed and where.
``warn``       keep the record exactly as written, with a warning naming each character.
``quarantine`` reject the record (reason ``invisible_characters``), naming each character.

An entity whose text differs from the sentence's characters at its span only by such characters
(the tool stripped a zero-width space from one of them) is named explicitly in every policy:
normalise accepts it (both sides are the same once cleaned), warn keeps the sentence's characters
as the entity text, quarantine rejects it.
"""

from __future__ import annotations

import unicodedata
from typing import Literal

from retrain.formats._common import Converted
from retrain.records import INVISIBLE_CHARS, Entity, find_invisible, strip_invisible

InvisiblePolicy = Literal["warn", "normalise", "quarantine"]
REASON = "invisible_characters"
_SHOWN = 5  # characters named in a message, the rest counted


def describe(found: list[tuple[int, str]]) -> str:
    """``U+200B ZERO WIDTH SPACE at 2, …`` for the first few, then how many more."""
    shown = ", ".join(f"U+{ord(ch):04X} {unicodedata.name(ch, '?')} at {i}" for i, ch in found[:_SHOWN])
    return shown + (f" and {len(found) - _SHOWN} more" if len(found) > _SHOWN else "")


def visible(text: str) -> str:
    """``text`` quoted, its invisible characters written as ``\\u200b`` escapes (the rest as is)."""
    return "'" + "".join(f"\\u{ord(ch):04x}" if ch in INVISIBLE_CHARS else ch for ch in text) + "'"


def _mismatch_notes(out: Converted) -> list[tuple[str, str]]:
    """(field, message) for each span whose entity text differs only by invisible characters."""
    return [
        (
            fld,
            f"span {shown} is {visible(actual)} but the entity text is {visible(entity)}: "
            "they differ only by invisible characters",
        )
        for fld, shown, actual, entity in out.invisible_mismatches
    ]


def apply(out: Converted, policy: InvisiblePolicy) -> None:
    """Apply ``policy`` to a converted record in place (text, entities, warnings, problems)."""
    if out.text is None:
        return
    found = find_invisible(out.text)
    notes = _mismatch_notes(out)
    if not found and not notes:
        return
    where = f"the sentence holds {len(found)}: {describe(found)}" if found else ""
    if policy == "quarantine":
        if found:
            out.problem(REASON, "text", f"{where} (intake.invisible_characters: quarantine)")
        for fld, note in notes:
            out.problem(REASON, fld, f"{note} (intake.invisible_characters: quarantine)")
        return
    if policy == "warn":
        if found:
            out.warnings.append(f"{REASON} (warn): text: {where}; kept as written")
        out.warnings.extend(
            f"{REASON} (warn): {fld}: {note}; the sentence's characters are the entity" for fld, note in notes
        )
        return
    _normalise(out, found, notes)


def _normalise(out: Converted, found: list[tuple[int, str]], notes: list[tuple[str, str]]) -> None:
    """Remove the invisible characters and re-map the entity offsets onto the cleaned sentence."""
    assert out.text is not None
    text = out.text
    # new_index[i] = position in the cleaned sentence of original position i (0..len inclusive)
    new_index = [0] * (len(text) + 1)
    kept = 0
    removed = {i for i, _ in found}
    for i in range(len(text)):
        new_index[i] = kept
        if i not in removed:
            kept += 1
    new_index[len(text)] = kept
    clean = strip_invisible(text)
    if not clean.strip():
        out.problem("empty_text", "text", f"the sentence is only invisible characters: {describe(found)}")
        return
    entities: list[Entity] = []
    for e in out.entities:
        start, end = new_index[e.start], new_index[e.end]
        if start >= end:
            out.problem(
                REASON,
                "entities",
                f"span [{e.start}, {e.end}) {e.label} is only invisible characters ({visible(e.text)})",
            )
            continue
        entities.append(Entity(start=start, end=end, label=e.label, text=clean[start:end]))
    out.text, out.entities = clean, entities
    if found:
        out.warnings.append(
            f"{REASON} (normalised): removed {len(found)} from the sentence: {describe(found)}; "
            "entity offsets re-mapped"
        )
    out.warnings.extend(f"{REASON} (normalised): {fld}: {note}; accepted as cleaned" for fld, note in notes)
