"""The canonical labeled record every annotation format normalises to, and the quarantine record."""

from __future__ import annotations

import hashlib
import json
import unicodedata
from dataclasses import asdict, dataclass, field
from typing import Any


def normalise_text(text: str) -> str:
    """NFC + stripped: the form used for ids, dedup and the split hash."""
    return unicodedata.normalize("NFC", text).strip()


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
