"""parse_entities on the things LLMs actually print; parse_gold on the project's own answers."""

from __future__ import annotations

import pytest

from retrain.evaluate.parsing import GoldFormatError, parse_entities, parse_gold

NAME = ("name", "张三")
COMPANY = ("company", "腾讯")


def ok(raw: str) -> list[tuple[str, str]]:
    result = parse_entities(raw)
    assert result.ok, f"expected {raw!r} to parse, got error {result.error!r}"
    assert result.error == ""
    return result.entities


def failed(raw: str) -> str:
    result = parse_entities(raw)
    assert not result.ok, f"expected {raw!r} to fail, got {result.entities}"
    assert result.entities == []
    assert result.error
    return result.error


def test_canonical_output():
    assert ok('[{"label": "name", "text": "张三"}, {"label": "company", "text": "腾讯"}]') == [NAME, COMPANY]


def test_empty_list_is_a_valid_empty_prediction():
    assert ok("[]") == []
    assert ok("  [ ]\n") == []


@pytest.mark.parametrize("raw", ["", "   ", "\n\n", "<think>让我想想</think>"])
def test_empty_output_is_a_failure(raw):
    assert "empty" in failed(raw)


def test_json_code_fence():
    raw = '```json\n[{"label": "name", "text": "张三"}]\n```'
    result = parse_entities(raw)
    assert result.ok and result.entities == [NAME]
    assert "code fence" in result.notes


def test_plain_code_fence_with_prose_around():
    raw = '识别结果如下：\n```\n[{"label": "company", "text": "腾讯"}]\n```\n以上。'
    assert ok(raw) == [COMPANY]


def test_unterminated_code_fence():
    assert ok('```json\n[{"label": "name", "text": "张三"}]') == [NAME]


def test_text_around_json():
    raw = '好的，句子中的实体有：[{"label": "name", "text": "张三"}]，希望对你有帮助！'
    result = parse_entities(raw)
    assert result.entities == [NAME]
    assert any("text around" in n for n in result.notes)


def test_bracket_in_prose_before_the_answer():
    assert ok('参考[1]，答案：[{"label": "name", "text": "张三"}]') == [NAME]


def test_trailing_commas():
    result = parse_entities('[{"label": "name", "text": "张三",}, {"label": "company", "text": "腾讯"},]')
    assert result.ok and result.entities == [NAME, COMPANY]
    assert "trailing comma removed" in result.notes


def test_comma_inside_string_is_kept():
    assert ok('[{"label": "book", "text": "钢铁,是怎样炼成的"},]') == [("book", "钢铁,是怎样炼成的")]


def test_single_object_instead_of_list():
    assert ok('{"label": "name", "text": "张三"}') == [NAME]


def test_json_lines_objects():
    raw = '{"label": "name", "text": "张三"}\n{"label": "company", "text": "腾讯"}'
    assert ok(raw) == [NAME, COMPANY]


def test_duplicates_removed_first_occurrence_kept():
    raw = (
        '[{"label": "company", "text": "腾讯"}, {"label": "name", "text": "张三"},'
        ' {"label": "company", "text": "腾讯"}]'
    )
    assert ok(raw) == [COMPANY, NAME]


def test_same_text_two_labels_are_two_entities():
    raw = '[{"label": "address", "text": "卢浮宫"}, {"label": "scene", "text": "卢浮宫"}]'
    assert ok(raw) == [("address", "卢浮宫"), ("scene", "卢浮宫")]


@pytest.mark.parametrize(
    "raw",
    [
        "无",
        "无。",
        "没有实体",
        "没有实体。",
        "未识别到实体",
        "句子中没有需要识别的实体。",
        "none",
        "None",
        "NONE.",
        "no entities",
        "No entities found.",
        "There are no named entities in this sentence.",
        "null",
    ],
)
def test_no_entities_phrasings(raw):
    assert ok(raw) == []


def test_other_key_spellings():
    raw = (
        '[{"type": "name", "entity": "张三"}, {"Type": "company", "Text": "腾讯"}, '
        '{"实体类别": "game", "实体": "王者荣耀"}]'
    )
    assert ok(raw) == [NAME, COMPANY, ("game", "王者荣耀")]


def test_non_string_values():
    raw = (
        '[{"label": "game", "text": 2048}, {"label": "name", "text": null}, '
        '{"label": "book", "text": ["三体", "球状闪电"]}]'
    )
    result = parse_entities(raw)
    assert result.ok
    assert result.entities == [("game", "2048"), ("book", "三体"), ("book", "球状闪电")]
    assert any("skipped 1" in n for n in result.notes)


def test_whitespace_around_values_is_stripped():
    assert ok('[{"label": " name ", "text": " 张三\\n"}]') == [NAME]


def test_python_literal_single_quotes():
    assert ok("[{'label': 'name', 'text': '张三'}]") == [NAME]


def test_wrapper_object():
    assert ok('{"entities": [{"label": "name", "text": "张三"}]}') == [NAME]


def test_label_keyed_object_and_cluener_format():
    assert ok('{"name": ["张三", "李四"], "company": "腾讯"}') == [NAME, ("name", "李四"), COMPANY]
    assert ok('{"name": {"张三": [[0, 1]]}}') == [NAME]


def test_empty_object_means_no_entities():
    assert ok("{}") == []


def test_think_block_is_ignored():
    assert ok('<think>先找人名 [</think>\n[{"label": "name", "text": "张三"}]') == [NAME]


def test_truncated_output_is_a_failure_not_partial_credit():
    error = failed('[{"label": "name", "text": "张三"}, {"label": "comp')
    assert "truncated" in error


@pytest.mark.parametrize(
    "raw",
    ["张三是人名", "实体：张三（name）", '["张三", "李四"]', '{"text": "张三"}', "42", '"[{]"', "[1, 2]"],
)
def test_unparseable(raw):
    failed(raw)


def test_prose_with_json_like_object_is_not_taken_as_no_entities():
    # '{' present: an attempted (broken) answer, not an explicit "no entities".
    failed('没有实体 {"label": "name", "text": ')


def test_never_raises_on_garbage():
    for raw in ["[" * 5000, "{" * 5000 + "}" * 5000, "\x00\x01", "```", "]]]]", "'" * 10, '"' * 7]:
        result = parse_entities(raw)
        assert isinstance(result.ok, bool)


def test_parse_gold_strict():
    assert parse_gold('[{"label": "name", "text": "张三"}, {"label": "name", "text": "张三"}]') == [NAME]
    assert parse_gold("[]") == []
    for bad in [
        "",
        "{}",
        '[{"label": "name"}]',
        '[{"label": "name", "text": 3}]',
        "[1]",
        '[{"label": "", "text": "a"}]',
    ]:
        with pytest.raises(GoldFormatError):
            parse_gold(bad)


@pytest.mark.parametrize(
    ("raw", "reading"),
    [
        ('[{"label": "name", "text": "张三"}]', "valid"),
        ('{"label": "name", "text": "张三"}', "valid"),
        ('{"entities": [{"label": "name", "text": "张三"}]}', "valid"),
        ("[]", "valid"),
        ('```json\n[{"label": "name", "text": "张三"}]\n```', "repaired"),
        ('答案：[{"label": "name", "text": "张三"}]。', "repaired"),
        ('参考[1]，答案：[{"label": "name", "text": "张三"}]', "repaired"),
        ('[{"label": "name", "text": "张三"},]', "repaired"),
        ('<think>想一想</think>[{"label": "name", "text": "张三"}]', "repaired"),
        ("没有实体。", "repaired"),
        ('[{"label": "name", "text": "张三"} {"label": "game", "text": "x"}]', "salvaged"),
        ('{"label": "name", "text": "张三"}\n{"label": "game", "text": "x"}', "salvaged"),
        ("[{'label': 'name', 'text': '张三'}]", "salvaged"),
        ('[{"label": "game", "text": "王者', "unparseable"),
        ("我不知道", "unparseable"),
        ("", "unparseable"),
    ],
)
def test_each_output_is_classified_by_how_it_was_read(raw, reading):
    result = parse_entities(raw)
    assert result.reading == reading, (raw, result.notes, result.error)
    assert result.is_parsed == (reading in ("valid", "repaired"))
    # the strict reading keeps entities only for valid and repaired outputs; lenient keeps salvaged ones
    assert result.strict_entities == (result.entities if result.is_parsed else [])
    if reading == "salvaged":
        assert result.ok and result.entities and result.strict_entities == []
