"""Faults at promotion and re-runs of the same DAG run, against a real MLflow registry (sqlite).

- the registry server is down when decide (which registers) runs: the task fails, the champion is
  unchanged and the batch stays pending; the retry registers and promotes;
- promote dies after registering the version but before (or while) moving the alias: the champion
  is unchanged, and the retry registers no second version and moves the alias;
- two promotions at once: the registry is never without a champion;
- the same DAG run cleared and re-run: same dataset version, no record ingested twice, no second
  registry version.
"""

from __future__ import annotations

import threading

import pytest

from tests.faults.harness import Pipeline, check_invariants, jsonl


def _night_until_evaluated(p: Pipeline, monkeypatch, quality: str, key: str, seed: int):
    monkeypatch.setenv("RETRAIN_FAKE_QUALITY", quality)
    p.upload_batch(key, 60, seed=seed, bad=2)
    night = p.run(until="evaluate")
    assert night.failed_at is None and "evaluate" in night.xcom, (night.failed_at, night.error)
    return night


def _first_champion(p: Pipeline, monkeypatch) -> None:
    night = _night_until_evaluated(p, monkeypatch, "fair", "incoming/a.json", 1)
    p.resume(night)
    assert night.done and night.xcom["promote"]["version"] == "1", (night.failed_at, night.error)


def test_registry_down_at_promotion_keeps_the_champion_and_the_batch_pending(pipeline, monkeypatch):
    from tests.support.stack import free_port

    p = pipeline
    _first_champion(p, monkeypatch)
    night = _night_until_evaluated(p, monkeypatch, "good", "incoming/b.json", 2)

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    p.use_settings(RETRAIN__REGISTRY__TRACKING_URI=f"http://127.0.0.1:{free_port()}")  # nothing listens there
    p.resume(night)

    assert night.failed_at == "decide", (night.failed_at, night.error)  # registering needs the registry
    assert "Connection refused" in str(night.error) or "Max retries exceeded" in str(night.error)
    p.use_settings()  # the registry is back
    registry = p.registry()
    assert registry.champion()["version"] == "1" and len(registry.versions()) == 1
    assert p.pending_marker()
    assert not p.clean.exists(f"{night.prefix}/summary.json")
    check_invariants(p)

    p.resume(night)  # the task's retry

    assert night.done, (night.failed_at, night.error)
    assert night.xcom["promote"]["promoted"] and night.xcom["promote"]["version"] == "2"
    assert registry.champion()["version"] == "2" and registry.get_alias("previous")["version"] == "1"
    assert not p.pending_marker()
    check_invariants(p)


@pytest.mark.parametrize("where", ["before_the_aliases", "between_previous_and_champion"])
def test_crash_between_register_and_alias_move(pipeline, monkeypatch, where):
    from mlflow.tracking import MlflowClient

    from retrain.registry import Registry

    p = pipeline
    _first_champion(p, monkeypatch)
    night = _night_until_evaluated(p, monkeypatch, "good", "incoming/b.json", 2)

    with monkeypatch.context() as m:
        if where == "before_the_aliases":

            def move_champion(self, version, **kwargs):
                raise ConnectionError("worker lost (injected) after registering")

            m.setattr(Registry, "move_champion", move_champion)
        else:
            real = MlflowClient.set_registered_model_alias

            def set_alias(self, name, alias, version):
                if alias == "champion":
                    raise ConnectionError("registry connection reset (injected)")
                return real(self, name, alias, version)

            m.setattr(MlflowClient, "set_registered_model_alias", set_alias)
        p.resume(night)

    assert night.failed_at == "promote" and "injected" in str(night.error)
    registry = p.registry()
    assert [v["version"] for v in registry.versions()] == ["1", "2"]  # v2 was registered ...
    assert registry.champion()["version"] == "1"  # ... but the champion did not move
    assert p.pending_marker()
    unfinished = [e for e in registry.history() if e["status"] != "FINISHED"]
    assert len(unfinished) == (1 if where == "between_previous_and_champion" else 0)  # visible in MLflow
    check_invariants(p)

    p.resume(night)  # the task's retry

    assert night.done, (night.failed_at, night.error)
    assert night.xcom["promote"]["version"] == "2"
    assert [v["version"] for v in registry.versions()] == ["1", "2"]  # no duplicate version
    assert registry.champion()["version"] == "2" and registry.get_alias("previous")["version"] == "1"
    assert [e["to_version"] for e in registry.history() if e["status"] == "FINISHED"] == ["1", "2"]
    assert not p.pending_marker()
    check_invariants(p)


def test_two_promotions_at_once_never_leave_the_registry_without_a_champion(
    moto_server, registry_store, tmp_path, monkeypatch
):
    """Two DAG runs (two buckets, one registered model) reach promote together, in threads,
    while a third thread keeps reading the champion alias."""
    uri, artifacts = registry_store
    model = "tiny-shared-model"
    a = Pipeline(
        moto=moto_server,
        workdir=tmp_path,
        monkeypatch=monkeypatch,
        registry_uri=uri,
        artifact_uri=artifacts,
        model=model,
    )
    _first_champion(a, monkeypatch)
    night_a = _night_until_evaluated(a, monkeypatch, "good", "incoming/b.json", 2)
    b = Pipeline(
        moto=moto_server,
        workdir=tmp_path,
        monkeypatch=monkeypatch,
        registry_uri=uri,
        artifact_uri=artifacts,
        model=model,
    )
    night_b = _night_until_evaluated(b, monkeypatch, "good", "incoming/c.json", 3)
    assert a.registry().name == b.registry().name

    stop = threading.Event()
    seen: list[str | None] = []

    def watch() -> None:
        reader = a.registry()
        while not stop.is_set():
            champ = reader.champion()
            seen.append(champ["version"] if champ else None)

    start = threading.Barrier(2)

    def promote(p: Pipeline, night) -> None:
        start.wait()
        p.resume(night)

    watcher = threading.Thread(target=watch)
    watcher.start()
    workers = [threading.Thread(target=promote, args=(p, n)) for p, n in ((a, night_a), (b, night_b))]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    stop.set()
    watcher.join(30)

    assert seen and None not in seen, "the registry was seen without a champion"
    if night_a.done or night_b.done:  # at least one alias move happened while it was watched
        assert seen[0] == "1" and set(seen) - {"1"}, "the watcher did not see the promotions happen"
    for p, night in ((a, night_a), (b, night_b)):
        if not night.done:  # sqlite may refuse one writer; its retry must then succeed
            p.resume(night)
        assert night.done, (night.failed_at, night.error)
    registry = a.registry()
    versions = [v["version"] for v in registry.versions()]
    assert versions == ["1", "2", "3"]
    assert registry.champion()["version"] in ("2", "3")
    assert {e["to_version"] for e in registry.history() if e["kind"] == "promote"} <= {"1", "2", "3"}
    check_invariants(a)
    check_invariants(b)


def test_cleared_and_rerun_dag_run_changes_nothing(pipeline, monkeypatch):
    from retrain.ingest import read_ledger

    p = pipeline
    p.upload_batch("incoming/a.json", 60, seed=1, bad=3)
    night = p.run()
    assert night.done, (night.failed_at, night.error)
    plan = night.xcom["find_new_batches"]
    dataset = night.xcom["build_dataset"]
    accepted = sorted((r["source_key"], r["line"]) for k in p.keys("accepted/") for r in jsonl(p.clean, k))
    ledger = read_ledger(p.clean, p.settings)

    # 1. The whole run cleared: intake finds nothing new and nothing pending, so it skips.
    p.resume(night, start="find_new_batches")
    assert night.skipped and night.failed_at is None

    # 2. Cleared from validate_batches on (the plan's XCom kept, as Airflow keeps upstream XComs).
    night.xcom["find_new_batches"] = plan
    night.skipped = False
    p.resume(night, start="validate_batches")

    assert night.done, (night.failed_at, night.error)
    again = sorted((r["source_key"], r["line"]) for k in p.keys("accepted/") for r in jsonl(p.clean, k))
    assert again == accepted  # no record ingested twice
    assert read_ledger(p.clean, p.settings).keys() == ledger.keys()
    assert night.xcom["build_dataset"]["version"] == dataset["version"]
    assert night.xcom["build_dataset"]["created"] is False  # the committed version is reused as it is
    registry = p.registry()
    assert [v["version"] for v in registry.versions()] == ["1"]  # register() found the same adapter + run
    assert registry.champion()["version"] == "1"
    assert [e["to_version"] for e in registry.history()] == ["1"]  # "already champion": no second event
    assert not p.pending_marker()


def test_rerun_of_a_promoted_run_keeps_its_champion_promoted(pipeline):
    p = pipeline
    p.upload_batch("incoming/a.json", 60, seed=1, bad=3)
    night = p.run()
    assert night.done and night.xcom["promote"]["promoted"], (night.failed_at, night.error)

    p.resume(night, start="prepare_evaluation")  # e.g. evaluate and promote cleared after a UI glitch

    assert night.done, (night.failed_at, night.error)
    assert p.registry().champion()["version"] == "1"
    check_invariants(p)  # the champion must still read as having passed the gate


def test_reprocessing_a_batch_does_not_count_its_labels_twice(pipeline):
    from retrain.ingest import find_new_batches, process_batches

    p = pipeline
    p.upload_batch("incoming/a.json", 40, seed=1, bad=1)
    plan = find_new_batches(p.clean, p.settings)
    process_batches(p.clean, p.settings, plan.objects, "manual__once")
    expected = {}
    for key in p.keys("accepted/"):
        for row in jsonl(p.clean, key):
            for e in row["entities"]:
                expected[e["label"]] = expected.get(e["label"], 0) + 1

    def totals():
        out: dict[str, int] = {}
        for counts in p.clean.get_json("state/label_counts.json")["by_object"].values():
            for label, n in counts.items():
                out[label] = out.get(label, 0) + n
        return out

    assert totals() == expected

    process_batches(p.clean, p.settings, plan.objects, "manual__once")  # the same objects again

    assert totals() == expected
