"""Assets (plugins/retrain_airflow/assets.py) and the deploy_champion DAG.

- deploy_champion parses (DagBag) and is scheduled on exactly the champion asset named from conf;
- a real run under ``airflow dags test`` of a producer DAG that declares the outlets the way ner_retrain
  is told to: build_dataset emits a dataset event with the version in its extra; promote emits a
  champion event through the alias only when the candidate was promoted (a kept candidate emits none),
  and that event queues a deploy_champion run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _settings(**env):
    from retrain.config import load_settings

    return load_settings(environ={"RETRAIN__S3__BUCKET": "assets-test", **env})


def test_asset_names_come_from_conf():
    from retrain_airflow import assets

    s = _settings(RETRAIN__TRAIN__BASE_MODEL="/models/tiny-qwen2")
    assert assets.dataset_asset(s).uri == "s3://assets-test/datasets"
    assert assets.dataset_asset(s).name == "clue-ner.dataset"
    assert assets.champion_asset(s).uri == "mlflow://clue-ner-tiny-qwen2-lora/champion"
    assert assets.champion_asset(s).name == "clue-ner.champion"
    assert assets.promote_outlets(s) == [assets.champion_alias(s)]
    assert assets.build_dataset_outlets(s) == [assets.dataset_asset(s)]


def test_champion_extra_only_for_a_real_promotion():
    from retrain_airflow.assets import champion_event_extra

    summary = {
        "run_id": "r1",
        "registered_version": "2",
        "champion_name": "champion v1",
        "decision": {"promote": True, "dry_run": False},
        "evaluation": {"candidate": {"micro_f1": 0.5}, "champion": {"micro_f1": 0.4}},
        "dataset": {"version": "ds-1"},
        "registry": {"model": "m"},
    }
    assert champion_event_extra(summary, "base") == {
        "model": "m",
        "version": "2",
        "micro_f1": 0.5,
        "previous": "champion v1",
        "previous_micro_f1": 0.4,
        "dataset_version": "ds-1",
        "base_model": "base",
        "run_id": "r1",
        "kind": "promote",
    }
    assert champion_event_extra({**summary, "decision": {"promote": False}}) is None
    assert champion_event_extra({**summary, "decision": {"promote": True, "dry_run": True}}) is None


def test_deploy_dag_is_scheduled_on_the_champion_asset(tmp_path, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk.definitions.timetables.assets import AssetTriggeredTimetable
    from retrain_airflow import assets

    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path))
    bag = DagBag(str(REPO / "dags" / "deploy_champion.py"))
    assert not bag.import_errors, bag.import_errors
    dag = bag.dags["deploy_champion"]
    assert isinstance(dag.timetable, AssetTriggeredTimetable)
    champion = assets.champion_asset(_settings())
    assert list(dag.timetable.asset_condition.objects) == [champion]
    assert [t.task_id for t in dag.tasks] == ["validate_champion"]


PRODUCER = textwrap.dedent("""
    from airflow.sdk import DAG, task
    from retrain.config import load_settings
    from retrain_airflow import assets

    settings = load_settings()
    SUMMARY = {"run_id": "r", "registered_version": "3", "champion_name": "champion v2",
               "decision": {"promote": True, "dry_run": False},
               "evaluation": {"candidate": {"micro_f1": 0.81}, "champion": {"micro_f1": 0.7}},
               "dataset": {"version": "ds-abc"}, "registry": {"model": "clue-ner-tiny-lora"}}

    def build_dataset():
        return assets.record_dataset_event(settings, {"version": "ds-abc", "uri": "s3://b/datasets/ds-abc/",
                                                      "created": True, "train": 90, "validation": 5,
                                                      "golden": 5, "golden_hash": "g1"})

    def promote():
        return assets.record_champion_event(settings, SUMMARY, base_model="/m/tiny")

    def promote_kept():
        return assets.record_champion_event(settings, {**SUMMARY, "decision": {"promote": False}})

    with DAG("assets_probe", schedule=None):
        d = task(task_id="build_dataset", outlets=assets.build_dataset_outlets(settings))(build_dataset)()
        p = task(task_id="promote", outlets=assets.promote_outlets(settings))(promote)()
        k = task(task_id="promote_kept", outlets=assets.promote_outlets(settings))(promote_kept)()
        d >> p >> k
""")

QUERY = textwrap.dedent("""
    import json
    from sqlalchemy import select
    from airflow.models.asset import AssetDagRunQueue, AssetEvent, AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        events = [{"name": a.name, "uri": a.uri, "task": e.source_task_id, "extra": e.extra}
                  for e, a in session.execute(select(AssetEvent, AssetModel).join(
                      AssetModel, AssetModel.id == AssetEvent.asset_id).order_by(AssetEvent.id))]
        queued = [q.target_dag_id for q in session.scalars(select(AssetDagRunQueue))]
    print(json.dumps({"events": events, "queued": queued}))
""")


def test_outlets_emit_events_with_extra_under_airflow(tmp_path):
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "assets_probe.py").write_text(PRODUCER)
    shutil.copy(REPO / "dags" / "deploy_champion.py", dags / "deploy_champion.py")
    home = tmp_path / "airflow"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "RETRAIN__"))}
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/db.sqlite",
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
            "PYTHONPATH": str(REPO / "plugins"),
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",  # paused consumers get no queue entry
            "RETRAIN__S3__BUCKET": "assets-test",
            "RETRAIN__TRAIN__BASE_MODEL": "/m/tiny",
        }
    )
    bindir = Path(sys.executable).parent

    def airflow(*args: str) -> str:
        proc = subprocess.run(
            [str(bindir / "airflow"), *args], env=env, capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, (args, proc.stdout[-2000:], proc.stderr[-3000:])
        return proc.stdout

    airflow("db", "migrate")
    airflow("dags", "reserialize")  # deploy_champion registered as a consumer of the champion asset
    airflow("dags", "test", "assets_probe", "2026-11-28T02:00:00+00:00")
    out = subprocess.run([sys.executable, "-c", QUERY], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])

    by_task = {}
    for e in result["events"]:
        by_task.setdefault(e["task"], []).append(e)
    [dataset] = by_task["build_dataset"]
    assert (dataset["name"], dataset["uri"]) == ("clue-ner.dataset", "s3://assets-test/datasets")
    assert dataset["extra"]["version"] == "ds-abc" and dataset["extra"]["created"] is True
    [champion] = by_task["promote"]
    assert (champion["name"], champion["uri"]) == (
        "clue-ner.champion",
        "mlflow://clue-ner-tiny-lora/champion",
    )
    assert champion["extra"]["version"] == "3" and champion["extra"]["micro_f1"] == 0.81
    assert champion["extra"]["model"] == "clue-ner-tiny-lora" and champion["extra"]["base_model"] == "/m/tiny"
    assert "promote_kept" not in by_task, by_task  # a kept candidate moves no alias: no event
    assert result["queued"] == ["deploy_champion"]


@pytest.fixture(autouse=True)
def _no_airflow_env_leak(monkeypatch):
    for key in [k for k in os.environ if k.startswith("RETRAIN__")]:
        monkeypatch.delenv(key)


# -- the consumer task ----------------------------------------------------------------------------------
def _registry_with_champion(tmp_path, monkeypatch, moto_server, versions: int):
    from retrain_airflow import tasks

    from retrain.registry import Registry
    from retrain.storage import ObjectStore
    from tests.support.contracts import put_adapter

    monkeypatch.setenv("RETRAIN_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RETRAIN__S3__BUCKET", "assets-test")
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", moto_server.airflow_connection())
    store = ObjectStore(moto_server.client(), "assets-test")
    store.ensure_bucket()
    monkeypatch.setenv("RETRAIN__TRAIN__BASE_MODEL", "/m/tiny")
    tasks.settings.cache_clear()
    s = tasks.settings()
    reg = Registry.from_settings(s, "/m/tiny")
    for n in range(1, versions + 1):
        run = reg.log_training_run(
            airflow_run_id=f"r{n}",
            dag_id="ner_retrain",
            params={},
            metrics={},
            loss_curve=[],
            tags={},
            artifacts={},
        )
        uri, digest = put_adapter(store, f"weights {n}".encode())
        v = reg.register(
            adapter_uri=uri,
            adapter_digest=digest,
            mlflow_run_id=run,
            airflow_run_id=f"r{n}",
            tags={},
        )
        reg.move_champion(v, reason="test", actor="test")
    return s, reg, store


def _run_validate(monkeypatch, s, events):
    from types import SimpleNamespace

    import airflow.sdk
    from retrain_airflow import assets

    context = {
        "triggering_asset_events": {assets.champion_asset(s): [SimpleNamespace(extra=e) for e in events]}
    }
    monkeypatch.setattr(airflow.sdk, "get_current_context", lambda: context)
    return assets.validate_new_champion()


def test_validate_new_champion_against_the_registry(tmp_path, monkeypatch, moto_server):
    import logging

    from retrain_airflow import assets, tasks

    s, reg, store = _registry_with_champion(tmp_path, monkeypatch, moto_server, versions=2)
    seen: list[str] = []  # a handler of our own: where Airflow's logging setup sends records varies
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("retrain_airflow.assets").addHandler(handler)
    try:
        out = _run_validate(monkeypatch, s, [{"version": "2", "micro_f1": 0.8, "base_model": "/m/tiny"}])
        assert out == {
            "model": reg.name,
            "version": "2",
            "adapter_uri": reg.champion()["adapter_uri"],
            "event_version": "2",
            "micro_f1": 0.8,
        }
        # the alias moved again since the event: the registry's champion is validated, with a warning
        reg.rollback("1", reason="bad", actor="test")
        out = _run_validate(monkeypatch, s, [{"version": "2", "base_model": "/m/tiny"}])
        assert out["version"] == "1" and out["event_version"] == "2"
        assert any("champion moved again" in m for m in seen), seen
        with pytest.raises(assets.ChampionEventError, match="without a version"):
            _run_validate(monkeypatch, s, [{"micro_f1": 0.8}])
        with pytest.raises(assets.ChampionEventError, match="manual trigger"):
            _run_validate(monkeypatch, s, [])
        # the champion's weights were changed in the bucket after registration: never deployed
        from retrain.adapters import AdapterIntegrityError

        digest = reg.champion()["adapter_digest"]
        store.put_bytes(f"adapters/{digest}/adapter_model.safetensors", b"swapped")
        with pytest.raises(AdapterIntegrityError, match="refusing to use it"):
            _run_validate(monkeypatch, s, [{"version": "1", "base_model": "/m/tiny"}])
    finally:
        logging.getLogger("retrain_airflow.assets").removeHandler(handler)
        tasks.settings.cache_clear()
