"""The tokenized-dataset cache key (`retrain.tokenized_cache`): every data argument, the data files'
content and the tokenizer are in it; paths are not. (A real reuse by LLaMA-Factory is tested in
tests/train/test_warm_start.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from retrain import tokenized_cache
from retrain.config import load_settings


@pytest.fixture
def layout(tmp_path: Path) -> tuple[dict, Path, dict, Path]:
    data, model = tmp_path / "data", tmp_path / "model"
    data.mkdir()
    model.mkdir()
    (data / "night.json").write_text(json.dumps([{"instruction": "i", "input": "a", "output": "[]"}]))
    (data / "validation.json").write_text(json.dumps([{"instruction": "i", "input": "b", "output": "[]"}]))
    (model / "tokenizer.json").write_text('{"vocab": 1}')
    (model / "model.safetensors").write_bytes(b"weights")
    info = {
        "alpaca_clue_night": {"file_name": "night.json"},
        "alpaca_clue_validation": {"file_name": "validation.json"},
    }
    cfg = {**load_settings(environ={}).llamafactory_config("cpu_tiny"), "dataset": "alpaca_clue_night"}
    return cfg, data, info, model


def test_same_inputs_same_key_and_paths_do_not_count(layout, tmp_path: Path) -> None:
    cfg, data, info, model = layout
    key = tokenized_cache.cache_key(cfg, data, info, model)
    assert key == tokenized_cache.cache_key(dict(cfg), data, info, model)
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    for f in data.iterdir():
        (moved / f.name).write_bytes(f.read_bytes())
    relocated = {**cfg, "dataset_dir": str(moved), "tokenized_path": "/x", "output_dir": "/y"}
    assert tokenized_cache.cache_key(relocated, moved, info, model) == key
    # the model's weights do not change tokenization; its tokenizer does
    (model / "model.safetensors").write_bytes(b"other weights")
    assert tokenized_cache.cache_key(cfg, data, info, model) == key


@pytest.mark.parametrize(
    ("arg", "value"),
    [
        ("cutoff_len", 128),
        ("template", "llama3"),
        ("packing", True),
        ("neat_packing", True),
        ("train_on_prompt", True),
        ("max_samples", 10),
        ("val_size", 0.2),
        ("eval_dataset", None),
        ("default_system", "你好"),
        ("mask_history", True),
        ("stage", "pt"),
        ("seed", 7),
    ],
)
def test_every_data_argument_changes_the_key(layout, arg: str, value: object) -> None:
    cfg, data, info, model = layout
    assert cfg.get(arg) != value
    key = tokenized_cache.cache_key(cfg, data, info, model)
    assert tokenized_cache.cache_key({**cfg, arg: value}, data, info, model) != key


def test_data_files_and_tokenizer_change_the_key(layout) -> None:
    cfg, data, info, model = layout
    key = tokenized_cache.cache_key(cfg, data, info, model)
    (data / "validation.json").write_text(json.dumps([]))
    k2 = tokenized_cache.cache_key(cfg, data, info, model)
    (data / "night.json").write_text(json.dumps([]))
    k3 = tokenized_cache.cache_key(cfg, data, info, model)
    (model / "tokenizer.json").write_text('{"vocab": 2}')
    k4 = tokenized_cache.cache_key(cfg, data, info, model)
    columns = {**info, "alpaca_clue_night": {"file_name": "night.json", "columns": {"prompt": "x"}}}
    k5 = tokenized_cache.cache_key(cfg, data, columns, model)
    assert len({key, k2, k3, k4, k5}) == 5


def test_attempt_writes_a_partial_folder_committed_by_rename(tmp_path: Path) -> None:
    cache = tmp_path / "tokenized"
    path, hit = tokenized_cache.attempt_path(cache, "k1")
    assert not hit and path.name.startswith("k1.partial-")
    path.mkdir()
    (path / "dataset_dict.json").write_text('{"splits": ["train"]}')
    # an attempt that died before committing leaves no entry: the next one tokenizes again
    assert tokenized_cache.attempt_path(cache, "k1")[1] is False
    path.mkdir(exist_ok=True)
    (path / "dataset_dict.json").write_text('{"splits": ["train"]}')
    final = tokenized_cache.commit(path, cache, "k1")
    assert final == cache / "k1" and tokenized_cache.is_complete(final) and not path.exists()
    assert tokenized_cache.attempt_path(cache, "k1") == (final, True)
