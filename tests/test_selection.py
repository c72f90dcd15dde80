"""What a night trains on (`retrain.selection`): new data always, old data replayed by label, warm start
from the champion's adapter or a recorded fallback to full; on real dataset versions in moto S3."""

from __future__ import annotations

import hashlib
import json

import pytest

from retrain import runs
from retrain.dataset import build_dataset
from retrain.ingest import find_new_batches, process_batches
from retrain.promote import lineage_tags
from retrain.selection import (
    PlanInputs,
    example_key,
    example_labels,
    llamafactory_overrides,
    plan_training,
    select_examples,
    stratified_sample,
)
from tests.support.synth import make_batch


def _ex(text: str, labels: list[str]) -> dict:
    out = json.dumps([{"label": label, "text": text[:1]} for label in labels], ensure_ascii=False)
    return {"instruction": "找出实体", "input": text, "output": out}


def _pool() -> list[dict]:
    common = [_ex(f"常见{i}", ["name"]) for i in range(90)]
    rare = [_ex("罕见一", ["name", "movie"]), _ex("罕见二", ["movie"])]
    empty = [_ex(f"空{i}", []) for i in range(8)]
    return common + rare + empty


def test_stratified_sample_replays_rare_labels_and_is_deterministic():
    pool = _pool()
    sample, by_label = stratified_sample(pool, 10, seed=7)
    assert len(sample) == 10 and len({example_key(e) for e in sample}) == 10
    # "movie" is in 2 of 100 examples: proportional sampling would expect 0.2 of them, a stratum gets >= 1
    assert any("movie" in example_labels(e) for e in sample)
    assert by_label["movie"] >= 1 and by_label["(none)"] >= 1 and sum(by_label.values()) == 10
    assert stratified_sample(list(reversed(pool)), 10, seed=7)[0] == sample  # order of the pool is irrelevant
    assert stratified_sample(pool, 10, seed=8)[0] != sample
    assert stratified_sample(pool, 500, seed=7)[0] == pool


def test_full_mode_trains_everything_and_a_cap_never_drops_new_data():
    old, new = _pool(), [_ex(f"新{i}", ["game"]) for i in range(30)]
    full = select_examples(old + new, old, mode="full", max_samples=None, replay_share=0.5, seed=1)
    assert (full.new, full.old, full.replayed, len(full.examples)) == (30, 100, 100, 130)
    capped = select_examples(old + new, old, mode="full", max_samples=50, replay_share=0.5, seed=1)
    assert capped.examples[:30] == new and capped.replayed == 20 and capped.new_over_cap == 0
    over = select_examples(old + new, old, mode="full", max_samples=20, replay_share=0.5, seed=1)
    assert over.examples == new and over.new_over_cap == 10 and over.replayed == 0  # all new, counted
    first = select_examples(old + new, None, mode="full", max_samples=None, replay_share=0.5, seed=1)
    assert first.new == 130 and first.old == 0  # no reference: every example is new


def test_warm_start_replays_a_share_of_the_night():
    old, new = _pool(), [_ex(f"新{i}", ["game"]) for i in range(30)]
    warm = select_examples(old + new, old, mode="warm_start", max_samples=None, replay_share=0.5, seed=1)
    assert (warm.new, warm.replayed, len(warm.examples)) == (30, 30, 60)
    third = select_examples(old + new, old, mode="warm_start", max_samples=None, replay_share=0.25, seed=1)
    assert third.replayed == 10
    none = select_examples(old + new, old, mode="warm_start", max_samples=None, replay_share=0.0, seed=1)
    assert none.examples == new


# --------------------------------------------------------------------------- plan_training on S3


def _ingest_and_build(store, settings, key: str, n: int, seed: int) -> runs.DatasetRef:
    lines = make_batch(n, seed=seed)
    store.put_bytes(key, ("\n".join(lines) + "\n").encode("utf-8"))
    process_batches(store, settings, find_new_batches(store, settings).objects, f"r{seed}")
    return runs.DatasetRef.model_validate(build_dataset(store, settings).to_json())


def _champion(store, settings, dataset: runs.DatasetRef, cfg: dict, base_model: str = "/models/tiny") -> dict:
    """A registered champion as `Registry.champion()` returns it, with its run's train request."""
    run = runs.RunFolder.for_run(settings.s3.bucket, settings.s3.runs_prefix, "night-1")
    request = runs.TrainRequest(
        run_id="night-1",
        adapter_store_uri=store.uri("adapters/"),
        dataset_uri=dataset.uri,
        dataset_version=dataset.version,
        base_model=base_model,
        model_cache_dir="/models",
        llamafactory=cfg,
    )
    runs.write(store, run.key(runs.TRAIN_REQUEST), request)
    digest = "a" * 64
    return {
        "version": "1",
        "adapter_uri": store.uri(f"adapters/{digest}/"),
        "adapter_digest": digest,
        "dataset_version": dataset.version,
        "tags": {"run_uri": run.uri, "base_model": base_model},
    }


def _inputs(settings, dataset, champion, cfg, mode="warm_start", base_model="/models/tiny", max_samples=None):
    run = runs.RunFolder.for_run(settings.s3.bucket, settings.s3.runs_prefix, "night-2")
    return PlanInputs(
        run=run,
        dataset=dataset,
        champion=champion,
        base_model=base_model,
        base_model_revision=None,
        llamafactory=cfg,
        mode=mode,
        max_samples=max_samples,
    )


@pytest.fixture
def two_nights(store, settings):
    cfg = settings.llamafactory_config("cpu_tiny")
    v1 = _ingest_and_build(store, settings, "incoming/night1.json", 200, seed=1)
    champion = _champion(store, settings, v1, cfg)
    v2 = _ingest_and_build(store, settings, "incoming/night2.json", 60, seed=2)
    return cfg, v1, v2, champion


def test_warm_start_plan_writes_the_night_and_records_the_parent(store, settings, two_nights):
    cfg, v1, v2, champion = two_nights
    selection = plan_training(store, settings, _inputs(settings, v2, champion, cfg))
    assert selection.mode == "warm_start" and selection.fallback_reason is None
    assert selection.parent is not None and selection.parent.version == "1"
    assert selection.parent.adapter_digest == champion["adapter_digest"]
    assert selection.reference_version == v1.version and selection.available == v2.train
    assert selection.new + selection.old == v2.train and 0 < selection.new < v2.train
    share = settings.train.warm_start.replay_share
    assert selection.replayed == round(selection.new * share / (1 - share))
    assert selection.examples == selection.new + selection.replayed
    assert sum(selection.replay_by_label.values()) == selection.replayed
    body = store.get_bytes(runs.RunFolder.from_uri(selection.train_uri).prefix)
    assert hashlib.sha256(body).hexdigest() == selection.train_sha256
    night = json.loads(body)
    v1_train = {example_key(e) for e in json.loads(store.get_bytes(v1.uri.split("/", 3)[3] + "train.json"))}
    assert sum(example_key(e) not in v1_train for e in night) == selection.new  # every new example
    # the same inputs give the same night (a retry plans the same sample)
    assert (
        plan_training(store, settings, _inputs(settings, v2, champion, cfg)).train_sha256
        == selection.train_sha256
    )
    assert llamafactory_overrides(selection, settings) == {
        "warmup_ratio": settings.train.warm_start.warmup_ratio
    }
    tags = lineage_tags(selection)
    assert tags["train_mode"] == "warm_start" and tags["parent_version"] == "1"
    assert tags["train_replayed"] == str(selection.replayed) and tags["replay_seed"] == str(
        selection.replay_seed
    )
    assert "warm_start_fallback" not in tags


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ("lora_rank", "lora_rank changed"),
        ("lora_target", "lora_target changed"),
        ("base_model", "base model changed"),
        ("prompt", "prompt changed"),
    ],
)
def test_warm_start_falls_back_to_full_with_the_reason(store, settings, two_nights, change, reason):
    cfg, v1, v2, champion = two_nights
    cfg2, base = dict(cfg), "/models/tiny"
    if change == "lora_rank":
        cfg2["lora_rank"] = 16
    elif change == "lora_target":
        cfg2["lora_target"] = "q_proj,v_proj"
    elif change == "base_model":
        base = "/models/other"
    else:
        key = v2.manifest_key
        manifest = json.loads(store.get_bytes(key))
        store.put_bytes(key, json.dumps({**manifest, "prompt_template_hash": "changed"}).encode())
    selection = plan_training(store, settings, _inputs(settings, v2, champion, cfg2, base_model=base))
    assert selection.mode == "full" and selection.requested_mode == "warm_start"
    assert selection.fallback_reason and reason in selection.fallback_reason
    assert selection.parent is None and selection.examples == selection.available == v2.train
    assert lineage_tags(selection)["warm_start_fallback"] == selection.fallback_reason
    assert llamafactory_overrides(selection, settings) == {}


def test_first_model_and_gone_run_folder_fall_back(store, settings, two_nights):
    cfg, _, v2, champion = two_nights
    first = plan_training(store, settings, _inputs(settings, v2, None, cfg))
    assert first.mode == "full" and "first model" in (first.fallback_reason or "")
    store.delete(runs.RunFolder.from_uri(champion["tags"]["run_uri"]).key(runs.TRAIN_REQUEST))
    gone = plan_training(store, settings, _inputs(settings, v2, champion, cfg))
    assert gone.mode == "full" and "unreadable" in (gone.fallback_reason or "")


def test_full_mode_with_a_cap_keeps_every_new_example(store, settings, two_nights):
    cfg, _, v2, champion = two_nights
    capped = plan_training(store, settings, _inputs(settings, v2, champion, cfg, mode="full", max_samples=60))
    assert capped.mode == "full" and capped.fallback_reason is None and capped.parent is None
    assert capped.examples == max(60, capped.new) and capped.replayed == capped.examples - capped.new
    assert capped.old_left_out == capped.old - capped.replayed > 0
    assert "old left out" in capped.describe()
