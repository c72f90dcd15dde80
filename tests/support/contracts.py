"""Valid run-folder contracts (`retrain.runs`) for tests, with the fields a test cares about as arguments.

Every builder returns a model that validates (strict, no unknown keys), so a test that writes one into a
run folder exercises the real readers; override any field with keyword arguments.
"""

from __future__ import annotations

import hashlib
from typing import Any

from retrain import runs
from retrain.adapters import ADAPTER_FILES, adapter_uri
from retrain.storage import ObjectStore, join_key

LABELS = [
    "name",
    "organization",
    "scene",
    "company",
    "movie",
    "book",
    "government",
    "position",
    "address",
    "game",
]


def prf(f1: float | None, tp: int = 0, fp: int = 0, fn: int = 0) -> dict[str, Any]:
    return {"precision": f1, "recall": f1, "f1": f1, "tp": tp, "fp": fp, "fn": fn}


def model_scores(
    f1: float | None,
    per_label: dict[str, tuple[float | None, int]] | None = None,
    *,
    pfr: float = 0.0,
    name: str = "candidate",
    n: int = 100,
    **override: Any,
) -> runs.ModelScores:
    """One side of an evaluation report: micro F1 ``f1``; ``per_label`` = {label: (f1, support)}.

    The per-sentence counts (what the significance gate resamples) realise ``f1`` exactly: each of the
    ``n`` sentences has one gold ``name`` pair; the first round(f1 * n) are found, the others get a
    wrong text (one fp and one fn). Two such models are nested (the better one is right wherever the
    other is), so any gap of a few sentences is significant."""
    labels = {label: {**prf(v), "support": support} for label, (v, support) in (per_label or {}).items()}
    right = round((f1 or 0.0) * n)
    sentences = [{"name": [1, 0, 0]} if i < right else {"name": [0, 1, 1]} for i in range(n)]
    data: dict[str, Any] = {
        "name": name,
        "sentences": {"strict": sentences, "lenient": sentences},
        "micro": prf(f1, right, n - right, n - right),
        "macro_f1": f1,
        "cluener_score": f1,
        "per_label": labels,
        "n_sentences": n,
        "unknown_label_predictions": 0,
        "parse_failure_rate": pfr,
        "n_parse_failures": round(pfr * n),
    }
    data.update(override)
    return runs.ModelScores.model_validate(data)


def dataset_ref(version: str = "d" * 16, bucket: str = "b", **override: Any) -> runs.DatasetRef:
    data: dict[str, Any] = {
        "version": version,
        "uri": f"s3://{bucket}/datasets/{version}/",
        "train": 100,
        "validation": 10,
        "golden": 10,
        "golden_hash": "g" * 16,
        "golden_removed_from_train": 0,
        "conflicts": 0,
        "duplicates": 0,
        "label_counts": {"name": 10},
        "created": True,
    }
    data.update(override)
    return runs.DatasetRef.model_validate(data)


def put_adapter(
    store: ObjectStore, content: bytes = b"weights", prefix: str = "adapters/"
) -> tuple[str, str]:
    """Publish a (fake-content) adapter at its content address; returns (uri, digest)."""
    h = hashlib.sha256()
    files = {"adapter_config.json": b'{"peft_type": "LORA"}', "adapter_model.safetensors": content}
    for name in sorted(ADAPTER_FILES):
        h.update(f"{name}\x00{hashlib.sha256(files[name]).hexdigest()}\n".encode())
    digest = h.hexdigest()
    for name in ADAPTER_FILES:
        store.put_bytes(join_key(prefix, digest, name), files[name])
    return adapter_uri(store, prefix, digest), digest


def train_request(run_id: str, bucket: str, **override: Any) -> runs.TrainRequest:
    data: dict[str, Any] = {
        "run_id": run_id,
        "adapter_store_uri": f"s3://{bucket}/adapters/",
        "dataset_uri": f"s3://{bucket}/datasets/{'d' * 16}/",
        "dataset_version": "d" * 16,
        "base_model": "/models/tiny",
        "model_cache_dir": "/models",
        "llamafactory": {"lora_rank": 8},
    }
    data.update(override)
    return runs.TrainRequest.model_validate(data)


def train_result(run_id: str, adapter: tuple[str, str], **override: Any) -> runs.TrainResult:
    uri, digest = adapter
    data: dict[str, Any] = {
        "status": "succeeded",
        "run_id": run_id,
        "adapter_uri": uri,
        "adapter_digest": digest,
        "base_model": "/models/tiny",
        "dataset_version": "d" * 16,
        "config_hash": "c" * 16,
        "train_loss": 0.5,
        "steps": 10,
        "epochs": 1.0,
        "wall_s": 1.0,
        "loss_curve": [[5, 1.0], [10, 0.5]],
    }
    data.update(override)
    return runs.TrainResult.model_validate(data)


def eval_request(run_id: str, candidate: tuple[str, str], **override: Any) -> runs.EvalRequest:
    data: dict[str, Any] = {
        "run_id": run_id,
        "golden_uri": "s3://b/datasets/x/golden.json",
        "golden_hash": "g" * 16,
        "base_model": "/models/tiny",
        "candidate": {"name": "candidate", "adapter_uri": candidate[0], "adapter_digest": candidate[1]},
        "champion": {"name": "base model"},
        "labels": LABELS,
    }
    data.update(override)
    return runs.EvalRequest.model_validate(data)


def eval_report(
    run_id: str, candidate: runs.ModelScores, champion: runs.ModelScores, **override: Any
) -> runs.EvalReport:
    data: dict[str, Any] = {
        "run_id": run_id,
        "golden_hash": "g" * 16,
        "golden_uri": "s3://b/datasets/x/golden.json",
        "golden_sha256": "g" * 64,
        "n": candidate.n_sentences,
        "labels": LABELS,
        "decoding": {"backend": "hf"},
        "base_model": "/models/tiny",
        "base_model_path": "/models/tiny",
        "candidate": candidate.model_dump(),
        "champion": champion.model_dump(),
    }
    data.update(override)
    return runs.EvalReport.model_validate(data)
