# ruff: noqa: F811  (pytest fixtures imported from tests.fixtures_trainer are used as arguments)
"""The train stage: pure helpers, then real `retrain train` runs (LLaMA-Factory on the tiny model,
a moto S3 server) — success, a missing dataset, and a killed attempt resumed from its checkpoint."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from retrain.adapters import adapter_digest

pytest.importorskip("llamafactory")

from retrain.base_models import BaseModelDownloadFailed  # noqa: E402
from retrain.config import load_settings  # noqa: E402
from retrain.train import (  # noqa: E402
    BaseModelUnavailable,
    TrainingFailed,
    check_artifacts,
    config_hash,
    latest_complete_checkpoint,
    loss_curve,
    read_trainer_log,
    render_llamafactory_yaml,
    resolve_base_model,
    run_llamafactory,
    verify_adapter_loads,
)
from tests.fixtures_trainer import (  # noqa: E402,F401
    BUCKET,
    moto_s3,
    put_train_request,
    tiny_model_dir,
    upload_alpaca_dataset,
)

pytestmark = pytest.mark.trainer

EXAMPLES = 60
BATCH = load_settings().llamafactory_config("cpu_tiny")["per_device_train_batch_size"]
STEPS_PER_EPOCH = -(-EXAMPLES // BATCH)


def _write_log(path: Path, entries: list[dict]) -> None:
    path.write_text("".join(json.dumps(e) + "\n" for e in entries), encoding="utf-8")


# --------------------------------------------------------------------------- pure helpers


def test_config_hash_ignores_paths_but_not_what_is_trained() -> None:
    cfg = load_settings().llamafactory_config("cpu_tiny")
    h = config_hash(cfg, "Qwen/Qwen2.5-7B-Instruct")
    assert h == config_hash(dict(reversed(list(cfg.items()))), "Qwen/Qwen2.5-7B-Instruct")
    moved = dict(cfg, model_name_or_path="/x", dataset_dir="/y", output_dir="/z", resume_from_checkpoint="/c")
    assert config_hash(moved, "Qwen/Qwen2.5-7B-Instruct") == h
    assert config_hash(dict(cfg, learning_rate=1e-3), "Qwen/Qwen2.5-7B-Instruct") != h
    assert config_hash(cfg, "Qwen/Qwen2.5-0.5B-Instruct") != h
    assert len(h) == 16


def test_render_yaml_groups_sections_and_round_trips() -> None:
    cfg = load_settings().llamafactory_config("cpu_tiny")
    cfg["my_extra_flag"] = True
    text = render_llamafactory_yaml(
        cfg,
        model_name_or_path="/models/base",
        dataset_dir="/work/ds",
        output_dir="/work/out",
        resume_from_checkpoint="/work/resume/checkpoint-8",
        header="run r1",
    )
    loaded = yaml.safe_load(text)
    assert loaded == {
        **cfg,
        "model_name_or_path": "/models/base",
        "dataset_dir": "/work/ds",
        "output_dir": "/work/out",
        "resume_from_checkpoint": "/work/resume/checkpoint-8",
    }
    headings = [line for line in text.splitlines() if line.startswith("###")]
    assert headings == [
        "### model",
        "### method",
        "### dataset",
        "### output",
        "### train",
        "### eval",
        "### other",
    ]
    assert text.startswith("# run r1\n")
    assert "eval_strategy: 'no'" in text  # YAML 1.1 would read a bare `no` as False
    body = text.split("### other")[1]
    assert "my_extra_flag: true" in body
    # None never overrides: a profile's own value stays
    assert yaml.safe_load(render_llamafactory_yaml(cfg, dataset=None))["dataset"] == "alpaca_clue_train"


def test_check_artifacts_exit_zero_without_adapter_is_a_failure(tmp_path: Path) -> None:
    _write_log(
        tmp_path / "trainer_log.jsonl",
        [{"current_steps": 5, "total_steps": 10, "loss": 2.0}, {"current_steps": 10, "total_steps": 10}],
    )
    problems = check_artifacts(tmp_path)
    assert problems == ["adapter_config.json is missing", "adapter_model.safetensors is missing"]


def test_check_artifacts_detects_an_unfinished_or_broken_run(tmp_path: Path) -> None:
    (tmp_path / "adapter_config.json").write_text('{"r": 8}')
    (tmp_path / "adapter_model.safetensors").write_bytes(b"")
    _write_log(tmp_path / "trainer_log.jsonl", [{"current_steps": 5, "total_steps": 10, "loss": 2.0}])
    problems = check_artifacts(tmp_path)
    assert "adapter_model.safetensors is empty" in problems
    assert "adapter_config.json has no peft_type" in problems
    assert "trainer_log.jsonl: training stopped at step 5 of 10" in problems
    (tmp_path / "trainer_log.jsonl").unlink()
    assert "trainer_log.jsonl is missing" in check_artifacts(tmp_path)
    (tmp_path / "trainer_log.jsonl").write_text('{"current_steps": 1}\nnot json\n')
    assert any(
        p.endswith("trainer_log.jsonl:2: not JSON: Expecting value: line 1 column 1 (char 0)")
        for p in check_artifacts(tmp_path)
    )


def test_trainer_log_and_loss_curve(tmp_path: Path) -> None:
    _write_log(
        tmp_path / "log.jsonl",
        [
            {"current_steps": 5, "total_steps": 10, "loss": 2.5},
            {"current_steps": 10, "total_steps": 10, "loss": 1.5, "eval_loss": 1.7},
            {"current_steps": 10, "total_steps": 10},
        ],
    )
    assert loss_curve(read_trainer_log(tmp_path / "log.jsonl")) == [[5, 2.5], [10, 1.5]]


def test_latest_complete_checkpoint_skips_partial_saves(tmp_path: Path) -> None:
    assert latest_complete_checkpoint(tmp_path) is None
    for step, complete in ((4, True), (8, True), (12, False)):
        d = tmp_path / f"checkpoint-{step}"
        d.mkdir()
        (d / "adapter_model.safetensors").write_bytes(b"x")
        if complete:
            (d / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    (tmp_path / "checkpoint-16").mkdir()  # killed before anything was written
    assert latest_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-8"


def test_resolve_base_model_local_dir_and_bad_names(tiny_model_dir: Path, tmp_path: Path) -> None:
    assert resolve_base_model(str(tiny_model_dir), tmp_path) == tiny_model_dir
    with pytest.raises(BaseModelUnavailable, match="no such local directory"):
        resolve_base_model(str(tmp_path / "absent"), tmp_path)
    with pytest.raises(BaseModelUnavailable, match="not a ModelScope id"):
        resolve_base_model("not an id", tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(BaseModelUnavailable, match="a directory without config.json"):
        resolve_base_model(str(tmp_path / "empty"), tmp_path)
    with pytest.raises(BaseModelUnavailable, match="the request has no model_cache_dir"):
        resolve_base_model("Qwen/Qwen2.5-0.5B-Instruct", None)


def test_resolve_base_model_without_a_hub_fails_fast_and_clearly(tmp_path: Path) -> None:
    """No hub is reachable here: the error names the id and the cache dir, within seconds, and is not
    an input error (the hub may answer next time: the task is retried)."""
    cache = tmp_path / "model-cache"
    started = time.monotonic()
    with pytest.raises(BaseModelDownloadFailed) as info:
        resolve_base_model("Qwen/Qwen2.5-0.5B-Instruct", cache, "v1.0.0", connect_timeout_s=3)
    elapsed = time.monotonic() - started
    message = str(info.value)
    assert "'Qwen/Qwen2.5-0.5B-Instruct'" in message and str(cache) in message
    assert "unreachable" in message or "download" in message
    assert elapsed < 15, f"took {elapsed:.1f}s"


def test_nonzero_exit_raises_with_code_and_last_lines(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("stage: sft\ndo_train: true\nmodel_name_or_path: /nonexistent/model\nnot_an_argument: 1\n")
    with pytest.raises(TrainingFailed) as info:
        run_llamafactory(cfg, tmp_path / "lf.log", cwd=tmp_path)
    message = str(info.value)
    assert "llamafactory-cli train exited with 1" in message
    assert "not_an_argument" in message  # LLaMA-Factory's own complaint, from the output tail
    assert "not_an_argument" in (tmp_path / "lf.log").read_text()


# --------------------------------------------------------------------------- real runs


def _retrain_train(
    run_uri: str, env: dict[str, str], *extra: str, timeout: int = 900
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "retrain.cli", "train", "--run-uri", run_uri, *extra],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _keys(client, prefix: str) -> set[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return {o["Key"][len(prefix) :] for page in pages for o in page.get("Contents", [])}


def _get_json(client, key: str):
    return json.loads(client.get_object(Bucket=BUCKET, Key=key)["Body"].read())


def test_train_end_to_end_on_moto(moto_s3, tiny_model_dir: Path, tmp_path: Path) -> None:
    client = moto_s3.client()
    dataset_uri = upload_alpaca_dataset(client, BUCKET, "v-e2e", n_train=EXAMPLES)
    run_uri = put_train_request(
        client,
        BUCKET,
        dataset_uri=dataset_uri,
        dataset_version="v-e2e",
        base_model=str(tiny_model_dir),
        model_cache_dir=str(tmp_path / "cache"),
        llamafactory_overrides={"num_train_epochs": 2.0},
    )
    run_prefix = run_uri.split(f"s3://{BUCKET}/", 1)[1] + "/"
    started = time.monotonic()
    proc = _retrain_train(run_uri, moto_s3.env())
    elapsed = time.monotonic() - started
    print(f"retrain train (tiny model, {EXAMPLES} examples, 2 epochs) took {elapsed:.1f}s wall")
    assert proc.returncode == 0, proc.stderr[-4000:]

    keys = _keys(client, run_prefix)
    result = _get_json(client, run_prefix + "train_result.json")
    digest = result["adapter_digest"]
    # the adapter is published once at its content address, outside the run folder
    assert result["adapter_uri"] == f"s3://{BUCKET}/adapters/{digest}/"
    assert {"adapter_config.json", "adapter_model.safetensors"} <= _keys(client, f"adapters/{digest}/")
    assert not any(k.startswith("adapter/") for k in keys)
    for name in (
        "trainer_log.jsonl",
        "training_loss.png",
        "all_results.json",
        "train_config.yaml",
        "versions.json",
        "llamafactory.log",
    ):
        assert f"train/{name}" in keys, name
    assert not any(k.startswith("checkpoints/") for k in keys)  # kept only for failed attempts

    assert json.loads(proc.stdout) == result
    request = _get_json(client, run_prefix + "train_request.json")
    assert result["status"] == "succeeded"
    assert result["steps"] == 2 * STEPS_PER_EPOCH
    assert result["epochs"] == pytest.approx(2.0)
    assert result["dataset_version"] == "v-e2e"
    assert result["config_hash"] == config_hash(request["llamafactory"], str(tiny_model_dir))
    assert result["train_loss"] > 0 and result["runtime_s"] > 0
    assert result["resumed_from"] is None
    curve = result["loss_curve"]
    assert [s for s, _ in curve] == list(range(5, 2 * STEPS_PER_EPOCH + 1, 5))
    assert all(loss > 0 for _, loss in curve)

    trainer_log = client.get_object(Bucket=BUCKET, Key=run_prefix + "train/trainer_log.jsonl")["Body"].read()
    assert json.loads(trainer_log.splitlines()[-1])["current_steps"] == 2 * STEPS_PER_EPOCH
    used = yaml.safe_load(
        client.get_object(Bucket=BUCKET, Key=run_prefix + "train/train_config.yaml")["Body"].read()
    )
    assert used["model_name_or_path"] == str(tiny_model_dir) and used["num_train_epochs"] == 2.0
    versions = _get_json(client, run_prefix + "train/versions.json")
    assert versions["llamafactory"] == "0.9.5" and versions["torch"].startswith("2.13.0")

    # The uploaded adapter loads onto the base model and is actually trained (lora_B moved from 0).
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        client.download_file(BUCKET, f"adapters/{digest}/{name}", str(adapter / name))
    assert adapter_digest(adapter) == digest
    verify_adapter_loads(adapter, tiny_model_dir)
    from safetensors.torch import load_file

    weights = load_file(str(adapter / "adapter_model.safetensors"))
    lora_b = [t for k, t in weights.items() if "lora_B" in k]
    assert lora_b and any(float(t.abs().max()) > 0 for t in lora_b)


def test_a_night_shorter_than_logging_steps_trains_without_a_loss_plot(
    moto_s3, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """A warm-start night with little new data can end before the first logged step: LLaMA-Factory then
    logs no loss and draws no training_loss.png ("No metric loss to plot"). The adapter is good: the
    run succeeds, with an empty loss curve, instead of failing on the missing plot."""
    client = moto_s3.client()
    dataset_uri = upload_alpaca_dataset(client, BUCKET, "v-short", n_train=EXAMPLES)
    total = STEPS_PER_EPOCH
    run_uri = put_train_request(
        client,
        BUCKET,
        dataset_uri=dataset_uri,
        dataset_version="v-short",
        base_model=str(tiny_model_dir),
        model_cache_dir=str(tmp_path / "cache"),
        llamafactory_overrides={"num_train_epochs": 1.0, "logging_steps": total + 1, "plot_loss": True},
    )
    proc = _retrain_train(run_uri, moto_s3.env())
    assert proc.returncode == 0, proc.stderr[-4000:]
    run_prefix = run_uri.split(f"s3://{BUCKET}/", 1)[1] + "/"
    result = _get_json(client, run_prefix + "train_result.json")
    assert result["status"] == "succeeded" and result["steps"] == total
    assert result["loss_curve"] == []
    assert "train/training_loss.png" not in _keys(client, run_prefix)


def test_missing_dataset_fails_with_a_clear_message(moto_s3, tiny_model_dir: Path, tmp_path: Path) -> None:
    client = moto_s3.client()
    missing = f"s3://{BUCKET}/datasets/does-not-exist/"
    run_uri = put_train_request(
        client,
        BUCKET,
        dataset_uri=missing,
        dataset_version="does-not-exist",
        base_model=str(tiny_model_dir),
        model_cache_dir=str(tmp_path),
    )
    proc = _retrain_train(run_uri, moto_s3.env(), timeout=300)
    assert proc.returncode == 65  # an input error (retrain.errors.INPUT_ERROR_EXIT): not retried
    assert f"TrainInputError: dataset {missing}: no objects there" in proc.stderr
    run_prefix = run_uri.split(f"s3://{BUCKET}/", 1)[1] + "/"
    assert "train_result.json" not in _keys(client, run_prefix)


def test_missing_request_fails_with_a_clear_message(moto_s3) -> None:
    proc = _retrain_train(f"s3://{BUCKET}/runs/never-requested", moto_s3.env(), timeout=300)
    assert proc.returncode != 0
    assert (
        f"invalid train request: s3://{BUCKET}/runs/never-requested/train_request.json is missing"
        in proc.stderr
    )


def _start_and_interrupt(run_uri: str, env: dict[str, str], workdir: Path, how: str) -> tuple[int, str, list]:
    """Run `retrain train` until a complete checkpoint-8 exists, then interrupt it: ``sigkill-trainer``
    kills llamafactory-cli (an OOM kill), ``sigterm-retrain`` sends SIGTERM to `retrain train`
    itself (a task timeout, ``docker stop``). Returns (exit code, stderr, the trainer processes)."""
    import psutil

    cmd = [sys.executable, "-m", "retrain.cli", "train", "--run-uri", run_uri, "--workdir", str(workdir)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 600
        while True:
            out = workdir / "output"
            ckpt = latest_complete_checkpoint(out) if out.is_dir() else None
            if ckpt is not None and int(ckpt.name.split("-")[1]) >= 8:
                break
            assert proc.poll() is None, "ended before it could be interrupted: " + proc.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint-8 within 10 minutes"
            time.sleep(0.2)
        trainers = [
            p
            for p in psutil.Process(proc.pid).children(recursive=True)
            if any("llamafactory-cli" in part for part in p.cmdline())
        ]
        assert trainers, "llamafactory-cli subprocess not found"
        if how == "sigkill-trainer":
            for p in trainers:
                p.kill()
        else:
            proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, err, trainers


def _kept_checkpoint(client, run_prefix: str, dataset_version: str, total: int) -> tuple[str, int]:
    hashes = _get_json(client, run_prefix + "checkpoints/hashes.json")
    kept = hashes["checkpoint"]
    kept_step = int(kept.split("-")[1])
    assert 8 <= kept_step < total
    assert hashes["dataset_version"] == dataset_version
    keys = _keys(client, run_prefix)
    assert f"checkpoints/{kept}/trainer_state.json" in keys
    assert f"checkpoints/{kept}/optimizer.pt" in keys
    assert {k.split("/")[1] for k in keys if k.startswith("checkpoints/checkpoint-")} == {kept}
    assert "train_result.json" not in keys
    return kept, kept_step


def _resumable_request(client, model_dir: Path, tmp_path: Path, version: str, epochs: int) -> tuple[str, str]:
    dataset_uri = upload_alpaca_dataset(client, BUCKET, version, n_train=EXAMPLES)
    run_uri = put_train_request(
        client,
        BUCKET,
        dataset_uri=dataset_uri,
        dataset_version=version,
        base_model=str(model_dir),
        model_cache_dir=str(tmp_path / "cache"),
        llamafactory_overrides={"num_train_epochs": float(epochs), "save_steps": 4},
    )
    return run_uri, run_uri.split(f"s3://{BUCKET}/", 1)[1] + "/"


def test_sigterm_stops_the_trainer_and_keeps_its_checkpoint(
    moto_s3, tiny_model_dir: Path, tmp_path: Path
) -> None:
    client = moto_s3.client()
    total = 4 * STEPS_PER_EPOCH
    run_uri, run_prefix = _resumable_request(client, tiny_model_dir, tmp_path, "v-sigterm", epochs=4)
    code, err, trainers = _start_and_interrupt(run_uri, moto_s3.env(), tmp_path / "work", "sigterm-retrain")
    assert code == 1
    assert "TrainingInterrupted: received SIGTERM while llamafactory-cli train was running" in err
    assert not any(p.is_running() and p.status() != "zombie" for p in trainers)  # not left running
    _kept_checkpoint(client, run_prefix, "v-sigterm", total)
    assert "train/llamafactory.log" in _keys(client, run_prefix)


def test_killed_attempt_resumes_from_its_checkpoint(moto_s3, tiny_model_dir: Path, tmp_path: Path) -> None:
    """Attempt 1's trainer is killed (SIGKILL, like the OOM killer) after saving checkpoints; its
    latest complete checkpoint goes to S3; attempt 2 of the same run resumes from it and finishes."""
    client = moto_s3.client()
    total = 4 * STEPS_PER_EPOCH
    run_uri, run_prefix = _resumable_request(client, tiny_model_dir, tmp_path, "v-resume", epochs=4)
    code, err, _ = _start_and_interrupt(run_uri, moto_s3.env(), tmp_path / "attempt1", "sigkill-trainer")
    assert code == 1
    assert "llamafactory-cli train exited with -9 (killed by SIGKILL)" in err
    kept, kept_step = _kept_checkpoint(client, run_prefix, "v-resume", total)

    proc = _retrain_train(run_uri, moto_s3.env())
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert f"resuming from {kept}" in proc.stderr
    result = _get_json(client, run_prefix + "train_result.json")
    assert result["resumed_from"] == kept
    assert result["steps"] == total
    log_entries = [
        json.loads(line)
        for line in client.get_object(Bucket=BUCKET, Key=run_prefix + "train/trainer_log.jsonl")["Body"]
        .read()
        .splitlines()
    ]
    assert log_entries[0]["current_steps"] > kept_step  # the resumed attempt did not redo steps
    assert log_entries[-1]["current_steps"] == total
    assert not any(k.startswith("checkpoints/") for k in _keys(client, run_prefix))  # freed once committed
