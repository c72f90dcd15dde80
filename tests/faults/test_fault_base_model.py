"""A base model outside conf ``models.allow`` (`retrain.base_models`), given as the DAG param: the run
fails at prepare_training, without retries, naming the allowlist; nothing is trained or downloaded."""

from __future__ import annotations

from tests.faults.harness import check_invariants


def test_a_refused_base_model_param_fails_before_any_training(pipeline):
    pipeline.upload_batch("incoming/a.json", 60, seed=1, bad=2)
    night = pipeline.run(pipeline.night(base_model="evil/remote-code-model"))
    assert night.failed_at == "prepare_training", (night.failed_at, night.error)
    assert type(night.error).__name__ == "AirflowFailException"  # no retries: retrying cannot help
    message = str(night.error)
    assert message.startswith("DAG param base_model: base model 'evil/remote-code-model' is not allowed")
    assert "conf models.allow [" in message and str(pipeline.workdir / "models" / "*") in message
    written = [o.key for o in pipeline.clean.iter_objects("runs/")]
    assert not [k for k in written if k.endswith(("train_request.json", "train_result.json"))], written
    check_invariants(pipeline)


def test_an_allowed_local_model_trains_with_remote_code_off(pipeline, monkeypatch):
    monkeypatch.setenv("RETRAIN_FAKE_QUALITY", "fair")
    pipeline.upload_batch("incoming/a.json", 60, seed=1, bad=2)
    night = pipeline.run(pipeline.night(), until="prepare_evaluation")
    assert night.failed_at is None, night.error
    prefix = night.xcom["prepare_training"].split(f"s3://{pipeline.bucket}/", 1)[1]
    train_request = pipeline.clean.get_json(f"{prefix}/train_request.json")
    assert train_request["base_model"] == str(pipeline.base_model)
    assert train_request["base_model_revision"] is None
    assert train_request["llamafactory"]["trust_remote_code"] is False
    eval_request = pipeline.clean.get_json(f"{prefix}/eval_request.json")
    assert eval_request["trust_remote_code"] is False and eval_request["base_model_revision"] is None
