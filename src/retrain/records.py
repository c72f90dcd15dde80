"""The canonical labeled record every annotation format normalises to, and the quarantine record."""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from dataclasses import asdict, dataclass, field
from typing import Any

# Invisible and direction-changing characters (text hygiene, conf intake.invisible_characters):
# they render as nothing (or only reorder what is shown) yet are distinct characters to a tokenizer
# and to the string comparison of the scorer. Listed one by one, not by Unicode category: Cf also
# holds characters that matter elsewhere (e.g. U+0600 ARABIC NUMBER SIGN), none of them seen in NER.
INVISIBLE_CHARS: frozenset[str] = frozenset(
    "\u00ad"  # SOFT HYPHEN
    "\u061c"  # ARABIC LETTER MARK (bidi)
    "\u180e"  # MONGOLIAN VOWEL SEPARATOR (zero width since Unicode 6.3)
    "\u200b\u200c\u200d"  # ZERO WIDTH SPACE, NON-JOINER, JOINER
    "\u200e\u200f"  # LEFT-TO-RIGHT MARK, RIGHT-TO-LEFT MARK
    "\u202a\u202b\u202c\u202d\u202e"  # bidi embeddings (LRE, RLE), PDF, overrides (LRO, RLO)
    "\u2060\u2061\u2062\u2063\u2064"  # WORD JOINER, invisible function application/times/separator/plus
    "\u2066\u2067\u2068\u2069"  # bidi isolates (LRI, RLI, FSI) and PDI
    "\ufeff"  # ZERO WIDTH NO-BREAK SPACE: a byte-order mark inside a line
)
_INVISIBLE_RE = re.compile("[" + "".join(sorted(INVISIBLE_CHARS)) + "]")


def strip_invisible(text: str) -> str:
    """``text`` without the characters of `INVISIBLE_CHARS`."""
    return _INVISIBLE_RE.sub("", text)


def find_invisible(text: str) -> list[tuple[int, str]]:
    """(index, character) of every character of `INVISIBLE_CHARS` in ``text``."""
    return [(m.start(), m.group()) for m in _INVISIBLE_RE.finditer(text)]


def normalise_text(text: str) -> str:
    """NFC, invisible characters removed, stripped: the form used for ids, dedup and the split hash.

    Removing the `INVISIBLE_CHARS` here means a sentence with a stray zero-width space (kept when
    conf says ``warn``) is still the same sentence as its clean twin: it cannot be split into
    training and golden at once, and the later ingest still replaces the earlier.
    """
    return strip_invisible(unicodedata.normalize("NFC", text)).strip()


def text_id(text: str) -> str:
    """Stable id of a sentence: the same text always gets the same id, whatever its source."""
    return hashlib.sha256(normalise_text(text).encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True, order=True)
class Entity:
    """One labeled span. ``end`` is exclusive: ``text == sentence[start:end]``."""

    start: int
    end: int
    label: str
    text: str


@dataclass
class Record:
    """A labeled sentence in canonical form, with where it came from."""

    text: str
    entities: list[Entity]
    source_key: str
    line: int
    source_etag: str = ""
    fmt: str = "cluener"
    warnings: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        return text_id(self.text)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["id"] = self.id
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Record:
        ents = [Entity(**e) for e in d["entities"]]
        return cls(
            text=d["text"],
            entities=ents,
            source_key=d["source_key"],
            line=d["line"],
            source_etag=d.get("source_etag", ""),
            fmt=d.get("fmt", "cluener"),
            warnings=list(d.get("warnings", [])),
        )


@dataclass
class Rejection:
    """A quarantined input record: where it was, which field, why (a machine-readable code)."""

    source_key: str
    line: int
    reason: str
    detail: str
    field: str = ""
    raw: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def message(self) -> str:
        where = f"{self.source_key}:{self.line}"
        fld = f" field {self.field!r}" if self.field else ""
        return f"{where}{fld}: {self.reason}: {self.detail}"


def dumps_jsonl(items: list[dict[str, Any]]) -> bytes:
    """Deterministic JSON lines (sorted keys, UTF-8, no ASCII escaping)."""
    return "".join(json.dumps(i, ensure_ascii=False, sort_keys=True) + "\n" for i in items).encode("utf-8")
