"""The MLflow registry for real (sqlite backend, local artifacts in a temp dir)."""

import pytest

from retrain.registry import Registry, RegistryError
from tests.support import mlflow_db


@pytest.fixture
def reg(tmp_path):
    uri = mlflow_db.sqlite_uri(tmp_path / "mlflow.db")
    return Registry(uri, "clue-ner-tiny-lora", (tmp_path / "art").as_uri())


def _version(reg, tmp_path, n, airflow_run="r"):
    adapter = tmp_path / f"adapter{n}"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    run = reg.log_training_run(
        airflow_run_id=f"{airflow_run}{n}",
        dag_id="ner_retrain",
        params={"lora_rank": 8},
        metrics={"eval_micro_f1": 0.1 * n},
        loss_curve=[(1, 2.0), (2, 1.0)],
        tags={"dataset_version": f"d{n}"},
        artifacts={"adapter": adapter},
    )
    return reg.register(
        adapter_uri=f"s3://b/adapters/{n:064x}/",
        adapter_digest=f"{n:064x}",
        mlflow_run_id=run,
        airflow_run_id=f"{airflow_run}{n}",
        tags={"micro_f1": str(0.1 * n)},
    )


def test_promote_history_and_rollback(reg, tmp_path):
    assert reg.champion() is None
    v1 = _version(reg, tmp_path, 1)
    reg.move_champion(v1, reason="beats base", actor="test")
    v2 = _version(reg, tmp_path, 2)
    reg.move_champion(v2, reason="beats v1", actor="test")
    assert reg.champion()["version"] == v2 and reg.get_alias("previous")["version"] == v1
    ev = reg.rollback("previous", reason="bad outputs in prod", actor="alice")
    assert ev["to_version"] == v1 and ev["kind"] == "rollback"
    assert reg.champion()["version"] == v1
    hist = reg.history()
    assert [(h["kind"], h["from_version"], h["to_version"]) for h in hist] == [
        ("promote", "", v1),
        ("promote", v1, v2),
        ("rollback", v2, v1),
    ]
    assert all(h["status"] == "FINISHED" for h in hist)
    assert hist[-1]["actor"] == "alice" and hist[-1]["reason"] == "bad outputs in prod"


def test_register_is_idempotent_for_the_same_content(reg, tmp_path):
    v = _version(reg, tmp_path, 1)
    # a retried task, or another run that produced byte-identical weights: the same version
    for airflow_run in ("r1", "other-run"):
        run = reg.log_training_run(
            airflow_run_id=airflow_run,
            dag_id="ner_retrain",
            params={},
            metrics={},
            loss_curve=[],
            tags={"adapter_digest": f"{1:064x}"},
            artifacts={},
        )
        again = reg.register(
            adapter_uri=f"s3://b/adapters/{1:064x}/",
            adapter_digest=f"{1:064x}",
            mlflow_run_id=run,
            airflow_run_id=airflow_run,
            tags={},
        )
        assert again == v
    assert len(reg.versions()) == 1 and reg.versions()[0]["adapter_digest"] == f"{1:064x}"


def test_a_retry_that_trained_new_weights_is_a_new_version_and_a_new_mlflow_run(reg, tmp_path):
    runs = [
        reg.log_training_run(
            airflow_run_id="r1",
            dag_id="d",
            params={},
            metrics={},
            loss_curve=[],
            tags={"adapter_digest": digest},
            artifacts={},
        )
        for digest in ("a" * 64, "b" * 64)
    ]
    assert runs[0] != runs[1]
    versions = [
        reg.register(
            adapter_uri=f"s3://b/adapters/{d * 64}/",
            adapter_digest=d * 64,
            mlflow_run_id=r,
            airflow_run_id="r1",
            tags={},
        )
        for d, r in zip("ab", runs, strict=True)
    ]
    assert versions == ["1", "2"]


def test_rollback_refuses_unknown_targets(reg, tmp_path):
    with pytest.raises(RegistryError, match="previous"):
        reg.rollback("previous", reason="x", actor="t")
    _version(reg, tmp_path, 1)
    with pytest.raises(RegistryError, match="does not exist"):
        reg.rollback("7", reason="x", actor="t")


def test_rollback_refuses_version_without_adapter(reg, tmp_path):
    run = reg.log_training_run(
        airflow_run_id="x", dag_id="d", params={}, metrics={}, loss_curve=[], tags={}, artifacts={}
    )
    v = reg.register(adapter_uri="", adapter_digest="f" * 64, mlflow_run_id=run, airflow_run_id="x", tags={})
    with pytest.raises(RegistryError, match="no adapter"):
        reg.rollback(v, reason="x", actor="t")


def test_describe_masks_the_tracking_password(reg):
    """The description the UI and /api/overview serve never carries the tracking URI's password."""
    reg.tracking_uri = "postgresql://mlflow:s3cr3t@db:5432/mlflow"
    assert reg.describe()["tracking_uri"] == "postgresql://mlflow:***@db:5432/mlflow"


def test_a_training_run_logs_every_param_metric_and_loss_step(reg, monkeypatch):
    """Logged in batches (MLflow's limits: 100 params, 1000 metrics a request), nothing left out; never
    one request per value (each took ~1 s behind MLflow's basic-auth app in the compose stack)."""
    for one_by_one in ("log_param", "log_metric"):
        monkeypatch.setattr(
            reg.client, one_by_one, lambda *a, _n=one_by_one, **k: pytest.fail(f"{_n} called")
        )
    curve = [(step, 3.0 / step) for step in range(1, 1202)]
    rid = reg.log_training_run(
        airflow_run_id="batch",
        dag_id="d",
        params={f"p{i}": i for i in range(130)},
        metrics={"eval_micro_f1": 0.5},
        loss_curve=curve,
        tags={},
        artifacts={},
    )
    run = reg.client.get_run(rid)
    assert run.data.params == {f"p{i}": str(i) for i in range(130)}
    assert run.data.metrics["eval_micro_f1"] == 0.5
    history = sorted((m.step, m.value) for m in reg.client.get_metric_history(rid, "train_loss"))
    assert history == curve
