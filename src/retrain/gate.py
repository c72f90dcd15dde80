"""The promotion gate: should the candidate adapter replace the champion?

`decide` is a pure function of the two evaluation results and the gate policy (conf ``gate``); the
promotion (`retrain.promote`) applies it.
It returns every rule's outcome and a one-line reason, so the decision is auditable in the task
log, the registry tags and the UI. Ties never promote.
"""

from __future__ import annotations

from retrain.config import GateConfig
from retrain.runs import ModelScores, PromotionDecision, RuleOutcome


def _rule(rule: str, passed: bool, detail: str) -> RuleOutcome:
    return RuleOutcome(rule=rule, passed=passed, detail=detail)


def decide(
    candidate: ModelScores,
    champion: ModelScores,
    gate: GateConfig,
    *,
    champion_name: str = "champion",
    dry_run: bool = False,
) -> PromotionDecision:
    """Apply the gate: candidate micro F1 >= champion + min_delta and strictly greater; no label
    with support >= min_support drops by more than max_label_drop; parse-failure rate <=
    max_parse_failure; micro F1 >= min_f1. ``champion`` is the base model's result for a first model."""
    c_f1, h_f1 = candidate.micro.f1 or 0.0, champion.micro.f1 or 0.0
    delta = c_f1 - h_f1
    rules = [
        _rule(
            "beats_champion",
            c_f1 > h_f1 and delta >= gate.min_delta,
            f"micro F1 {c_f1:.4f} vs {champion_name} {h_f1:.4f} "
            f"(delta {delta:+.4f}, min_delta {gate.min_delta})",
        )
    ]
    drops = []
    for label, cm in candidate.per_label.items():
        hm = champion.per_label.get(label)
        if hm is None or cm.support < gate.min_support or hm.f1 is None:
            continue  # labels absent from both gold and predictions have no F1 to compare
        drop = hm.f1 - (cm.f1 or 0.0)
        if drop > gate.max_label_drop:
            drops.append(f"{label} -{drop:.3f}")
    rules.append(
        _rule(
            "no_label_regression",
            not drops,
            (f"labels dropping more than {gate.max_label_drop}: " + ", ".join(drops))
            if drops
            else f"no label with support >= {gate.min_support} drops more than {gate.max_label_drop}",
        )
    )
    pfr = candidate.parse_failure_rate
    rules.append(
        _rule(
            "parse_failures",
            pfr <= gate.max_parse_failure,
            f"parse-failure rate {pfr:.3f} (max {gate.max_parse_failure})",
        )
    )
    rules.append(_rule("min_f1", c_f1 >= gate.min_f1, f"micro F1 {c_f1:.4f} (min {gate.min_f1})"))
    failed = [r for r in rules if not r.passed]
    promote = not failed and not dry_run
    if failed:
        reason = f"kept {champion_name}: " + "; ".join(f"{r.rule}: {r.detail}" for r in failed)
    elif dry_run:
        reason = f"dry run: would promote (micro F1 {c_f1:.4f} vs {champion_name} {h_f1:.4f})"
    else:
        reason = f"promoted: micro F1 {c_f1:.4f} beats {champion_name} {h_f1:.4f} ({delta:+.4f})"
    return PromotionDecision(
        promote=promote,
        reason=reason,
        rules=rules,
        candidate_f1=c_f1,
        champion_f1=h_f1,
        champion_name=champion_name,
        dry_run=dry_run,
    )


#: Rules whose failure makes a keep a close call a person may overrule (every other rule is a hard floor).
_CLOSE_CALL_RULES = frozenset({"beats_champion", "no_label_regression"})


def is_borderline(decision: PromotionDecision) -> bool:
    """A close call: the gate kept the champion only because a per-label guard fired, and/or because
    the candidate's gain was above zero but below ``min_delta``.

    Stand-in until the bootstrap interval lands (then: the interval straddles the margin, or a
    per-label guard fired); every hard floor (parse failures, min F1) must have passed."""
    failed = {r.rule for r in decision.rules if not r.passed}
    if decision.dry_run or not failed or not failed <= _CLOSE_CALL_RULES:
        return False
    return "beats_champion" not in failed or decision.candidate_f1 > decision.champion_f1


def needs_approval(decision: PromotionDecision, policy: str) -> bool:
    """Whether conf ``gate.approval`` (never | borderline | always) asks a person to confirm: always =
    every promotion and every close call; borderline = close calls only (a person may promote a
    candidate the gate kept); never = nobody. A dry run never waits."""
    if decision.dry_run or policy == "never":
        return False
    if policy == "always":
        return decision.promote or is_borderline(decision)
    return is_borderline(decision)
