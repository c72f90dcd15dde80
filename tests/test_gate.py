"""retrain.gate: the significance gate, on scores computed by the real scorer from hand-made outputs."""

from __future__ import annotations

import json
import random

import pytest

from retrain.config import GateConfig
from retrain.evaluate import load_golden, score_model
from retrain.gate import bootstrap_differences, decide, is_borderline
from tests.support.contracts import LABELS, model_scores

GATE = GateConfig(min_support=5)


def _golden(labels: list[str]) -> bytes:
    """One gold entity per sentence, of the given labels."""
    return json.dumps(
        [
            {
                "instruction": "找出实体",
                "input": f"句子{i}里有实体{i}",
                "output": json.dumps([{"label": lab, "text": f"实体{i}"}], ensure_ascii=False),
            }
            for i, lab in enumerate(labels)
        ],
        ensure_ascii=False,
    ).encode()


def _right(i: int, label: str) -> str:
    return json.dumps([{"label": label, "text": f"实体{i}"}], ensure_ascii=False)


def _salvaged(i: int, label: str) -> str:
    # two objects without the comma between them: invalid JSON; the lenient parser pulls them out
    return f'[{{"label": "{label}", "text": "实体{i}"}} {{"label": "{label}", "text": "别的"}}]'


def _scores(labels: list[str], right: set[int], name: str, wrong: str = "[]", salvage: bool = False):
    golden = load_golden(_golden(labels))
    raws = [
        (_salvaged(i, lab) if salvage else _right(i, lab)) if i in right else wrong
        for i, lab in enumerate(labels)
    ]
    return score_model(golden, raws, LABELS, name)


def test_clearly_better_candidate_promotes_with_lower_bound_above_zero():
    labels = ["name"] * 60
    cand = _scores(labels, set(range(50)), "candidate")
    champ = _scores(labels, set(range(20)), "champion v1")
    d = decide(cand, champ, GATE, champion_name="champion v1", exam="g/60")
    sig = d.significance
    assert d.promote and all(r.passed for r in d.rules), d.reason
    assert sig is not None and sig.low > 0 and sig.low <= sig.difference <= sig.high
    assert sig.difference == pytest.approx(2 * 50 / 110 - 2 * 20 / 80)
    assert (sig.resamples, sig.seed, sig.confidence, sig.n_sentences) == (2000, 20261202, 0.95, 60)
    assert "95% CI" in d.reason and d.reason.startswith("promoted") and d.exam == "g/60"
    assert not is_borderline(d)


def test_noise_level_difference_keeps_the_champion_with_the_interval_in_the_reason():
    labels = ["name"] * 60
    rnd = random.Random(7)
    cand = _scores(labels, set(rnd.sample(range(60), 31)), "candidate")
    champ = _scores(labels, set(rnd.sample(range(60), 30)), "champion v1")
    d = decide(cand, champ, GATE, champion_name="champion v1")
    sig = d.significance
    assert sig is not None and sig.difference > 0 and sig.low < 0 < sig.high
    assert not d.promote
    assert d.reason.startswith("kept champion v1: significant_gain")
    assert sig.interval() in d.reason and f"{sig.low:+.4f}" in d.reason
    assert is_borderline(d)  # the interval straddles min_delta 0.0


def test_ties_never_promote():
    labels = ["name"] * 40
    d = decide(_scores(labels, set(range(30)), "c"), _scores(labels, set(range(30)), "h"), GATE)
    assert not d.promote and d.significance and d.significance.difference == 0.0


def test_salvaged_outputs_count_as_failures():
    labels = ["name"] * 60
    # The candidate "finds" 50 entities, but only by pulling objects out of invalid JSON.
    cand = _scores(labels, set(range(50)), "candidate", salvage=True)
    champ = _scores(labels, set(range(20)), "champion v1")
    assert cand.parse_readings["salvaged"] == 50 and cand.parse_failure_rate == pytest.approx(50 / 60)
    assert cand.micro.f1 == 0.0 and cand.lenient_micro and cand.lenient_micro.f1 > 0.5
    d = decide(cand, champ, GATE)
    failed = {r.rule for r in d.rules if not r.passed}
    assert not d.promote and failed == {"significant_gain", "no_label_regression", "parse_failures"}
    # Read leniently the gain is significant, but the parse-failure rate still keeps the champion.
    lenient = decide(cand, champ, GATE.model_copy(update={"reading": "lenient"}))
    assert {r.rule for r in lenient.rules if not r.passed} == {"parse_failures"} and not lenient.promote


def test_min_delta_applies_to_the_lower_bound():
    labels = ["name"] * 60
    cand, champ = _scores(labels, set(range(50)), "c"), _scores(labels, set(range(20)), "h")
    sig = decide(cand, champ, GATE).significance
    assert sig is not None
    between = (sig.low + sig.difference) / 2  # above the lower bound, below the point estimate
    d = decide(cand, champ, GATE.model_copy(update={"min_delta": between}))
    assert not d.promote and "min_delta" in d.reason and is_borderline(d)


def test_label_regression_beyond_the_noise_keeps_the_champion():
    labels = ["name"] * 60 + ["game"] * 30
    # candidate: much better on name, much worse on game; micro still clearly better
    cand = _scores(labels, set(range(55)) | set(range(60, 62)), "candidate")
    champ = _scores(labels, set(range(10)) | set(range(60, 85)), "champion v1")
    d = decide(cand, champ, GATE)
    assert d.significance and d.significance.low > 0
    game = {x.label: x for x in d.significance.labels}["game"]
    assert game.regressed and game.high < -GATE.max_label_drop and game.support == 30
    assert not d.promote and [r.rule for r in d.rules if not r.passed] == ["no_label_regression"]
    assert is_borderline(d)
    # Below min_support the label gets no interval of its own.
    d2 = decide(cand, champ, GATE.model_copy(update={"min_support": 31}))
    assert [x.label for x in d2.significance.labels] == ["name"] and d2.promote


def test_min_f1_only_when_set():
    labels = ["name"] * 60
    cand, champ = _scores(labels, set(range(50)), "c"), _scores(labels, set(range(20)), "h")
    assert "min_f1" not in {r.rule for r in decide(cand, champ, GATE).rules}
    d = decide(cand, champ, GATE.model_copy(update={"min_f1": 0.95}))
    assert [r.rule for r in d.rules if not r.passed] == ["min_f1"]


def test_dry_run_never_promotes():
    labels = ["name"] * 60
    d = decide(_scores(labels, set(range(50)), "c"), _scores(labels, set(range(20)), "h"), GATE, dry_run=True)
    assert not d.promote and d.reason.startswith("dry run: would promote")


def test_scores_without_sentence_counts_are_kept_with_the_reason():
    old = model_scores(0.9, sentences={})
    d = decide(old, model_scores(0.1), GATE)
    assert not d.promote and "predates the significance gate" in d.reason and d.significance is None
    assert not is_borderline(d)


def test_bootstrap_is_seeded_and_paired():
    cand = [{"name": [1, 0, 0]}] * 30 + [{"name": [0, 0, 1]}] * 10
    champ = [{"name": [1, 0, 0]}] * 30 + [{"name": [0, 0, 1]}] * 10
    obs, res = bootstrap_differences(cand, champ, [None], resamples=500, seed=1)
    assert obs[0] == 0.0 and (res == 0.0).all()  # identical outputs: every paired resample agrees
    champ2 = [{"name": [0, 0, 1]}] * 5 + champ[5:]
    a = bootstrap_differences(cand, champ2, [None, "name"], resamples=300, seed=3)[1]
    b = bootstrap_differences(cand, champ2, [None, "name"], resamples=300, seed=3)[1]
    c = bootstrap_differences(cand, champ2, [None, "name"], resamples=300, seed=4)[1]
    assert (a == b).all() and not (a == c).all() and (a >= 0).all()  # never worse on any sentence
    with pytest.raises(ValueError, match="same sentences"):
        bootstrap_differences(cand, champ2[:-1], [None], resamples=10, seed=1)


def _decision(low: float, high: float, *, promote: bool, regressed: bool = False, dry_run: bool = False):
    from retrain.runs import LabelDifference, PromotionDecision, Significance

    label = LabelDifference(
        label="name", support=50, candidate_f1=0.8, champion_f1=0.8, difference=0.0, low=-0.2, high=0.1,
        regressed=regressed,
    )  # fmt: skip
    sig = Significance(
        reading="strict", n_sentences=100, difference=(low + high) / 2, low=low, high=high, confidence=0.95,
        resamples=2000, seed=1, min_delta=0.0, labels=[label],
    )  # fmt: skip
    return PromotionDecision(promote=promote, reason="r", rules=[], significance=sig, dry_run=dry_run)


def test_approval_asks_a_person_for_close_calls_or_every_promotion():
    from retrain.gate import needs_approval

    clear_win = _decision(0.02, 0.09, promote=True)
    straddles = _decision(-0.01, 0.05, promote=False)
    label_guard = _decision(0.02, 0.09, promote=False, regressed=True)
    clearly_worse = _decision(-0.09, -0.02, promote=False)
    assert [is_borderline(d) for d in (clear_win, straddles, label_guard, clearly_worse)] == [
        False,
        True,
        True,
        False,
    ]
    assert not any(needs_approval(d, "never") for d in (clear_win, straddles, label_guard))
    assert [needs_approval(d, "borderline") for d in (clear_win, straddles, clearly_worse)] == [
        False,
        True,
        False,
    ]
    assert [needs_approval(d, "always") for d in (clear_win, straddles, clearly_worse)] == [True, True, False]
    assert not needs_approval(_decision(0.02, 0.09, promote=True, dry_run=True), "always")
