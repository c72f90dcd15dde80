"""The batch's bad share and duplicates: exact repeats are reported but not bad rows (unless
conf says so); conflicting duplicates and other parse rejections are bad rows. Real GX."""

from __future__ import annotations

import json

from retrain.formats import iter_bounded_lines, parse_stream
from retrain.records import Record, Rejection
from retrain.validate import BatchValidator, count_parse_rejections, validate_batch

LINES = [
    {"text": f"浙商银行企业信贷部叶老桂博士{i}", "label": {"name": {"叶老桂": [[9, 11]]}}} for i in range(4)
]


def parsed(objs: list[dict], settings) -> tuple[list[Record], list[Rejection]]:
    data = b"".join(json.dumps(o, ensure_ascii=False).encode() + b"\n" for o in objs)
    items = list(parse_stream(iter_bounded_lines([data], 1 << 20), "incoming/d.jsonl", "e", settings))
    return [i for i in items if isinstance(i, Record)], [i for i in items if isinstance(i, Rejection)]


def with_dups_bad(settings, value: bool):
    return settings.model_copy(
        update={"validation": settings.validation.model_copy(update={"duplicates_are_bad_rows": value})}
    )


def batch(records, rejections, settings):
    bad, dups = count_parse_rejections(rejections)
    return validate_batch(
        records, settings, batch_name="dups", docs_dir=None, parse_rejected=bad, parse_duplicates=dups
    )


def test_exact_repeats_do_not_sink_the_batch(settings):
    records, rejections = parsed(LINES + LINES * 3, settings)  # 4 unique, 12 repeats (75 %)
    assert len(records) == 4 and {r.reason for r in rejections} == {"duplicate_record"}
    assert count_parse_rejections(rejections) == (0, 12)
    bv = batch(records, rejections, settings)
    assert not bv.batch_quarantined and len(bv.accepted) == 4


def test_exact_repeats_as_bad_rows_when_conf_says_so(settings):
    strict = with_dups_bad(settings, True)
    records, rejections = parsed(LINES + LINES * 3, strict)
    bv = batch(records, rejections, strict)
    assert bv.batch_quarantined and not bv.accepted
    assert "bad_fraction=0.75" in bv.reason and {r.reason for r in bv.rejected} == {"batch_quarantined"}


def test_conflicting_duplicates_are_bad_rows(settings):
    relabeled = [{"text": o["text"], "label": {"company": {"浙商银行": [[0, 3]]}}} for o in LINES]
    records, rejections = parsed(LINES + relabeled + relabeled, settings)
    assert len(records) == 4 and [r.reason for r in rejections] == ["conflicting_duplicate"] * 8
    assert count_parse_rejections(rejections) == (8, 0)
    bv = batch(records, rejections, settings)  # 8 bad of 12 rows: above max_bad_fraction 0.5
    assert bv.batch_quarantined and "bad_fraction=0.666667" in bv.reason


def validate_in_chunks(items: list[Record | Rejection], settings, size: int):
    """Intake's path: `BatchValidator.add` per chunk of parser outcomes, then `finish` once."""
    validator = BatchValidator(settings, batch_name="chunks", docs_dir=None)
    accepted = []
    for start in range(0, len(items), size):
        chunk = items[start : start + size]
        records = [x for x in chunk if isinstance(x, Record)]
        bad, dups = count_parse_rejections([x for x in chunk if isinstance(x, Rejection)])
        accepted += validator.add(records, parse_rejected=bad, parse_duplicates=dups)[0]
    return validator, validator.finish(), accepted


def test_repeats_over_chunks_stay_out_of_the_bad_share(settings):
    """12 exact repeats of 16 lines, in chunks of 5 (three chunks hold no record at all): the batch
    frame counts them in rows_duplicate; the bad share over every chunk excludes them unless conf
    says they are bad rows."""
    records, rejections = parsed(LINES + LINES * 3, settings)
    items: list[Record | Rejection] = sorted(records + rejections, key=lambda x: x.line)
    validator, verdict, accepted = validate_in_chunks(items, settings, 5)
    assert validator.chunks == 4 and validator.rows_duplicate == 12
    assert (validator.rows_total, validator.rows_rejected) == (4, 0)
    assert not verdict.batch_quarantined and len(accepted) == 4
    strict = with_dups_bad(settings, True)
    validator, verdict, _ = validate_in_chunks(items, strict, 5)
    assert (validator.rows_total, validator.rows_rejected, validator.rows_duplicate) == (16, 12, 12)
    assert verdict.batch_quarantined and "bad_fraction=0.75" in verdict.reason


def test_invisible_character_summary_counts_every_chunk(settings):
    lines = [{"text": f"张\u200b伟在北京{i}", "label": {"name": {"张伟": [[0, 2]]}}} for i in range(7)]
    records, rejections = parsed(lines, settings)
    assert len(records) == 7 and not rejections
    _, verdict, accepted = validate_in_chunks(list(records), settings, 2)
    (summary,) = [w for w in verdict.warnings if w.startswith("invisible_characters:")]
    assert summary.startswith(
        "invisible_characters: 7 records, e.g. incoming/d.jsonl:1, incoming/d.jsonl:2, "
    )
    assert "… (7 records)" in summary and "U+200B" in summary
    assert len(accepted) == 7
