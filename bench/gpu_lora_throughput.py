"""LoRA SFT throughput of the production recipe on one GPU: tokens/s/GPU, peak memory, MFU.

    python bench/gpu_lora_throughput.py [--steps 30] [--warmup-steps 5] [--json]     # needs CUDA
    python bench/gpu_lora_throughput.py --cpu-smoke                                  # plumbing check, no GPU

What runs: a Qwen2.5-7B-shaped model (Qwen2Config: hidden 3584, 28 layers, 28 query / 4 key-value
heads, intermediate 18944, vocabulary 152064, untied lm_head) with RANDOM weights, initialised on the
GPU directly in bf16 and saved once (~15 GB, reused by later runs from --workdir); the project's own
tokenizer (`tests.support.tiny_model`, ~4k tokens: its ids are a subset of the model's 152064
rows, so the embedding keeps the real model's size and cost; no resize); synthetic CLUENER examples
rendered as alpaca by the project's `retrain.prompt.alpaca_example`. Training goes through the
trainer's own path: the LLaMA-Factory config of conf/llamafactory/production.yaml (bf16, cutoff 1024,
LoRA rank 8 on all linear layers, batch 4 x accumulation 8) from `load_settings().llamafactory_config`,
rendered by `retrain.train.render_llamafactory_yaml` and run by `retrain.train.run_llamafactory`
(`llamafactory-cli train`). Only these keys are overridden: max_steps (--steps), save_steps (past the
end: no checkpoint inside the timed steps), logging_steps 1, include_num_input_tokens_seen
non_padding, report_to none, max_samples; plus `packing: true` with --packing.

Measured, from LLaMA-Factory's trainer_log.jsonl (RECORD_VRAM=1):
- tokens/s/GPU: non-padding input tokens (HF's num_input_tokens_seen) between the end of optimizer
  step --warmup-steps and the last step, over the time between them (each entry's time since the
  start = total_tokens / throughput). Also the whole-run average (warm-up and first steps included).
- peak memory: torch.cuda.max_memory_allocated / max_memory_reserved of the training process; and
  the device-wide peak of nvidia-smi's memory.used, polled every 0.5 s, minus its value before.
- MFU = tokens/s/GPU x 6 x N / peak bf16 dense FLOP/s, N = parameters of every matmul (all nn.Linear
  weights incl. lm_head, plus the LoRA A/B matrices; the input embedding is a lookup, not counted).
  6N per token is the standard training count. For LoRA the frozen weights get no weight gradient,
  so forward + backward costs ~4N; LLaMA-Factory enables gradient checkpointing by default, which
  recomputes the forward (+2N), so ~6N is also what the GPU executes. Attention's own FLOPs
  (~6 x layers x seq x hidden per token, ~2% at 1024 tokens) are left out: the MFU is a slight
  underestimate. Peak from a table keyed by torch.cuda.get_device_name() (H100/H200 SXM 989 TFLOPS),
  or --peak-tflops.

Refuses with exit code 2 where CUDA is not available (use --cpu-smoke to check the plumbing on CPU:
the tiny model, the cpu_tiny profile, no MFU). See bench/README.md for the command in the trainer image.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.support (synthetic data, the tiny model's tokenizer)

#: Qwen2.5-7B-Instruct's config.json, random weights.
QWEN25_7B_SHAPE: dict[str, Any] = {
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "vocab_size": 152064,
    "max_position_embeddings": 32768,
    "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
}

#: bf16 dense (no sparsity) tensor-core peak in TFLOPS, by a pattern of torch.cuda.get_device_name();
#: the first match wins, so the more specific names come first. Vendor datasheet numbers.
PEAK_BF16_DENSE_TFLOPS: list[tuple[str, float]] = [
    (r"\bGH200\b", 989.0),
    (r"\bH200 NVL\b", 835.0),
    (r"\bH200\b", 989.0),  # H200 SXM
    (r"\bH100 NVL\b", 835.0),
    (r"\bH100 PCIe\b", 756.0),
    (r"\bH100\b", 989.0),  # H100 SXM5 ("NVIDIA H100 80GB HBM3")
    (r"\bH800 PCIe\b", 756.0),
    (r"\bH800\b", 989.0),
    (r"\bH20\b", 148.0),
    (r"\bB200\b", 2250.0),
    (r"\bB100\b", 1750.0),
    (r"\bA100\b", 312.0),
    (r"\bA800\b", 312.0),
    (r"\bL40S\b", 362.0),
    (r"\bL40\b", 181.0),
    (r"\bL4\b", 121.0),
    (r"\bA10\b", 125.0),
]

RESULT_MARK = "@@RESULT@@"
MODEL_MARKER = "bench_random_model.json"


def _count(n: float) -> str:
    return f"{n / 1e9:.3f} B" if n >= 1e9 else f"{n / 1e6:.2f} M"


def peak_tflops_for(device_name: str) -> float | None:
    for pattern, tflops in PEAK_BF16_DENSE_TFLOPS:
        if re.search(pattern, device_name):
            return tflops
    return None


# --------------------------------------------------------------------------- child processes


def _child(args: list[str], timeout: float) -> dict[str, Any]:
    """Run this script in a fresh interpreter (internal mode) and return its JSON result."""
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), *args],
        text=True,
        stdout=subprocess.PIPE,
        stderr=None,
        timeout=timeout,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_MARK)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(args[:2])} failed (exit {proc.returncode}): {proc.stdout[-2000:]}")
    return json.loads(lines[-1][len(RESULT_MARK) :])


def internal_probe() -> dict[str, Any]:
    """CUDA facts, in a child so that this process never holds a CUDA context on the GPU."""
    import torch

    n = torch.cuda.device_count()
    props = torch.cuda.get_device_properties(0)
    return {
        "device_name": torch.cuda.get_device_name(0),
        "device_count": n,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "total_memory_gib": props.total_memory / 2**30,
        "bf16_supported": bool(torch.cuda.is_bf16_supported()),
    }


def _tokenizer_files(src: Path) -> list[Path]:
    skip = {"config.json", "generation_config.json", "retrain_tiny_model.json"}
    return [
        p
        for p in src.iterdir()
        if p.is_file()
        and p.name not in skip
        and not p.name.endswith(".safetensors")
        and not p.name.endswith(".bin")
    ]


def internal_build(
    out: Path, shape: dict[str, Any], tokenizer_dir: Path, device: str, dtype_name: str
) -> dict:
    """Build a random Qwen2 model of ``shape`` on ``device`` in ``dtype`` with the tokenizer of
    ``tokenizer_dir`` and save it to ``out`` (atomically: a temp dir renamed into place)."""
    import torch
    from transformers import AutoTokenizer, GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    t0 = time.perf_counter()
    tmp = out.parent / f".{out.name}.building-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in _tokenizer_files(tokenizer_dir):
        shutil.copy2(f, tmp / f.name)
    tok = AutoTokenizer.from_pretrained(str(tmp))
    ids = {name: tok.convert_tokens_to_ids(name) for name in ("<|endoftext|>", "<|im_end|>")}
    shape = dict(shape)
    if shape.get("vocab_size") is None:
        shape["vocab_size"] = len(tok)
    if len(tok) > shape["vocab_size"]:
        raise ValueError(
            f"tokenizer has {len(tok)} tokens, more than the model's vocabulary {shape['vocab_size']}"
        )
    config = Qwen2Config(
        **shape,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        use_sliding_window=False,
    )
    dtype = getattr(torch, dtype_name)
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    try:
        torch.set_default_dtype(dtype)  # initialise directly in bf16: half the memory and time of fp32
    except (TypeError, ValueError):
        pass  # an old torch without a bf16 default dtype: fp32 on the device, converted below
    try:
        with torch.device(device):
            model = Qwen2ForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    model = model.to(dtype)
    model.generation_config = GenerationConfig(
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        do_sample=False,
    )
    t_init = time.perf_counter() - t0
    model.save_pretrained(str(tmp), max_shard_size="5GB")
    n_params = sum(p.numel() for p in model.parameters())
    info = {
        "shape": shape,
        "parameters": n_params,
        "dtype": dtype_name,
        "device": device,
        "tokenizer_from": str(tokenizer_dir),
        "tokenizer_len": len(tok),
        "init_s": t_init,
        "build_s": time.perf_counter() - t0,
    }
    (tmp / MODEL_MARKER).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    shutil.rmtree(out, ignore_errors=True)
    os.rename(tmp, out)
    return info


# --------------------------------------------------------------------------- pure helpers


def matmul_params(config_path: Path, lora_rank: int) -> dict[str, int]:
    """Parameters that take part in matmuls (every nn.Linear: q/k/v/o, MLP, lm_head) and the LoRA
    parameters of rank ``lora_rank`` on every linear layer but lm_head (LLaMA-Factory's
    ``lora_target: all``), counted on the meta device (no memory)."""
    import torch
    from torch import nn
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(config_path.parent))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    linear = lora = 0
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            linear += sum(p.numel() for p in mod.parameters(recurse=False))
            if not name.endswith("lm_head"):
                lora += lora_rank * (mod.in_features + mod.out_features)
    total = sum(p.numel() for p in model.parameters())
    return {"total": total, "linear": linear, "lora": lora}


def write_dataset(dest: Path, n: int, settings: Any) -> dict[str, Any]:
    """``n`` synthetic CLUENER examples as the project's alpaca dataset (train split only)."""
    from retrain.dataset import TRAIN_NAME
    from retrain.formats import cluener
    from retrain.prompt import alpaca_example
    from tests.support.synth import make_batch

    instruction = settings.prompt.render_instruction()
    examples = []
    for line in make_batch(n, seed=7):
        obj = json.loads(line)
        ents = cluener.entities(obj, settings.prompt.labels)
        examples.append(alpaca_example(instruction, obj["text"], ents, settings.dataset.system_prompt))
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "train.json").write_text(json.dumps(examples, ensure_ascii=False), encoding="utf-8")
    columns = {"prompt": "instruction", "query": "input", "response": "output"}
    info = {TRAIN_NAME: {"file_name": "train.json", "columns": columns}}
    (dest / "dataset_info.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
    return {"name": TRAIN_NAME, "examples": len(examples)}


def throughput_from_log(entries: list[dict[str, Any]], warmup_steps: int) -> dict[str, Any]:
    """Tokens and seconds from LLaMA-Factory's trainer-log entries (``total_tokens`` and
    ``throughput`` = total_tokens / seconds since the training started, per logged step)."""
    by_step: dict[int, dict[str, Any]] = {}
    for e in entries:
        step = e.get("current_steps")
        if isinstance(step, int) and e.get("total_tokens") and e.get("throughput"):
            by_step.setdefault(step, e)  # the first entry of a step (the last step also has a summary entry)
    if not by_step:
        raise ValueError(
            "trainer_log.jsonl has no entry with total_tokens/throughput: was "
            "include_num_input_tokens_seen honoured?"
        )
    steps = sorted(by_step)
    last = steps[-1]
    elapsed = {s: by_step[s]["total_tokens"] / by_step[s]["throughput"] for s in steps}
    first = max((s for s in steps if s <= warmup_steps), default=None)
    out: dict[str, Any] = {
        "steps": last,
        "tokens": by_step[last]["total_tokens"],
        "elapsed_s": elapsed[last],
        "whole_run_tokens_per_s": by_step[last]["total_tokens"] / elapsed[last],
        "vram_allocated_gib": max((e.get("vram_allocated", 0) or 0) for e in entries),
        "vram_reserved_gib": max((e.get("vram_reserved", 0) or 0) for e in entries),
    }
    if first is not None and first < last:
        tokens = by_step[last]["total_tokens"] - by_step[first]["total_tokens"]
        seconds = elapsed[last] - elapsed[first]
        out.update(
            steady_from_step=first,
            steady_steps=last - first,
            steady_tokens=tokens,
            steady_s=seconds,
            steady_tokens_per_s=tokens / seconds,
            s_per_step=seconds / (last - first),
            tokens_per_step=tokens / (last - first),
        )
    else:
        out.update(
            steady_from_step=None,
            steady_tokens_per_s=None,
            s_per_step=elapsed[last] / last,
            tokens_per_step=by_step[last]["total_tokens"] / last,
        )
    return out


class GpuMemoryPoll(threading.Thread):
    """Device-wide memory.used (MiB) of the visible GPUs from nvidia-smi, every ``interval`` s."""

    def __init__(self, indices: list[str] | None, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.indices, self.interval = indices, interval
        self.peak_mib = 0.0
        self.samples = 0
        self._halt = threading.Event()

    def read(self) -> float | None:
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=index,memory.used", "--format=csv,noheader,nounits"],
                text=True,
                capture_output=True,
                timeout=10,
            ).stdout
        except (OSError, subprocess.TimeoutExpired):
            return None
        used = []
        for line in out.strip().splitlines():
            index, _, value = line.partition(",")
            if self.indices is not None and index.strip() not in self.indices:
                continue
            try:
                used.append(float(value))
            except ValueError:  # "[N/A]" (e.g. MIG): no device-wide number
                continue
        return max(used) if used else None

    def run(self) -> None:
        while not self._halt.is_set():
            value = self.read()
            if value is not None:
                self.peak_mib, self.samples = max(self.peak_mib, value), self.samples + 1
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join(15)


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--steps", type=int, default=None, help="optimizer steps (default 30; 6 with --cpu-smoke)"
    )
    ap.add_argument(
        "--warmup-steps",
        type=int,
        default=None,
        help="steps left out of the steady-state rate (default 5; 1 with --cpu-smoke)",
    )
    ap.add_argument("--gpus", type=int, default=1, help="GPUs (>1: llamafactory-cli launches torchrun)")
    ap.add_argument(
        "--packing", action="store_true", help="pack examples to cutoff_len (LLaMA-Factory packing)"
    )
    ap.add_argument(
        "--peak-tflops", type=float, default=None, help="bf16 dense peak per GPU (overrides the table)"
    )
    ap.add_argument(
        "--tokenizer",
        type=Path,
        default=None,
        help="a tokenizer directory (e.g. a real Qwen2.5 one) instead of the project's tiny tokenizer",
    )
    ap.add_argument(
        "--workdir",
        type=Path,
        default=Path(os.environ.get("RETRAIN_BENCH_DIR", Path.cwd() / ".work" / "bench-gpu")),
        help="model, dataset, outputs (the 7B model is ~15 GB and is reused by later runs)",
    )
    ap.add_argument("--rebuild-model", action="store_true", help="build the random model again")
    ap.add_argument(
        "--profile",
        default=None,
        help="LLaMA-Factory profile under conf/llamafactory/ (default production; cpu_tiny with --cpu-smoke)",
    )
    ap.add_argument(
        "--cpu-smoke",
        action="store_true",
        help="no GPU: the same path with the tiny model shape and the cpu_tiny profile (no MFU)",
    )
    ap.add_argument("--json", action="store_true", help="also print the headline numbers as one JSON line")
    ap.add_argument("--internal", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.internal:  # child modes
        if args.internal[0] == "probe":
            result = internal_probe()
        else:
            _, out, shape, tok, device, dtype = args.internal
            result = internal_build(Path(out), json.loads(shape), Path(tok), device, dtype)
        print(RESULT_MARK + json.dumps(result), flush=True)
        return 0

    try:
        import torch
    except ImportError as exc:
        print(
            f"gpu_lora_throughput needs the trainer environment (torch, llamafactory): {exc}", file=sys.stderr
        )
        return 2
    smoke = args.cpu_smoke
    if not smoke and not torch.cuda.is_available():
        print(
            f"gpu_lora_throughput needs a CUDA GPU: torch.cuda.is_available() is False here (torch "
            f"{torch.__version__}, CUDA build {torch.version.cuda or 'none'}). Run it on a GPU host in the "
            "trainer image (see bench/README.md), or use --cpu-smoke to check the plumbing.",
            file=sys.stderr,
        )
        return 2
    steps = args.steps or (6 if smoke else 30)
    warmup = args.warmup_steps if args.warmup_steps is not None else (1 if smoke else 5)
    if steps <= warmup:
        print(f"--steps ({steps}) must be larger than --warmup-steps ({warmup})", file=sys.stderr)
        return 2

    from retrain.config import load_settings
    from retrain.train import read_trainer_log, render_llamafactory_yaml, run_llamafactory
    from tests.support import tiny_model

    settings = load_settings()
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    if smoke:
        probe = {
            "device_name": "cpu (smoke test)",
            "device_count": 0,
            "torch": torch.__version__,
            "cuda": None,
        }
    else:
        probe = _child(["--internal", "probe"], timeout=300)
        if args.gpus > probe["device_count"]:
            print(f"--gpus {args.gpus} but only {probe['device_count']} visible", file=sys.stderr)
            return 2
    peak = args.peak_tflops or (None if smoke else peak_tflops_for(probe["device_name"]))

    # -- tokenizer and model
    tokenizer_dir = args.tokenizer
    if tokenizer_dir is None:
        tokenizer_dir = tiny_model.build_tiny_model(work / "tiny-qwen2", settings=settings)
    if smoke:
        shape = {
            "hidden_size": tiny_model.HIDDEN_SIZE,
            "intermediate_size": tiny_model.INTERMEDIATE_SIZE,
            "num_hidden_layers": tiny_model.NUM_LAYERS,
            "num_attention_heads": tiny_model.NUM_HEADS,
            "num_key_value_heads": tiny_model.NUM_KV_HEADS,
            "vocab_size": None,
            "max_position_embeddings": tiny_model.MAX_POSITIONS,
            "tie_word_embeddings": False,
        }
        model_dir, device, dtype = work / "model-smoke-random", "cpu", "float32"
    else:
        shape, model_dir, device, dtype = (
            QWEN25_7B_SHAPE,
            work / "model-qwen2.5-7b-shape-random",
            "cuda",
            "bfloat16",
        )
    marker = model_dir / MODEL_MARKER
    if (
        args.rebuild_model
        or not marker.is_file()
        or json.loads(marker.read_text())["tokenizer_from"] != str(tokenizer_dir)
    ):
        print(f"building the random model ({device}, {dtype}) into {model_dir} ...", flush=True)
        built = _child(
            ["--internal", "build", str(model_dir), json.dumps(shape), str(tokenizer_dir), device, dtype],
            timeout=3600,
        )
        print(
            f"  {_count(built['parameters'])} parameters, initialised in {built['init_s']:.1f} s, "
            f"built + saved in {built['build_s']:.1f} s",
            flush=True,
        )
    else:
        built = json.loads(marker.read_text())
        print(f"reusing the random model in {model_dir} ({_count(built['parameters'])} parameters)")

    # -- the LLaMA-Factory config: production (or the CPU profile), overriding only what the bench needs
    profile = args.profile or ("cpu_tiny" if smoke else "production")
    cfg = settings.llamafactory_config(profile)
    per_step = (
        int(cfg["per_device_train_batch_size"]) * int(cfg["gradient_accumulation_steps"]) * max(args.gpus, 1)
    )
    val = float(cfg.get("val_size") or 0.0)
    n_examples = int(steps * per_step / (1.0 - val) * 1.1) + 16
    ds = write_dataset(work / "dataset", n_examples, settings)
    cfg.update(
        {
            "max_steps": steps,
            "save_steps": steps + 1000,
            "logging_steps": 1,
            "include_num_input_tokens_seen": "non_padding",
            "report_to": "none",
            "max_samples": n_examples,
        }
    )
    # training throughput only: the profile's eval_dataset (the platform's validation split) is not
    # in the bench's dataset folder
    cfg.pop("eval_dataset", None)
    cfg["eval_strategy"] = "no"
    if args.packing:
        cfg["packing"] = True
    if smoke:
        cfg["bf16"] = False  # HF refuses bf16 training on CPU
    out_dir = work / "output"
    shutil.rmtree(out_dir, ignore_errors=True)
    yaml_text = render_llamafactory_yaml(
        cfg,
        model_name_or_path=str(model_dir),
        dataset_dir=str(work / "dataset"),
        output_dir=str(out_dir),
        dataset=ds["name"],
        header=f"bench/gpu_lora_throughput.py: {steps} steps on {probe['device_name']}",
    )
    config_path = work / "train_config.yaml"
    config_path.write_text(yaml_text, encoding="utf-8")

    os.environ["RECORD_VRAM"] = "1"
    if not smoke and "CUDA_VISIBLE_DEVICES" not in os.environ:
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(args.gpus))
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    poll = None
    baseline_mib = None
    if not smoke and shutil.which("nvidia-smi"):
        poll = GpuMemoryPoll(visible.split(",") if visible and re.fullmatch(r"[\d,]+", visible) else None)
        baseline_mib = poll.read()
        poll.start()
    print(
        f"training {steps} steps ({per_step} examples/step, {n_examples} examples): llamafactory-cli train "
        f"{config_path}; log {work / 'llamafactory.log'}",
        flush=True,
    )
    t0 = time.perf_counter()
    try:
        run_llamafactory(config_path, work / "llamafactory.log", cwd=work)
    finally:
        if poll:
            poll.stop()
    lf_wall = time.perf_counter() - t0

    entries = read_trainer_log(out_dir / "trainer_log.jsonl")
    thr = throughput_from_log(entries, warmup)
    results = (
        json.loads((out_dir / "all_results.json").read_text())
        if (out_dir / "all_results.json").is_file()
        else {}
    )
    n = matmul_params(model_dir / "config.json", int(cfg.get("lora_rank", 8)))
    flops_per_token = 6 * (n["linear"] + n["lora"])
    gpus = max(args.gpus, 1)
    rate = thr["steady_tokens_per_s"] or thr["whole_run_tokens_per_s"]
    per_gpu = rate / gpus
    mfu = per_gpu * flops_per_token / (peak * 1e12) if peak else None
    whole_mfu = thr["whole_run_tokens_per_s"] / gpus * flops_per_token / (peak * 1e12) if peak else None
    device_peak_gib = (poll.peak_mib - (baseline_mib or 0)) / 1024 if poll and poll.samples else None

    print(
        f"\nGPU LoRA SFT throughput{' (CPU SMOKE TEST: plumbing only, not a measurement)' if smoke else ''}"
    )
    print(
        f"device            : {probe['device_name']} x {gpus}; "
        f"torch {probe['torch']}, CUDA {probe.get('cuda')}"
    )
    print(
        f"model             : Qwen2 random weights, {_count(n['total'])} parameters ({_count(n['linear'])} "
        f"in matmuls, LoRA {_count(n['lora'])}, rank {cfg.get('lora_rank')}); tokenizer {tokenizer_dir}"
    )
    print(
        f"recipe            : {profile}.yaml, bf16 {cfg.get('bf16')}, cutoff "
        f"{cfg.get('cutoff_len')}, batch {cfg['per_device_train_batch_size']} x accumulation "
        f"{cfg['gradient_accumulation_steps']}{', packing' if args.packing else ''}"
    )
    print(
        f"steps             : {thr['steps']} ({thr['tokens']} non-padding tokens, "
        f"{thr['tokens_per_step']:.0f}/step, "
        f"{thr['s_per_step']:.3f} s/step steady)"
    )
    steady_note = f"after step {thr['steady_from_step']}" if thr["steady_from_step"] else "whole run"
    print(
        f"tokens/s/GPU      : {per_gpu:,.0f} ({steady_note}); "
        f"whole run {thr['whole_run_tokens_per_s'] / gpus:,.0f}"
    )
    print(
        f"peak memory       : allocated {thr['vram_allocated_gib']:.2f} GiB, "
        f"reserved {thr['vram_reserved_gib']:.2f} GiB "
        f"(torch, training process); device-wide "
        + (
            f"{device_peak_gib:.2f} GiB (nvidia-smi, {poll.samples} samples)"
            if device_peak_gib is not None
            else "n/a"
        )
    )
    print(f"FLOPs/token       : 6 x N = {flops_per_token / 1e9:.4g} GFLOP (N = matmul + LoRA parameters)")
    print(
        "MFU               : "
        + (
            f"{mfu:.1%} of {peak:g} TFLOPS bf16 dense (whole run {whole_mfu:.1%})"
            if mfu is not None
            else "n/a (no peak for this device: pass --peak-tflops)"
        )
    )
    print(
        f"llamafactory-cli  : {lf_wall:.1f} s wall (HF train_runtime {results.get('train_runtime')} s); "
        f"total {time.perf_counter() - t_start:.1f} s"
    )
    summary = {
        "device": probe,
        "profile": profile,
        "gpus": gpus,
        "steps": steps,
        "warmup_steps": warmup,
        "packing": args.packing,
        "throughput": thr,
        "params": n,
        "flops_per_token": flops_per_token,
        "peak_tflops": peak,
        "tokens_per_s_per_gpu": per_gpu,
        "mfu": mfu,
        "whole_run_mfu": whole_mfu,
        "device_peak_gib": device_peak_gib,
        "llamafactory_wall_s": lf_wall,
        "all_results": results,
        "model": built,
        "smoke": smoke,
    }
    (work / "gpu_lora_throughput.json").write_text(
        json.dumps(summary, indent=2, default=str), encoding="utf-8"
    )
    if args.json:
        rows = [
            {
                "metric": "LoRA SFT tokens/s/GPU (steady)",
                "value": per_gpu,
                "unit": "tok/s",
                "baseline": None,
                "ratio": None,
                "note": probe["device_name"] + (" smoke" if smoke else ""),
            },
            {
                "metric": "peak memory allocated",
                "value": thr["vram_allocated_gib"],
                "unit": "GiB",
                "baseline": None,
                "ratio": None,
                "note": "",
            },
            {
                "metric": "MFU (6N FLOPs/token)",
                "value": None if mfu is None else mfu * 100,
                "unit": "%",
                "baseline": None,
                "ratio": None,
                "note": f"of {peak:g} TFLOPS bf16 dense" if peak else "no peak known: --peak-tflops",
            },
        ]
        print(
            json.dumps({"bench": "gpu_lora_throughput", "rows": rows, "details": summary}, default=str),
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
