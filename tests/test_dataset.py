"""Versioned alpaca datasets: stable split, golden never trained on, content-hash versions."""

import json

import pytest

from retrain.dataset import EmptyDatasetError, build_dataset, split_of
from retrain.ingest import find_new_batches, process_batches
from tests.support.synth import make_batch


def _ingest(store, settings, key, lines, run="r"):
    store.put_bytes(key, ("\n".join(lines) + "\n").encode("utf-8"))
    process_batches(store, settings, find_new_batches(store, settings).objects, run)


def test_split_is_stable_and_proportional():
    texts = [f"句子{i}号" for i in range(4000)]
    splits = [split_of(t, "seed", 0.1, 0.1) for t in texts]
    assert splits == [split_of(t, "seed", 0.1, 0.1) for t in texts]
    assert 300 < splits.count("golden") < 500 and 300 < splits.count("validation") < 500
    assert split_of(" 句子1号 ", "seed", 0.1, 0.1) == split_of("句子1号", "seed", 0.1, 0.1)  # normalised


def test_build_is_deterministic_and_alpaca_shaped(store, settings):
    with pytest.raises(EmptyDatasetError):
        build_dataset(store, settings)
    _ingest(store, settings, "incoming/a.json", make_batch(120, seed=7))
    first = build_dataset(store, settings)
    again = build_dataset(store, settings)
    assert first.version == again.version and first.created and not again.created
    prefix = first.uri.split("/", 3)[3]
    train = json.loads(store.get_bytes(prefix + "train.json"))
    info = json.loads(store.get_bytes(prefix + "dataset_info.json"))
    manifest = json.loads(store.get_bytes(prefix + "manifest.json"))
    assert info["alpaca_clue_train"]["file_name"] == "train.json"
    ex = train[0]
    assert set(ex) == {"instruction", "input", "output"}
    assert "name, organization, scene" in ex["instruction"]
    out = json.loads(ex["output"])
    assert all(set(e) == {"label", "text"} and e["text"] in ex["input"] for e in out)
    # canonical order: by position in the text
    assert [ex["input"].index(e["text"]) for e in out] == sorted(ex["input"].index(e["text"]) for e in out)
    assert manifest["counts"]["train"] == first.train and manifest["sources"][0]["key"] == "incoming/a.json"
    assert (
        first.train + first.validation + first.golden + first.duplicates + first.conflicts == 120
        or first.train + first.validation + first.golden <= 120
    )


def test_sentence_never_moves_between_splits_as_data_grows(store, settings):
    _ingest(store, settings, "incoming/a.json", make_batch(80, seed=8), "r1")
    v1 = build_dataset(store, settings)
    _ingest(store, settings, "incoming/b.json", make_batch(80, seed=9), "r2")
    v2 = build_dataset(store, settings)
    assert v1.version != v2.version

    def inputs(res, name):
        return {e["input"] for e in json.loads(store.get_bytes(res.uri.split("/", 3)[3] + name))}

    for name in ("train.json", "validation.json", "golden.json"):
        others = {"train.json", "validation.json", "golden.json"} - {name}
        for other in others:
            assert not (inputs(v1, name) & inputs(v2, other)), (name, other)
    assert not inputs(v2, "golden.json") & inputs(v2, "train.json")


def test_fixed_golden_file_is_removed_from_training(store, settings, tmp_path):
    lines = make_batch(60, seed=10)
    golden = tmp_path / "golden.json"
    golden.write_text("\n".join(lines[:10]) + "\n", encoding="utf-8")
    s = settings.model_copy(
        update={"dataset": settings.dataset.model_copy(update={"golden_file": str(golden)})}
    )
    _ingest(store, s, "incoming/a.json", lines)
    res = build_dataset(store, s)
    assert res.golden == 10 and res.golden_removed_from_train >= 1
    prefix = res.uri.split("/", 3)[3]
    golden_inputs = {e["input"] for e in json.loads(store.get_bytes(prefix + "golden.json"))}
    train_inputs = {e["input"] for e in json.loads(store.get_bytes(prefix + "train.json"))}
    assert not golden_inputs & train_inputs


def test_benchmark_files_are_written_beside_golden_and_never_trained_on(store, settings, tmp_path):
    from retrain.runs import DatasetRef

    lines = make_batch(60, seed=11)
    dev = tmp_path / "team-dev.jsonl"
    dev.write_text("\n".join(lines[:12]) + "\n", encoding="utf-8")
    s = settings.model_copy(
        update={"dataset": settings.dataset.model_copy(update={"benchmark_files": [str(dev)]})}
    )
    _ingest(store, s, "incoming/b.json", lines)
    res = build_dataset(store, s)
    ref = DatasetRef.model_validate(res.to_json())
    [bench] = ref.benchmarks
    assert (bench.name, bench.source, bench.size) == ("team-dev", str(dev), 12)
    assert bench.exam == f"{bench.hash}/12" and ref.exam == f"{ref.golden_hash}/{ref.golden}"
    prefix = res.uri.split("/", 3)[3]
    bench_inputs = {e["input"] for e in json.loads(store.get_bytes(prefix + "benchmark_team-dev.json"))}
    train_inputs = {e["input"] for e in json.loads(store.get_bytes(prefix + "train.json"))}
    valid_inputs = {e["input"] for e in json.loads(store.get_bytes(prefix + "validation.json"))}
    assert len(bench_inputs) == 12 and not bench_inputs & (train_inputs | valid_inputs)
    assert res.benchmark_removed_from_train >= 1
    assert bench.uri == store.uri(prefix + "benchmark_team-dev.json")
    # two files with the same name are refused, naming both
    other = tmp_path / "x"
    other.mkdir()
    (other / "team-dev.jsonl").write_text(lines[20] + "\n", encoding="utf-8")
    twice = s.model_copy(
        update={
            "dataset": s.dataset.model_copy(
                update={"benchmark_files": [str(dev), str(other / "team-dev.jsonl")]}
            )
        }
    )
    with pytest.raises(ValueError, match="same name 'team-dev'"):
        build_dataset(store, twice)


def test_later_correction_wins_and_conflict_is_counted(store, settings):
    line = {"text": "张伟在上海工作。", "label": {"name": {"张伟": [[0, 1]]}}}
    fixed = {"text": "张伟在上海工作。", "label": {"name": {"张伟": [[0, 1]]}, "address": {"上海": [[3, 4]]}}}
    filler = make_batch(40, seed=11)
    _ingest(store, settings, "incoming/a.json", filler + [json.dumps(line, ensure_ascii=False)], "r1")
    _ingest(store, settings, "incoming/b.json", [json.dumps(fixed, ensure_ascii=False)], "r2")
    res = build_dataset(store, settings)
    assert res.conflicts == 1
    prefix = res.uri.split("/", 3)[3]
    everything = []
    for name in ("train.json", "validation.json", "golden.json"):
        everything += json.loads(store.get_bytes(prefix + name))
    target = [e for e in everything if e["input"] == "张伟在上海工作。"]
    assert len(target) == 1 and json.loads(target[0]["output"]) == [
        {"label": "name", "text": "张伟"},
        {"label": "address", "text": "上海"},
    ]
