"""Fixtures of the evaluate tests: the project's tiny model and a random LoRA adapter for it.

Imports of torch/peft happen inside the fixtures: this file is loaded in the Airflow env too.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from tests.support.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)


def make_random_adapter(base_dir: Path, out_dir: Path, seed: int) -> Path:
    """A LoRA adapter with random A and B (init_lora_weights=False): changes the output without training."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(base_dir))
    torch.manual_seed(seed)
    model = get_peft_model(
        base, LoraConfig(r=8, lora_alpha=32, target_modules="all-linear", init_lora_weights=False)
    )
    model.save_pretrained(str(out_dir))
    return out_dir


@pytest.fixture(scope="session")
def random_adapter_dir(tiny_model_dir, tmp_path_factory) -> Path:
    return make_random_adapter(tiny_model_dir, tmp_path_factory.mktemp("adapter") / "a", seed=1)


@pytest.fixture(scope="session")
def other_adapter_dir(tiny_model_dir, tmp_path_factory) -> Path:
    return make_random_adapter(tiny_model_dir, tmp_path_factory.mktemp("adapter") / "b", seed=2)


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server for the trainer-env tests: moto lives in the Airflow env, so its
    ``moto_server`` is used from there when this env has none."""
    import sys

    from tests.support.stack import MotoServer

    repo = Path(__file__).resolve().parents[2]
    for bin_dir in (Path(sys.executable).parent, repo / ".venv-af" / "bin"):
        if (bin_dir / "moto_server").exists():
            break
    else:
        pytest.fail("no moto_server found (neither in this environment nor in .venv-af)")
    with MotoServer(bin_dir=bin_dir) as server:
        yield server
