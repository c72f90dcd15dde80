"""The DAG-run note (plugins/retrain_airflow/run_notes.py): the outcome line the listener writes on each
``ner_retrain`` run and the Retraining UI shows."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_run_note():
    from retrain_airflow.run_notes import run_note

    assert run_note(None) == "skipped: no new data"
    promoted = {
        "registered_version": "7",
        "champion_name": "champion v6",
        "decision": {
            "promote": True,
            "candidate_f1": 0.812,
            "champion_f1": 0.798,
            "champion_name": "champion v6",
            "rules": [{"rule": "beats_champion", "passed": True}],
        },
    }
    assert run_note(promoted) == "promoted v7: micro F1 0.8120 (+0.0140 vs champion v6)"
    kept = {
        "registered_version": "8",
        "decision": {
            "promote": False,
            "candidate_f1": 0.79,
            "champion_f1": 0.798,
            "champion_name": "champion v3",
            "rules": [{"rule": "beats_champion", "passed": False}, {"rule": "min_f1", "passed": True}],
        },
    }
    assert (
        run_note(kept)
        == "kept champion v3: candidate v8 micro F1 0.7900 (-0.0080 vs champion v3); failed beats_champion"
    )
    approved = {
        **promoted,
        "decision": {**promoted["decision"], "approval": {"approved": True, "responded_by": "alice"}},
    }
    assert run_note(approved) == "promoted v7: micro F1 0.8120 (+0.0140 vs champion v6) (approved by alice)"
    refused = {
        **promoted,
        "decision": {**promoted["decision"], "promote": False, "refused": "champion changed"},
    }
    assert run_note(refused).endswith("; not promoted: champion changed")
    dry = {
        "registered_version": None,
        "decision": {
            "promote": False,
            "dry_run": True,
            "candidate_f1": 0.5,
            "champion_f1": 0.1,
            "champion_name": "base model",
            "rules": [],
        },
    }
    assert run_note(dry) == "dry run: would promote: candidate micro F1 0.5000 (+0.4000 vs base model)"
    assert "\n" not in run_note({"decision": {"promote": False, "rules": [], "champion_name": "a\nb"}})
    # With the significance gate: the difference's interval and the exam version
    significant = {
        **promoted,
        "decision": {
            **promoted["decision"],
            "exam": "3f2a9c1b0d4e5f60/1343",
            "significance": {"low": 0.0031, "high": 0.0252, "confidence": 0.95},
        },
    }
    assert run_note(significant) == (
        "promoted v7: micro F1 0.8120 (+0.0140, 95% CI +0.0031 to +0.0252 vs champion v6; exam 3f2a9c1b/1343)"
    )


def test_one_line_collapses_whitespace_and_cuts():
    from retrain_airflow.run_notes import one_line

    assert one_line("a\n  b\tc ") == "a b c"
    assert one_line("x" * 10, limit=5) == "xxxx…"
    assert len(one_line("word " * 200)) == 300


def test_as_number_takes_only_finite_numbers():
    from retrain_airflow.run_notes import as_number

    assert as_number("0.5") == 0.5 and as_number(3) == 3.0
    for bad in (None, "n/a", float("nan"), float("inf"), [1]):
        assert as_number(bad) is None, bad
    assert as_number("nan", 0.0) == 0.0


def test_a_kept_run_without_figures_still_gets_a_note():
    from retrain_airflow.run_notes import run_note

    assert run_note({"decision": {"promote": False, "rules": [{"rule": "min_f1", "passed": False}]}}) == (
        "kept champion: candidate micro F1 n/a; failed min_f1"
    )
    # the evaluation's figures stand in when the decision has none
    summary = {
        "registered_version": "3",
        "evaluation": {"candidate": {"micro_f1": 0.6}, "champion": {"micro_f1": "0.5"}},
        "decision": {"promote": True, "rules": []},
    }
    assert run_note(summary) == "promoted v3: micro F1 0.6000 (+0.1000 vs champion)"


def test_the_listener_imports_the_note_without_the_ui():
    """The scheduler's listener needs the note only: no UI package, no web framework, no template engine."""
    code = (
        f"import json, sys; sys.path.insert(0, {str(REPO / 'plugins')!r}); "
        "import retrain_airflow.run_notes; "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('fastapi', 'jinja2', 'boto3', 'mlflow') or m.startswith('retrain_airflow.ui'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout) == []
    listener = (REPO / "plugins" / "retrain_airflow" / "listeners.py").read_text()
    assert "from retrain_airflow.run_notes import run_note" in listener
    assert "retrain_airflow.ui" not in listener


def test_the_note_says_what_the_night_trained_on():
    from retrain_airflow.run_notes import run_note

    decision = {"promote": True, "candidate_f1": 0.5, "champion_f1": 0.4, "champion_name": "champion v3"}
    warm = {
        "mode": "warm_start",
        "parent": {"version": "3"},
        "examples": 45,
        "new": 30,
        "replayed": 15,
        "old": 200,
    }
    summary = {"registered_version": "4", "decision": decision, "train": {"selection": warm}}
    assert run_note(summary) == (
        "promoted v4: micro F1 0.5000 (+0.1000 vs champion v3); "
        "trained warm start from v3 on 30 new + 15 of 200 old"
    )
    full = {**warm, "mode": "full", "parent": None, "replayed": 200}
    note = run_note({**summary, "train": {"selection": full}})
    assert note.endswith("; trained full on 30 new + 200 of 200 old")
    # summaries from before the platform chose the examples have no selection
    assert "trained" not in run_note({"registered_version": "4", "decision": decision})
