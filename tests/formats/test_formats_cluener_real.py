"""The real CLUENER files (read from ../shared/data/cluener, never copied): every line parses,
every span matches its offsets, and the numbers agree with SOURCES.md."""

from __future__ import annotations

from collections import Counter

import pytest

from retrain.formats import iter_bounded_lines, parse_stream
from retrain.records import Record

# SOURCES.md: spans per label, train/dev
SPANS = {
    "address": (2891, 373),
    "book": (1139, 154),
    "company": (2980, 378),
    "game": (2376, 295),
    "government": (1835, 247),
    "movie": (1123, 151),
    "name": (3755, 465),
    "organization": (3210, 367),
    "position": (3141, 433),
    "scene": (1521, 209),
}


@pytest.mark.parametrize(
    ("name", "lines", "spans", "col"), [("train", 10748, 23971, 0), ("dev", 1343, 3072, 1)]
)
def test_real_cluener_parses_completely(cluener_dir, settings, name, lines, spans, col):
    with open(cluener_dir / f"{name}.json", "rb") as f:
        chunks = iter(lambda: f.read(64 * 1024), b"")
        stats: dict = {}
        items = list(
            parse_stream(
                iter_bounded_lines(chunks, settings.intake.max_line_bytes),
                f"cluener/{name}.json",
                "",
                settings,
                stats=stats,
            )
        )
    records = [i for i in items if isinstance(i, Record)]
    assert len(items) == len(records) == lines, [i for i in items if not isinstance(i, Record)][:3]
    assert stats["format"] == "cluener" and stats["lines"] == lines
    assert sum(len(r.entities) for r in records) == spans
    assert all(r.text[e.start : e.end] == e.text for r in records for e in r.entities)
    assert Counter(e.label for r in records for e in r.entities) == {k: v[col] for k, v in SPANS.items()}
    assert max(len(r.text) for r in records) == 50
    assert len({r.id for r in records}) == lines  # no text repeated
    if name == "train":
        line_1507 = records[1506]
        assert [(e.label, e.text) for e in line_1507.entities if e.label == "book"] == [
            ("book", "《招商银行：投资永隆银行浮亏逾百亿港元》")
        ]


def test_entities_of_every_dev_line_match_their_text(cluener_dir, settings):
    """`cluener.entities` (benchmarks and tests building golden sets) gives end-exclusive spans that
    cut the entity text out of the sentence, the dev file's span count in all."""
    import json

    from retrain.formats import cluener

    total = 0
    for line in (cluener_dir / "dev.json").read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        ents = cluener.entities(rec, settings.prompt.labels)
        assert all(rec["text"][e.start : e.end] == e.text for e in ents)
        total += len(ents)
    assert total == 3072


def test_entities_of_a_broken_record_name_the_field(settings):
    from retrain.formats import cluener

    rec = {"text": "张三在北京", "label": {"name": {"张三": [[0, 2]]}, "nope": {"北京": [[3, 4]]}}}
    with pytest.raises(ValueError, match=r"label\.name\.张三\[0\].*label\.nope"):
        cluener.entities(rec, settings.prompt.labels)
