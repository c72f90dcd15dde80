"""The train stage (trainer environment): LoRA SFT with LLaMA-Factory for one run.

Input: ``s3://<bucket>/runs/<run id>/train_request.json`` (`retrain.runs.TrainRequest`), written by
the Airflow side: the dataset version, the base model, the merged LLaMA-Factory config and the adapter
store to publish to.

`run_training_from_uri` downloads the request and the dataset version, resolves the base model,
renders the final LLaMA-Factory YAML, runs ``llamafactory-cli train`` as a subprocess and then
decides success from the artifacts, never from the exit code alone: the adapter files must exist
and load with peft onto the base model, and ``trainer_log.jsonl`` must end at the last step.
Outputs (file names: `retrain.runs`)::

    <adapter store>/<digest>/  adapter_config.json, adapter_model.safetensors, written once
                               (`retrain.adapters`: content-addressed, never overwritten)
    runs/<id>/train/           trainer_log.jsonl, training_loss.png, all_results.json,
                               train_config.yaml, versions.json, llamafactory.log
    runs/<id>/checkpoints/     the latest checkpoint of a FAILED attempt + hashes.json (for resume;
                               deleted once the run commits)
    runs/<id>/train_result.json  `retrain.runs.TrainResult`, written last: the run's training committed

Resume: when a previous attempt of the same run failed after saving a checkpoint, and that
checkpoint was made from the same dataset version and config hash, training resumes from it.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from retrain import runs
from retrain.adapters import ADAPTER_FILES, publish_adapter
from retrain.base_models import (  # noqa: F401  (BaseModel* re-exported: callers import them from here)
    BaseModelRefused,
    BaseModelUnavailable,
    resolve_base_model,
)
from retrain.errors import InputError
from retrain.runs import TrainRequest, TrainResult
from retrain.storage import ObjectStore, join_key, parse_s3_uri

log = logging.getLogger(__name__)

#: The trainer log's name in LLaMA-Factory's output directory (and under the run's train/ folder).
TRAINER_LOG = "trainer_log.jsonl"
#: Keys of the LLaMA-Factory config that depend on where this attempt runs, not on what it trains.
RUN_PATH_KEYS = (
    "model_name_or_path",
    "adapter_name_or_path",
    "dataset_dir",
    "output_dir",
    "resume_from_checkpoint",
    "tokenized_path",
)
#: Section order of the rendered YAML (LLaMA-Factory's own grouping); other keys go last.
YAML_SECTIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("model", ("model_name_or_path", "adapter_name_or_path", "trust_remote_code", "cache_dir")),
    (
        "method",
        (
            "stage",
            "do_train",
            "finetuning_type",
            "flash_attn",
            "lora_rank",
            "lora_alpha",
            "lora_dropout",
            "lora_target",
            "deepspeed",
        ),
    ),
    (
        "dataset",
        (
            "dataset_dir",
            "dataset",
            "eval_dataset",
            "template",
            "cutoff_len",
            "tokenized_path",
            "overwrite_cache",
            "preprocessing_num_workers",
            "dataloader_num_workers",
        ),
    ),
    (
        "output",
        (
            "output_dir",
            "logging_steps",
            "save_steps",
            "save_total_limit",
            "plot_loss",
            "overwrite_output_dir",
            "save_only_model",
            "report_to",
        ),
    ),
    (
        "train",
        (
            "per_device_train_batch_size",
            "gradient_accumulation_steps",
            "learning_rate",
            "num_train_epochs",
            "max_steps",
            "lr_scheduler_type",
            "warmup_ratio",
            "warmup_steps",
            "bf16",
            "fp16",
            "ddp_timeout",
            "seed",
            "resume_from_checkpoint",
        ),
    ),
    ("eval", ("val_size", "per_device_eval_batch_size", "eval_strategy", "eval_steps")),
)
VERSION_PACKAGES = (
    "torch",
    "transformers",
    "peft",
    "llamafactory",
    "accelerate",
    "datasets",
    "trl",
    "tokenizers",
    "modelscope",
)
#: Above this many bytes of base-model weights, the adapter check builds the base model on the
#: meta device (structure and shapes only) instead of loading every weight into memory.
FULL_LOAD_MAX_BYTES = 2 * 1024**3


class TrainingFailed(RuntimeError):
    """The train stage did not produce a committed, usable adapter; the message says why."""


class TrainingInterrupted(TrainingFailed):
    """This process was told to stop (SIGTERM, e.g. a task timeout or ``docker stop``) mid-training."""


class TrainInputError(InputError, TrainingFailed):
    """The request, the dataset or the base model is missing or invalid: retrying will not help."""


@dataclass(frozen=True)
class TrainArtifacts:
    """What one finished LLaMA-Factory run left in its output directory, parsed."""

    steps: int
    total_steps: int
    epochs: float | None
    train_loss: float | None
    runtime_s: float | None
    loss_curve: list[list[float]]


# --------------------------------------------------------------------------- pure helpers


def config_hash(cfg: Mapping[str, Any], base_model: str = "", inputs: Mapping[str, Any] | None = None) -> str:
    """A short stable hash of what is trained: the LLaMA-Factory config without the per-attempt
    paths (`RUN_PATH_KEYS`), plus the base model's name and ``inputs`` (the night's file and parent
    adapter digest, when given). Same inputs, same hash, on any machine."""
    stable = {k: v for k, v in cfg.items() if k not in RUN_PATH_KEYS}
    body: dict[str, Any] = {"base_model": base_model, "llamafactory": stable}
    if inputs:
        body["inputs"] = dict(inputs)
    payload = json.dumps(body, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def render_llamafactory_yaml(
    cfg: Mapping[str, Any],
    *,
    model_name_or_path: str | None = None,
    dataset_dir: str | None = None,
    output_dir: str | None = None,
    dataset: str | None = None,
    resume_from_checkpoint: str | None = None,
    header: str | None = None,
) -> str:
    """The LLaMA-Factory YAML for ``cfg`` with the run's paths filled in, grouped like
    LLaMA-Factory's examples (``### model``, ``### method``, …; unknown keys under ``### other``).

    Keyword arguments that are not None override the matching keys. The text loads back to
    exactly the merged mapping (checked).
    """
    merged: dict[str, Any] = dict(cfg)
    overrides = {
        "model_name_or_path": model_name_or_path,
        "dataset_dir": dataset_dir,
        "output_dir": output_dir,
        "dataset": dataset,
        "resume_from_checkpoint": resume_from_checkpoint,
    }
    merged.update({k: v for k, v in overrides.items() if v is not None})
    lines: list[str] = []
    if header:
        lines += [f"# {h}".rstrip() for h in header.splitlines()]
    placed: set[str] = set()
    for section, keys in YAML_SECTIONS:
        present = [k for k in keys if k in merged]
        if not present:
            continue
        lines.append(f"### {section}")
        lines += [_yaml_line(k, merged[k]) for k in present]
        lines.append("")
        placed.update(present)
    rest = sorted(k for k in merged if k not in placed)
    if rest:
        lines.append("### other")
        lines += [_yaml_line(k, merged[k]) for k in rest]
        lines.append("")
    text = "\n".join(lines)
    if yaml.safe_load(text) != merged:  # a rendering bug must never change what is trained
        raise AssertionError("rendered LLaMA-Factory YAML does not load back to the same config")
    return text


def _yaml_line(key: str, value: Any) -> str:
    return yaml.safe_dump(
        {key: value}, allow_unicode=True, default_flow_style=False, sort_keys=False, width=10_000
    ).rstrip("\n")


def read_trainer_log(path: str | Path) -> list[dict[str, Any]]:
    """The entries of LLaMA-Factory's ``trainer_log.jsonl``; ValueError naming the bad line."""
    entries = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{n}: not JSON: {exc}") from exc
        if not isinstance(entry, dict):
            raise ValueError(f"{path}:{n}: expected an object, got {type(entry).__name__}")
        entries.append(entry)
    return entries


def loss_curve(entries: list[dict[str, Any]]) -> list[list[float]]:
    """``[[step, loss], …]`` from trainer-log entries that carry a training loss."""
    return [
        [int(e["current_steps"]), float(e["loss"])]
        for e in entries
        if e.get("loss") is not None and e.get("current_steps") is not None
    ]


def check_artifacts(output_dir: str | Path, base_model: str | Path | None = None) -> list[str]:
    """Problems with a finished run's output directory; an empty list means it is usable.

    Checks: both adapter files exist and are non-empty; adapter_config.json is a PEFT config;
    trainer_log.jsonl exists and its last entry is the last step (``current_steps ==
    total_steps > 0``). With ``base_model``, also that the adapter loads onto that base model
    with peft (`verify_adapter_loads`).
    """
    out = Path(output_dir)
    problems: list[str] = []
    for name in ADAPTER_FILES:
        path = out / name
        if not path.is_file():
            problems.append(f"{name} is missing")
        elif path.stat().st_size == 0:
            problems.append(f"{name} is empty")
    cfg_path = out / "adapter_config.json"
    if cfg_path.is_file() and cfg_path.stat().st_size:
        try:
            adapter_cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
            if not isinstance(adapter_cfg, dict) or "peft_type" not in adapter_cfg:
                problems.append("adapter_config.json has no peft_type")
        except json.JSONDecodeError as exc:
            problems.append(f"adapter_config.json is not JSON: {exc}")
    log_path = out / TRAINER_LOG
    if not log_path.is_file():
        problems.append(f"{TRAINER_LOG} is missing")
    else:
        try:
            entries = read_trainer_log(log_path)
        except ValueError as exc:
            problems.append(str(exc))
            entries = None
        if entries is not None:
            if not entries:
                problems.append(f"{TRAINER_LOG} is empty")
            else:
                last = entries[-1]
                cur, total = last.get("current_steps"), last.get("total_steps")
                if not isinstance(total, int) or total <= 0:
                    problems.append(f"{TRAINER_LOG}: last entry has no positive total_steps: {last}")
                elif cur != total:
                    problems.append(f"{TRAINER_LOG}: training stopped at step {cur} of {total}")
    if base_model is not None and not problems:
        try:
            verify_adapter_loads(out, base_model)
        except Exception as exc:  # any failure to load is a problem to report, not a crash
            problems.append(
                f"adapter does not load onto base model {base_model}: {type(exc).__name__}: {exc}"
            )
    return problems


def read_artifacts(output_dir: str | Path) -> TrainArtifacts:
    """Parse a checked output directory (see `check_artifacts`) into the numbers of the result."""
    out = Path(output_dir)
    entries = read_trainer_log(out / TRAINER_LOG)
    results: dict[str, Any] = {}
    if (out / "all_results.json").is_file():
        results = json.loads((out / "all_results.json").read_text(encoding="utf-8"))
    last = entries[-1]
    epochs = results.get("epoch", last.get("epoch"))
    return TrainArtifacts(
        steps=int(last["current_steps"]),
        total_steps=int(last["total_steps"]),
        epochs=float(epochs) if epochs is not None else None,
        train_loss=float(results["train_loss"]) if results.get("train_loss") is not None else None,
        runtime_s=float(results["train_runtime"]) if results.get("train_runtime") is not None else None,
        loss_curve=loss_curve(entries),
    )


def latest_complete_checkpoint(output_dir: str | Path) -> Path | None:
    """The highest ``checkpoint-N`` under ``output_dir`` that was fully written.

    HF Trainer writes trainer_state.json last; a checkpoint counts when that file parses and says
    ``global_step == N`` and the adapter weights are there (a kill mid-save leaves neither).
    """
    best: tuple[int, Path] | None = None
    for path in Path(output_dir).glob("checkpoint-*"):
        m = re.fullmatch(r"checkpoint-(\d+)", path.name)
        if not m or not path.is_dir():
            continue
        step = int(m.group(1))
        try:
            state = json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if state.get("global_step") != step or not (path / "adapter_model.safetensors").is_file():
            continue
        if best is None or step > best[0]:
            best = (step, path)
    return best[1] if best else None


# --------------------------------------------------------------------------- base model


def verify_adapter_loads(
    adapter_dir: str | Path, base_model: str | Path, *, full_load: bool | None = None
) -> None:
    """Load the adapter onto the base model with peft; raise if any adapter weight does not fit.

    Small base models (weights up to `FULL_LOAD_MAX_BYTES`) are loaded for real and run one
    forward pass. Larger ones are built on the meta device from their config, which checks
    module names and tensor shapes without reading the base weights (``full_load`` forces
    either way).
    """
    import torch
    from peft import PeftConfig, PeftModel
    from peft.auto import MODEL_TYPE_TO_PEFT_MODEL_MAPPING
    from transformers import AutoConfig, AutoModelForCausalLM

    base = Path(base_model)
    if full_load is None:
        size = sum(p.stat().st_size for p in base.glob("*.safetensors")) + sum(
            p.stat().st_size for p in base.glob("*.bin")
        )
        full_load = size <= FULL_LOAD_MAX_BYTES
    if full_load:
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    else:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(base))
    peft_config = PeftConfig.from_pretrained(str(adapter_dir))
    # What PeftModel.from_pretrained does, keeping load_adapter's result (it only warns on misses).
    peft_cls = MODEL_TYPE_TO_PEFT_MODEL_MAPPING.get(peft_config.task_type, PeftModel)
    peft_model = peft_cls(model, peft_config, "default", low_cpu_mem_usage=not full_load)
    result = peft_model.load_adapter(
        str(adapter_dir), adapter_name="default", low_cpu_mem_usage=not full_load
    )
    missing = [k for k in getattr(result, "missing_keys", []) if "lora_" in k]
    unexpected = list(getattr(result, "unexpected_keys", []))
    if missing or unexpected:
        raise ValueError(
            f"adapter weights do not match the base model: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    if full_load:
        with torch.no_grad():
            logits = peft_model(input_ids=torch.tensor([[0, 1, 2, 3]])).logits
        if not torch.isfinite(logits).all():
            raise ValueError("the adapted model produces non-finite logits")


# --------------------------------------------------------------------------- the subprocess


def llamafactory_cli() -> Path:
    """``llamafactory-cli`` of this interpreter's environment (its bin directory, symlinks kept)."""
    path = Path(sys.executable).parent / "llamafactory-cli"
    if path.is_file():
        return path
    found = shutil.which("llamafactory-cli")
    if not found:
        raise TrainingFailed(f"llamafactory-cli not found next to {sys.executable} nor on PATH")
    return Path(found)


def run_llamafactory(
    config_path: str | Path,
    log_path: str | Path,
    *,
    cwd: str | Path,
    tail_lines: int = 40,
    subcommand: str = "train",
) -> None:
    """Run ``llamafactory-cli train CONFIG``, streaming each output line into the log and into
    ``log_path``. A non-zero exit raises `TrainingFailed` with the code and the last lines.

    While it runs (in the main thread), SIGTERM raises `TrainingInterrupted` instead of killing
    this process outright: the trainer is stopped and the caller can still keep its checkpoint.
    """
    cmd = [str(llamafactory_cli()), subcommand, str(config_path)]
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("HF_HUB_OFFLINE", "1")  # the model is a local directory by now: never hit a hub
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    log.info("running: %s", " ".join(cmd))
    tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
    previous_handler = None
    if threading.current_thread() is threading.main_thread():
        previous_handler = signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        with open(log_path, "w", encoding="utf-8") as sink:
            code = _stream(cmd, cwd, env, sink, tail)
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)
    if code != 0:
        how = (
            f"killed by {signal.Signals(-code).name}" if code < 0 and -code in signal.valid_signals() else ""
        )
        last = "\n".join(tail)
        raise TrainingFailed(
            f"llamafactory-cli {subcommand} exited with {code}{f' ({how})' if how else ''}; "
            f"last output lines:\n{last}"
        )


def _raise_interrupted(signum: int, frame: Any) -> None:
    raise TrainingInterrupted(
        f"received {signal.Signals(signum).name} while llamafactory-cli train was running"
    )


def _stream(
    cmd: list[str], cwd: str | Path, env: dict[str, str], sink: Any, tail: collections.deque[str]
) -> int:
    proc = subprocess.Popen(
        cmd,
        cwd=str(cwd),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        encoding="utf-8",
        errors="replace",
        bufsize=1,
    )
    try:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.rstrip("\n")
            sink.write(line + "\n")
            if line.strip():
                tail.append(line)
                log.info("[llamafactory] %s", line)
        return proc.wait()
    except BaseException:  # interrupted (SIGTERM, Ctrl-C): never leave the trainer running
        log.warning("stopping llamafactory-cli (pid %d)", proc.pid)
        _stop(proc)
        raise


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def collect_versions() -> dict[str, str]:
    """Versions of the packages that decide what training does, plus Python's."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for name in VERSION_PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


# --------------------------------------------------------------------------- the stage


def load_train_request(store: ObjectStore, run_prefix: str) -> TrainRequest:
    """Read and validate ``<run_prefix>/train_request.json``."""
    try:
        return runs.read(store, join_key(run_prefix, runs.TRAIN_REQUEST), TrainRequest)
    except runs.ContractError as exc:
        raise TrainInputError(f"invalid train request: {exc}") from exc


def download_dataset(store: ObjectStore, dataset_uri: str, dest: Path) -> dict[str, Any]:
    """Download the dataset version into ``dest``; return its dataset_info.json mapping."""
    bucket, prefix = parse_s3_uri(dataset_uri)
    ds_store = store.for_bucket(bucket)
    files = ds_store.download_prefix(prefix.rstrip("/"), dest)
    if not files:
        raise TrainInputError(
            f"dataset {dataset_uri}: no objects there (expected dataset_info.json and train.json)"
        )
    info_path = dest / "dataset_info.json"
    if not info_path.is_file():
        raise TrainInputError(f"dataset {dataset_uri}: dataset_info.json is missing")
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise TrainInputError(f"dataset {dataset_uri}: dataset_info.json is not JSON: {exc}") from exc
    for name, entry in info.items():
        fname = entry.get("file_name") if isinstance(entry, dict) else None
        if fname and not (dest / fname).is_file():
            raise TrainInputError(
                f"dataset {dataset_uri}: {name} -> {fname} is listed in dataset_info.json but missing"
            )
    return info


def _dataset_names(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value]


def _find_resume_checkpoint(
    store: ObjectStore, run_prefix: str, dest: Path, dataset_version: str, chash: str
) -> Path | None:
    hashes_key = join_key(run_prefix, runs.CHECKPOINT_HASHES)
    if not store.exists(hashes_key):
        log.info(
            "no checkpoint of an earlier attempt under %s: starting fresh",
            store.uri(join_key(run_prefix, runs.CHECKPOINTS_DIR)),
        )
        return None
    saved = store.get_json(hashes_key)
    if saved.get("dataset_version") != dataset_version or saved.get("config_hash") != chash:
        log.info(
            "checkpoint %s was made from dataset %s / config %s, this attempt trains dataset %s / config %s: "
            "starting fresh",
            saved.get("checkpoint"),
            saved.get("dataset_version"),
            saved.get("config_hash"),
            dataset_version,
            chash,
        )
        return None
    name = str(saved.get("checkpoint", ""))
    if not re.fullmatch(r"checkpoint-\d+", name):
        log.warning("hashes.json names no valid checkpoint (%r): starting fresh", name)
        return None
    files = store.download_prefix(join_key(run_prefix, runs.CHECKPOINTS_DIR, name), dest / name)
    if not files or latest_complete_checkpoint(dest) != dest / name:
        log.warning("checkpoint %s is incomplete in S3: starting fresh", name)
        return None
    log.info("resuming from %s of an earlier attempt (dataset %s, config %s)", name, dataset_version, chash)
    return dest / name


def _save_checkpoint_for_resume(
    store: ObjectStore, run_prefix: str, output_dir: Path, dataset_version: str, chash: str
) -> None:
    """Upload the latest complete checkpoint of a failed attempt, then hashes.json pointing at it."""
    ckpt = latest_complete_checkpoint(output_dir)
    if ckpt is None:
        log.info("no complete checkpoint to keep for a resume")
        return
    prefix = join_key(run_prefix, runs.CHECKPOINTS_DIR)
    store.upload_dir(ckpt, join_key(prefix, ckpt.name))
    store.put_json(
        join_key(run_prefix, runs.CHECKPOINT_HASHES),
        {"checkpoint": ckpt.name, "dataset_version": dataset_version, "config_hash": chash},
    )
    for obj in list(store.iter_objects(prefix + "/")):
        rel = obj.key[len(prefix) + 1 :]
        if rel.startswith("checkpoint-") and not rel.startswith(ckpt.name + "/"):
            store.delete(obj.key)
    log.info("kept %s for a resume at %s", ckpt.name, store.uri(join_key(prefix, ckpt.name)))


def _check_dataset_names(cfg: dict[str, Any], info: dict[str, Any], dataset_uri: str) -> str:
    """The ``dataset`` value to train on; every name in dataset/eval_dataset must be in dataset_info."""
    dataset = cfg.get("dataset") or "alpaca_clue_train"
    for key, names in (
        ("dataset", _dataset_names(dataset)),
        ("eval_dataset", _dataset_names(cfg.get("eval_dataset"))),
    ):
        unknown = [n for n in names if n not in info]
        if unknown:
            raise TrainInputError(
                f"llamafactory.{key}: {unknown} not in the dataset_info.json of {dataset_uri} "
                f"(it has {sorted(info)})"
            )
    return dataset if isinstance(dataset, str) else ",".join(dataset)


@dataclass(frozen=True)
class _Attempt:
    """One attempt's local layout and what it trains."""

    request: TrainRequest
    work: Path
    base_path: Path
    config_hash: str
    config_path: Path
    resume: Path | None
    tokenized_path: Path
    tokenized_key: str
    tokenized_hit: bool

    @property
    def output_dir(self) -> Path:
        return self.work / "output"

    @property
    def tokenized_cache_dir(self) -> Path:
        return self.tokenized_path.parent


def _use_selection(
    store: ObjectStore, request: TrainRequest, cfg: dict[str, Any], info: dict[str, Any], dataset_dir: Path
) -> None:
    """Put the night's file the platform chose (`retrain.selection`) into the dataset folder as
    `NIGHT_NAME` and train on it; its SHA-256 must be the one the selection recorded."""
    from retrain.selection import NIGHT_FILE, NIGHT_NAME

    if "max_samples" in cfg:
        raise TrainInputError(
            "llamafactory.max_samples is set: LLaMA-Factory would keep the first rows of the training "
            "file and drop the rest silently; the platform chooses the night's examples (conf "
            "train.max_samples, DAG param max_samples), so remove it from the profile"
        )
    selection = request.selection
    if selection is None:
        return
    bucket, key = parse_s3_uri(selection.train_uri)
    body = store.for_bucket(bucket).get_bytes(key)
    if hashlib.sha256(body).hexdigest() != selection.train_sha256:
        raise TrainInputError(f"{selection.train_uri} does not hash to the selection's train_sha256")
    (dataset_dir / NIGHT_FILE).write_bytes(body)
    train_entry = info.get(str(cfg.get("dataset") or "alpaca_clue_train"), {})
    info[NIGHT_NAME] = {**train_entry, "file_name": NIGHT_FILE}
    (dataset_dir / "dataset_info.json").write_text(json.dumps(info, ensure_ascii=False, indent=1), "utf-8")
    cfg["dataset"] = NIGHT_NAME
    log.info("training on the platform's selection: %s", selection.describe())


def _drop_empty_eval(cfg: dict[str, Any], info: dict[str, Any], dataset_dir: Path) -> None:
    """No eval dataset when its file holds no example (a small history): LLaMA-Factory cannot use one."""
    names = _dataset_names(cfg.get("eval_dataset"))
    empty = [
        n for n in names if n in info and not json.loads((dataset_dir / info[n]["file_name"]).read_bytes())
    ]
    if names and empty:
        log.warning("eval_dataset %s has no examples: training without eval loss", empty)
        cfg.pop("eval_dataset")
        cfg["eval_strategy"] = "no"
        cfg.pop("eval_steps", None)


def _parent_adapter(store: ObjectStore, request: TrainRequest, work: Path) -> Path | None:
    """The warm start's parent adapter, fetched and checked against its registered digest."""
    parent = request.selection.parent if request.selection else None
    if parent is None:
        return None
    from retrain.adapters import AdapterIntegrityError, fetch_adapter

    try:
        path, _ = fetch_adapter(
            store.for_bucket, parent.adapter_uri, work / "parent_adapter", parent.adapter_digest
        )
    except AdapterIntegrityError as exc:
        raise TrainInputError(f"warm start from v{parent.version}: {exc}") from exc
    log.info("warm start: continuing v%s's adapter %s (digest verified)", parent.version, parent.adapter_uri)
    return path


def _tokenized(
    request: TrainRequest, cfg: dict[str, Any], info: dict[str, Any], dirs: tuple[Path, Path]
) -> tuple[Path, str, bool]:
    """(tokenized_path for this attempt, its cache key, whether it is reused) (`retrain.tokenized_cache`)."""
    from retrain import tokenized_cache

    dataset_dir, base_path = dirs
    cache_dir = Path(request.tokenized_cache_dir or Path(request.model_cache_dir) / "tokenized")
    key = tokenized_cache.cache_key(cfg, dataset_dir, info, base_path)
    path, hit = tokenized_cache.attempt_path(cache_dir, key)
    return path, key, hit


def _prepare_attempt(store: ObjectStore, run_prefix: str, request: TrainRequest, work: Path) -> _Attempt:
    """Download the dataset (and the night's selection, the parent adapter), resolve the base model,
    the resume checkpoint and the tokenized cache, render and upload the YAML."""
    dataset_dir, output_dir, resume_dir = work / "dataset", work / "output", work / "resume"
    for d in (dataset_dir, output_dir, resume_dir, work / "parent_adapter"):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    info = download_dataset(store, request.dataset_uri, dataset_dir)
    cfg = dict(request.llamafactory)
    _use_selection(store, request, cfg, info, dataset_dir)
    cfg["dataset"] = _check_dataset_names(cfg, info, request.dataset_uri)
    _drop_empty_eval(cfg, info, dataset_dir)
    # BaseModelRefused / BaseModelUnavailable (retrain.base_models): input errors, raised as they are;
    # BaseModelDownloadFailed (hub unreachable, download failed) is not one: the task is retried
    base_path = resolve_base_model(request.base_model, request.model_cache_dir, request.base_model_revision)
    parent = _parent_adapter(store, request, work)
    selection = request.selection
    inputs = (
        {
            "train_sha256": selection.train_sha256,
            "parent": selection.parent and selection.parent.adapter_digest,
        }
        if selection
        else None
    )
    chash = config_hash(cfg, request.base_model, inputs)
    tok_path, tok_key, tok_hit = _tokenized(request, cfg, info, (dataset_dir, base_path))
    if parent is not None:
        cfg["adapter_name_or_path"] = str(parent)
    cfg["tokenized_path"] = str(tok_path)
    resume = _find_resume_checkpoint(store, run_prefix, resume_dir, request.dataset_version, chash)
    yaml_text = render_llamafactory_yaml(
        cfg,
        model_name_or_path=str(base_path),
        dataset_dir=str(dataset_dir),
        output_dir=str(output_dir),
        resume_from_checkpoint=str(resume) if resume else None,
        header=(
            f"run {request.run_id}: dataset {request.dataset_version}, base model {request.base_model}, "
            f"config hash {chash}, tokenized cache {tok_key} ({'hit' if tok_hit else 'miss'})"
            f"\nrendered by retrain.train"
        ),
    )
    config_path = work / "train_config.yaml"
    config_path.write_text(yaml_text, encoding="utf-8")
    train_prefix = join_key(run_prefix, runs.TRAIN_DIR)
    store.put_bytes(
        join_key(train_prefix, "train_config.yaml"), yaml_text.encode("utf-8"), "application/yaml"
    )
    store.put_json(join_key(train_prefix, "versions.json"), collect_versions())
    return _Attempt(request, work, base_path, chash, config_path, resume, tok_path, tok_key, tok_hit)


def _train_and_check(store: ObjectStore, run_prefix: str, attempt: _Attempt) -> float:
    """Run LLaMA-Factory and check its output; on failure keep the newest checkpoint for a resume.
    Returns the wall seconds of the training."""
    lf_log = attempt.work / "llamafactory.log"
    started = time.monotonic()
    try:
        try:
            run_llamafactory(attempt.config_path, lf_log, cwd=attempt.work)
        finally:
            if lf_log.is_file():
                store.upload_file(lf_log, join_key(run_prefix, runs.TRAIN_DIR, "llamafactory.log"))
        out = attempt.output_dir
        problems = check_artifacts(out, attempt.base_path)
        required = ["all_results.json"] + (["training_loss.png"] if _expects_plot(attempt) else [])
        problems += [f"{name} is missing" for name in required if not (out / name).is_file()]
        if problems:
            raise TrainingFailed(
                "llamafactory-cli train exited 0 but its output is not a usable adapter: "
                + "; ".join(problems)
            )
        from retrain import tokenized_cache

        tokenized_cache.commit(attempt.tokenized_path, attempt.tokenized_cache_dir, attempt.tokenized_key)
    except TrainingFailed:
        try:
            _save_checkpoint_for_resume(
                store, run_prefix, attempt.output_dir, attempt.request.dataset_version, attempt.config_hash
            )
        except Exception:  # keeping a checkpoint is best effort; the training error is what matters
            log.exception("could not keep the checkpoint of the failed attempt")
        raise
    return time.monotonic() - started


def _expects_plot(attempt: _Attempt) -> bool:
    """Whether LLaMA-Factory must have drawn training_loss.png: ``plot_loss`` is on and the trainer
    log holds a training loss. A run shorter than ``logging_steps`` (a warm-start night with little
    new data) logs none, and LLaMA-Factory then skips the plot ("No metric loss to plot"): that is
    not a failed training."""
    if not attempt.request.llamafactory.get("plot_loss"):
        return False
    log_path = attempt.output_dir / TRAINER_LOG
    return log_path.is_file() and bool(loss_curve(read_trainer_log(log_path)))


def _trained_tokens(attempt: _Attempt, epochs: float | None) -> int | None:
    """Tokens trained: the tokenized train split's tokens times the epochs trained."""
    from retrain import tokenized_cache

    per_epoch = tokenized_cache.train_tokens(attempt.tokenized_cache_dir / attempt.tokenized_key)
    return round(per_epoch * epochs) if per_epoch is not None and epochs else per_epoch


def _commit(store: ObjectStore, run_prefix: str, attempt: _Attempt, wall_s: float) -> TrainResult:
    """Publish the adapter (content-addressed), upload the logs, then write train_result.json last."""
    out, request = attempt.output_dir, attempt.request
    arts = read_artifacts(out)
    a_bucket, a_prefix = parse_s3_uri(request.adapter_store_uri)
    a_store = store.for_bucket(a_bucket)
    uri, digest = publish_adapter(a_store, a_prefix, out)
    train_prefix = join_key(run_prefix, runs.TRAIN_DIR)
    for name in (TRAINER_LOG, "all_results.json", "training_loss.png"):
        if (out / name).is_file():
            store.upload_file(out / name, join_key(train_prefix, name))
    result = TrainResult(
        status="succeeded",
        run_id=request.run_id,
        adapter_uri=uri,
        adapter_digest=digest,
        base_model=request.base_model,
        dataset_version=request.dataset_version,
        config_hash=attempt.config_hash,
        train_loss=arts.train_loss,
        steps=arts.steps,
        epochs=arts.epochs,
        runtime_s=arts.runtime_s,  # LLaMA-Factory's train_runtime (of this attempt, if resumed)
        wall_s=round(wall_s, 3),
        resumed_from=attempt.resume.name if attempt.resume else None,
        loss_curve=arts.loss_curve,
        # set by the Docker launcher: tag@sha256 id of the image this ran in (None outside a container)
        trainer_image=os.environ.get("RETRAIN_TRAINER_IMAGE") or None,
        mode=request.selection.mode if request.selection else "full",
        parent_version=request.selection.parent.version
        if request.selection and request.selection.parent
        else None,
        tokenized_key=attempt.tokenized_key,
        tokenized_cache="hit" if attempt.tokenized_hit else "miss",
        train_tokens=_trained_tokens(attempt, arts.epochs),
    )
    runs.write(store, join_key(run_prefix, runs.TRAIN_RESULT), result)  # last: the commit point
    if attempt.resume is not None or store.exists(join_key(run_prefix, runs.CHECKPOINT_HASHES)):
        # committed: a failed attempt's checkpoint can never be resumed again; free its space
        try:
            store.delete_prefix(join_key(run_prefix, runs.CHECKPOINTS_DIR) + "/")
        except Exception:  # the run is committed; a leftover checkpoint only costs storage
            log.exception("could not delete the checkpoints of earlier attempts")
    return result


def run_training(store: ObjectStore, run_prefix: str, workdir: str | Path) -> TrainResult:
    """Train one run whose request lies at ``<run_prefix>/train_request.json`` in ``store``'s
    bucket, using ``workdir`` for local files. Returns what train_result.json holds."""
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    request = load_train_request(store, run_prefix)
    log.info(
        "run %s: dataset %s (%s), base model %s",
        request.run_id,
        request.dataset_version,
        request.dataset_uri,
        request.base_model,
    )
    result_key = join_key(run_prefix, runs.TRAIN_RESULT)
    if store.exists(result_key):  # a re-run: un-commit first, so no reader pairs old result + new files
        log.warning(
            "%s exists from an earlier attempt: deleting it before training again", store.uri(result_key)
        )
        store.delete(result_key)
    attempt = _prepare_attempt(store, run_prefix, request, work)
    wall_s = _train_and_check(store, run_prefix, attempt)
    result = _commit(store, run_prefix, attempt, wall_s)
    log.info(
        "run %s trained: %d steps, %.2f epochs, loss %s, %.1f s; adapter %s; committed %s",
        request.run_id,
        result.steps,
        result.epochs or 0.0,
        result.train_loss,
        wall_s,
        result.adapter_uri,
        store.uri(result_key),
    )
    return result


def run_training_from_uri(run_uri: str, workdir: str | Path | None = None) -> TrainResult:
    """`run_training` for ``s3://bucket/runs/<run id>``, with the S3 client from the AWS_* environment.

    Without ``workdir`` a temporary directory is used and removed afterwards (the LLaMA-Factory
    log is uploaded to ``train/llamafactory.log`` either way).
    """
    from retrain.storage import client_from_env

    bucket, prefix = parse_s3_uri(run_uri)
    prefix = prefix.strip("/")
    if not prefix:
        raise TrainInputError(f"{run_uri}: expected s3://bucket/runs/<run id>")
    store = ObjectStore(client_from_env(), bucket)
    if workdir is not None:
        return run_training(store, prefix, workdir)
    with tempfile.TemporaryDirectory(prefix="retrain-train-") as tmp:
        return run_training(store, prefix, tmp)
