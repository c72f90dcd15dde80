"""Every DAG file imports cleanly, without heavy modules, and reads no connection or Variable while
parsing. How long parsing takes is measured by bench/dag_parse.py, not asserted here: a wall-time bound
fails on a loaded machine without saying anything about the code (what makes parsing slow — importing
Great Expectations, MLflow, torch, transformers or pandas at module level — is checked instead)."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DAG_FILES = sorted((REPO / "dags").glob("*.py"))

PROBE = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, {plugins!r})
    calls = []
    from airflow.sdk.definitions import connection as c
    from airflow.sdk.definitions import variable as v
    c.Connection.get = classmethod(lambda cls, *a, **k: calls.append(("connection", a)) or None)
    v.Variable.get = classmethod(lambda cls, *a, **k: calls.append(("variable", a)) or None)
    import airflow.sdk  # warm: Airflow's own import cost is not the DAG file's
    from airflow.dag_processing.dagbag import DagBag
    bag = DagBag({path!r})
    heavy = sorted(m for m in ("great_expectations", "mlflow", "torch", "transformers", "pandas")
                   if m in sys.modules)
    errors = {{k: str(e) for k, e in bag.import_errors.items()}}
    print(json.dumps({{"dags": sorted(bag.dag_ids), "errors": errors, "calls": calls, "heavy": heavy}}))
""")


def _probe(path: Path, tmp_path: Path, extra_env: dict[str, str] | None = None) -> dict:
    import json

    env = {
        **os.environ,
        **(extra_env or {}),
        "AIRFLOW_HOME": str(tmp_path),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{tmp_path}/airflow.db",
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
    }
    code = PROBE.format(plugins=str(REPO / "plugins"), path=str(path))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("path", DAG_FILES, ids=[p.name for p in DAG_FILES])
def test_dag_file_imports_clean_and_light(path, tmp_path):
    r = _probe(path, tmp_path)
    assert not r["errors"], r["errors"]
    assert r["dags"], f"{path.name} defines no DAG"
    assert not r["calls"], f"{path.name} fetched {r['calls']} while parsing"
    assert not r["heavy"], f"{path.name} imported heavy modules at parse time: {r['heavy']}"


def test_ner_retrain_with_events_parses_without_connections(tmp_path):
    """conf events on: the asset watcher's SQS trigger is built at parse time, its connection is not read."""
    events = {
        "RETRAIN__EVENTS__ENABLED": "true",
        "RETRAIN__EVENTS__QUEUE_URL": "https://sqs.eu-west-1.amazonaws.com/123456789012/ner-retrain-incoming",
    }
    r = _probe(REPO / "dags" / "ner_retrain.py", tmp_path, events)
    assert not r["errors"], r["errors"]
    assert r["dags"] == ["ner_retrain"]
    assert not r["calls"], f"fetched {r['calls']} while parsing"
    assert not r["heavy"], r["heavy"]


def test_ner_retrain_shape(tmp_path):
    r = _probe(REPO / "dags" / "ner_retrain.py", tmp_path)
    assert r["dags"] == ["ner_retrain"]


def test_retrain_dag_structure():
    sys.path.insert(0, str(REPO / "plugins"))
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(str(REPO / "dags"))
    dag = bag.dags["ner_retrain"]
    assert dag.max_active_runs == 1 and not dag.catchup
    assert dag.timetable.expression == "0 2 * * *"  # conf schedule.cron
    order = [
        "find_new_batches",
        "validate_batches",
        "build_dataset",
        "prepare_training",
        "train",
        "prepare_evaluation",
        "evaluate",
        "decide",
        "promote",
    ]
    for up, down in itertools.pairwise(order):
        assert down in dag.get_task(up).downstream_task_ids, (up, down)
    assert [o.name for o in dag.get_task("build_dataset").outlets] == ["clue-ner.dataset"]
    assert [o.name for o in dag.get_task("promote").outlets] == ["clue-ner.champion-moves"]
    # alias moves are serialised by one pool; the shipped conf asks nobody (gate.approval: never)
    assert dag.get_task("promote").pool == "registry_aliases"
    assert bag.dags["ner_rollback"].get_task("rollback").pool == "registry_aliases"
    assert "approve_promotion" not in dag.task_ids
    assert dag.default_args["on_failure_callback"] is not None
    assert set(dag.params.keys()) >= {
        "force",
        "dry_run",
        "epochs",
        "learning_rate",
        "lora_rank",
        "max_samples",
        "train_mode",
        "base_model",
        "golden_set",
    }


def test_approval_is_wired_as_a_branch_when_conf_asks_for_it(monkeypatch):
    """gate.approval: borderline -> decide branches to the ApprovalOperator or straight to promote."""
    sys.path.insert(0, str(REPO / "plugins"))
    from airflow.dag_processing.dagbag import DagBag
    from airflow.providers.standard.operators.hitl import ApprovalOperator

    monkeypatch.setenv("RETRAIN__GATE__APPROVAL", "borderline")
    monkeypatch.setenv("RETRAIN__REGISTRY__ALIAS_POOL", "team_a_aliases")
    dag = DagBag(str(REPO / "dags" / "ner_retrain.py")).dags["ner_retrain"]
    approve, promote = dag.get_task("approve_promotion"), dag.get_task("promote")
    assert isinstance(approve, ApprovalOperator) and approve.defaults == ["Reject"]
    assert approve.response_timeout.total_seconds() == 24 * 3600  # conf gate.approval_timeout_hours
    assert dag.get_task("approval_needed").downstream_task_ids == {"approve_promotion", "promote"}
    assert "promote" in approve.downstream_task_ids and approve.pool != "team_a_aliases"
    assert promote.pool == "team_a_aliases" and promote.trigger_rule == "none_failed_min_one_success"
