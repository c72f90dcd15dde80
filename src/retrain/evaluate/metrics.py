"""NER scores over (label, text) pairs per sentence. Standard library only.

Unit of scoring: for sentence i, the gold set G_i and the predicted set P_i of (label, text)
pairs (duplicates within a sentence collapse; strings are compared exactly, no normalisation).
A pair is a true positive when it is in both sets of the same sentence.

Conventions for 0/0 (the same everywhere):
- precision = tp / (tp + fp), and 0.0 when nothing was predicted (tp + fp == 0);
- recall    = tp / (tp + fn), and 0.0 when there is nothing to find (tp + fn == 0);
- f1        = 2PR / (P + R), and 0.0 when P + R == 0;
- except when tp + fp + fn == 0 — a label absent from the gold data and never predicted, or an
  empty evaluation — where precision, recall and f1 are ``None`` (undefined, not "perfect").

Averages:
- ``micro``: over all pairs; predicted or gold pairs whose label is not in ``labels`` count too
  (an invented label is a false positive).
- ``macro_f1``: the mean of per-label F1 over the labels in ``labels`` whose F1 is defined,
  i.e. labels with gold support or at least one prediction; ``None`` if there is none.
- ``cluener_score``: CLUENER2020's official score (score.py): per label, per sentence, the set
  of entity strings of that label is compared, F1 per label, then the plain mean over ALL
  ``labels`` (score.py divides by the number of labels). score.py would divide by zero where we
  use the 0.0 conventions above; an undefined label (no gold, no prediction) counts as 0.0
  here, as score.py's denominator still includes it. On data where every label occurs in the
  gold set the two macro figures coincide; they differ on small sets missing a label.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

Pair = tuple[str, str]

# Bump when scoring behaviour changes: cached evaluation results depend on it.
METRICS_VERSION = "2"

#: One sentence's pair counts: label -> [tp, fp, fn], labels with a non-zero count only (a predicted
#: label outside the label set appears under its own name, with fp only). The significance gate
#: (`retrain.gate`) resamples sentences with these.
SentenceCounts = dict[str, list[int]]


def prf(tp: int, fp: int, fn: int) -> tuple[float | None, float | None, float | None]:
    """(precision, recall, f1) with the module's 0/0 conventions."""
    if tp + fp + fn == 0:
        return None, None, None
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return p, r, f


def sentence_counts(gold: Sequence[Iterable[Pair]], pred: Sequence[Iterable[Pair]]) -> list[SentenceCounts]:
    """Per sentence, the tp/fp/fn of each label (see SentenceCounts); summing them over all sentences
    and labels gives `score`'s micro counts."""
    if len(gold) != len(pred):
        raise ValueError(f"gold has {len(gold)} sentences, predictions have {len(pred)}")
    out: list[SentenceCounts] = []
    for g_raw, p_raw in zip(gold, pred, strict=True):
        g = set(map(tuple, g_raw))
        p = set(map(tuple, p_raw))
        counts: SentenceCounts = {}
        for pairs, slot in ((g & p, 0), (p - g, 1), (g - p, 2)):
            for label, _text in pairs:
                counts.setdefault(label, [0, 0, 0])[slot] += 1
        out.append(dict(sorted(counts.items())))
    return out


def score(
    gold: Sequence[Iterable[Pair]], pred: Sequence[Iterable[Pair]], labels: Sequence[str]
) -> dict[str, Any]:
    """Score predictions against gold, sentence by sentence.

    ``gold[i]`` and ``pred[i]`` are the (label, text) pairs of sentence i. ``labels`` is the label
    set (order kept in ``per_label``). Returns::

        {"micro": {"precision", "recall", "f1", "tp", "fp", "fn"},
         "macro_f1", "cluener_score",
         "per_label": {label: {"precision", "recall", "f1", "support", "tp", "fp", "fn"}},
         "n_sentences", "unknown_label_predictions"}

    ``support`` is the number of gold pairs of the label; ``unknown_label_predictions`` counts
    predicted pairs whose label is not in ``labels``. Raises ValueError when the lists differ in
    length.
    """
    if len(gold) != len(pred):
        raise ValueError(f"gold has {len(gold)} sentences, predictions have {len(pred)}")
    label_list = list(dict.fromkeys(labels))
    known = set(label_list)
    counts = {lab: [0, 0, 0] for lab in label_list}  # tp, fp, fn
    tp = fp = fn = 0
    unknown_pred = 0
    for g_raw, p_raw in zip(gold, pred, strict=True):
        g = set(map(tuple, g_raw))
        p = set(map(tuple, p_raw))
        for pair in g & p:
            tp += 1
            if pair[0] in known:
                counts[pair[0]][0] += 1
        for pair in p - g:
            fp += 1
            if pair[0] in known:
                counts[pair[0]][1] += 1
            else:
                unknown_pred += 1
        for pair in g - p:
            fn += 1
            if pair[0] in known:
                counts[pair[0]][2] += 1

    mp, mr, mf = prf(tp, fp, fn)
    per_label: dict[str, dict[str, Any]] = {}
    defined_f1 = []
    cluener_sum = 0.0
    for lab in label_list:
        ltp, lfp, lfn = counts[lab]
        p_, r_, f_ = prf(ltp, lfp, lfn)
        per_label[lab] = {
            "precision": p_,
            "recall": r_,
            "f1": f_,
            "support": ltp + lfn,
            "tp": ltp,
            "fp": lfp,
            "fn": lfn,
        }
        if f_ is not None:
            defined_f1.append(f_)
            cluener_sum += f_
    return {
        "micro": {"precision": mp, "recall": mr, "f1": mf, "tp": tp, "fp": fp, "fn": fn},
        "macro_f1": sum(defined_f1) / len(defined_f1) if defined_f1 else None,
        "cluener_score": cluener_sum / len(label_list) if label_list else None,
        "per_label": per_label,
        "n_sentences": len(gold),
        "unknown_label_predictions": unknown_pred,
    }
