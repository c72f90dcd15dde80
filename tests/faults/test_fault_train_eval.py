"""Faults in the trainer-side stages.

train: the trainer process dies (exit 137 as a shell reports an OOM kill, SIGKILL, a Python crash)
or exits 0 without saving an adapter. `retrain.train.run_training` (what `retrain train` runs) must
fail, commit no train_result.json, keep a failed attempt's checkpoint, and prepare_evaluation must
refuse the run; the Airflow retry resumes from the checkpoint and finishes. The local launcher
turns a non-zero exit of the trainer process into a task failure.

evaluate: generation crashes after the candidate was scored and before the champion was: no
report.json, so promote refuses; the retry completes, and a champion result already in the eval
cache is never generated again.

Real LLaMA-Factory runs killed mid-training (SIGKILL, SIGTERM) and resumed are in
tests/train/test_train.py; here the trainer is tests/faults/fake_trainer.py (see harness.py).
"""

from __future__ import annotations

import sys

import pytest

from tests.faults.harness import check_invariants


def _first_champion(p, monkeypatch, quality: str = "fair", **params):
    monkeypatch.setenv("RETRAIN_FAKE_QUALITY", quality)
    p.upload_batch("incoming/a.json", 60, seed=1, bad=2)
    night = p.run(p.night(**params))
    assert night.done and night.xcom["promote"]["version"] == "1", (night.failed_at, night.error)
    return night


@pytest.mark.parametrize(
    ("mode", "says"),
    [
        ("exit137", "llamafactory-cli train exited with 137"),
        ("sigkill", "llamafactory-cli train exited with -9 (killed by SIGKILL)"),
        ("crash", "illegal memory access was encountered (injected)"),
        ("no_adapter", "exited 0 but its output is not a usable adapter: adapter_config.json is missing"),
    ],
)
def test_trainer_death_promotes_nothing_and_the_retry_resumes(pipeline, monkeypatch, mode, says):
    from retrain_airflow import tasks

    from retrain.train import TrainingFailed

    p = pipeline
    _first_champion(p, monkeypatch)
    p.upload_batch("incoming/b.json", 60, seed=2, bad=2)
    monkeypatch.setenv("RETRAIN_FAKE_QUALITY", "good")
    monkeypatch.setenv("RETRAIN_FAKE_TRAINER", mode)

    night = p.run()

    assert night.failed_at == "train" and isinstance(night.error, TrainingFailed), (
        night.failed_at,
        night.error,
    )
    assert says in str(night.error)
    assert not p.clean.exists(f"{night.prefix}/train_result.json")
    with pytest.raises(
        RuntimeError, match="training did not commit its artifacts: .*train_result.json is missing"
    ):
        tasks.prepare_evaluation(night.xcom["build_dataset"], night.xcom["prepare_training"])
    registry = p.registry()
    assert registry.champion()["version"] == "1" and len(registry.versions()) == 1
    assert p.pending_marker()  # the batch is still to be trained on
    kept = p.clean.exists(f"{night.prefix}/checkpoints/hashes.json")
    assert kept == (mode != "no_adapter")  # a complete checkpoint-2 was saved before the death
    assert p.clean.exists(f"{night.prefix}/train/llamafactory.log")  # the output is kept for the post-mortem
    check_invariants(p)

    monkeypatch.setenv("RETRAIN_FAKE_TRAINER", "ok")
    p.resume(night, start="train")  # the task's retry

    assert night.done, (night.failed_at, night.error)
    result = p.clean.get_json(f"{night.prefix}/train_result.json")
    assert result["resumed_from"] == ("checkpoint-2" if kept else None)
    assert p.trainer_runs()[-1]["start"] == (2 if kept else 0)
    assert not p.keys(f"{night.prefix}/checkpoints/")  # freed once the run committed
    assert night.xcom["promote"]["promoted"] and night.xcom["promote"]["version"] == "2"
    assert not p.pending_marker()
    check_invariants(p)


def test_local_launcher_fails_the_task_on_exit_137(pipeline, moto_server, tmp_path, monkeypatch):
    """The local launcher (train.launcher: local) runs the trainer env's python; an OOM-killed
    trainer (exit 137) fails the task with the code and the last output lines."""
    from retrain_airflow.launchers.local import LocalStageOperator
    from retrain_airflow.settings import settings

    p = pipeline
    trainer = tmp_path / "oom-python"
    trainer.write_text(
        f"#!{sys.executable}\nimport os, sys\n"
        "print('loading checkpoint shards', flush=True)\n"
        "print('S3 credentials given:', bool(os.environ.get('AWS_SECRET_ACCESS_KEY')), flush=True)\n"
        "print('Killed', flush=True)\nsys.exit(137)\n"
    )
    trainer.chmod(0o755)
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", moto_server.airflow_connection())
    p.use_settings(RETRAIN__TRAIN__TRAINER_PYTHON=str(trainer))

    with pytest.raises(RuntimeError) as info:
        LocalStageOperator.from_settings("train", f"s3://{p.bucket}/runs/manual__x", settings()).execute({})
    message = str(info.value)
    assert "`retrain train` exited with code 137" in message
    assert "S3 credentials given: True" in message and "Killed" in message
    assert moto_server.secret_key not in message


def test_local_launcher_fails_a_stage_that_exits_0_without_committing(
    pipeline, moto_server, tmp_path, monkeypatch
):
    """A trainer that exits 0 but commits nothing fails the task: the launcher removed the marker an
    earlier attempt left, so that one cannot pass for this attempt's output."""
    from retrain_airflow.launchers.local import LocalStageOperator
    from retrain_airflow.settings import settings

    from retrain.stages import StageNotCommitted

    p = pipeline
    trainer = tmp_path / "silent-python"
    trainer.write_text(f"#!{sys.executable}\nprint('all good, nothing saved', flush=True)\n")
    trainer.chmod(0o755)
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", moto_server.airflow_connection())
    p.use_settings(RETRAIN__TRAIN__TRAINER_PYTHON=str(trainer))
    stale = "runs/manual__y/train_result.json"
    moto_server.client().put_object(Bucket=p.bucket, Key=stale, Body=b'{"status": "succeeded"}')

    with pytest.raises(
        StageNotCommitted,
        match=f"`retrain train` exited 0 but did not commit its output: s3://{p.bucket}/{stale} is missing",
    ):
        LocalStageOperator.from_settings("train", f"s3://{p.bucket}/runs/manual__y", settings()).execute({})


def test_evaluation_crash_before_the_champion_is_scored(pipeline):
    from retrain_airflow import tasks

    from retrain.runs import ContractError

    p = pipeline
    p.upload_batch("incoming/a.json", 60, seed=4, bad=2)

    def crash(tag: str) -> None:
        if tag == "base":
            raise RuntimeError("CUDA out of memory (injected)")

    p.model.crash = crash
    night = p.run()

    assert night.failed_at == "evaluate" and "CUDA out of memory" in str(night.error)
    assert p.model.calls == ["good", "base"]  # the candidate was scored, the champion was not
    assert not p.keys(f"{night.prefix}/eval/")
    (cached,) = p.keys("eval_cache/")  # the candidate's result is in the cache already
    # promote refuses to decide without report.json, before touching the registry
    with pytest.raises(ContractError, match=r"eval/report.json is missing"):
        tasks.decide(
            night.xcom["build_dataset"], night.xcom["validate_batches"], night.xcom["prepare_training"]
        )
    assert p.registry().versions() == [] and p.registry().champion() is None
    assert p.pending_marker()
    check_invariants(p)

    p.model.crash = None
    p.resume(night, start="evaluate")

    assert night.done, (night.failed_at, night.error)
    report = p.clean.get_json(f"{night.prefix}/eval/report.json")
    assert report["candidate"]["cache_key"] == cached.removeprefix("eval_cache/").removesuffix(".json")
    assert p.clean.get_json(cached)["metrics"]["micro"] == report["candidate"]["micro"]
    assert night.xcom["promote"]["promoted"] and night.xcom["promote"]["version"] == "1"
    check_invariants(p)


def test_evaluation_retry_never_regenerates_a_cached_champion(pipeline, monkeypatch):
    """With a fixed golden set the champion's result comes from the eval cache; when writing the
    report fails, the retry again takes the champion from the cache (only the candidate is generated)."""
    from tests.support.synth import make_batch

    p = pipeline
    golden_key = "golden/fixed.jsonl"
    p.clean.put_bytes(golden_key, ("\n".join(make_batch(12, seed=99)) + "\n").encode())
    golden = f"s3://{p.bucket}/{golden_key}"
    _first_champion(p, monkeypatch, golden_set=golden)
    assert p.model.calls == ["fair", "base"]

    p.upload_batch("incoming/b.json", 60, seed=5, bad=1)
    monkeypatch.setenv("RETRAIN_FAKE_QUALITY", "good")
    p.faults.fail("PutObject", "runs/", "500", key_suffix="/eval/report.json")
    p.model.calls.clear()
    night = p.run(p.night(golden_set=golden))

    assert night.failed_at == "evaluate", (night.failed_at, night.error)
    assert p.model.calls == ["good"]  # champion v1 from the cache
    assert not p.clean.exists(f"{night.prefix}/eval/report.json")

    p.faults.clear()
    p.resume(night, start="evaluate")

    assert night.done, (night.failed_at, night.error)
    assert p.model.calls == ["good", "good"]
    report = p.clean.get_json(f"{night.prefix}/eval/report.json")
    assert report["champion"]["cached"] is True and report["champion"]["name"] == "champion v1"
    assert night.xcom["promote"]["promoted"] and night.xcom["promote"]["version"] == "2"
    check_invariants(p)
