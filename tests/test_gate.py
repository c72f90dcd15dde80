"""retrain.gate: the promotion rules, on typed evaluation results (`retrain.runs.ModelScores`)."""

from retrain.config import GateConfig
from retrain.gate import decide, is_borderline, needs_approval
from tests.support.contracts import model_scores as metrics


def test_better_candidate_promotes():
    d = decide(metrics(0.8), metrics(0.7), GateConfig(), champion_name="champion v1")
    assert d.promote and "promoted" in d.reason and all(r.passed for r in d.rules)


def test_tie_does_not_promote():
    d = decide(metrics(0.7), metrics(0.7), GateConfig())
    assert not d.promote and "beats_champion" in d.reason


def test_first_model_must_beat_base():
    d = decide(metrics(0.0), metrics(0.0), GateConfig(), champion_name="base model")
    assert not d.promote and "base model" in d.reason


def test_each_rule_blocks_on_its_own():
    gate = GateConfig(min_delta=0.05, min_f1=0.5, max_parse_failure=0.1, min_support=5, max_label_drop=0.1)
    good = metrics(0.9, {"name": (0.9, 50)})
    champ = metrics(0.8, {"name": (0.9, 50)})
    assert decide(good, champ, gate).promote
    cases = {
        "beats_champion": (metrics(0.83, {"name": (0.9, 50)}), champ),
        "no_label_regression": (metrics(0.9, {"name": (0.7, 50)}), champ),
        "parse_failures": (metrics(0.9, {"name": (0.9, 50)}, pfr=0.2), champ),
        "min_f1": (metrics(0.45, {"name": (0.9, 50)}), metrics(0.3, {"name": (0.9, 50)})),
    }
    for rule, (cand, ch) in cases.items():
        d = decide(cand, ch, gate)
        failed = [r.rule for r in d.rules if not r.passed]
        assert failed == [rule], (rule, failed)
        assert not d.promote


def test_label_drop_ignores_small_support():
    gate = GateConfig(min_support=10, max_label_drop=0.05)
    d = decide(metrics(0.9, {"game": (0.0, 3)}), metrics(0.8, {"game": (1.0, 3)}), gate)
    assert d.promote


def test_dry_run_never_promotes():
    d = decide(metrics(0.9), metrics(0.1), GateConfig(), dry_run=True)
    assert not d.promote and d.reason.startswith("dry run")


def test_labels_without_f1_are_not_compared():
    gate = GateConfig(min_support=0, max_label_drop=0.0)
    cand = metrics(0.5, {"game": (None, 0)})
    champ = metrics(None, {"game": (None, 0)})
    assert decide(cand, champ, gate).promote


def test_borderline_is_a_keep_only_a_per_label_guard_or_a_small_gain_caused():
    gate = GateConfig(min_delta=0.05, min_f1=0.5, max_parse_failure=0.1, min_support=5, max_label_drop=0.1)
    champ = metrics(0.8, {"name": (0.9, 50)})
    clear_win = decide(metrics(0.9, {"name": (0.9, 50)}), champ, gate)
    label_drop = decide(metrics(0.9, {"name": (0.7, 50)}), champ, gate)
    small_gain = decide(metrics(0.83, {"name": (0.9, 50)}), champ, gate)
    worse = decide(metrics(0.75, {"name": (0.9, 50)}), champ, gate)
    floor = decide(metrics(0.9, {"name": (0.7, 50)}, pfr=0.2), champ, gate)
    assert [is_borderline(d) for d in (clear_win, label_drop, small_gain, worse, floor)] == [
        False,
        True,
        True,
        False,
        False,
    ]
    assert [needs_approval(d, "never") for d in (clear_win, label_drop)] == [False, False]
    assert [needs_approval(d, "borderline") for d in (clear_win, label_drop, worse)] == [False, True, False]
    assert [needs_approval(d, "always") for d in (clear_win, label_drop, worse)] == [True, True, False]
    dry = decide(metrics(0.9, {"name": (0.9, 50)}), champ, gate, dry_run=True)
    assert not needs_approval(dry, "always")
