"""The DAG-level fault test: ner_retrain under real Airflow (tests/faults/dag_scenario.py).

A. the trainer exits 137: the run fails at `train`, nothing downstream runs, nothing is registered;
   the batch is accepted and the pending marker stays, so the next run trains on it;
B. the worker is SIGKILLed mid-training (the `airflow dags test` process group): nothing is
   registered, no trainer process survives, the batch is still pending;
C. the next run, fault gone: no new object, but the pending batch is trained on, evaluated and
   promoted as v1; the dataset version is the same all three times and no record was ingested twice.

Not covered here: resuming the killed attempt from its checkpoint. Resume is per run (the same run
retried); B's run id is not run again (no scheduler here to retry it), and the checkpoint resume of
a killed LLaMA-Factory run is tested for real in tests/train/test_train.py.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.e2e

A, B, C = "A-trainer-exit-137", "B-worker-sigkill", "C-rerun"
DOWNSTREAM = ("prepare_evaluation", "evaluate", "promote")


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    from tests.faults.dag_scenario import scenario

    result = scenario(tmp_path_factory.getbasetemp() / "dag-fault-scenario")
    assert not result.error, result.error
    return result


def test_trainer_exit_137_fails_the_run_and_keeps_the_batch_pending(scenario):
    from retrain.ingest import safe_run_id

    a, after = scenario.attempts[A], scenario.after[A]
    assert a.returncode != 0
    assert a.states["train"] == "failed", a.states
    assert all(a.states[t] == "upstream_failed" for t in DOWNSTREAM), a.states
    assert a.states["validate_batches"] == "success"
    intake = scenario.intake[A]
    assert intake["read"] == 63 and intake["accepted"] + intake["quarantined"] == intake["read"]
    assert len(after.accepted_rows) == intake["accepted"]
    assert list(after.ledger) == ["incoming/2026-11-27/batch-001.json"]
    assert after.pending_marker  # accepted data nobody trained on: the next run must train
    assert after.registry_versions == [] and after.champion is None
    run_prefix = f"runs/{safe_run_id(a.run_id)}/"
    assert (
        f"{run_prefix}train_request.json" in after.keys and f"{run_prefix}train_result.json" not in after.keys
    )


def test_worker_killed_mid_training_registers_nothing_and_leaves_no_process(scenario):
    b, after = scenario.attempts[B], scenario.after[B]
    assert b.killed and b.returncode == -9
    assert b.states["train"] == "running", b.states  # died with the worker: nobody recorded an end
    assert scenario.leftover_processes == []  # the trainer died with its process group
    assert scenario.intake[B]["objects"] == []  # nothing new to ingest; it ran on the pending batch
    assert scenario.datasets[B] == scenario.datasets[A]
    assert after.pending_marker and after.registry_versions == [] and after.champion is None
    assert len(after.accepted_rows) == len(scenario.after[A].accepted_rows)
    assert not [k for k in after.keys if k.endswith("train_result.json")]


def test_rerun_after_the_faults_trains_the_pending_batch_and_promotes_v1(scenario):
    c, after = scenario.attempts[C], scenario.after[C]
    assert c.returncode == 0 and set(c.states.values()) == {"success"}, c.states
    assert scenario.intake[C]["objects"] == []  # found by the pending marker, not as new data
    assert scenario.datasets[C] == scenario.datasets[A]  # same accepted records, same dataset version
    rows = after.accepted_rows
    assert sorted((r["source_key"], r["line"]) for r in rows) == sorted(
        (r["source_key"], r["line"]) for r in scenario.after[A].accepted_rows
    )  # none ingested twice
    summary = scenario.summary
    assert summary["decision"]["promote"] and summary["registered_version"] == "1", summary["decision"]
    assert after.champion == "1" and [v["version"] for v in after.registry_versions] == ["1"]
    assert after.registry_versions[0]["tags"]["airflow_run_id"] == c.run_id
    assert not after.pending_marker
    # every dataset version in the bucket was committed (manifest.json written last)
    folders = {k.split("/")[1] for k in after.keys if k.startswith("datasets/")}
    assert folders and all(f"datasets/{f}/manifest.json" in after.keys for f in folders)
