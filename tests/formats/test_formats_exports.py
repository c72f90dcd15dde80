"""The Label Studio and doccano readers on files shaped as the current tools export them (every field:
predictions, drafts, several labeling controls, relations, metadata, comments). The fixtures are
hand-written; where each shape comes from is in tests/formats/fixtures/README.md."""

from __future__ import annotations

from pathlib import Path

import pytest

from retrain.records import Entity

FIXTURES = Path(__file__).parent / "fixtures"


def with_controls(settings, controls: list[str]):
    return settings.model_copy(
        update={"intake": settings.intake.model_copy(update={"label_studio_controls": controls})}
    )


@pytest.fixture
def ls_export() -> bytes:
    return (FIXTURES / "label_studio_export.json").read_bytes()


def test_label_studio_export_default_conf(parse, ls_export):
    p = parse(ls_export, key="incoming/labelstudio/project-7-at-2026-11-24.json")
    p.assert_accounted(5)
    assert {r.fmt for r in p.records} == {"label_studio"}
    by_line = {r.line: r for r in p.records}
    rejected = {r.line: r for r in p.rejections}
    assert sorted(by_line) == [2, 3, 4] and sorted(rejected) == [1, 5]

    # task 101: a second <Labels> control ("span_sentiment") holds a label that is no NER type
    r101 = rejected[1]
    assert (r101.reason, r101.field) == ("unknown_label", "annotations[0].result[5].value.labels")
    assert "task id=101" in r101.detail and "'Positive'" in r101.detail
    assert "control 'span_sentiment'" in r101.detail and "intake.label_studio_controls" in r101.detail

    # task 102: the cancelled (newer) annotation and the reviewer's draft are not used
    assert by_line[2].entities == [
        Entity(0, 2, "name", "王芳"),
        Entity(6, 8, "address", "上海"),
        Entity(16, 18, "address", "浦东"),
    ]

    # task 103: two live annotations; the one marked ground_truth wins over the newer one
    assert by_line[3].entities == [Entity(2, 8, "movie", "《长夜将明》"), Entity(11, 13, "address", "北京")]
    assert any("2 live annotations" in w and "id=504" in w for w in by_line[3].warnings)

    # task 104: offsets in UTF-16 code units after an emoji, converted
    assert by_line[4].entities == [Entity(2, 4, "name", "张伟"), Entity(5, 9, "organization", "北京大学")]
    assert any("UTF-16 offsets [3, 5) converted to [2, 4)" in w for w in by_line[4].warnings)

    # task 105: only a draft and a prediction: never trained on
    r105 = rejected[5]
    assert (r105.reason, r105.field) == ("no_annotation", "annotations")
    assert "1 drafts and 1 predictions, never used" in r105.detail


def test_label_studio_export_with_the_ner_control_named(parse, settings, ls_export):
    p = parse(ls_export, conf=with_controls(settings, ["label"]))
    p.assert_accounted(5)
    assert [r.line for r in p.records] == [1, 2, 3, 4]
    task = p.records[0]
    assert task.text == "华夏银行信贷部的李明远经理昨天在杭州西湖边接受了采访。"
    # the annotation's spans only: not the prediction's wrong 华夏 LOC, not the sentiment span
    assert task.entities == [
        Entity(0, 4, "company", "华夏银行"),
        Entity(8, 11, "name", "李明远"),
        Entity(11, 13, "position", "经理"),
        Entity(16, 18, "address", "杭州"),
        Entity(18, 20, "scene", "西湖"),
    ]
    (skipped,) = [w for w in task.warnings if w.startswith("ignored")]
    assert skipped == (
        "ignored 4 results that are not NER spans "
        "(1 choices, 1 labels from 'span_sentiment', 1 relation, 1 textarea)"
    )
    assert p.only_rejection().reason == "no_annotation"


def test_doccano_jsonl_export(parse):
    p = parse((FIXTURES / "doccano_export.jsonl").read_bytes(), key="incoming/doccano/admin.jsonl")
    p.assert_accounted(4)
    assert not p.rejections and {r.fmt for r in p.records} == {"doccano"}
    first, gov, li, empty = p.records
    assert first.entities == [
        Entity(0, 2, "name", "周杰"),
        Entity(3, 5, "address", "成都"),
        Entity(6, 11, "company", "星光电影院"),
        Entity(13, 17, "movie", "《远山》"),
    ]
    assert gov.entities == [Entity(0, 6, "government", "国家税务总局")]
    assert [e.label for e in li.entities] == ["name", "organization", "position", "address"]
    # an example nobody annotated is exported with "label": [] and cannot be told from "no entity"
    assert empty.entities == [] and any(w.startswith("no_entities") for w in empty.warnings)
    assert not any(w.startswith("no_entities") for w in first.warnings)


def test_doccano_jsonl_export_with_relations(parse):
    p = parse((FIXTURES / "doccano_export_relations.jsonl").read_bytes())
    p.assert_accounted(2)
    assert not p.rejections
    li, zhou = p.records
    assert li.entities == [
        Entity(0, 2, "name", "李华"),
        Entity(3, 7, "organization", "南京大学"),
        Entity(8, 10, "position", "教授"),
        Entity(13, 16, "address", "鼓楼区"),
    ]
    assert zhou.entities == [Entity(0, 2, "name", "周杰"), Entity(3, 5, "address", "成都")]
