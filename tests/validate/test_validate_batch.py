"""validate_batch with real Great Expectations: row rejections by expectation, anomaly policies,
batch-level quarantine, drift, Data Docs, and nothing lost."""

from __future__ import annotations

import html
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from retrain.config import ConfigError, Settings, load_settings
from retrain.records import Entity, Record, Rejection
from retrain.validate import BatchValidation, max_text_chars, quarantine_report, validate_batch

TEXT = "浙商银行企业信贷部叶老桂博士"


def rec(
    text: str = TEXT,
    ents: list[tuple[int, int, str]] | None = None,
    line: int = 1,
    key: str = "incoming/a.jsonl",
    entity_text: dict[int, str] | None = None,
) -> Record:
    ents = [(0, 4, "company"), (9, 12, "name")] if ents is None else ents
    entities = [
        Entity(s, e, lab, (entity_text or {}).get(i, text[s:e])) for i, (s, e, lab) in enumerate(ents)
    ]
    return Record(text=text, entities=entities, source_key=key, line=line)


def clean(n: int, key: str = "incoming/a.jsonl") -> list[Record]:
    return [rec(TEXT + str(i), line=i + 1, key=key) for i in range(n)]


def with_validation(settings: Settings, **changes: Any) -> Settings:
    return settings.model_copy(update={"validation": settings.validation.model_copy(update=changes)})


def run(
    records: list[Record], settings: Settings, tmp_path: Path, docs: bool = False, **kw: Any
) -> BatchValidation:
    """validate_batch, Data Docs only when asked (rendering them costs ~1 s a batch)."""
    bv = validate_batch(
        records, settings, batch_name="test-batch", docs_dir=tmp_path / "docs" if docs else None, **kw
    )
    # Nothing lost: every record is accepted or rejected exactly once.
    assert len(bv.accepted) + len(bv.rejected) == len(records)
    assert sorted((r.source_key, r.line) for r in bv.accepted + bv.rejected) == sorted(
        (r.source_key, r.line) for r in records
    )
    return bv


def by_line(bv: BatchValidation) -> dict[int, Rejection]:
    return {r.line: r for r in bv.rejected}


def test_clean_batch_passes_and_builds_data_docs(settings, tmp_path):
    bv = run(clean(20), settings, tmp_path, docs=True)
    assert len(bv.accepted) == 20 and not bv.rejected and not bv.batch_quarantined and bv.reason == ""
    assert len(bv.expectations) == 17 and all(e["success"] for e in bv.expectations), bv.expectations
    assert bv.max_text_chars == 396 and bv.max_text_chars_how.startswith("derived")
    assert bv.docs_index is not None and bv.docs_index == tmp_path / "docs" / "index.html"
    html = bv.docs_index.read_text(encoding="utf-8")
    assert "ner_spans" in html and "ner_sentences" in html and "ner_batch" in html
    assert bv.label_counts == {"company": 20, "name": 20}


def test_row_failures_map_back_to_records(settings, tmp_path):
    records = clean(10) + [
        rec(ents=[(0, 4, "公司")], line=101),  # label not canonical
        rec(ents=[(-1, 4, "company")], line=102, entity_text={0: "浙商银行"}),  # negative start
        rec(ents=[(9, 40, "name")], line=103, entity_text={0: "叶老桂"}),  # past the end
        rec(ents=[(9, 12, "name")], line=104, entity_text={0: "叶老贵"}),  # text differs
        rec(ents=[(5, 5, "name")], line=105, entity_text={0: ""}),  # empty span
        rec(text="", ents=[], line=106),  # empty sentence
        rec(text="长" * 1000, ents=[], line=107),  # longer than the cutoff allows
    ]
    bv = run(records, settings, tmp_path, docs=True)
    assert len(bv.accepted) == 10 and not bv.batch_quarantined
    pages = list((tmp_path / "docs" / "validations" / "ner_spans").rglob("*.html"))
    assert len(pages) == 1
    text = " ".join(html.unescape(re.sub(r"<[^>]+>", " ", pages[0].read_text(encoding="utf-8"))).split())
    assert (
        "span_text and entity_text must always be equal" in text and "叶老贵" in text
    )  # the unexpected value is shown
    got = by_line(bv)
    assert got[101].reason == "gx:expect_column_values_to_be_in_set" and got[101].field == "entities[0].label"
    assert "label='公司'" in got[101].detail
    assert got[102].reason == "gx:expect_column_values_to_be_between" and "start=-1" in got[102].detail
    assert (
        got[103].reason == "gx:expect_column_pair_values_a_to_be_greater_than_b"
        and "end=40" in got[103].detail
    )
    assert "also:" in got[103].detail  # the span text is null there too: one Rejection, all problems named
    assert got[104].reason == "gx:expect_column_pair_values_to_be_equal"
    assert "span_text='叶老桂'" in got[104].detail and "entity_text='叶老贵'" in got[104].detail
    assert (
        got[105].reason == "gx:expect_column_pair_values_a_to_be_greater_than_b"
        and got[105].field == "entities[0]"
        and "end=5, start=5" in got[105].detail
    )
    assert got[106].reason == "gx:expect_column_values_to_match_regex" and got[106].field == "text"
    assert got[107].reason == "gx:expect_column_value_lengths_to_be_between"
    assert all(r.raw for r in bv.rejected)
    failing = {e["name"] for e in bv.expectations if not e["success"]}
    assert "ner_spans:expect_column_values_to_be_in_set(label)" in failing


def test_data_docs_show_markup_in_values_as_text(settings, tmp_path):
    """Annotator text GX lists as an unexpected value (a sentence, a label, a pair of span texts)
    is escaped in the Data Docs: a reader sees it as text, a browser never runs it."""
    markup = "<img src=x onerror=alert(1)>"
    records = clean(10) + [
        rec(text=markup + "长" * 1000, ents=[], line=101),  # too long: the sentence is listed
        rec(ents=[(0, 4, "<b>公司</b>")], line=102),  # not a label
        rec(ents=[(9, 12, "name")], line=103, entity_text={0: "<i>叶</i>"}),  # differs from the span
    ]
    bv = run(records, settings, tmp_path, docs=True)
    assert {r.line for r in bv.rejected} == {101, 102, 103}
    assert any(markup in r.raw for r in bv.rejected)  # the quarantine keeps the data as it was
    pages = "\n".join(p.read_text(encoding="utf-8") for p in (tmp_path / "docs").rglob("*.html"))
    for raw in (markup, "<b>公司</b>", "<i>叶</i>"):
        assert raw not in pages, raw
        assert html.escape(raw) in pages, raw


def test_duplicate_span_policy(settings, tmp_path):
    dup = [(0, 4, "company"), (9, 12, "name"), (9, 12, "name")]
    records = clean(5) + [rec(ents=dup, line=50)]
    bv = run(records, settings, tmp_path / "reject")
    assert settings.validation.duplicate_span == "reject"
    assert by_line(bv)[50].reason == "gx:expect_compound_columns_to_be_unique"
    assert by_line(bv)[50].field == "entities[2]"
    assert "start=9, end=12, label='name'" in by_line(bv)[50].detail
    bv = run(records, with_validation(settings, duplicate_span="warn"), tmp_path / "warn")
    kept = next(r for r in bv.accepted if r.line == 50)
    assert kept.entities == [
        Entity(0, 4, "company", "浙商银行"),
        Entity(9, 12, "name", "叶老桂"),
    ]  # the first is kept
    assert any(w.startswith("duplicate_span:") for w in kept.warnings)
    assert records[-1].entities == [Entity(*d, TEXT[d[0] : d[1]]) for d in dup]  # the input is not mutated


# train line 1507: a book title holding two company names
NESTED = rec(
    text="此前《招商银行：投资永隆银行浮亏逾百亿港元》一文",
    ents=[(2, 22, "book"), (3, 7, "company"), (10, 14, "company")],
    line=1507,
)


@pytest.mark.parametrize("policy", ["accept", "warn", "reject"])
def test_overlapping_spans_policy(settings, tmp_path, policy):
    bv = run(clean(5) + [NESTED], with_validation(settings, overlapping_spans=policy), tmp_path)
    assert bv.anomalies["overlapping_spans"] == 1
    entry = next(
        e for e in bv.expectations if e["name"] == "ner_spans:expect_column_values_to_be_in_set(overlapping)"
    )
    assert entry["unexpected_count"] == 3 and entry["action"] == policy
    if policy == "reject":
        assert by_line(bv)[1507].reason == "gx:expect_column_values_to_be_in_set"
        assert by_line(bv)[1507].field.endswith(".overlapping")
        assert len(bv.accepted) == 5
    else:
        nested = next(r for r in bv.accepted if r.line == 1507)
        assert len(nested.entities) == 3
        has_warning = any("overlapping_spans" in w for w in nested.warnings)
        assert has_warning is (policy == "warn")
        assert any(w.startswith("overlapping_spans (warn)") for w in bv.warnings) is (policy == "warn")


def test_same_text_two_labels_half_open_and_unlabeled_repeat(settings, tmp_path):
    louvre = rec(text="贝宁在卢浮宫前，卢浮宫金字塔", ents=[(3, 6, "address"), (8, 11, "scene")], line=144)
    half = rec(text="突袭黑暗雅典娜》中Riddick发现", ents=[(0, 8, "game"), (9, 16, "name")], line=3)
    repeat = rec(text="叶老桂博士说，叶老桂认为", ents=[(0, 3, "name")], line=1)
    bv = run([louvre, half, repeat], settings, tmp_path)
    assert bv.anomalies == {
        "overlapping_spans": 0,
        "same_text_two_labels": 1,
        "unlabeled_repeat": 1,
        "half_open_title_mark": 1,
        "duplicate_span": 0,
    }
    assert len(bv.accepted) == 3  # warn, warn, accept
    accepted = {r.line: r for r in bv.accepted}
    assert any("same_text_two_labels" in w for w in accepted[144].warnings)
    assert any("half_open_title_mark" in w and "突袭黑暗雅典娜》" in w for w in accepted[3].warnings)
    assert accepted[1].warnings == []  # accept: counted, not noted
    strict = with_validation(
        settings, same_text_two_labels="reject", half_open_title_mark="reject", unlabeled_repeat="reject"
    )
    bv = run([louvre, half, repeat], strict, tmp_path / "strict")
    assert {r.line for r in bv.rejected} == {144, 3, 1} and bv.batch_quarantined  # 0 rows left < min_rows


def test_bad_fraction_quarantines_the_whole_batch(settings, tmp_path):
    records = clean(4) + [rec(ents=[(0, 4, "bogus")], line=100 + i) for i in range(6)]
    bv = run(records, settings, tmp_path)
    assert bv.batch_quarantined and not bv.accepted
    assert "bad_fraction=0.6 > 0.5" in bv.reason
    reasons = [r.reason for r in bv.rejected]
    assert (
        reasons.count("batch_quarantined") == 4 and reasons.count("gx:expect_column_values_to_be_in_set") == 6
    )
    assert all(bv.reason in r.detail for r in bv.rejected if r.reason == "batch_quarantined")


def test_parse_rejections_count_as_bad_rows(settings, tmp_path):
    bv = run(clean(4), settings, tmp_path / "a", parse_rejected=3)
    assert not bv.batch_quarantined
    bv = run(clean(4), settings, tmp_path / "b", parse_rejected=5)
    assert bv.batch_quarantined and "bad_fraction=0.555556" in bv.reason


def test_min_rows_and_empty_batch(settings, tmp_path):
    bv = run(clean(3), with_validation(settings, min_rows=5), tmp_path / "few")
    assert bv.batch_quarantined and "rows_accepted=3 < 5" in bv.reason
    assert [r.reason for r in bv.rejected] == ["batch_quarantined"] * 3
    bv = run([], settings, tmp_path / "empty")
    assert bv.batch_quarantined and not bv.rejected and "rows_accepted=0" in bv.reason


def test_label_drift(settings, tmp_path):
    records = clean(150)  # 300 spans: half company, half name
    same = {"company": 1000, "name": 1000}
    bv = run(records, settings, tmp_path / "same", history_label_counts=same)
    assert bv.drift == 0.0 and not bv.batch_quarantined and not bv.warnings
    shifted = {"company": 1000, "name": 1000, "address": 700}  # TV = 0.259: warn, not fail
    bv = run(records, settings, tmp_path / "warn", history_label_counts=shifted)
    assert bv.drift == pytest.approx(700 / 2700, abs=1e-5) and not bv.batch_quarantined
    assert any("label_drift_tv" in w and "drift_warn" in w for w in bv.warnings)
    other = {"game": 500, "movie": 500}
    bv = run(records, settings, tmp_path / "fail", history_label_counts=other)
    assert bv.drift == 1.0 and bv.batch_quarantined and "drift_fail" in bv.reason
    assert len(bv.rejected) == 150
    bv = run(clean(20), settings, tmp_path / "small", history_label_counts=other)
    assert bv.drift is None and not bv.batch_quarantined
    assert any("not judged" in w for w in bv.warnings)


def test_max_text_chars_derivation(settings):
    assert max_text_chars(settings)[0] == 396  # production: cutoff_len 1024
    # Training with another profile does not change what data is accepted ...
    training_tiny = settings.model_copy(
        update={"train": settings.train.model_copy(update={"profile": "cpu_tiny"})}
    )
    assert max_text_chars(training_tiny)[0] == 396
    # ... unless the length profile follows the training profile.
    tiny = with_validation(training_tiny, length_profile=None)
    limit, how = max_text_chars(tiny)
    assert limit == 12 and "cutoff_len 256" in how and "profile cpu_tiny" in how
    assert max_text_chars(with_validation(tiny, max_text_chars=64)) == (64, "validation.max_text_chars")
    with pytest.raises(ConfigError, match="max_text_chars"):
        max_text_chars(with_validation(tiny, template_reserve_tokens=100))


def test_text_limit_is_enforced_from_conf(settings, tmp_path):
    records = [rec(line=1), rec(text=TEXT + "。", line=2)]
    bv = run(records, with_validation(settings, max_text_chars=len(TEXT)), tmp_path)
    assert [r.line for r in bv.accepted] == [1]
    assert by_line(bv)[2].reason == "gx:expect_column_value_lengths_to_be_between"


def test_the_suite_is_loaded_from_conf(settings, tmp_path):
    conf = tmp_path / "conf"
    shutil.copytree(settings.conf_dir, conf, ignore=shutil.ignore_patterns("local"))
    suite_path = conf / "gx" / "ner_records_suite.yaml"
    suite = yaml.safe_load(suite_path.read_text(encoding="utf-8"))
    spans = next(s for s in suite["suites"] if s["name"] == "ner_spans")
    spans["expectations"] = [e for e in spans["expectations"] if e["kwargs"].get("column") != "label"]
    suite_path.write_text(yaml.safe_dump(suite, allow_unicode=True), encoding="utf-8")
    edited = load_settings(conf, environ={})
    bv = run([rec(ents=[(0, 4, "bogus")])], edited, tmp_path / "docs")
    assert len(bv.accepted) == 1  # no label expectation any more
    spans["expectations"][0]["meta"] = {"policy": "no_such_policy"}
    suite_path.write_text(yaml.safe_dump(suite, allow_unicode=True), encoding="utf-8")
    with pytest.raises(ConfigError, match="no_such_policy"):
        validate_batch([], edited, batch_name="x", docs_dir=None)


def test_no_docs_dir_builds_nothing(settings, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bv = validate_batch(clean(2), settings, batch_name="../../etc/x", docs_dir=None)
    assert bv.docs_index is None and len(bv.accepted) == 2
    assert list(tmp_path.iterdir()) == []


def test_quarantine_report():
    rejections = [
        Rejection("incoming/a.jsonl", 3, "not_json", "Expecting value at column 1", raw="oops"),
        Rejection(
            "incoming/a.jsonl",
            7,
            "unknown_label",
            "label '未知类' ...",
            field="label.未知类",
            raw='{"text": "`x`"}',
        ),
        Rejection("incoming/b.json", 2, "unknown_label", "label 'X' ...", field="label.X"),
        Rejection(
            "incoming/b.json",
            9,
            "gx:expect_column_values_to_be_in_set",
            "label='x'",
            field="entities[0].label",
        ),
    ]
    report = quarantine_report(rejections, examples=1)
    assert "4 rejected records from 2 objects." in report
    assert "| `unknown_label` | 2 |" in report and "| `not_json` | 1 |" in report
    assert "`incoming/a.jsonl:7` field `label.未知类`" in report
    assert "… and 1 more" in report and "Great Expectations expect_column_values_to_be_in_set" in report
    assert report.index("unknown_label") < report.index("not_json")  # most frequent first
    assert 'raw: `{"text": "\'x\'"}`' in report  # backticks cannot break the markdown
    assert "Nothing was quarantined" in quarantine_report([])


def test_an_expectation_that_errors_quarantines_instead_of_raising(settings, tmp_path):
    conf = tmp_path / "conf"
    shutil.copytree(settings.conf_dir, conf, ignore=shutil.ignore_patterns("local"))
    suite_path = conf / "gx" / "ner_records_suite.yaml"
    suite = yaml.safe_load(suite_path.read_text(encoding="utf-8"))
    suite["suites"][0]["expectations"].append(
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "no_such_column"}}
    )
    suite_path.write_text(yaml.safe_dump(suite, allow_unicode=True), encoding="utf-8")
    bv = run(clean(3), load_settings(conf, environ={}), tmp_path / "docs")
    assert bv.batch_quarantined and "no_such_column" in bv.reason and "raised" in bv.reason
    assert [r.reason for r in bv.rejected] == ["batch_quarantined"] * 3
