# ruff: noqa: F811  (pytest fixtures imported from tests.fixtures_trainer are used as arguments)
"""The train stage with the platform's selection: the night's file is trained whole (no max_samples),
a warm start continues the parent adapter (digest checked), and the tokenized dataset is cached by
key: a re-run reuses it, a changed key tokenizes again. Real LLaMA-Factory runs on the tiny model."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import uuid
from pathlib import Path

import pytest
import yaml

pytest.importorskip("llamafactory")

from retrain import runs, tokenized_cache  # noqa: E402
from retrain.config import load_settings  # noqa: E402
from retrain.storage import ObjectStore  # noqa: E402
from retrain.train import TrainInputError, run_training  # noqa: E402
from tests.fixtures_trainer import (  # noqa: E402,F401
    BUCKET,
    make_alpaca_examples,
    moto_s3,
    tiny_model_dir,
    upload_alpaca_dataset,
)

pytestmark = pytest.mark.trainer

NIGHT = 40  # 5 steps per epoch at the cpu_tiny batch size 8: one logged loss per epoch


def test_data_arguments_are_llamafactorys() -> None:
    """The cache key holds every LLaMA-Factory data argument: an upgrade that adds one fails here."""
    from llamafactory.hparams import DataArguments

    assert set(tokenized_cache.DATA_ARGUMENTS) == {f.name for f in dataclasses.fields(DataArguments)}


def _request(
    store: ObjectStore,
    model_dir: Path,
    cache: Path,
    *,
    parent: runs.ParentAdapter | None = None,
    overrides: dict | None = None,
    run_id: str | None = None,
) -> str:
    """A run folder with a train request and its selection (the night's file); returns its prefix."""
    version = "v-warm"
    dataset_uri = upload_alpaca_dataset(store.client, BUCKET, version, n_train=60)
    run = runs.RunFolder.for_run(BUCKET, "runs", run_id or f"warm-{uuid.uuid4().hex[:8]}")
    body = json.dumps(make_alpaca_examples(NIGHT, seed=5), ensure_ascii=False).encode("utf-8")
    store.put_bytes(run.key(runs.TRAIN_DATA), body)
    selection = runs.TrainSelection(
        mode="warm_start" if parent else "full",
        requested_mode="warm_start" if parent else "full",
        parent=parent,
        train_uri=run.file_uri(runs.TRAIN_DATA),
        train_sha256=hashlib.sha256(body).hexdigest(),
        available=60,
        new=NIGHT,
        old=20,
        replayed=0,
        old_left_out=20,
        examples=NIGHT,
        replay_share=0.5,
        replay_seed=1,
    )
    cfg = {**load_settings().llamafactory_config("cpu_tiny"), "num_train_epochs": 2.0, **(overrides or {})}
    request = runs.TrainRequest(
        run_id=run.prefix.rsplit("/", 1)[-1],
        adapter_store_uri=f"s3://{BUCKET}/adapters/",
        dataset_uri=dataset_uri,
        dataset_version=version,
        base_model=str(model_dir),
        model_cache_dir=str(cache),
        llamafactory=cfg,
        selection=selection,
    )
    runs.write(store, run.key(runs.TRAIN_REQUEST), request)
    return run.prefix


def _text(store: ObjectStore, key: str) -> str:
    return store.get_bytes(key).decode("utf-8")


def test_rerun_reuses_the_tokenized_dataset_and_a_changed_key_does_not(
    moto_s3, tiny_model_dir: Path, tmp_path: Path
) -> None:
    store = ObjectStore(moto_s3.client(), BUCKET)
    cache = tmp_path / "cache"
    prefix = _request(store, tiny_model_dir, cache)
    first = run_training(store, prefix, tmp_path / "w1")
    assert first.tokenized_cache == "miss" and first.tokenized_key
    assert tokenized_cache.is_complete(cache / "tokenized" / first.tokenized_key)
    assert first.train_tokens and first.train_tokens > NIGHT * 2 * 10  # 2 epochs of 40 examples
    used = yaml.safe_load(_text(store, f"{prefix}/train/train_config.yaml"))
    assert used["dataset"] == "alpaca_clue_night" and "max_samples" not in used
    assert used["tokenized_path"].startswith(str(cache / "tokenized" / first.tokenized_key) + ".partial-")
    assert first.steps == 2 * NIGHT // 8  # the whole night's file was trained

    again = run_training(store, prefix, tmp_path / "w2")  # a re-run of the same request
    assert (again.tokenized_cache, again.tokenized_key) == ("hit", first.tokenized_key)
    assert "Loaded tokenized dataset from" in _text(store, f"{prefix}/train/llamafactory.log")
    assert again.steps == first.steps and again.train_tokens == first.train_tokens

    changed = run_training(
        store, _request(store, tiny_model_dir, cache, overrides={"cutoff_len": 64}), tmp_path / "w3"
    )
    assert changed.tokenized_cache == "miss" and changed.tokenized_key != first.tokenized_key
    assert changed.train_tokens is not None and changed.train_tokens < first.train_tokens  # cut at 64


def test_warm_start_continues_the_parent_adapter(moto_s3, tiny_model_dir: Path, tmp_path: Path) -> None:
    store = ObjectStore(moto_s3.client(), BUCKET)
    cache = tmp_path / "cache"
    base_prefix = _request(store, tiny_model_dir, cache, overrides={"num_train_epochs": 4.0})
    base = run_training(store, base_prefix, tmp_path / "w1")
    parent = runs.ParentAdapter(
        version="1",
        adapter_uri=base.adapter_uri,
        adapter_digest=base.adapter_digest,
        dataset_version="v-warm",
        run_uri=f"s3://{BUCKET}/{base_prefix}",
    )
    prefix = _request(store, tiny_model_dir, cache, parent=parent, overrides={"num_train_epochs": 1.0})
    warm = run_training(store, prefix, tmp_path / "w2")
    assert warm.mode == "warm_start" and warm.parent_version == "1"
    assert warm.adapter_digest != base.adapter_digest
    used = yaml.safe_load(_text(store, f"{prefix}/train/train_config.yaml"))
    assert used["adapter_name_or_path"] == str(tmp_path / "w2" / "parent_adapter")
    # it continues the trained adapter: its first loss is the parent's last, not a fresh start's first
    assert warm.loss_curve[0][1] < base.loss_curve[0][1] * 0.8, (warm.loss_curve, base.loss_curve)
    assert warm.tokenized_cache == "hit"  # same night's file, same data arguments

    tampered = parent.model_copy(update={"adapter_digest": "0" * 64})
    bad = _request(store, tiny_model_dir, cache, parent=tampered)
    with pytest.raises(TrainInputError, match="warm start from v1: .*refusing to use it"):
        run_training(store, bad, tmp_path / "w3")


def test_max_samples_in_the_profile_is_refused(moto_s3, tiny_model_dir: Path, tmp_path: Path) -> None:
    store = ObjectStore(moto_s3.client(), BUCKET)
    prefix = _request(store, tiny_model_dir, tmp_path / "cache", overrides={"max_samples": 10})
    with pytest.raises(TrainInputError, match="max_samples is set.*train.max_samples"):
        run_training(store, prefix, tmp_path / "w")
