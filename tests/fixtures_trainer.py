"""Shared fixtures and helpers for the trainer-side tests (run them with `.venv-tr/bin/python -m pytest`).

Test modules import what they use from here (``from tests.fixtures_trainer import ...``). To
share them tree-wide instead, import them into ``tests/conftest.py``.

- `tiny_model_dir` (session): the tiny random Qwen2 model, built once into pytest's base temp dir
  (`build_tiny_model` is idempotent, so every module importing the fixture reuses the build).
- `moto_s3` (session): a real moto S3 server on 127.0.0.1 and a free port, with the AWS_* env a
  subprocess needs to talk to it; stopped at the end of the session.
- `make_alpaca_examples`, `upload_alpaca_dataset`, `put_train_request`: a small dataset version
  and a train request laid out as the Airflow side writes them.
"""

from __future__ import annotations

import json
import os
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from retrain.config import load_settings
from retrain.prompt import alpaca_example
from retrain.records import Entity

BUCKET = "ner-retrain-test"

_NAMES = ["叶老桂", "彭小军", "温格", "张伟", "李娜", "王芳", "刘洋", "陈静"]
_ORGS = ["曼联", "浙商银行", "北京大学", "腾讯公司", "国家发改委", "中国银行"]
_PLACES = ["上海", "北京", "台湾", "广州", "深圳"]
_TEMPLATES = [
    ("{n}在{p}的{o}工作了多年。", ("name", "address", "organization")),
    ("{o}宣布{n}将出任新的负责人，地点在{p}。", ("organization", "name", "address")),
    ("记者在{p}见到了{n}。", ("address", "name")),
]


@dataclass
class MotoS3:
    """A running moto S3 server."""

    endpoint: str

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """An environment for a subprocess that must use this server (and nothing else)."""
        env = dict(os.environ if base is None else base)
        for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
            env.pop(key, None)
        env.update(
            AWS_ENDPOINT_URL=self.endpoint,
            AWS_ACCESS_KEY_ID="testing",
            AWS_SECRET_ACCESS_KEY="testing",
            AWS_DEFAULT_REGION="us-east-1",
        )
        return env

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[MotoS3]:
    """A moto S3 server on 127.0.0.1 (port chosen by the OS) with the test bucket created."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        s3 = MotoS3(endpoint=f"http://{host}:{port}")
        s3.client().create_bucket(Bucket=BUCKET)
        yield s3
    finally:
        server.stop()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random Qwen2 model (seed 0), built once per session."""
    from tests.support.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.getbasetemp() / "tiny-model", seed=0)


def make_alpaca_examples(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` alpaca examples in the project's prompt format (`retrain.prompt.alpaca_example`)."""
    instruction = load_settings().prompt.render_instruction()
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        template, labels = rng.choice(_TEMPLATES)
        values = {"n": rng.choice(_NAMES), "o": rng.choice(_ORGS), "p": rng.choice(_PLACES)}
        text = template.format(**values)
        entities = []
        for slot, label in zip(("n", "o", "p"), ("name", "organization", "address"), strict=True):
            if label in labels:
                start = text.index(values[slot])
                entities.append(Entity(start, start + len(values[slot]), label, values[slot]))
        out.append(alpaca_example(instruction, text, entities))
    return out


def upload_alpaca_dataset(client: Any, bucket: str, version: str, n_train: int = 60) -> str:
    """Write a dataset version as the dataset stage lays it out; return its ``s3://…/`` URI."""
    prefix = f"datasets/{version}/"
    files: dict[str, Any] = {
        "train.json": make_alpaca_examples(n_train, seed=1),
        "validation.json": make_alpaca_examples(8, seed=2),
        "golden.json": make_alpaca_examples(8, seed=3),
        "dataset_info.json": {
            "alpaca_clue_train": {"file_name": "train.json"},
            "alpaca_clue_validation": {"file_name": "validation.json"},
            "alpaca_clue_golden": {"file_name": "golden.json"},
        },
    }
    splits = ("train.json", "validation.json", "golden.json")
    files["manifest.json"] = {"version": version, "counts": {name: len(files[name]) for name in splits}}
    for name, obj in files.items():
        client.put_object(
            Bucket=bucket, Key=prefix + name, Body=json.dumps(obj, ensure_ascii=False).encode("utf-8")
        )
    return f"s3://{bucket}/{prefix}"


def put_train_request(
    client: Any,
    bucket: str,
    *,
    dataset_uri: str,
    dataset_version: str,
    base_model: str,
    model_cache_dir: str,
    llamafactory_overrides: dict[str, Any] | None = None,
    run_id: str | None = None,
) -> str:
    """Write ``runs/<run id>/train_request.json`` (cpu_tiny profile + overrides); return the run URI."""
    run_id = run_id or f"test-{uuid.uuid4().hex[:8]}"
    cfg = load_settings().llamafactory_config("cpu_tiny")
    cfg.update(llamafactory_overrides or {})
    request = {
        "run_id": run_id,
        "adapter_store_uri": f"s3://{bucket}/adapters/",
        "dataset_uri": dataset_uri,
        "dataset_version": dataset_version,
        "base_model": base_model,
        "model_cache_dir": model_cache_dir,
        "llamafactory": cfg,
    }
    client.put_object(
        Bucket=bucket,
        Key=f"runs/{run_id}/train_request.json",
        Body=json.dumps(request, ensure_ascii=False).encode("utf-8"),
    )
    return f"s3://{bucket}/runs/{run_id}"
