"""metrics.score: hand-computed fixtures, and the real CLUENER dev set against itself and a
deterministic perturbation checked by an independent calculation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from retrain.evaluate.metrics import prf, score

LABELS = ["name", "company", "game"]
CLUENER_LABELS = [
    "address",
    "book",
    "company",
    "game",
    "government",
    "movie",
    "name",
    "organization",
    "position",
    "scene",
]


def approx(x):
    return pytest.approx(x, abs=1e-12)


def test_prf_conventions():
    assert prf(0, 0, 0) == (None, None, None)
    assert prf(0, 0, 3) == (0.0, 0.0, 0.0)  # nothing predicted: P = 0 by convention
    assert prf(0, 2, 0) == (0.0, 0.0, 0.0)  # nothing to find: R = 0 by convention
    assert prf(1, 1, 2) == (0.5, pytest.approx(1 / 3), pytest.approx(0.4))


def test_hand_computed_fixture():
    gold = [
        [("name", "张三"), ("company", "腾讯")],
        [("name", "李四")],
        [("game", "王者荣耀"), ("name", "王五")],
    ]
    pred = [
        [("name", "张三"), ("company", "阿里")],  # tp name; fp company; fn company
        [("name", "李四"), ("name", "李四")],  # duplicate prediction counts once: tp
        [("game", "王者"), ("movie", "英雄")],  # fp game, fp movie (unknown label); fn game, fn name
    ]
    s = score(gold, pred, LABELS)
    # micro: tp 2, fp 3 (阿里, 王者, 英雄), fn 3 (腾讯, 王者荣耀, 王五)
    assert s["micro"]["tp"] == 2 and s["micro"]["fp"] == 3 and s["micro"]["fn"] == 3
    assert s["micro"]["precision"] == approx(2 / 5)
    assert s["micro"]["recall"] == approx(2 / 5)
    assert s["micro"]["f1"] == approx(2 / 5)
    name, company, game = (s["per_label"][k] for k in LABELS)
    assert (name["tp"], name["fp"], name["fn"], name["support"]) == (2, 0, 1, 3)
    assert name["precision"] == approx(1.0) and name["recall"] == approx(2 / 3) and name["f1"] == approx(0.8)
    assert (company["tp"], company["fp"], company["fn"], company["support"]) == (0, 1, 1, 1)
    assert company["f1"] == 0.0
    assert (game["tp"], game["fp"], game["fn"]) == (0, 1, 1)
    assert s["macro_f1"] == approx(0.8 / 3)
    assert s["cluener_score"] == approx(0.8 / 3)
    assert s["unknown_label_predictions"] == 1
    assert s["n_sentences"] == 3
    assert list(s["per_label"]) == LABELS


def test_label_absent_from_gold_and_predictions_is_excluded_from_macro_not_cluener():
    gold = [[("name", "张三")], [("company", "腾讯")]]
    pred = [[("name", "张三")], [("company", "腾讯")]]
    s = score(gold, pred, LABELS)
    game = s["per_label"]["game"]
    assert game == {"precision": None, "recall": None, "f1": None, "support": 0, "tp": 0, "fp": 0, "fn": 0}
    assert s["macro_f1"] == approx(1.0)  # mean over name, company
    assert s["cluener_score"] == approx(2 / 3)  # score.py divides by all labels
    assert s["micro"]["f1"] == approx(1.0)


def test_label_absent_from_gold_but_predicted_scores_zero():
    gold = [[("name", "张三")]]
    pred = [[("name", "张三"), ("game", "张三")]]
    s = score(gold, pred, LABELS)
    assert s["per_label"]["game"]["f1"] == 0.0 and s["per_label"]["game"]["support"] == 0
    assert s["macro_f1"] == approx(0.5)  # name 1.0, game 0.0; company excluded
    assert s["cluener_score"] == approx(1 / 3)
    assert s["micro"]["precision"] == approx(0.5) and s["micro"]["recall"] == approx(1.0)


def test_empty_gold_sentences():
    gold = [[], [], [("name", "张三")]]
    pred = [[], [("name", "李四")], [("name", "张三")]]
    s = score(gold, pred, LABELS)
    assert (s["micro"]["tp"], s["micro"]["fp"], s["micro"]["fn"]) == (1, 1, 0)
    assert s["micro"]["precision"] == approx(0.5) and s["micro"]["recall"] == approx(1.0)
    assert s["micro"]["f1"] == approx(2 / 3)


def test_empty_predictions():
    gold = [[("name", "张三")], [("company", "腾讯"), ("game", "魔兽")]]
    s = score(gold, [[], []], LABELS)
    assert s["micro"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "tp": 0, "fp": 0, "fn": 3}
    assert s["macro_f1"] == 0.0 and s["cluener_score"] == 0.0


def test_nothing_to_find_nothing_predicted_is_undefined():
    s = score([[], []], [[], []], LABELS)
    assert s["micro"]["f1"] is None and s["macro_f1"] is None and s["cluener_score"] == 0.0


def test_duplicates_in_gold_collapse():
    s = score([[("name", "张三"), ("name", "张三")]], [[("name", "张三")]], LABELS)
    assert (s["micro"]["tp"], s["micro"]["fp"], s["micro"]["fn"]) == (1, 0, 0)
    assert s["per_label"]["name"]["support"] == 1


def test_matching_is_per_sentence_and_exact():
    gold = [[("name", "张三")], [("name", "李四")]]
    pred = [[("name", "李四")], [("name", "李四 ")]]  # right entity, wrong sentence; trailing space
    s = score(gold, pred, LABELS)
    assert s["micro"]["tp"] == 0 and s["micro"]["fp"] == 2 and s["micro"]["fn"] == 2


def test_length_mismatch_raises():
    with pytest.raises(ValueError, match="2 sentences"):
        score([[], []], [[]], LABELS)


# --- the real CLUENER dev set ----------------------------------------------------------------


def load_dev(cluener_dir: Path) -> list[dict]:
    text = (cluener_dir / "dev.json").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def dev_pairs(lines: list[dict]) -> list[list[tuple[str, str]]]:
    return [[(lab, text) for lab, ents in d["label"].items() for text in ents] for d in lines]


def test_cluener_dev_against_itself_is_perfect(cluener_dir):
    gold = dev_pairs(load_dev(cluener_dir))
    s = score(gold, gold, CLUENER_LABELS)
    assert s["n_sentences"] == 1343
    assert s["micro"]["tp"] == 2982  # unique (label, text) pairs per sentence (SOURCES.md)
    assert s["micro"]["f1"] == 1.0 and s["macro_f1"] == 1.0 and s["cluener_score"] == 1.0


def perturb(lines: list[dict]) -> list[dict]:
    """CLUENER-format predictions: drop every 7th entity, relabel every 11th (to the next label)."""
    out, k = [], 0
    for d in lines:
        label: dict[str, dict[str, list]] = {}
        for lab in sorted(d["label"]):
            for text in sorted(d["label"][lab]):
                k += 1
                if k % 7 == 0:
                    continue
                new = CLUENER_LABELS[(CLUENER_LABELS.index(lab) + 1) % 10] if k % 11 == 0 else lab
                label.setdefault(new, {})[text] = d["label"][lab][text]
        out.append({"text": d["text"], "label": label})
    return out


def official_cluener_score(pred_lines: list[dict], gold_lines: list[dict]) -> tuple[dict, float]:
    """CLUENER2020's score.py arithmetic, restated: per label TP/FP/FN over entity-string keys."""
    f = {}
    for label in CLUENER_LABELS:
        tp = fp = fn = 0
        for pre, gold in zip(pred_lines, gold_lines, strict=True):
            p = pre["label"].get(label, {}).keys()
            g = gold["label"].get(label, {}).keys()
            tp += sum(1 for i in p if i in g)
            fp += sum(1 for i in p if i not in g)
            fn += sum(1 for i in g if i not in p)
        prec, rec = tp / (tp + fp), tp / (tp + fn)
        f[label] = 2 * prec * rec / (prec + rec)
    return f, sum(f.values()) / len(CLUENER_LABELS)


def test_cluener_dev_perturbed_matches_independent_calculation(cluener_dir):
    gold_lines = load_dev(cluener_dir)
    pred_lines = perturb(gold_lines)
    s = score(dev_pairs(gold_lines), dev_pairs(pred_lines), CLUENER_LABELS)

    # Independent micro: global sets of (sentence index, label, text).
    g = {(i, lab, t) for i, d in enumerate(gold_lines) for lab, ents in d["label"].items() for t in ents}
    p = {(i, lab, t) for i, d in enumerate(pred_lines) for lab, ents in d["label"].items() for t in ents}
    tp, fp, fn = len(g & p), len(p - g), len(g - p)
    assert (s["micro"]["tp"], s["micro"]["fp"], s["micro"]["fn"]) == (tp, fp, fn)
    assert fn > 400 and fp > 200  # the perturbation really bites
    prec, rec = tp / (tp + fp), tp / (tp + fn)
    assert s["micro"]["f1"] == approx(2 * prec * rec / (prec + rec))

    per_label, official = official_cluener_score(pred_lines, gold_lines)
    assert s["cluener_score"] == approx(official)
    for label in CLUENER_LABELS:
        assert s["per_label"][label]["f1"] == approx(per_label[label])
    assert s["macro_f1"] == approx(sum(per_label.values()) / 10)  # every label occurs in dev
    assert 0.5 < s["micro"]["f1"] < 0.95


def test_sentence_counts_sum_to_the_micro_counts():
    from retrain.evaluate.metrics import sentence_counts

    gold = [[("name", "张三"), ("company", "腾讯")], [("game", "王者荣耀")], []]
    pred = [[("name", "张三"), ("name", "李四")], [], [("alien", "x")]]
    counts = sentence_counts(gold, pred)
    assert counts == [
        {"company": [0, 0, 1], "name": [1, 1, 0]},
        {"game": [0, 0, 1]},
        {"alien": [0, 1, 0]},  # a label outside the set: a false positive under its own name
    ]
    micro = score(gold, pred, ["name", "company", "game"])["micro"]
    sums = [sum(c[k] for s in counts for c in s.values()) for k in range(3)]
    assert sums == [micro["tp"], micro["fp"], micro["fn"]]
