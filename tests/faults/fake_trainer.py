"""A stand-in for ``llamafactory-cli train CONFIG`` in the Airflow environment (no torch there).

`retrain.train.run_training` runs it as it runs LLaMA-Factory, and it leaves what LLaMA-Factory
leaves in ``output_dir``: checkpoint-N folders (trainer_state.json + adapter weights), the adapter
files, trainer_log.jsonl, all_results.json and training_loss.png. The adapter "weights" are a small
text naming the dataset they were trained on and a quality tag, so evaluation's fake model
(tests/faults/harness.py) can behave as a good or a bad adapter and every dataset gives a
different adapter hash.

The fault comes from $RETRAIN_FAKE_TRAINER:
  ok           train to the end (resuming from resume_from_checkpoint when the config has one)
  exit137      save checkpoint-2, then exit 137 (what a shell reports for an OOM kill)
  sigkill      save checkpoint-2, then SIGKILL itself (the kernel OOM killer on the process)
  no_adapter   log every step but save nothing, exit 0 (a silent failure)
  crash        save checkpoint-2, then die with a Python traceback (exit 1)
  slow         like ok, but take a minute over step 1 (a window to kill the worker in)
$RETRAIN_FAKE_QUALITY (good | bad) tags the adapter; each run's start step and mode are appended
to $RETRAIN_FAKE_TRAINER_LOG when set.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import time
from pathlib import Path

import yaml

TOTAL_STEPS = 4


def _checkpoint(out: Path, step: int, weights: bytes) -> None:
    ckpt = out / f"checkpoint-{step}"
    ckpt.mkdir(parents=True, exist_ok=True)
    (ckpt / "adapter_model.safetensors").write_bytes(weights)
    (ckpt / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    (ckpt / "optimizer.pt").write_bytes(b"optimizer state")
    (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": step}))  # last, like HF Trainer


def main() -> int:
    assert sys.argv[1] == "train", sys.argv
    cfg = yaml.safe_load(Path(sys.argv[2]).read_text(encoding="utf-8"))
    out = Path(cfg["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    mode = os.environ.get("RETRAIN_FAKE_TRAINER", "ok")
    quality = os.environ.get("RETRAIN_FAKE_QUALITY", "good")
    dataset_dir = Path(cfg["dataset_dir"])
    info = json.loads((dataset_dir / "dataset_info.json").read_text(encoding="utf-8"))
    train_json = dataset_dir / info[cfg["dataset"]]["file_name"]  # the night's file retrain train chose
    n_examples = len(json.loads(train_json.read_text(encoding="utf-8")))
    digest = hashlib.sha256(train_json.read_bytes()).hexdigest()[:16]
    weights = f"FAKE-LORA quality={quality} dataset={digest}\n".encode()
    resume = cfg.get("resume_from_checkpoint")
    start = int(Path(resume).name.split("-")[1]) if resume else 0
    if os.environ.get("RETRAIN_FAKE_TRAINER_LOG"):
        with open(os.environ["RETRAIN_FAKE_TRAINER_LOG"], "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"mode": mode, "start": start, "examples": n_examples}) + "\n")
    print(f"[fake llamafactory] training {n_examples} examples from step {start}, mode {mode}", flush=True)
    log = out / "trainer_log.jsonl"
    with log.open("a", encoding="utf-8") as fh:
        for step in range(start + 1, TOTAL_STEPS + 1):
            if mode == "slow" and step == 1:
                time.sleep(60)
            fh.write(
                json.dumps(
                    {
                        "current_steps": step,
                        "total_steps": TOTAL_STEPS,
                        "loss": 2.0 / step,
                        "epoch": step / TOTAL_STEPS,
                    }
                )
                + "\n"
            )
            fh.flush()
            if step == 2 and mode != "no_adapter":
                _checkpoint(out, step, weights)
                if mode == "exit137":
                    print("Killed", flush=True)
                    return 137
                if mode == "sigkill":
                    os.kill(os.getpid(), signal.SIGKILL)
                if mode == "crash":
                    raise RuntimeError("CUDA error: an illegal memory access was encountered (injected)")
    if mode == "no_adapter":
        print("[fake llamafactory] done (but nothing saved)", flush=True)
        return 0
    (out / "adapter_model.safetensors").write_bytes(weights)
    (out / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": 8, "task_type": "CAUSAL_LM"})
    )
    (out / "all_results.json").write_text(json.dumps({"epoch": 1.0, "train_loss": 0.5, "train_runtime": 0.1}))
    (out / "training_loss.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
