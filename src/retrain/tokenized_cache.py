"""The tokenized-dataset cache of the train stage (LLaMA-Factory's ``tokenized_path``).

Once ``tokenized_path`` holds a dataset, LLaMA-Factory loads it and ignores every other data argument
("Loading dataset from disk will ignore other data arguments"), so the cache folder's name must hold
all of them: `cache_key` hashes every LLaMA-Factory data argument in the config (`DATA_ARGUMENTS`; a
trainer-env test checks the list against LLaMA-Factory's own DataArguments), the stage, the seed, the
content of every data file trained or evaluated on, the tokenizer's files, and the versions of
LLaMA-Factory and transformers. A retry or re-run with the same key reuses the tokenized data; any
change gives a new key.

LLaMA-Factory writes the folder at the start of training; a crash mid-write would leave a folder it
would later load as complete. So an attempt lets it write ``<key>.partial-<pid>`` and `commit` renames
that to ``<key>`` only after the training succeeded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: LLaMA-Factory 0.9.5's DataArguments fields (tests/train/test_tokenized_cache.py compares).
DATA_ARGUMENTS = (
    "template",
    "dataset",
    "eval_dataset",
    "dataset_dir",
    "media_dir",
    "cutoff_len",
    "train_on_prompt",
    "mask_history",
    "streaming",
    "buffer_size",
    "mix_strategy",
    "interleave_probs",
    "overwrite_cache",
    "preprocessing_batch_size",
    "preprocessing_num_workers",
    "max_samples",
    "eval_num_beams",
    "ignore_pad_token_for_loss",
    "val_size",
    "eval_on_each_dataset",
    "packing",
    "neat_packing",
    "tool_format",
    "default_system",
    "enable_thinking",
    "preserve_thinking",
    "tokenized_path",
    "data_shared_file_system",
)
#: Data arguments that name where things are, not what is tokenized (the files' content is hashed).
PATH_ARGUMENTS = ("dataset_dir", "media_dir", "tokenized_path")
#: Other config keys that change the tokenized dataset (the stage's preprocessing, the split seed).
OTHER_KEYS = ("stage", "seed", "do_train", "do_eval")
#: Files of a model directory that decide tokenization.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "tokenizer.model",
)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def data_files(cfg: dict[str, Any], info: dict[str, Any]) -> dict[str, str]:
    """dataset name -> file name of every dataset the config trains or evaluates on."""
    names: list[str] = []
    for key in ("dataset", "eval_dataset"):
        value = cfg.get(key)
        if isinstance(value, str):
            names += [v.strip() for v in value.split(",") if v.strip()]
        elif value:
            names += [str(v) for v in value]
    return {name: str(info[name]["file_name"]) for name in names}


def cache_key(cfg: dict[str, Any], dataset_dir: Path, info: dict[str, Any], model_dir: Path) -> str:
    """The cache folder's name for this config, these data files and this tokenizer (hex, 24 chars)."""
    args = {k: cfg.get(k) for k in DATA_ARGUMENTS + OTHER_KEYS if k not in PATH_ARGUMENTS}
    files = {name: _sha256(dataset_dir / fname) for name, fname in data_files(cfg, info).items()}
    columns = {name: info[name] for name in files}
    tokenizer = {n: _sha256(model_dir / n) for n in TOKENIZER_FILES if (model_dir / n).is_file()}
    payload = {
        "args": args,
        "files": files,
        "dataset_info": columns,
        "tokenizer": tokenizer,
        "versions": {p: _version(p) for p in ("llamafactory", "transformers", "tokenizers", "datasets")},
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:24]


def is_complete(path: Path) -> bool:
    """A committed cache entry: a folder LLaMA-Factory wrote (datasets' dataset_dict.json inside)."""
    return (path / "dataset_dict.json").is_file()


def attempt_path(cache_dir: Path, key: str) -> tuple[Path, bool]:
    """(the ``tokenized_path`` for this attempt, whether it is a committed entry to reuse)."""
    final = cache_dir / key
    if is_complete(final):
        log.info("tokenized dataset cache hit: %s (no tokenization this attempt)", final)
        return final, True
    cache_dir.mkdir(parents=True, exist_ok=True)
    for stale in cache_dir.glob(f"{key}.partial-*"):  # left by an attempt that died tokenizing
        shutil.rmtree(stale, ignore_errors=True)
    partial = cache_dir / f"{key}.partial-{os.getpid()}"
    log.info("tokenized dataset cache miss: LLaMA-Factory tokenizes into %s", partial)
    return partial, False


def commit(path: Path, cache_dir: Path, key: str) -> Path:
    """Rename an attempt's partial folder to its key after a successful training (no-op on a hit)."""
    final = cache_dir / key
    if path == final or not is_complete(path):
        return final
    if is_complete(final):  # another attempt committed the same key meanwhile: same content
        shutil.rmtree(path, ignore_errors=True)
    else:
        shutil.rmtree(final, ignore_errors=True)
        path.rename(final)
    log.info("tokenized dataset cached at %s", final)
    return final


def train_tokens(path: Path) -> int | None:
    """Tokens of the cached train split (sum of input_ids lengths), or None when unreadable."""
    if not is_complete(path):  # nothing was tokenized there (a stand-in trainer, a failed save)
        return None
    try:
        from datasets import load_from_disk

        data = load_from_disk(str(path))
        return int(sum(len(ids) for ids in data["train"]["input_ids"]))
    except Exception:  # a count for the figures only; never fails a training
        log.exception("could not count the tokens of %s", path)
        return None
