"""End to end: the demo's three nights under Airflow (`airflow dags test`, Postgres metadata DB),
with a real moto S3 server, real GX validation, real LLaMA-Factory training of the tiny model in
the trainer environment (local launcher), real generation-based evaluation and a real MLflow
registry. Asserts the registry state, the skip, and record accounting with bad records present.
The demo runs once per session (the `demo` fixture, tests/e2e/conftest.py)."""

from __future__ import annotations

import pytest

from tests.support.demo import DEMO_RECORDS

pytestmark = pytest.mark.e2e


def test_every_night_succeeds(demo):
    for night in demo.nights:
        failed = {t: s for t, s in night.states.items() if s not in ("success", "skipped")}
        assert night.returncode == 0 and not failed, (night.name, night.states, night.log_file)


def test_first_night_trains_and_promotes_v1(demo):
    a = demo.nights[0]
    assert a.states["train"] == "success" and a.states["promote"] == "success"
    assert a.summary["champion_name"] == "base model"
    assert a.summary["registered_version"] == "1"
    assert a.summary["decision"]["promote"], a.summary["decision"]["reason"]
    assert a.summary["evaluation"]["candidate"]["micro_f1"] > a.summary["evaluation"]["champion"]["micro_f1"]
    # production's gate (no demo override): the adapter beats the base model beyond the noise
    significance = a.summary["decision"]["significance"]
    assert significance["low"] > 0.0, significance


def test_second_night_compares_with_the_champion(demo):
    b = demo.nights[1]
    assert b.states["train"] == "success"
    assert b.summary["champion_name"] == "champion v1"
    assert b.summary["registered_version"] == "2"
    assert b.summary["dataset"]["train"] > demo.nights[0].summary["dataset"]["train"]
    assert b.summary["decision"]["reason"]
    champion = demo.registry["champion"]["version"]
    assert champion == ("2" if b.summary["decision"]["promote"] else "1")


def test_third_night_is_skipped_without_training(demo):
    c = demo.nights[2]
    assert c.states["find_new_batches"] == "success"
    for task in ("validate_batches", "build_dataset", "train", "evaluate", "promote"):
        assert c.states[task] == "skipped", (task, c.states)
    assert c.summary is None


def test_accounting_with_bad_records(demo):
    for night in demo.nights[:2]:
        intake = night.intake
        assert intake["read"] == DEMO_RECORDS + 5
        assert intake["accepted"] + intake["quarantined"] == intake["read"]
        assert intake["quarantined"] >= 5


def test_registry_history(demo):
    kinds = [(h["kind"], h["to_version"]) for h in demo.history]
    assert kinds[0] == ("promote", "1")
    assert len(demo.registry["versions"]) == 2
    v1 = demo.registry["versions"][0]
    assert v1["tags"]["airflow_run_id"] == demo.nights[0].run_id
    assert v1["tags"]["dataset_version"] == demo.nights[0].summary["dataset"]["version"]
    assert v1["adapter_uri"].endswith(f"/adapters/{v1['adapter_digest']}/")


def test_each_run_carries_a_one_line_note(demo):
    a, b, c = demo.nights
    assert a.note and a.note.startswith("promoted v1: micro F1"), a.note
    sel = a.summary["train"]["selection"]  # the first model: full training on everything, all new
    assert a.note.endswith(f"; trained full on {sel['new']} new + 0 of 0 old"), a.note
    assert b.note and b.note.startswith(("promoted v2", "kept champion v1")), b.note
    assert c.note == "skipped: no new data"
