"""Parse + validate the real CLUENER files (read in place, never copied) and check the policies
on the anomalies SOURCES.md lists, with its numbers."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from retrain.config import Settings
from retrain.formats import iter_bounded_lines, parse_stream
from retrain.records import Record
from retrain.validate import validate_batch


def load(path: Path, settings: Settings) -> list[Record]:
    with open(path, "rb") as f:
        items = list(
            parse_stream(
                iter_bounded_lines(iter(lambda: f.read(1 << 16), b""), settings.intake.max_line_bytes),
                f"cluener/{path.name}",
                "",
                settings,
            )
        )
    assert all(isinstance(i, Record) for i in items)
    return items  # type: ignore[return-value]


@pytest.fixture(scope="module")
def train(cluener_dir, settings) -> list[Record]:
    return load(cluener_dir / "train.json", settings)


@pytest.fixture(scope="module")
def dev(cluener_dir, settings) -> list[Record]:
    return load(cluener_dir / "dev.json", settings)


def test_train_policies_on_known_anomalies(train, settings, tmp_path):
    import great_expectations  # noqa: F401  (import time is not validation time)

    t0 = time.perf_counter()
    bv = validate_batch(train, settings, batch_name="cluener-train", docs_dir=tmp_path / "docs")
    seconds = time.perf_counter() - t0
    assert seconds < 30, f"GX validation of 10,748 rows took {seconds:.1f} s"
    # default policies: overlapping warn, same text two labels warn, unlabeled repeat accept, half-open warn
    assert len(bv.accepted) == 10748 and not bv.rejected and not bv.batch_quarantined
    assert bv.anomalies == {
        "overlapping_spans": 1,
        "same_text_two_labels": 4,
        "unlabeled_repeat": 177,
        "half_open_title_mark": 274,
        "duplicate_span": 0,
    }
    assert sum(bv.label_counts.values()) == 23971
    # every span matched its offsets: the equality expectation saw all 23,971 rows and no failure
    eq = next(
        e
        for e in bv.expectations
        if e["name"] == "ner_spans:expect_column_pair_values_to_be_equal(span_text,entity_text)"
    )
    assert eq["success"] and eq["unexpected_count"] == 0
    by_line = {r.line: r for r in bv.accepted}
    assert [w for w in by_line[1507].warnings if w.startswith("overlapping_spans")] and len(
        by_line[1507].entities
    ) == 3
    assert not any(
        w.startswith("unlabeled_repeat") for w in by_line[1].warnings
    )  # 叶老桂 twice, accepted silently
    assert any(
        w.startswith("half_open_title_mark") and "加勒比海盗3：世界尽头》" in w for w in by_line[4].warnings
    )
    assert bv.docs_index is not None and bv.docs_index.exists()


def test_dev_louvre_and_half_open_marks(dev, train, settings):
    history = {}
    for r in train:
        for e in r.entities:
            history[e.label] = history.get(e.label, 0) + 1
    bv = validate_batch(dev, settings, batch_name="cluener-dev", docs_dir=None, history_label_counts=history)
    assert len(bv.accepted) == 1343 and not bv.batch_quarantined
    assert bv.anomalies["same_text_two_labels"] == 2 and bv.anomalies["half_open_title_mark"] == 36
    assert bv.anomalies["unlabeled_repeat"] == 17 and bv.anomalies["overlapping_spans"] == 0
    louvre = next(r for r in bv.accepted if r.line == 144)
    assert sorted({(e.label, e.text) for e in louvre.entities if e.text == "卢浮宫"}) == [
        ("address", "卢浮宫"),
        ("scene", "卢浮宫"),
    ]
    assert sum("same_text_two_labels" in w for w in louvre.warnings) == 3  # the three 卢浮宫 spans
    assert sum(1 for r in bv.accepted for w in r.warnings if w.startswith("half_open_title_mark")) == 36
    # dev's label mix is train's: drift far below the warning threshold
    assert bv.drift is not None and bv.drift < 0.05 and not any("label_drift" in w for w in bv.warnings)


def test_reject_policies_quarantine_exactly_the_anomalies(train, settings):
    strict = settings.model_copy(
        update={
            "validation": settings.validation.model_copy(
                update={"overlapping_spans": "reject", "same_text_two_labels": "reject"}
            )
        }
    )
    bv = validate_batch(train, strict, batch_name="cluener-train-strict", docs_dir=None)
    assert {r.line for r in bv.rejected} == {1507, 202, 2794, 5615, 7042}
    assert len(bv.accepted) == 10748 - 5 and not bv.batch_quarantined
