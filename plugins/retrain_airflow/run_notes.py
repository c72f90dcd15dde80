"""The one-line outcome of a ``ner_retrain`` run, from its ``summary.json``.

The DAG-run listener (`retrain_airflow.listeners`) writes it as the run's note, and the Retraining UI
shows the same line, so the run page and the plugin never disagree. Standard library only: the
listener runs inside the scheduler.
"""

from __future__ import annotations

import math
from typing import Any


def run_note(summary: dict[str, Any] | None) -> str:
    """One line for a ``ner_retrain`` DAG-run note, from the run's ``summary.json`` (None: no summary,
    i.e. the run found no new data and skipped training).

    ``promoted v7: micro F1 0.8120 (+0.0140, 95% CI +0.0031 to +0.0252 vs champion v6; exam 3f2a…/1343)``
    / ``kept champion v3: candidate v8 micro F1 0.7900 (-0.0080, 95% CI … vs champion v3); failed
    significant_gain`` / ``dry run: would promote …`` / ``skipped: no new data``. The interval and the
    exam version appear when the decision has them (decisions from before the significance gate do not).
    What the night trained on follows when the summary records it (`training`).
    """
    if not summary:
        return "skipped: no new data"
    return one_line(_outcome(summary) + training((summary.get("train") or {}).get("selection")))


def _outcome(summary: dict[str, Any]) -> str:
    """The decision part of the note: promoted / kept / dry run, with the figures."""
    decision = summary.get("decision") or {}
    evaluation = summary.get("evaluation") or {}
    cand = as_number(
        decision.get("candidate_f1"), as_number((evaluation.get("candidate") or {}).get("micro_f1"))
    )
    champ = as_number(
        decision.get("champion_f1"), as_number((evaluation.get("champion") or {}).get("micro_f1"))
    )
    against = decision.get("champion_name") or summary.get("champion_name") or "champion"
    version = summary.get("registered_version")
    delta = (
        f" ({cand - champ:+.4f}{interval(decision)} vs {against}{exam(decision)})"
        if cand is not None and champ is not None
        else ""
    )
    f1 = f"micro F1 {cand:.4f}" if cand is not None else "micro F1 n/a"
    failed = [r.get("rule", "?") for r in decision.get("rules") or [] if not r.get("passed")]
    if decision.get("dry_run"):
        verdict = "would promote" if not failed else "would keep " + against
        return f"dry run: {verdict}: candidate {f1}{delta}"
    approval = decision.get("approval") or {}
    answer = (
        f" ({'approved' if approval.get('approved') else 'rejected'} by {approval.get('responded_by')})"
        if approval
        else ""
    )
    if decision.get("promote"):
        text = f"promoted v{version}: {f1}{delta}" if version else f"promoted: {f1}{delta}"
        return text + answer
    who = f"candidate v{version}" if version else "candidate"
    why = f"; failed {', '.join(failed)}" if failed else ""
    if decision.get("refused"):
        why += f"; not promoted: {decision['refused']}"
    return f"kept {against}: {who} {f1}{delta}{why}"


def training(selection: Any) -> str:
    """``; trained warm start from v3 on 30 new + 15 of 200 old`` from a summary's ``train.selection``
    (`retrain.runs.TrainSelection`: what the night trained on, chosen by the platform), else ""."""
    if not isinstance(selection, dict) or not isinstance(selection.get("examples"), int):
        return ""
    parent = selection.get("parent") or {}
    mode = "warm start" if selection.get("mode") == "warm_start" else "full"
    if isinstance(parent, dict) and parent.get("version"):
        mode += f" from v{parent['version']}"
    new, replayed, old = selection.get("new"), selection.get("replayed"), selection.get("old")
    return f"; trained {mode} on {new} new + {replayed} of {old} old"


def interval(decision: dict[str, Any]) -> str:
    """``, 95% CI +0.0031 to +0.0252`` from a decision's significance, else ""."""
    sig = decision.get("significance")
    if not isinstance(sig, dict):
        return ""
    low, high, conf = as_number(sig.get("low")), as_number(sig.get("high")), as_number(sig.get("confidence"))
    if low is None or high is None or conf is None:
        return ""
    return f", {conf:.0%} CI {low:+.4f} to {high:+.4f}"


def exam(decision: dict[str, Any]) -> str:
    """``; exam 3f2a9c1b/43`` (the golden-set version the scores are on), else ""."""
    name = decision.get("exam")
    if not isinstance(name, str) or "/" not in name:
        return ""
    digest, _, size = name.partition("/")
    return f"; exam {digest[:8]}/{size}"


def one_line(text: str, limit: int = 300) -> str:
    """``text`` with its whitespace (newlines included) collapsed, cut to ``limit`` characters."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def as_number(value: Any, default: float | None = None) -> float | None:
    """``value`` as a finite float, else ``default`` (summaries are JSON written by other processes)."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        return default
    return out if math.isfinite(out) else default
