"""Text hygiene (retrain.formats.hygiene): invisible and direction-changing characters under each
policy of ``intake.invisible_characters``; never accepted silently."""

from __future__ import annotations

import json

import pytest

from retrain.config import Settings
from retrain.records import INVISIBLE_CHARS, Entity, text_id


def jl(*objs: object) -> bytes:
    return b"".join(json.dumps(o, ensure_ascii=False).encode("utf-8") + b"\n" for o in objs)


def policy(settings: Settings, name: str) -> Settings:
    return settings.model_copy(
        update={"intake": settings.intake.model_copy(update={"invisible_characters": name})}
    )


# One of each kind the issue names, placed inside the entity and around it.
KINDS = {
    "zero width space": "\u200b",
    "zero width non-joiner": "\u200c",
    "zero width joiner": "\u200d",
    "word joiner": "\u2060",
    "BOM inside a line": "\ufeff",
    "soft hyphen": "\u00ad",
    "left-to-right mark": "\u200e",
    "right-to-left embedding": "\u202b",
    "right-to-left override": "\u202e",
    "pop directional formatting": "\u202c",
    "first strong isolate": "\u2068",
    "pop directional isolate": "\u2069",
}


def test_every_kind_named_is_in_the_table():
    assert set(KINDS.values()) <= INVISIBLE_CHARS


def test_default_policy_is_normalise(settings):
    assert settings.intake.invisible_characters == "normalise"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", ["normalise", "warn", "quarantine"])
def test_never_accepted_silently(parse, settings, kind, name):
    ch = KINDS[kind]
    text = f"{ch}张{ch}伟在北京{ch}"
    p = parse(jl({"text": text, "label": {"name": {f"张{ch}伟": [[1, 3]]}}}), conf=policy(settings, name))
    p.assert_accounted(1)
    if name == "quarantine":
        rej = p.only_rejection()
        assert (rej.reason, rej.field) == ("invisible_characters", "text")
        assert f"U+{ord(ch):04X}" in rej.detail and "at 0" in rej.detail and "at 2" in rej.detail
        return
    (rec,) = p.records
    assert any(w.startswith("invisible_characters") and f"U+{ord(ch):04X}" in w for w in rec.warnings)
    if name == "warn":
        assert rec.text == text and rec.entities == [Entity(1, 4, "name", f"张{ch}伟")]
    else:
        assert rec.text == "张伟在北京" and rec.entities == [Entity(0, 2, "name", "张伟")]


def test_normalise_remaps_every_entity_offset(parse):
    # two entities after and around invisible characters; CLUENER end offsets are inclusive
    text = "\u202e\u200b叶老桂\u00ad在浙商\u200d银行\u202c工作"
    p = parse(
        jl(
            {
                "text": text,
                "label": {"name": {"叶老桂": [[2, 4]]}, "company": {"浙商\u200d银行": [[7, 11]]}},
            }
        )
    )
    (rec,) = p.records
    assert rec.text == "叶老桂在浙商银行工作"
    assert rec.entities == [Entity(0, 3, "name", "叶老桂"), Entity(4, 8, "company", "浙商银行")]
    (w,) = rec.warnings
    assert "removed 5" in w and "U+202E RIGHT-TO-LEFT OVERRIDE at 0" in w and "re-mapped" in w


def test_entity_differing_from_span_only_by_invisible_characters(parse, settings):
    """The tool stripped a zero-width space from the entity text but not from the sentence."""
    line = {"text": "张\u200b伟在北京", "label": {"name": {"张伟": [[0, 2]]}}}
    norm = parse(jl(line))
    (rec,) = norm.records
    assert rec.text == "张伟在北京" and rec.entities == [Entity(0, 2, "name", "张伟")]
    assert any("differ only by invisible characters" in w and "label.name.张伟[0]" in w for w in rec.warnings)

    warn = parse(jl(line), conf=policy(settings, "warn"))
    (rec,) = warn.records
    assert rec.text == line["text"]
    assert rec.entities == [Entity(0, 3, "name", "张\u200b伟")]  # the sentence's characters
    assert any("differ only by invisible characters" in w for w in rec.warnings)

    quar = parse(jl(line), conf=policy(settings, "quarantine"))
    reasons = {(r.reason, r.field) for r in quar.rejections}
    assert reasons == {("invisible_characters", "text")}
    assert "differ only by invisible characters" in quar.only_rejection().detail  # named in "also"


def test_entity_text_with_invisible_characters_and_a_clean_sentence(parse, settings):
    """Label Studio: value.text carries a soft hyphen the sentence does not."""
    task = {
        "id": 7,
        "data": {"text": "张伟在北京"},
        "annotations": [
            {
                "id": 1,
                "result": [
                    {
                        "type": "labels",
                        "value": {"start": 0, "end": 2, "text": "张\u00ad伟", "labels": ["PER"]},
                    }
                ],
            }
        ],
    }
    data = json.dumps([task], ensure_ascii=False).encode()
    (rec,) = parse(data).records
    assert rec.entities == [Entity(0, 2, "name", "张伟")]
    assert any("annotations[0].result[0]" in w and "only by invisible" in w for w in rec.warnings)
    rej = parse(data, conf=policy(settings, "quarantine")).only_rejection()
    assert (rej.reason, rej.field) == ("invisible_characters", "annotations[0].result[0]")


def test_span_of_only_invisible_characters_is_quarantined_when_normalised(parse):
    p = parse(jl({"text": "张伟\u200b在北京", "label": [[0, 2, "name"], [2, 3, "address"]]}))
    rej = p.only_rejection()
    assert rej.reason == "invisible_characters" and "only invisible characters" in rej.detail


def test_sentence_of_only_invisible_characters_is_empty(parse):
    rej = parse(jl({"text": "\u200b\u200d\ufeff", "label": []})).only_rejection()
    assert rej.reason == "empty_text" and "only invisible characters" in rej.detail


def test_offsets_counted_without_the_invisible_characters_are_explained(parse):
    # the tool computed offsets on the cleaned sentence: [2, 3] inclusive is 北京 only without the ZWSP
    rej = parse(jl({"text": "张\u200b伟在北京", "label": {"address": {"北京": [[3, 4]]}}})).only_rejection()
    assert rej.reason == "span_text_mismatch"
    assert "occurs at [4, 5]" in rej.detail  # the real position is named
    rej = parse(jl({"text": "张\u200b伟在北京", "label": {"address": {"京X": [[4, 5]]}}})).only_rejection()
    assert "does not occur" in rej.detail


def test_offsets_fit_only_the_cleaned_sentence_hint(parse):
    # entity text not in the raw sentence (split by a ZWSP) but at these offsets once cleaned
    rej = parse(jl({"text": "在北\u200b京的张伟", "label": {"address": {"北京": [[1, 2]]}}})).only_rejection()
    assert rej.reason == "span_text_mismatch"
    assert "fit the sentence with its invisible characters removed" in rej.detail


def test_normalised_twins_are_duplicates_and_share_an_id(parse):
    clean = {"text": "张伟在北京", "label": {"name": {"张伟": [[0, 1]]}}}
    dirty = {"text": "张\u200b伟在北京", "label": {"name": {"张\u200b伟": [[0, 2]]}}}
    p = parse(jl(clean, dirty))
    assert p.reasons() == ["duplicate_record"]
    assert text_id(dirty["text"]) == text_id(clean["text"])  # one sentence for dedup and the split


def test_twins_are_duplicates_when_kept_as_written(parse, settings):
    """warn keeps the zero-width space and its offsets; the twin is still the same record."""
    clean = {"text": "张伟在北京", "label": {"name": {"张伟": [[0, 1]]}, "address": {"北京": [[3, 4]]}}}
    dirty = {
        "text": "张\u200b伟在北京",
        "label": {"name": {"张\u200b伟": [[0, 2]]}, "address": {"北京": [[4, 5]]}},
    }
    moved = {"text": "张\u200b伟在北京", "label": {"name": {"张\u200b伟": [[0, 2]]}}}
    p = parse(jl(clean, dirty, moved), conf=policy(settings, "warn"))
    assert p.reasons() == ["duplicate_record", "conflicting_duplicate"]
