"""bench/gpu/run.py --dry-run: the GPU check's every step (setup, model build through
gpu_lora_throughput.py's builder, seed vs tuned LLaMA-Factory training, generation one at a time /
batched / prefix-cached with the two trained adapters, the table) on CPU with the tiny shape, so the
script cannot rot between GPU runs. Its numbers are not measurements and are not asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.trainer

REPO = Path(__file__).resolve().parents[2]


def test_gpu_check_dry_run(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "gpu" / "run.py"),
            "--out",
            str(out),
            "--dry-run",
            "--wheels",
            str(tmp_path / "no-wheels"),
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=900,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((out / "results.json").read_text(encoding="utf-8"))
    table = (out / "table.txt").read_text(encoding="utf-8")
    assert table.strip() in proc.stdout
    assert "DRY RUN" in table and "FAILED" not in table
    seed, tuned = res["train"]["seed"], res["train"]["tuned"]
    for row in (seed, tuned):
        assert row["loss_finite"] and row["tokens_per_s"] > 0
        assert row["throughput"]["steps"] == 3
        assert (Path(row["adapter_dir"]) / "adapter_model.safetensors").is_file()
        # the recipe's hyper-parameters are kept by the tuned YAML
        assert (row["config"]["lora_rank"], row["config"]["learning_rate"], row["config"]["cutoff_len"]) == (
            8,
            1.0e-4,
            1024,
        )
    assert not seed["config"]["packing"] and not seed["config"]["disable_gradient_checkpointing"]
    assert tuned["config"]["packing"] and tuned["config"]["neat_packing"]
    assert tuned["config"]["flash_attn"] == "sdpa" and tuned["config"]["disable_gradient_checkpointing"]
    rows = res["generate"]["rows"]
    assert [r["adapter"] for r in rows] == [seed["adapter_dir"], tuned["adapter_dir"]]
    for r in rows:
        assert r["batched_equals_single"]
        assert r["cached_differs"] == 0  # float32 on CPU: prefix-cached output is identical
        assert all(r[m]["tokens"] > 0 for m in ("single", "batched", "cached"))
    assert table.count("(b) ") == 6 and table.count("(a) LoRA SFT") == 2
