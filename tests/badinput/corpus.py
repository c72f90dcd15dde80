"""The bad-input corpus: hostile or broken annotation objects in the three intake formats.

Each `BadCase` is one S3 object (key + bytes) as an annotator could upload it, and what intake
must make of it: which reason codes its quarantined records carry, how many records are accepted,
and the field named by the rejection. Good records are mixed into most objects, so a batch is
judged record by record (not quarantined whole for its share of bad rows) and the test can see
that the good records next to a hostile one still get in.

The bytes are built lazily (`BadCase.build`): a few cases are megabytes.
"""

from __future__ import annotations

import codecs
import gzip
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.support.synth import make_batch

INJECTIONS = ("'; DROP TABLE records; --", "<script>alert(1)</script>", "{{7*7}}", "${jndi:ldap://x/a}")


def good_cluener(n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` valid, distinct CLUENER records (the project's synthetic generator, no bad ones)."""
    seen: dict[str, dict[str, Any]] = {}
    k = 0
    while len(seen) < n:
        for line in make_batch(n, seed=seed * 100 + k, bad=0):
            d = json.loads(line)
            seen.setdefault(d["text"], d)
        k += 1
    return list(seen.values())[:n]


def _spans(rec: dict[str, Any]) -> list[tuple[int, int, str, str]]:
    """(start, end_exclusive, label, entity text) of a CLUENER record."""
    return [
        (s, e + 1, label, ent)
        for label, ents in rec["label"].items()
        for ent, pairs in ents.items()
        for s, e in pairs
    ]


def to_doccano(rec: dict[str, Any]) -> dict[str, Any]:
    return {"text": rec["text"], "label": [[s, e, label] for s, e, label, _ in _spans(rec)]}


def to_label_studio(rec: dict[str, Any], task_id: int) -> dict[str, Any]:
    results = [
        {
            "id": f"r{i}",
            "from_name": "label",
            "to_name": "text",
            "type": "labels",
            "value": {"start": s, "end": e, "text": ent, "labels": [label]},
        }
        for i, (s, e, label, ent) in enumerate(_spans(rec))
    ]
    return {
        "id": task_id,
        "data": {"text": rec["text"]},
        "annotations": [
            {
                "id": task_id * 10,
                "was_cancelled": False,
                "result": results,
                "updated_at": "2026-11-27T10:00:00Z",
            }
        ],
    }


def jl(*objs: Any) -> bytes:
    """JSON lines, UTF-8, non-ASCII kept."""
    return b"".join(json.dumps(o, ensure_ascii=False).encode("utf-8") + b"\n" for o in objs)


def good_lines(n: int = 3, seed: int = 7) -> bytes:
    return jl(*good_cluener(n, seed))


def good_tasks(n: int = 3, seed: int = 8, first_id: int = 1) -> list[dict[str, Any]]:
    return [to_label_studio(r, first_id + i) for i, r in enumerate(good_cluener(n, seed))]


def good_doccano(n: int = 3, seed: int = 9) -> bytes:
    return jl(*(to_doccano(r) for r in good_cluener(n, seed)))


@dataclass(frozen=True)
class BadCase:
    """One hostile object and what intake must make of it.

    ``reasons``: exactly the set of reason codes of the quarantined records. ``accepted``: how many
    records get in (None: not fixed). ``fields``: reason -> a substring the rejection's ``field``
    must contain (the field the annotator has to fix). ``detail``: substrings the detail must hold.
    ``intake``: overrides of the ``intake`` settings for this case. ``check``: extra assertions on
    (outcome, quarantined rows, accepted rows). ``reasons=None``: any documented reason code will
    do. ``bug``/``bug_raises``: a product bug this input reveals (see `KNOWN_BUGS`); the case is
    then expected to fail with that exception until the bug is fixed.
    """

    id: str
    fmt: str
    what: str
    build: Callable[[], bytes]
    reasons: frozenset[str]
    accepted: int | None = 3
    key: str = ""
    fields: dict[str, str] = field(default_factory=dict)
    detail: tuple[str, ...] = ()
    intake: dict[str, Any] = field(default_factory=dict)
    check: Callable[[Any, list[dict[str, Any]], list[dict[str, Any]]], None] | None = None
    bug: str = ""  # a known product bug: the test is xfail(strict) with this reason
    bug_raises: type[BaseException] | tuple[type[BaseException], ...] = AssertionError

    @property
    def object_key(self) -> str:
        return self.key or f"incoming/badinput/{self.id}.json"


def _r(*codes: str) -> frozenset[str]:
    return frozenset(codes)


# --- helpers for the individual cases ----------------------------------------------------------


def _cluener_with(text: str, label: str, ent: str, start: int, end_incl: int) -> dict[str, Any]:
    return {"text": text, "label": {label: {ent: [[start, end_incl]]}}}


def _deep_list_line(depth: int) -> bytes:
    return (
        b'{"text": "\xe5\xbc\xa0\xe4\xbc\x9f\xe5\x9c\xa8\xe5\x8c\x97\xe4\xba\xac", "label": '
        + b"[" * depth
        + b"]" * depth
        + b"}\n"
    )


def _deep_dict_line(depth: int) -> bytes:
    return b'{"text": "abc", "label": {"name": ' + b'{"a": ' * depth + b"1" + b"}" * depth + b"}}\n"


def _no_reflection(*needles: str) -> Callable[[Any, list[dict[str, Any]], list[dict[str, Any]]], None]:
    """The hostile strings are kept verbatim as data (raw/detail) and never evaluated (no 49)."""

    def check(outcome: Any, quarantined: list[dict[str, Any]], accepted: list[dict[str, Any]]) -> None:
        blob = json.dumps(quarantined, ensure_ascii=False)
        for needle in needles:
            assert needle in blob, f"{needle!r} not kept verbatim in the quarantine rows"
        assert all("49" not in q["detail"] for q in quarantined if "{{7*7}}" in q["raw"])

    return check


def _text_kept_exactly(text: str) -> Callable[[Any, list[dict[str, Any]], list[dict[str, Any]]], None]:
    def check(outcome: Any, quarantined: list[dict[str, Any]], accepted: list[dict[str, Any]]) -> None:
        assert text in [a["text"] for a in accepted], "the sentence was not kept byte for byte"

    return check


def _normalised(
    text: str, entity: tuple[int, int, str, str]
) -> Callable[[Any, list[dict[str, Any]], list[dict[str, Any]]], None]:
    """The sentence accepted with its invisible characters removed, the entity re-mapped, a warning."""

    def check(outcome: Any, quarantined: list[dict[str, Any]], accepted: list[dict[str, Any]]) -> None:
        (row,) = [a for a in accepted if a["text"] == text]
        assert [(e["start"], e["end"], e["label"], e["text"]) for e in row["entities"]] == [entity]
        assert any(w.startswith("invisible_characters (normalised)") for w in row["warnings"]), row
        assert any(w.startswith("invisible_characters") for w in outcome.warnings), outcome.warnings

    return check


def _huge_jsonl() -> bytes:
    recs = good_cluener(1500, seed=11)
    bad = [{"text": r["text"] + "。", "label": {"weapon": {"x": [[0, 0]]}}} for r in recs[:30]]
    return jl(*recs, *bad)


LONG_LABEL = "L" * 1024

# Product bugs these inputs revealed (fixed; kept for the record in the generated table).
BUG_DEEP_NESTING = (
    "BUG (src/retrain/formats/stream.py _json_lines/_array): json.loads raises RecursionError on "
    "deeply nested JSON and nothing catches it: the whole intake task crashes instead of "
    "quarantining the line, and every later run crashes on the same object"
)
BUG_LONE_SURROGATE = (
    "BUG (src/retrain/formats/stream.py _Judge.judge, src/retrain/records.py dumps_jsonl): a lone "
    "surrogate escape (\\ud800) is valid JSON but not encodable as UTF-8: UnicodeEncodeError crashes "
    "the whole intake task instead of quarantining the record"
)
BUG_CONTROL_CHARS = (
    "GAP (src/retrain/formats, conf/gx/ner_records_suite.yaml): NUL and other C0 control characters "
    "(ESC, BEL, BS, US) inside a sentence are accepted into the training data; no reason code "
    "quarantines them"
)

CASES: list[BadCase] = [
    # ---- whole-object problems (any format) -----------------------------------------------------
    BadCase("empty", "any", "0-byte object", lambda: b"", _r("empty_object"), accepted=0),
    BadCase(
        "blank_lines",
        "any",
        "only whitespace and blank lines",
        lambda: b"\n \n\t\r\n\n",
        _r("empty_object"),
        accepted=0,
    ),
    BadCase(
        "png_binary",
        "any",
        "a PNG image uploaded as .json",
        lambda: b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 8,
        _r("binary"),
        accepted=0,
        detail=("NUL",),
    ),
    BadCase(
        "gzip",
        "cluener",
        "a gzip-compressed CLUENER file",
        lambda: gzip.compress(good_lines(20)),
        _r("binary"),
        accepted=0,
        detail=("gzip",),
    ),
    BadCase(
        "utf16",
        "cluener",
        "UTF-16 LE with BOM",
        lambda: codecs.BOM_UTF16_LE + good_lines().decode("utf-8").encode("utf-16-le"),
        _r("binary"),
        accepted=0,
        detail=("UTF-16",),
    ),
    BadCase(
        "random_bytes",
        "any",
        "64 KiB of pseudo-random bytes, no NUL",
        lambda: bytes((i * 7919 + 13) % 251 + 1 for i in range(65536)),
        _r("bad_encoding"),
        accepted=0,
    ),
    # ---- CLUENER JSON lines ----------------------------------------------------------------------
    BadCase(
        "utf8_bom",
        "cluener",
        "UTF-8 BOM before the first record",
        lambda: codecs.BOM_UTF8 + good_lines(),
        _r(),
        accepted=3,
    ),
    BadCase(
        "gbk_line",
        "cluener",
        "one GBK-encoded line among UTF-8 lines",
        lambda: (
            good_lines()
            + json.dumps(
                _cluener_with("上海市浦东新区", "address", "上海市", 0, 2), ensure_ascii=False
            ).encode("gbk")
            + b"\n"
        ),
        _r("bad_encoding"),
        detail=("GBK", "not UTF-8"),
    ),
    BadCase(
        "latin1_line",
        "cluener",
        "a Latin-1 (é) line",
        lambda: good_lines() + '{"text": "café São Paulo", "label": {}}'.encode("latin-1") + b"\n",
        _r("bad_encoding"),
        detail=("invalid byte 0xe9",),
    ),
    BadCase(
        "overlong_utf8",
        "cluener",
        "overlong UTF-8 sequence for '/' (0xC0 0xAF)",
        lambda: good_lines() + b'{"text": "a\xc0\xafb", "label": {}}\n',
        _r("bad_encoding"),
    ),
    BadCase(
        "truncated",
        "cluener",
        "file cut in the middle of the last record",
        lambda: good_lines() + jl(_cluener_with("张伟在北京工作", "name", "张伟", 0, 1))[:25],
        _r("truncated"),
        detail=("ends before the JSON does",),
    ),
    BadCase(
        "not_json",
        "cluener",
        "a CSV line among JSON lines",
        lambda: good_lines() + "张伟,name,0,1\n".encode(),
        _r("not_json"),
    ),
    BadCase(
        "nul_byte_in_line",
        "cluener",
        "a raw NUL byte inside a text (one line)",
        lambda: good_lines() + b'{"text": "\xe5\xbc\xa0\x00\xe4\xbc\x9f", "label": {}}\n',
        _r("binary"),
    ),
    BadCase(
        "nul_escape_in_text",
        "cluener",
        "\\u0000 escape inside the sentence",
        lambda: good_lines() + jl(_cluener_with("张伟\u0000在北京", "name", "张伟", 0, 1)),
        _r("control_characters"),
    ),
    BadCase(
        "control_chars",
        "cluener",
        "C0 controls / ANSI escape in the sentence",
        lambda: good_lines() + jl(_cluener_with("\u001b[31m张伟\u0007在北京\u0008", "name", "张伟", 5, 6)),
        _r("control_characters"),
    ),
    BadCase(
        "rtl_zero_width",
        "cluener",
        "RTL override + zero-width chars, offsets consistent (intake.invisible_characters: normalise)",
        lambda: good_lines() + jl(_cluener_with("\u202e张\u200b伟\u202c在北京", "name", "张\u200b伟", 1, 3)),
        _r(),
        accepted=4,
        check=_normalised("张伟在北京", (0, 2, "name", "张伟")),
    ),
    BadCase(
        "lone_surrogate_text",
        "cluener",
        'lone surrogate escape "\\ud800" in the sentence',
        lambda: (
            good_lines() + b'{"text": "\\ud800\xe5\xbc\xa0\xe4\xbc\x9f", "label": {"name": '
            b'{"\xe5\xbc\xa0\xe4\xbc\x9f": [[1, 2]]}}}\n'
        ),
        _r("bad_encoding"),
    ),
    BadCase(
        "lone_surrogate_label",
        "cluener",
        "lone surrogate in a label name",
        lambda: (
            good_lines() + b'{"text": "\xe5\xbc\xa0\xe4\xbc\x9f", "label": {"na\\udfffme": '
            b'{"\xe5\xbc\xa0\xe4\xbc\x9f": [[0, 1]]}}}\n'
        ),
        _r("bad_encoding"),
    ),
    BadCase(
        "injection_labels",
        "cluener",
        "labels: SQL, <script>, {{7*7}}, ${jndi:…}",
        lambda: (
            good_lines(6)
            + jl(
                *(
                    {"text": f"张伟在北京工作{i}", "label": {inj: {"张伟": [[0, 1]]}}}
                    for i, inj in enumerate(INJECTIONS)
                )
            )
        ),
        _r("unknown_label"),
        accepted=6,
        fields={"unknown_label": "label."},
        check=_no_reflection(*INJECTIONS),
        detail=("is not one of",),
    ),
    BadCase(
        "injection_text",
        "cluener",
        "sentence is <script>/{{7*7}}/SQL with a valid span",
        lambda: (
            good_lines()
            + jl(
                {
                    "text": "张伟<script>alert(1)</script>{{7*7}}'; DROP TABLE x;--",
                    "label": {"name": {"张伟": [[0, 1]]}},
                }
            )
        ),
        _r(),
        accepted=4,
        check=_text_kept_exactly("张伟<script>alert(1)</script>{{7*7}}'; DROP TABLE x;--"),
    ),
    BadCase(
        "long_label",
        "cluener",
        "a 1 KiB label name",
        lambda: good_lines() + jl(_cluener_with("张伟在北京", LONG_LABEL, "张伟", 0, 1)),
        _r("unknown_label"),
        fields={"unknown_label": "label.LLLL"},
    ),
    BadCase(
        "offsets_out_of_range",
        "cluener",
        "span end beyond the sentence",
        lambda: good_lines() + jl(_cluener_with("张伟", "name", "张伟", 0, 99)),
        _r("offsets_out_of_range"),
        fields={"offsets_out_of_range": "label.name.张伟[0]"},
        detail=("outside the sentence",),
    ),
    BadCase(
        "negative_and_reversed",
        "cluener",
        "negative start; reversed span",
        lambda: (
            good_lines()
            + jl(
                _cluener_with("张伟在北京", "name", "张伟", -1, 1),
                _cluener_with("张伟在北京。", "name", "张伟", 1, 0),
            )
        ),
        _r("offsets_out_of_range"),
    ),
    BadCase(
        "huge_offsets",
        "cluener",
        "offsets 10**30 and 2**63",
        lambda: good_lines() + jl(_cluener_with("张伟在北京", "name", "张伟", 10**30, 2**63)),
        _r("offsets_out_of_range"),
    ),
    BadCase(
        "offset_types",
        "cluener",
        "offsets as strings, floats, bools, NaN",
        lambda: (
            good_lines(6)
            + jl(_cluener_with("张伟在北京", "name", "张伟", "0", "1"))  # type: ignore[arg-type]
            + '{"text": "张伟", "label": {"name": {"张伟": [[0.0, 1.0]]}}}\n'.encode()
            + '{"text": "张伟!", "label": {"name": {"张伟": [[true, 1]]}}}\n'.encode()
            + '{"text": "张伟?", "label": {"name": {"张伟": [[NaN, Infinity]]}}}\n'.encode()
        ),
        _r("wrong_type"),
        accepted=6,
        fields={"wrong_type": "label.name"},
    ),
    BadCase(
        "scalar_records",
        "cluener",
        "JSON scalars/arrays/null as records",
        lambda: good_lines(6) + b'42\n"text"\nnull\n[1, 2]\ntrue\n',
        _r("wrong_type"),
        accepted=6,
        detail=("JSON object",),
    ),
    BadCase(
        "wrong_text_types",
        "cluener",
        "text as number / list / null / missing / empty",
        lambda: (
            good_lines(5)
            + jl(
                {"text": 12345, "label": {}},
                {"text": ["张伟"], "label": {}},
                {"text": None, "label": {}},
                {"label": {}},
                {"text": " \u3000 ", "label": {}},
            )
        ),
        _r("wrong_type", "missing_field", "empty_text"),
        accepted=5,
        fields={"wrong_type": "text"},
    ),
    BadCase(
        "empty_objects",
        "cluener",
        "{} and { } lines in a CLUENER file",
        lambda: good_lines() + b"{}\n{ }\n",
        _r("missing_field"),
        fields={"missing_field": "text"},
        detail=("no 'label' field",),
    ),
    BadCase(
        "span_mismatch_off_by_one",
        "cluener",
        "end offset written exclusive in CLUENER",
        lambda: good_lines() + jl(_cluener_with("张伟在北京工作", "name", "张伟", 0, 2)),
        _r("span_text_mismatch"),
        detail=("looks exclusive",),
    ),
    BadCase(
        "dotdot_and_abs_entity_keys",
        "cluener",
        "entity texts '../../etc/passwd', '/etc/passwd'",
        lambda: (
            good_lines()
            + jl(
                {
                    "text": "../../etc/passwd 与 /etc/passwd",
                    "label": {"address": {"../../etc/passwd": [[0, 15]], "/etc/passwd": [[19, 29]]}},
                }
            )
        ),
        _r(),
        accepted=4,
    ),
    BadCase(
        "deep_list_nesting",
        "cluener",
        "100k nested lists in a record's label",
        lambda: good_lines() + _deep_list_line(100_000),
        _r("not_json"),
    ),
    BadCase(
        "deep_dict_nesting",
        "cluener",
        "50k nested objects in a record's label",
        lambda: good_lines() + _deep_dict_line(50_000),
        _r("not_json"),
    ),
    BadCase(
        "line_too_long",
        "cluener",
        "one 3 MiB line (limit 1 MiB)",
        lambda: good_lines() + jl({"text": "张" * (1 << 20), "label": {}}),
        _r("line_too_long"),
        detail=("max_line_bytes",),
    ),
    BadCase(
        "too_long_sentence",
        "cluener",
        "a 2 000-character sentence (GX length limit)",
        lambda: good_lines() + jl(_cluener_with("张伟" + "的" * 1998, "name", "张伟", 0, 1)),
        _r("gx:expect_column_value_lengths_to_be_between"),
        fields={"gx:expect_column_value_lengths_to_be_between": "text"},
    ),
    BadCase(
        "huge_jsonl",
        "cluener",
        "1 530 records, 30 with an unknown label",
        _huge_jsonl,
        _r("unknown_label"),
        accepted=1500,
    ),
    BadCase(
        "mixed_formats",
        "cluener",
        "doccano and Label Studio records inside a CLUENER file",
        lambda: good_lines() + good_doccano(1) + jl(good_tasks(1)[0]),
        _r("mixed_format"),
    ),
    BadCase(
        "crlf_and_duplicates",
        "cluener",
        "CRLF line ends and the same record twice",
        lambda: good_lines().replace(b"\n", b"\r\n") + good_lines(1),
        _r("duplicate_record"),
    ),
    # ---- Label Studio JSON export ----------------------------------------------------------------
    BadCase(
        "ls_empty_array",
        "label_studio",
        "an empty export []",
        lambda: b"[]\n",
        _r("empty_object"),
        accepted=0,
    ),
    BadCase(
        "ls_truncated",
        "label_studio",
        "export cut mid-array",
        lambda: json.dumps(good_tasks(3), ensure_ascii=False).encode()[:-40],
        _r("truncated"),
        accepted=0,
    ),
    BadCase(
        "ls_deep_nesting",
        "label_studio",
        "100k nested lists as the export",
        lambda: b"[" * 100_000 + b"]" * 100_000,
        _r("not_json"),
        accepted=0,
    ),
    BadCase(
        "ls_too_large",
        "label_studio",
        "array above intake.max_object_bytes (64 KiB here)",
        lambda: json.dumps(good_tasks(300), ensure_ascii=False).encode(),
        _r("object_too_large"),
        accepted=0,
        intake={"max_object_bytes": 65536},
    ),
    BadCase(
        "ls_cancelled_and_missing",
        "label_studio",
        "cancelled-only / missing annotations; no data.text",
        lambda: json.dumps(
            good_tasks(3)
            + [
                {
                    **good_tasks(1, seed=20, first_id=50)[0]
                    | {"annotations": [{"was_cancelled": True, "result": []}]}
                },
                {"id": 51, "data": {"text": "张伟"}},
                {"id": 52, "data": {"body": "张伟"}, "annotations": [{"result": []}]},
            ],
            ensure_ascii=False,
        ).encode(),
        _r("no_annotation", "missing_field"),
        fields={"missing_field": "data.text"},
    ),
    BadCase(
        "ls_bad_offsets_and_labels",
        "label_studio",
        "offset past the end; <script> and SQL labels",
        lambda: json.dumps(
            good_tasks(3)
            + [
                {
                    "id": 60,
                    "data": {"text": "张伟"},
                    "annotations": [
                        {
                            "result": [
                                {
                                    "type": "labels",
                                    "value": {"start": 0, "end": 9, "text": "张伟", "labels": ["PER"]},
                                }
                            ]
                        }
                    ],
                },
                {
                    "id": 61,
                    "data": {"text": "张伟在北京"},
                    "annotations": [
                        {
                            "result": [
                                {
                                    "type": "labels",
                                    "value": {
                                        "start": 0,
                                        "end": 2,
                                        "text": "张伟",
                                        "labels": ["<script>alert(1)</script>"],
                                    },
                                }
                            ]
                        }
                    ],
                },
                {
                    "id": 62,
                    "data": {"text": "张伟在上海"},
                    "annotations": [
                        {
                            "result": [
                                {
                                    "type": "labels",
                                    "value": {
                                        "start": 0,
                                        "end": 2,
                                        "text": "张伟",
                                        "labels": ["'; DROP TABLE x; --"],
                                    },
                                }
                            ]
                        }
                    ],
                },
            ],
            ensure_ascii=False,
        ).encode(),
        _r("offsets_out_of_range", "unknown_label"),
        fields={"unknown_label": ".value.labels"},
        detail=("task id=",),
        check=_no_reflection("<script>alert(1)</script>", "'; DROP TABLE x; --"),
    ),
    BadCase(
        "ls_pretty_object",
        "label_studio",
        "one task pretty-printed as an object (not an array)",
        lambda: json.dumps(good_tasks(1)[0], ensure_ascii=False, indent=2).encode(),
        _r("truncated", "not_json", "wrong_type"),
        accepted=0,
    ),
    BadCase(
        "ls_gbk",
        "label_studio",
        "export saved as GBK",
        lambda: json.dumps(good_tasks(3), ensure_ascii=False).encode("gbk"),
        _r("bad_encoding"),
        accepted=0,
        detail=("GBK",),
    ),
    BadCase(
        "ls_lone_surrogate",
        "label_studio",
        'lone surrogate "\\udc00" in data.text',
        lambda: json.dumps(
            good_tasks(3)
            + [
                {
                    "id": 70,
                    "data": {"text": "张伟\udc00"},
                    "annotations": [
                        {
                            "result": [
                                {
                                    "type": "labels",
                                    "value": {"start": 0, "end": 2, "text": "张伟", "labels": ["PER"]},
                                }
                            ]
                        }
                    ],
                }
            ],
            ensure_ascii=True,
        ).encode(),
        _r("bad_encoding"),
    ),
    # ---- doccano JSONL -----------------------------------------------------------------------------
    BadCase(
        "doccano_bad_spans",
        "doccano",
        "reversed span, end past text, 3-item rule broken",
        lambda: (
            good_doccano()
            + jl(
                {"text": "张伟在北京", "label": [[2, 0, "PER"]]},
                {"text": "张伟在上海", "label": [[0, 40, "PER"]]},
                {"text": "张伟在广州", "label": [[0, 2]]},
            )
        ),
        _r("offsets_out_of_range", "wrong_type"),
    ),
    BadCase(
        "doccano_entities_missing",
        "doccano",
        "entities lacking end_offset; labels not a list",
        lambda: (
            good_doccano()
            + jl(
                {"text": "张伟在北京", "entities": [{"start_offset": 0, "label": "PER"}]},
                {"text": "张伟在上海", "entities": "PER"},
            )
        ),
        _r("missing_field", "wrong_type"),
        fields={"missing_field": "entities[0].end_offset"},
    ),
    BadCase(
        "doccano_injection_labels",
        "doccano",
        "{{7*7}} and SQL labels",
        lambda: (
            good_doccano()
            + jl(
                {"text": "张伟在北京", "label": [[0, 2, "{{7*7}}"]]},
                {"text": "张伟在上海", "label": [[0, 2, "1' OR '1'='1"]]},
            )
        ),
        _r("unknown_label"),
        check=_no_reflection("{{7*7}}", "1' OR '1'='1"),
    ),
    BadCase(
        "doccano_nul_and_controls",
        "doccano",
        "\\u0000 and \\u001f in the text",
        lambda: (
            good_doccano()
            + jl(
                {"text": "张伟\u0000在北京", "label": [[0, 2, "PER"]]},
                {"text": "张伟\u001f在上海", "label": [[0, 2, "PER"]]},
            )
        ),
        _r("control_characters"),
    ),
    # ---- hostile object keys (content is three good CLUENER records) -------------------------------
    BadCase(
        "key_dotdot",
        "cluener",
        "key incoming/../../etc/passwd",
        good_lines,
        _r(),
        key="incoming/../../etc/passwd",
    ),
    BadCase(
        "key_absolute_like",
        "cluener",
        "key incoming//etc/passwd (an absolute path inside)",
        good_lines,
        _r(),
        key="incoming//etc/passwd",
    ),
    BadCase(
        "key_1kib", "cluener", "a 1 015-byte key", good_lines, _r(), key="incoming/" + "k" * 1000 + ".jsonl"
    ),
    BadCase(
        "key_controls",
        "cluener",
        "key with RTL override, zero-width char and a tab",
        good_lines,
        _r(),
        key="incoming/批次\u202etxt.json\u200b\t.json",
    ),
    BadCase(
        "key_injection",
        "cluener",
        "key with <script>, {{7*7}}, quotes, | and backticks",
        good_lines,
        _r(),
        key="incoming/<script>alert(1)</script>{{7*7}}'; DROP TABLE x;--|`.json",
    ),
]

IDS = [c.id for c in CASES]
