"""What one night trains on: full retraining or a warm start with replay, chosen by the platform.

A dataset version holds all accepted history, so training on its whole train split costs more every
night. `plan_training` (run by ``prepare_training``) decides the night's mode and examples and writes
them to ``runs/<id>/train_data/night.json``; the trainer trains exactly that file (LLaMA-Factory's
``max_samples`` is refused, so nothing cuts it silently):

- ``new`` examples: in this version's train split but not in the reference's, the champion's dataset
  version (a relabelled sentence is new; without a usable champion every example is new). All of them
  are trained in both modes, even beyond ``train.max_samples`` (counted as ``new_over_cap``).
- ``full``: a new adapter from the base model on the new examples plus every old one, or, when
  ``train.max_samples`` leaves less room, a label-stratified sample of the old ones.
- ``warm_start``: continue the champion's adapter (LLaMA-Factory ``adapter_name_or_path``; the trainer
  verifies its digest) on the new examples plus a replay sample of old ones making up
  ``train.warm_start.replay_share`` of the night, stratified by label so that rare labels are
  replayed, with a learning-rate re-warm (``warm_start.warmup_ratio``). A first model, a changed base
  model, LoRA rank/alpha/target, template or prompt falls back to full, with the reason recorded.

The sample is deterministic: the same inputs and ``replay_seed`` give the same night file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any, Literal

from retrain import runs
from retrain.config import Settings
from retrain.storage import ObjectStore, join_key, parse_s3_uri

log = logging.getLogger(__name__)

Mode = Literal["full", "warm_start"]
#: The dataset name of the night's file in the trainer's dataset_info.json.
NIGHT_NAME = "alpaca_clue_night"
NIGHT_FILE = "night.json"
#: LLaMA-Factory keys that must match the parent's for its adapter to be continued.
ADAPTER_SHAPE_KEYS = ("finetuning_type", "lora_rank", "lora_alpha", "lora_target", "template")
NO_ENTITY = "(none)"


def example_key(example: dict[str, Any]) -> str:
    """A stable identity of an alpaca example: the hash of its canonical JSON (every field)."""
    payload = json.dumps(example, ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def example_labels(example: dict[str, Any]) -> list[str]:
    """The entity labels of an example's answer (``[{"label": …, "text": …}]``); [] when none."""
    try:
        answer = json.loads(example.get("output") or "[]")
    except json.JSONDecodeError:
        return []
    if not isinstance(answer, list):
        return []
    return sorted({str(e["label"]) for e in answer if isinstance(e, dict) and "label" in e})


def stratified_sample(
    pool: list[dict[str, Any]], k: int, seed: int
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """``k`` examples of ``pool`` stratified by each example's rarest label (in the pool), with every
    stratum given at least one when ``k`` allows; (sample, count per stratum). Deterministic."""
    if k >= len(pool):
        return list(pool), dict(Counter(_stratum(e, _label_counts(pool)) for e in pool))
    if k <= 0:
        return [], {}
    counts = _label_counts(pool)
    strata: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for ex in sorted(pool, key=example_key):
        strata[_stratum(ex, counts)].append(ex)
    quota = _quotas({name: len(items) for name, items in strata.items()}, k)
    rng = random.Random(seed)
    chosen: list[dict[str, Any]] = []
    for name in sorted(strata):
        chosen += rng.sample(strata[name], quota[name])
    return chosen, {name: n for name, n in sorted(quota.items()) if n}


def _label_counts(pool: list[dict[str, Any]]) -> Counter[str]:
    return Counter(label for ex in pool for label in example_labels(ex))


def _stratum(example: dict[str, Any], counts: Counter[str]) -> str:
    labels = example_labels(example)
    return min(labels, key=lambda label: (counts[label], label)) if labels else NO_ENTITY


def _quotas(sizes: dict[str, int], k: int) -> dict[str, int]:
    """Proportional shares of ``k`` over strata of ``sizes``, at least one each while ``k`` allows
    (rarest strata first), never more than a stratum holds; largest remainders fill the rest."""
    quota = dict.fromkeys(sizes, 0)
    left = k
    for name in sorted(sizes, key=lambda n: (sizes[n], n)):
        if left == 0:
            break
        quota[name], left = 1, left - 1
    total = sum(sizes.values())
    want = {n: k * sizes[n] / total for n in sizes}
    for name in sorted(sizes, key=lambda n: (-(want[n] - quota[n]), n)):
        extra = min(max(int(want[name]) - quota[name], 0), sizes[name] - quota[name], left)
        quota[name], left = quota[name] + extra, left - extra
    while left > 0:  # rounding leftovers: the strata furthest below their share, then by name
        room = [n for n in sizes if quota[n] < sizes[n]]
        name = max(room, key=lambda n: (want[n] - quota[n], n))
        quota[name], left = quota[name] + 1, left - 1
    return quota


@dataclass(frozen=True)
class NightSample:
    """The night's examples (new first, then the old ones chosen) and the figures of the choice."""

    examples: list[dict[str, Any]]
    new: int
    old: int
    replayed: int
    new_over_cap: int
    replay_by_label: dict[str, int]


def select_examples(
    current: list[dict[str, Any]],
    reference: list[dict[str, Any]] | None,
    *,
    mode: Mode,
    max_samples: int | None,
    replay_share: float,
    seed: int,
) -> NightSample:
    """Split ``current`` into new (not in ``reference``; all, without one) and old examples and choose
    the night's: every new one, then old ones (all in full mode, a ``replay_share`` of the night in
    warm start), no more than ``max_samples`` in all unless the new ones alone exceed it."""
    seen = {example_key(e) for e in reference or []}
    new = [e for e in current if example_key(e) not in seen]
    old = [e for e in current if example_key(e) in seen]
    if mode == "warm_start":
        room = round(len(new) * replay_share / (1.0 - replay_share)) if replay_share else 0
    else:
        room = len(old)
    if max_samples is not None:
        room = min(room, max(max_samples - len(new), 0))
    replay, by_label = stratified_sample(old, min(room, len(old)), seed)
    over = max(len(new) - max_samples, 0) if max_samples is not None else 0
    return NightSample(new + replay, len(new), len(old), len(replay), over, by_label)


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class _Reference:
    """The champion's training side: its request and its dataset version's train split and prompt."""

    parent: runs.ParentAdapter
    request: runs.TrainRequest
    train: list[dict[str, Any]]
    prompt_hash: str | None


def _read_dataset_file(store: ObjectStore, dataset_uri: str, name: str) -> Any:
    bucket, prefix = parse_s3_uri(dataset_uri)
    return store.for_bucket(bucket).get_json(join_key(prefix.rstrip("/"), name))


def _load_reference(store: ObjectStore, champion: dict[str, Any]) -> _Reference | str:
    """The champion's reference, or why there is none usable (a sentence for the run summary)."""
    tags = champion.get("tags") or {}
    if not champion.get("adapter_uri") or not champion.get("adapter_digest"):
        return f"champion v{champion['version']} has no adapter_uri/adapter_digest tag"
    if not tags.get("run_uri"):
        return f"champion v{champion['version']} has no run_uri tag (registered before lineage)"
    try:
        folder = runs.RunFolder.from_uri(tags["run_uri"])
        request = runs.read(
            store.for_bucket(folder.bucket), folder.key(runs.TRAIN_REQUEST), runs.TrainRequest
        )
        train = _read_dataset_file(store, request.dataset_uri, "train.json")
        manifest = _read_dataset_file(store, request.dataset_uri, "manifest.json")
    except Exception as exc:  # a deleted run folder or dataset: train full, say why
        return f"champion v{champion['version']}'s training files are unreadable: {type(exc).__name__}: {exc}"
    parent = runs.ParentAdapter(
        version=str(champion["version"]),
        adapter_uri=champion["adapter_uri"],
        adapter_digest=champion["adapter_digest"],
        dataset_version=request.dataset_version,
        run_uri=tags["run_uri"],
    )
    return _Reference(parent, request, train, manifest.get("prompt_template_hash"))


def warm_start_blocker(
    reference: _Reference,
    *,
    base_model: str,
    revision: str | None,
    cfg: dict[str, Any],
    prompt_hash: str | None,
) -> str | None:
    """Why the champion's adapter cannot be continued by this run (None: it can)."""
    parent = reference.request
    if (parent.base_model, parent.base_model_revision) != (base_model, revision):
        return (
            f"base model changed: champion trained on {parent.base_model} ({parent.base_model_revision}), "
            f"this run {base_model} ({revision})"
        )
    for key in ADAPTER_SHAPE_KEYS:
        if parent.llamafactory.get(key) != cfg.get(key):
            return f"{key} changed: champion {parent.llamafactory.get(key)!r}, this run {cfg.get(key)!r}"
    if reference.prompt_hash != prompt_hash:
        return f"prompt changed: champion's prompt hash {reference.prompt_hash}, this run's {prompt_hash}"
    return None


@dataclass(frozen=True)
class PlanInputs:
    """What `plan_training` needs to know about the run besides the stores."""

    run: runs.RunFolder
    dataset: runs.DatasetRef
    champion: dict[str, Any] | None  # `retrain.registry.Registry.champion()`
    base_model: str
    base_model_revision: str | None
    llamafactory: dict[str, Any]
    mode: Mode
    max_samples: int | None


def plan_training(store: ObjectStore, settings: Settings, inputs: PlanInputs) -> runs.TrainSelection:
    """Choose the night's mode and examples, write ``train_data/night.json`` and return the
    selection (which goes into the train request, the run summary and the registry tags)."""
    warm = settings.train.warm_start
    current = _read_dataset_file(store, inputs.dataset.uri, "train.json")
    prompt_hash = _read_dataset_file(store, inputs.dataset.uri, "manifest.json").get("prompt_template_hash")
    found = _load_reference(store, inputs.champion) if inputs.champion else "first model: no champion yet"
    reference = found if isinstance(found, _Reference) else None
    blocker = found if isinstance(found, str) else None
    if reference is not None and inputs.mode == "warm_start":
        blocker = warm_start_blocker(
            reference,
            base_model=inputs.base_model,
            revision=inputs.base_model_revision,
            cfg=inputs.llamafactory,
            prompt_hash=prompt_hash,
        )
    mode: Mode = "warm_start" if inputs.mode == "warm_start" and blocker is None else "full"
    sample = select_examples(
        current,
        reference.train if reference and blocker is None else None,
        mode=mode,
        max_samples=inputs.max_samples,
        replay_share=warm.replay_share,
        seed=warm.replay_seed,
    )
    body = (json.dumps(sample.examples, ensure_ascii=False, indent=1) + "\n").encode("utf-8")
    store.put_bytes(inputs.run.key(runs.TRAIN_DATA), body, "application/json")
    selection = runs.TrainSelection(
        mode=mode,
        requested_mode=inputs.mode,
        fallback_reason=blocker if inputs.mode == "warm_start" else None,
        parent=reference.parent if mode == "warm_start" and reference else None,
        reference_version=reference.parent.dataset_version if reference and blocker is None else None,
        train_uri=inputs.run.file_uri(runs.TRAIN_DATA),
        train_sha256=hashlib.sha256(body).hexdigest(),
        available=len(current),
        new=sample.new,
        old=sample.old,
        replayed=sample.replayed,
        old_left_out=sample.old - sample.replayed,
        new_over_cap=sample.new_over_cap,
        examples=len(sample.examples),
        max_samples=inputs.max_samples,
        replay_share=warm.replay_share,
        replay_seed=warm.replay_seed,
        replay_by_label=sample.replay_by_label,
    )
    if selection.fallback_reason:
        log.warning("train.mode warm_start falls back to full: %s", selection.fallback_reason)
    if selection.new_over_cap:
        log.warning(
            "%d new examples exceed train.max_samples=%s: all are trained (new data is never dropped)",
            selection.new_over_cap,
            inputs.max_samples,
        )
    log.info("night's training data: %s", selection.describe())
    return selection


def llamafactory_overrides(selection: runs.TrainSelection, settings: Settings) -> dict[str, Any]:
    """LLaMA-Factory keys a selection changes: the warm start's learning-rate re-warm."""
    if selection.mode != "warm_start":
        return {}
    return {"warmup_ratio": settings.train.warm_start.warmup_ratio}
