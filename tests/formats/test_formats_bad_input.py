"""Each kind of bad input: a clear Rejection (key, line, field, reason, detail) and nothing lost."""

from __future__ import annotations

import gzip
import json
from typing import Any

from retrain.config import Settings
from retrain.records import Entity


def with_intake(settings: Settings, **changes: Any) -> Settings:
    return settings.model_copy(update={"intake": settings.intake.model_copy(update=changes)})


def jl(*objs: object) -> bytes:
    return b"".join(json.dumps(o, ensure_ascii=False).encode("utf-8") + b"\n" for o in objs)


GOOD = {
    "text": "浙商银行企业信贷部叶老桂博士",
    "label": {"name": {"叶老桂": [[9, 11]]}, "company": {"浙商银行": [[0, 3]]}},
}


def test_valid_cluener_line_becomes_end_exclusive_record(parse):
    p = parse(jl(GOOD))
    p.assert_accounted(1)
    (r,) = p.records
    assert r.entities == [Entity(0, 4, "company", "浙商银行"), Entity(9, 12, "name", "叶老桂")]
    assert (r.source_key, r.line, r.source_etag, r.fmt) == ("incoming/batch.jsonl", 1, "etag-1", "cluener")
    assert all(r.text[e.start : e.end] == e.text for e in r.entities)


def test_not_json_and_truncated_lines(parse):
    data = (
        jl(GOOD)
        + b"this is not json\n"
        + b'{"text": "abc", "label": {"name": {"a": [[0, 0]]}\n'
        + b'{"text": "\xe4\xb8\x8a\xe6\xb5\xb7'
    )
    p = parse(data)
    p.assert_accounted(4)
    assert p.reasons() == ["not_json", "truncated", "truncated"]
    assert [r.line for r in p.rejections] == [2, 3, 4]
    assert p.rejections[0].raw == "this is not json"
    assert "ends before the JSON does" in p.rejections[1].detail


def test_gbk_bytes_are_bad_encoding_naming_the_line(parse):
    gbk = json.dumps(
        {"text": "上海市", "label": {"address": {"上海市": [[0, 2]]}}}, ensure_ascii=False
    ).encode("gbk")
    p = parse(jl(GOOD) + gbk + b"\n" + jl(GOOD | {"text": "浙商银行企业信贷部叶老桂博士。"}))
    p.assert_accounted(3)
    rej = p.only_rejection()
    assert (rej.reason, rej.line) == ("bad_encoding", 2)
    assert "not UTF-8" in rej.detail and "GBK" in rej.detail
    assert rej.raw  # the offending line is kept (with replacement characters)


def test_utf8_bom_is_stripped_and_noted(parse):
    p = parse(b"\xef\xbb\xbf" + jl(GOOD, GOOD | {"text": GOOD["text"] + "。"}))
    p.assert_accounted(2)
    assert not p.rejections
    assert p.stats["bom_stripped"] is True
    assert p.records[0].text == GOOD["text"]
    assert "utf8_bom_stripped" in p.records[0].warnings
    assert "utf8_bom_stripped" not in p.records[1].warnings


def test_empty_object_is_one_rejection_at_line_0(parse):
    for data in (b"", b"\n\n  \n"):
        p = parse(data)
        p.assert_accounted(1)
        rej = p.only_rejection()
        assert (rej.reason, rej.line) == ("empty_object", 0)


def test_blank_lines_are_not_records_and_keep_line_numbers(parse):
    p = parse(jl(GOOD) + b"\n\r\n" + b"oops\n")
    p.assert_accounted(2)
    assert p.stats["blank_lines"] == 2
    assert p.only_rejection().line == 4


def test_empty_text(parse):
    p = parse(jl({"text": "", "label": {}}, {"text": "   ", "label": {}}))
    p.assert_accounted(2)
    assert p.reasons() == ["empty_text", "empty_text"]
    assert p.rejections[0].field == "text"


def test_offsets_out_of_range(parse):
    p = parse(
        jl(
            {"text": "叶老桂", "label": {"name": {"叶老桂": [[1, 5]]}}},
            {"text": "叶老桂", "label": {"name": {"叶老桂": [[-1, 2]]}}},
            {"text": "叶老桂", "label": {"name": {"叶老桂": [[2, 0]]}}},
        )
    )
    p.assert_accounted(3)
    assert p.reasons() == ["offsets_out_of_range"] * 3
    assert p.rejections[0].field == "label.name.叶老桂[0]"
    assert "3 characters" in p.rejections[0].detail
    assert "reversed" in p.rejections[2].detail


def test_cluener_exclusive_end_is_named_as_off_by_one(parse):
    # CLUENER ends are inclusive; [9, 12] written end-exclusive reads one character too many.
    p = parse(jl({"text": "浙商银行企业信贷部叶老桂博士", "label": {"name": {"叶老桂": [[9, 12]]}}}))
    p.assert_accounted(1)
    rej = p.only_rejection()
    assert rej.reason == "span_text_mismatch"
    assert "looks exclusive" in rej.detail and "expected [9, 11]" in rej.detail


def test_label_studio_inclusive_end_is_named_as_off_by_one(parse):
    task = {
        "id": 7,
        "data": {"text": "叶老桂博士"},
        "annotations": [
            {
                "id": 1,
                "result": [
                    {"type": "labels", "value": {"start": 0, "end": 2, "text": "叶老桂", "labels": ["name"]}}
                ],
            }
        ],
    }
    p = parse(json.dumps([task], ensure_ascii=False).encode())
    p.assert_accounted(1)
    rej = p.only_rejection()
    assert rej.reason == "span_text_mismatch"
    assert "looks inclusive" in rej.detail and "expected [0, 3)" in rej.detail
    assert "task id=7" in rej.detail


def test_entity_text_not_matching(parse):
    p = parse(
        jl(
            {"text": "浙商银行企业信贷部叶老桂博士", "label": {"name": {"叶老贵": [[9, 11]]}}},
            {"text": "浙商银行企业信贷部叶老桂博士", "label": {"name": {"叶老桂": [[8, 10]]}}},
        )
    )
    p.assert_accounted(2)
    assert p.reasons() == ["span_text_mismatch"] * 2
    assert "does not occur" in p.rejections[0].detail
    assert "occurs at [9, 11]" in p.rejections[1].detail


def test_labels_in_other_languages_and_cases_are_mapped_or_rejected(parse):
    p = parse(
        jl(
            {"text": "叶老桂博士", "label": {"人名": {"叶老桂": [[0, 2]]}}},
            {"text": "叶老桂博士说", "label": {"PER": {"叶老桂": [[0, 2]]}, "Position": {"博士": [[3, 4]]}}},
            {"text": "叶老桂先生", "label": {"未知类": {"叶老桂": [[0, 2]]}}},
        )
    )
    p.assert_accounted(3)
    assert [e.label for e in p.records[0].entities] == ["name"]
    assert sorted(e.label for e in p.records[1].entities) == ["name", "position"]
    rej = p.only_rejection()
    assert (rej.reason, rej.line, rej.field) == ("unknown_label", 3, "label.未知类")
    assert "未知类" in rej.detail and "label_map.yaml" in rej.detail
    d = parse(jl({"text": "叶老桂女士", "label": [[0, 3, " per "], [3, 5, "Title"]]}))
    d.assert_accounted(1)
    assert (d.only_rejection().reason, d.only_rejection().field) == ("unknown_label", "label[1]")


def test_overlapping_spans_survive_parsing(parse):
    # train line 1507's shape: a book title containing two company names. The policy is validate's.
    text = "此前《招商银行：投资永隆银行浮亏逾百亿港元》一文"
    p = parse(
        jl(
            {
                "text": text,
                "label": {
                    "book": {"《招商银行：投资永隆银行浮亏逾百亿港元》": [[2, 21]]},
                    "company": {"招商银行": [[3, 6]], "永隆银行": [[10, 13]]},
                },
            }
        )
    )
    p.assert_accounted(1)
    assert [(e.start, e.end, e.label) for e in p.records[0].entities] == [
        (2, 22, "book"),
        (3, 7, "company"),
        (10, 14, "company"),
    ]


def test_duplicate_records_keep_the_first(parse):
    other = {"text": GOOD["text"], "label": {"name": {"叶老桂": [[9, 11]]}}}
    reordered = {
        "text": GOOD["text"],
        "label": {"company": {"浙商银行": [[0, 3]]}, "name": {"叶老桂": [[9, 11]]}},
    }
    p = parse(jl(GOOD, GOOD, other, reordered))
    p.assert_accounted(4)
    assert [r.line for r in p.records] == [1]
    # exact repeats (entity order does not matter) are dropped duplicates; other entities conflict
    assert p.reasons() == ["duplicate_record", "conflicting_duplicate", "duplicate_record"]
    assert [r.line for r in p.rejections] == [2, 3, 4]
    assert all("line 1 (kept)" in r.detail for r in p.rejections)
    assert "[9, 12) name" in p.rejections[1].detail and "one of the two annotations is wrong" in (
        p.rejections[1].detail
    )


def test_leading_blanks_do_not_make_another_sentence(parse):
    indented = {
        "text": "  " + GOOD["text"],
        "label": {"name": {"叶老桂": [[11, 13]]}, "company": {"浙商银行": [[2, 5]]}},
    }
    shifted = {"text": "  " + GOOD["text"], "label": {"name": {"叶老桂": [[11, 13]]}}}  # one entity less
    p = parse(jl(GOOD, indented, shifted))
    p.assert_accounted(3)
    assert p.reasons() == ["duplicate_record", "conflicting_duplicate"]


def test_several_problems_one_rejection_with_all_in_detail(parse):
    p = parse(
        jl(
            {
                "text": "叶老桂博士",
                "label": {"未知类": {"叶老桂": [[0, 2]]}, "name": {"叶老桂": [[0, 9]], "博士": [[0, 1]]}},
            }
        )
    )
    p.assert_accounted(1)
    rej = p.only_rejection()
    assert rej.reason == "unknown_label"
    assert (
        "also:" in rej.detail and "offsets_out_of_range" in rej.detail and "span_text_mismatch" in rej.detail
    )


def test_wrong_types_and_missing_fields(parse):
    p = parse(
        jl(
            42,
            {"text": 5, "label": {}},
            {"label": {}},
            {"text": "abc", "label": {"name": [[0, 1]]}},
            {"text": "abc", "label": {"name": {"ab": [["0", 1]]}}},
            {"text": "abc"},
        )
    )
    p.assert_accounted(6)
    assert p.reasons() == [
        "wrong_type",
        "wrong_type",
        "missing_field",
        "wrong_type",
        "wrong_type",
        "missing_field",
    ]
    assert [r.field for r in p.rejections][1:5] == ["text", "text", "label.name", "label.name.ab[0]"]


def test_a_50_mb_line_is_streamed_and_rejected_unparsed(settings):
    import tracemalloc

    from retrain.formats import iter_bounded_lines, parse_stream

    total = 50 * 1024 * 1024

    def chunks():  # a generated object: one good line, one 50 MB line, one good line
        yield json.dumps(GOOD, ensure_ascii=False).encode() + b'\n{"text": "'
        block = "长".encode() * (64 * 1024 // 3)
        sent = 0
        while sent < total:
            yield block
            sent += len(block)
        yield (
            b'", "label": {}}\n'
            + json.dumps(GOOD | {"text": GOOD["text"] + "！"}, ensure_ascii=False).encode()
            + b"\n"
        )

    tracemalloc.start()
    try:
        items = list(
            parse_stream(iter_bounded_lines(chunks(), settings.intake.max_line_bytes), "k", "e", settings)
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(items) == 3
    rej = items[1]
    assert (rej.reason, rej.line) == ("line_too_long", 2)
    assert str(settings.intake.max_line_bytes) in rej.detail and len(rej.raw) <= 201
    assert [i.line for i in (items[0], items[2])] == [1, 3] and all(
        hasattr(i, "entities") for i in (items[0], items[2])
    )
    assert peak < 4 * settings.intake.max_line_bytes, f"peak {peak} bytes: the long line was held in memory"


def test_line_limit_is_configurable(parse, settings):
    first = jl(GOOD)
    small = with_intake(settings, max_line_bytes=len(first) - 1)  # the line without its newline fits exactly
    p = parse(first + jl(GOOD | {"text": GOOD["text"] + "。"}), conf=small)
    p.assert_accounted(2)
    assert (p.only_rejection().reason, p.only_rejection().line) == ("line_too_long", 2)


def test_binary_file(parse):
    p = parse(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 4)
    p.assert_accounted(1)
    rej = p.only_rejection()
    assert (rej.reason, rej.line) == ("binary", 0)
    utf16 = parse(json.dumps(GOOD, ensure_ascii=False).encode("utf-16"))
    assert "UTF-16" in utf16.only_rejection().detail
    gz = parse(gzip.compress(jl(GOOD) * 50))
    assert gz.only_rejection().reason == "binary"


def test_nul_byte_in_a_later_line_rejects_only_that_line(parse):
    p = parse(jl(GOOD) + b'{"text": "a\x00b", "label": {}}\n')
    p.assert_accounted(2)
    assert (p.only_rejection().reason, p.only_rejection().line) == ("binary", 2)


def test_label_studio_latest_non_cancelled_annotation(parse):
    def ann(i: int, updated: str, label: str, cancelled: bool = False) -> dict:
        return {
            "id": i,
            "was_cancelled": cancelled,
            "updated_at": updated,
            "result": [
                {"type": "labels", "value": {"start": 0, "end": 3, "text": "叶老桂", "labels": [label]}},
                {"type": "choices", "value": {"choices": ["ok"]}},
            ],
        }

    tasks = [
        {
            "id": 1,
            "data": {"text": "叶老桂博士"},
            "annotations": [
                ann(10, "2024-01-02", "人名"),
                ann(11, "2024-03-01", "company", True),
                ann(12, "2024-01-01", "game"),
            ],
        },
        {"id": 2, "data": {"text": "叶老桂博士"}, "annotations": []},
        {"id": 3, "data": {"text": "叶老桂博士"}, "annotations": [ann(13, "2024-01-01", "name", True)]},
        {"id": 4, "data": {"text": "叶老桂博士"}},
    ]
    p = parse(json.dumps(tasks, ensure_ascii=False, indent=2).encode())
    p.assert_accounted(4)
    (r,) = p.records
    assert (r.fmt, r.line, r.entities) == ("label_studio", 1, [Entity(0, 3, "name", "叶老桂")])
    assert any("used the latest" in w for w in r.warnings)
    assert p.reasons() == ["no_annotation"] * 3
    assert "no annotations" in p.rejections[0].detail
    assert "all 1 annotations were cancelled" in p.rejections[1].detail
    assert [x.line for x in p.rejections] == [2, 3, 4]


def test_label_studio_utf16_offsets_are_converted(parse):
    text = "😀叶老桂博士"  # the emoji is 2 UTF-16 code units, 1 Python character
    task = {
        "data": {"text": text},
        "annotations": [
            {
                "result": [
                    {"type": "labels", "value": {"start": 2, "end": 5, "text": "叶老桂", "labels": ["name"]}}
                ]
            }
        ],
    }
    p = parse(json.dumps([task], ensure_ascii=False).encode())
    p.assert_accounted(1)
    assert p.records[0].entities == [Entity(1, 4, "name", "叶老桂")]
    assert any("UTF-16" in w for w in p.records[0].warnings)


def test_doccano_both_shapes(parse):
    p = parse(
        jl(
            {"id": 1, "text": "叶老桂在浙商银行", "label": [[0, 3, "PER"], [4, 8, "公司"]]},
            {
                "id": 2,
                "text": "叶老桂在浙商银行工作",
                "entities": [{"id": 5, "start_offset": 4, "end_offset": 8, "label": "company"}],
                "relations": [],
            },
            {"id": 3, "text": "叶老桂", "label": [[0, 9, "name"]]},
        )
    )
    p.assert_accounted(3)
    assert p.records[0].fmt == "doccano"
    assert p.records[0].entities == [Entity(0, 3, "name", "叶老桂"), Entity(4, 8, "company", "浙商银行")]
    assert p.records[1].entities == [Entity(4, 8, "company", "浙商银行")]
    assert p.only_rejection().reason == "offsets_out_of_range"


def test_mixed_formats_in_one_object(parse):
    ls_task = {"data": {"text": "叶老桂"}, "annotations": [{"result": []}]}
    data = jl(
        GOOD,
        {"text": "叶老桂", "label": [[0, 3, "name"]]},
        ls_task,
        {"text": "叶老桂博士", "label": {"name": {"叶老桂": [[0, 2]]}}},
    )
    p = parse(data)
    p.assert_accounted(4)
    assert p.reasons() == ["mixed_format", "mixed_format"]
    assert (
        "this record is doccano but the object is cluener (decided by record at line 1)"
        in p.rejections[0].detail
    )
    assert "label_studio" in p.rejections[1].detail
    # The format fixed by conf wins over the first line.
    forced = parse(data, fmt="doccano")
    forced.assert_accounted(4)
    assert [r.line for r in forced.records] == [2]
    assert forced.reasons() == ["mixed_format"] * 3
    assert "decided by conf intake.formats" in forced.rejections[0].detail


def test_arrays_of_other_formats_and_pretty_printed_arrays(parse):
    p = parse(
        json.dumps(
            [GOOD, {"text": "叶老桂", "label": [[0, 3, "name"]]}], ensure_ascii=False, indent=4
        ).encode()
    )
    p.assert_accounted(2)
    assert p.records[0].fmt == "cluener" and p.only_rejection().reason == "mixed_format"


def test_broken_json_array_is_one_rejection(parse):
    p = parse(json.dumps([GOOD, GOOD], ensure_ascii=False, indent=2).encode()[:-20])
    p.assert_accounted(1)
    rej = p.only_rejection()
    assert rej.reason == "truncated" and rej.line > 1


def test_crlf_line_endings(parse):
    p = parse(
        jl(GOOD).replace(b"\n", b"\r\n") * 1
        + jl(GOOD | {"text": GOOD["text"] + "。"}).replace(b"\n", b"\r\n")
    )
    p.assert_accounted(2)
    assert not p.rejections


def test_path_traversal_key_is_an_opaque_label(parse, settings, tmp_path, monkeypatch):
    from retrain.formats import format_for_key

    monkeypatch.chdir(tmp_path)
    key = "incoming/../../etc/x"
    p = parse(jl(GOOD, {"text": ""}), key=key)
    p.assert_accounted(2)
    assert p.records[0].source_key == key and p.rejections[0].source_key == key
    assert list(tmp_path.iterdir()) == []  # parsing writes nothing anywhere
    conf = with_intake(
        settings, formats={"incoming/": "doccano", "etc/": "label_studio", "incoming/ls/": "auto"}
    )
    assert format_for_key(key, conf) == "doccano"  # plain prefix comparison, no path resolution
    assert format_for_key("incoming/ls/a.json", conf) is None  # longest prefix: auto
    assert format_for_key("x/etc/y", conf) is None
