"""The promotion gate: should the candidate adapter replace the champion?

`decide` is a pure function of the two evaluation results (`retrain.runs.ModelScores`, which carry
each golden sentence's counts) and the gate policy (conf ``gate``); the promotion
(`retrain.promote.promote_run`) and the offline replay (``retrain gate``) call it.

The rule: a **paired bootstrap** over golden sentences. Each resample draws n sentences with
replacement (seeded, ``gate.seed``); both models are scored on the same draw, giving one micro-F1
difference (candidate - champion). The central ``gate.confidence`` share of ``gate.resamples``
differences is the interval (percentile method). The candidate is promoted only when

- ``significant_gain``: the interval's lower bound exceeds ``gate.min_delta`` (and the observed
  difference is positive: ties never promote);
- ``no_label_regression``: no label with at least ``gate.min_support`` gold entities has its own
  F1-difference interval entirely below ``-gate.max_label_drop``;
- ``parse_failures``: the candidate's strict parse-failure rate is at most ``gate.max_parse_failure``;
- ``min_f1`` (only when set): the candidate's micro F1 is at least ``gate.min_f1``.

F1 is read as ``gate.reading`` (strict by default: outputs salvaged from invalid JSON predict
nothing). Every rule's outcome, the interval and a one-line reason go into the decision.
`is_borderline` says whether a decision is close enough to call for a person's look.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from retrain.config import GateConfig
from retrain.runs import (
    LabelDifference,
    ModelScores,
    PromotionDecision,
    RuleOutcome,
    Significance,
)

Counts = Sequence[dict[str, list[int]]]


class MissingSentenceCounts(ValueError):
    """A model's scores carry no per-sentence counts (a report written before the gate needed them)."""


def _rule(rule: str, passed: bool, detail: str) -> RuleOutcome:
    return RuleOutcome(rule=rule, passed=passed, detail=detail)


def _f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    """F1 = 2tp / (2tp + fp + fn), 0.0 where nothing was predicted or expected (the convention of
    `retrain.evaluate.metrics` except that 0/0 is 0 here, so that a resample can be compared)."""
    denom = 2 * tp + fp + fn
    return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)


def _matrix(counts: Counts, labels: Sequence[str | None]) -> np.ndarray:
    """n x (3 * len(labels)) array of [tp, fp, fn] per label; label None = all labels (micro)."""
    out = np.zeros((len(counts), 3 * len(labels)), dtype=np.int64)
    for i, sentence in enumerate(counts):
        for j, label in enumerate(labels):
            if label is None:
                for tp_fp_fn in sentence.values():
                    out[i, 3 * j : 3 * j + 3] += tp_fp_fn
            elif label in sentence:
                out[i, 3 * j : 3 * j + 3] = sentence[label]
    return out


def bootstrap_differences(
    candidate: Counts, champion: Counts, labels: Sequence[str | None], *, resamples: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Paired bootstrap of F1 differences (candidate - champion) per label (None = micro).

    Returns (observed differences [len(labels)], resampled differences [resamples, len(labels)]).
    Resample r draws n sentence indices with replacement from ``numpy.random.default_rng(seed)``;
    the same draw scores both models, which is what makes the bootstrap paired.
    """
    n = len(candidate)
    if n == 0 or len(champion) != n:
        raise ValueError(f"paired bootstrap needs the same sentences: {n} vs {len(champion)}")
    cand, champ = _matrix(candidate, labels), _matrix(champion, labels)
    both = np.concatenate([cand, champ], axis=1)  # n x 6k
    k = len(labels)

    def diffs(sums: np.ndarray) -> np.ndarray:
        c, h = sums[..., : 3 * k], sums[..., 3 * k :]
        return _f1(c[..., 0::3], c[..., 1::3], c[..., 2::3]) - _f1(h[..., 0::3], h[..., 1::3], h[..., 2::3])

    observed = diffs(both.sum(axis=0))
    rng = np.random.default_rng(seed)
    out = np.empty((resamples, k))
    chunk = max(1, 2_000_000 // n)  # bound memory: the weight matrix is chunk x n
    for start in range(0, resamples, chunk):
        rows = min(chunk, resamples - start)
        idx = rng.integers(0, n, size=(rows, n))
        weights = np.bincount((np.arange(rows)[:, None] * n + idx).ravel(), minlength=rows * n)
        out[start : start + rows] = diffs(weights.reshape(rows, n) @ both)
    return observed, out


def _sentences(scores: ModelScores, reading: str, who: str) -> Counts:
    counts = scores.sentences.get(reading)  # type: ignore[call-overload]
    if not counts:
        raise MissingSentenceCounts(
            f"{who} ({scores.name}) has no per-sentence {reading} counts: its evaluation report predates "
            "the significance gate; evaluate the run again"
        )
    return counts


def significance(candidate: ModelScores, champion: ModelScores, gate: GateConfig) -> Significance:
    """The micro-F1 difference with its interval, and one interval per label with enough support."""
    cand = _sentences(candidate, gate.reading, "candidate")
    champ = _sentences(champion, gate.reading, "champion")
    support: dict[str, int] = {}
    for sentence in cand:
        for label, (tp, _fp, fn) in sentence.items():
            support[label] = support.get(label, 0) + tp + fn
    checked = sorted(lab for lab, s in support.items() if s >= gate.min_support)
    labels: list[str | None] = [None, *checked]
    observed, resampled = bootstrap_differences(cand, champ, labels, resamples=gate.resamples, seed=gate.seed)
    tail = (1 - gate.confidence) / 2
    low, high = np.quantile(resampled, [tail, 1 - tail], axis=0)
    cand_f1 = _point_f1(cand, checked)
    champ_f1 = _point_f1(champ, checked)
    per_label = [
        LabelDifference(
            label=lab,
            support=support[lab],
            candidate_f1=cand_f1[lab],
            champion_f1=champ_f1[lab],
            difference=float(observed[j + 1]),
            low=float(low[j + 1]),
            high=float(high[j + 1]),
            regressed=bool(high[j + 1] < -gate.max_label_drop),
        )
        for j, lab in enumerate(checked)
    ]
    return Significance(
        reading=gate.reading,
        n_sentences=len(cand),
        difference=float(observed[0]),
        low=float(low[0]),
        high=float(high[0]),
        confidence=gate.confidence,
        resamples=gate.resamples,
        seed=gate.seed,
        min_delta=gate.min_delta,
        labels=per_label,
    )


def micro_f1(counts: Counts) -> float:
    """Micro F1 of per-sentence counts (0.0 when there is nothing to find and nothing predicted)."""
    sums = _matrix(counts, [None]).sum(axis=0)
    return float(_f1(sums[0], sums[1], sums[2]))


def _reported_f1(scores: ModelScores, reading: str) -> float:
    """The micro F1 the evaluation reported for ``reading`` (equal to `micro_f1` of its counts)."""
    if reading == "lenient" and scores.lenient_micro is not None:
        return scores.lenient_micro.f1 or 0.0
    if reading == "lenient":
        return micro_f1(_sentences(scores, reading, scores.name))
    return scores.micro.f1 or 0.0


def _point_f1(counts: Counts, labels: Sequence[str]) -> dict[str, float]:
    sums = _matrix(counts, list(labels)).sum(axis=0)
    f1 = _f1(sums[0::3], sums[1::3], sums[2::3])
    return {lab: float(f1[j]) for j, lab in enumerate(labels)}


def _rules(
    sig: Significance, candidate: ModelScores, gate: GateConfig, c_f1: float, h_f1: float, against: str
) -> list[RuleOutcome]:
    rules = [
        _rule(
            "significant_gain",
            sig.low > gate.min_delta and sig.difference > 0,
            f"micro F1 ({sig.reading}) {c_f1:.4f} vs {against} {h_f1:.4f}: difference {sig.interval()} "
            f"over {sig.n_sentences} golden sentences; "
            f"the lower bound must exceed min_delta {gate.min_delta}",
        )
    ]
    regressed = [lab for lab in sig.labels if lab.regressed]
    rules.append(
        _rule(
            "no_label_regression",
            not regressed,
            (
                f"labels worse beyond the noise by more than {gate.max_label_drop}: "
                + ", ".join(f"{x.label} {x.difference:+.3f} [{x.low:+.3f}, {x.high:+.3f}]" for x in regressed)
            )
            if regressed
            else f"no label with support >= {gate.min_support} ({len(sig.labels)} checked) is worse "
            f"beyond the noise by more than {gate.max_label_drop}",
        )
    )
    pfr = candidate.parse_failure_rate
    rules.append(
        _rule(
            "parse_failures",
            pfr <= gate.max_parse_failure,
            f"strict parse-failure rate {pfr:.3f} ({candidate.n_parse_failures} salvaged or unparseable "
            f"outputs; max {gate.max_parse_failure})",
        )
    )
    if gate.min_f1 is not None:
        rules.append(_rule("min_f1", c_f1 >= gate.min_f1, f"micro F1 {c_f1:.4f} (min {gate.min_f1})"))
    return rules


def decide(
    candidate: ModelScores,
    champion: ModelScores,
    gate: GateConfig,
    *,
    champion_name: str = "champion",
    dry_run: bool = False,
    exam: str | None = None,
) -> PromotionDecision:
    """Apply the gate (see the module docstring). ``champion`` is the base model's result for a first
    model; ``exam`` names the golden-set version both were scored on (`retrain.runs.exam_version`).
    Scores without per-sentence counts are kept out with the reason (no interval can be computed)."""
    try:
        sig = significance(candidate, champion, gate)
    except MissingSentenceCounts as exc:
        rule = _rule("significant_gain", False, str(exc))
        return PromotionDecision(
            promote=False,
            reason=f"kept {champion_name}: {rule.rule}: {rule.detail}",
            rules=[rule],
            candidate_f1=candidate.micro.f1 or 0.0,
            champion_f1=champion.micro.f1 or 0.0,
            champion_name=champion_name,
            dry_run=dry_run,
            exam=exam,
        )
    c_f1, h_f1 = _reported_f1(candidate, gate.reading), _reported_f1(champion, gate.reading)
    rules = _rules(sig, candidate, gate, c_f1, h_f1, champion_name)
    failed = [r for r in rules if not r.passed]
    promote = not failed and not dry_run
    headline = f"micro F1 {c_f1:.4f} vs {champion_name} {h_f1:.4f}, difference {sig.interval()}"
    if failed:
        reason = f"kept {champion_name}: " + "; ".join(f"{r.rule}: {r.detail}" for r in failed)
    elif dry_run:
        reason = f"dry run: would promote ({headline})"
    else:
        reason = f"promoted: {headline}, lower bound above min_delta {gate.min_delta}"
    return PromotionDecision(
        promote=promote,
        reason=reason,
        rules=rules,
        candidate_f1=c_f1,
        champion_f1=h_f1,
        champion_name=champion_name,
        dry_run=dry_run,
        significance=sig,
        exam=exam,
    )


def is_borderline(decision: PromotionDecision) -> bool:
    """True when the decision is close enough for a person to look: the micro-F1 interval straddles
    the margin (low <= min_delta < high: the data cannot tell "better by the margin" from "not"), or a
    per-label guard fired. False for a decision without an interval (written before the gate)."""
    sig = decision.significance
    if sig is None:
        return False
    straddles = sig.low <= sig.min_delta < sig.high
    return straddles or any(lab.regressed for lab in sig.labels)


def needs_approval(decision: PromotionDecision, policy: str) -> bool:
    """Whether conf ``gate.approval`` (never | borderline | always) asks a person to confirm: always =
    every promotion and every close call; borderline = close calls only (a person may promote a
    candidate the gate kept); never = nobody. A dry run never waits."""
    if decision.dry_run or policy == "never":
        return False
    if policy == "always":
        return decision.promote or is_borderline(decision)
    return is_borderline(decision)
