"""Annotation formats -> canonical `retrain.records.Record`s and `Rejection`s.

One S3 object in, exactly one outcome per input record out: a Record (end-exclusive offsets,
labels mapped to the canonical set of conf/prompt.yaml through conf/label_map.yaml) or a
Rejection (key, line, field, reason code from `REASONS`, detail, raw excerpt). Objects that
hold no records (empty, binary, unparseable arrays) yield one Rejection at line 0 so every
object is accounted for.

Formats: CLUENER JSON lines (`cluener`), Label Studio JSON export (`label_studio`), doccano
JSONL (`doccano`); chosen per key prefix by ``intake.formats`` or detected from the content.
"""

from retrain.formats._lines import OversizedLine, iter_bounded_lines
from retrain.formats.stream import (
    FORMATS,
    REASONS,
    format_for_key,
    iter_object,
    parse_chunks,
    parse_stream,
    read_object,
)

__all__ = [
    "FORMATS",
    "REASONS",
    "OversizedLine",
    "format_for_key",
    "iter_bounded_lines",
    "iter_object",
    "parse_chunks",
    "parse_stream",
    "read_object",
]
