"""One-at-a-time vs batched vs prefix-cached greedy generation on the tiny model, on CPU (trainer env).

Same prompts (CLUENER dev sentences wrapped in the project's instruction), same model, one run:
- one at a time: batch size 1;
- batched: left-padded batches of --batch-size (`retrain.evaluate.generate.generate`);
- prefix-cached: the same batches, the prompts' shared prefix (system turn + instruction) run once
  and its KV cache reused in every batch (``prefix_cache=True``, conf evaluate.prefix_cache).
The three outputs must be identical in float32 (exit 1 otherwise); prints each throughput, the
prompt tokens the model ran over (prefill), and the ratios. Then, unless --no-bf16, the model is
loaded again in bfloat16 and batched vs prefix-cached outputs are compared (divergence reported,
not failed: bf16 rounding depends on the order of sums).

    .venv-tr/bin/python bench/eval_batched.py [--n 32] [--batch-size 8] [--max-new-tokens 32]

By default the tiny model is built in a temporary directory and a random LoRA adapter
(init_lora_weights=False) is applied, so outputs differ from prompt to prompt (the untrained
tiny model alone prints only newlines). ``--no-adapter`` measures the bare base model.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.support (the tiny model)
CLUENER_DEV = REPO.parent / "shared" / "data" / "cluener" / "dev.json"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=32, help="number of prompts")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--model-dir", default=None, help="a base model dir (default: build the tiny model)")
    p.add_argument("--no-adapter", action="store_true")
    p.add_argument("--no-bf16", action="store_true", help="skip the bfloat16 divergence check")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    import torch

    from retrain.config import load_settings
    from retrain.evaluate.generate import generate, load_model
    from retrain.prompt import user_message

    if args.threads:
        torch.set_num_threads(args.threads)
    instruction = load_settings(environ={"RETRAIN__S3__BUCKET": "bench"}).prompt.render_instruction()
    lines = CLUENER_DEV.read_text(encoding="utf-8").splitlines()[: args.n]
    prompts = [user_message(instruction, json.loads(line)["text"]) for line in lines]

    with tempfile.TemporaryDirectory(prefix="bench-eval-") as tmp:
        model_dir = Path(args.model_dir) if args.model_dir else None
        if model_dir is None:
            from tests.support.tiny_model import build_tiny_model

            model_dir = build_tiny_model(Path(tmp) / "tiny", seed=0)
        adapter_dir = None
        if not args.no_adapter:
            from peft import LoraConfig, get_peft_model
            from transformers import AutoModelForCausalLM

            torch.manual_seed(1)
            peft_model = get_peft_model(
                AutoModelForCausalLM.from_pretrained(str(model_dir)),
                LoraConfig(r=8, lora_alpha=32, target_modules="all-linear", init_lora_weights=False),
            )
            adapter_dir = Path(tmp) / "adapter"
            peft_model.save_pretrained(str(adapter_dir))
        model, tokenizer = load_model(model_dir, adapter_dir)
        generate(model, tokenizer, prompts[:2], 4, 2)  # warm-up: template set-up, first-call costs
        runs = measure(model, tokenizer, prompts, args.max_new_tokens, args.batch_size)
        bf16 = None
        if not args.no_bf16:
            model, tokenizer = load_model(model_dir, adapter_dir, dtype=torch.bfloat16)
            bf16 = [
                generate(model, tokenizer, prompts, args.max_new_tokens, args.batch_size, prefix_cache=pc)
                for pc in (False, True)
            ]

    single, batched, cached = (runs[k][0] for k in ("single", "batched", "cached"))
    if not (batched == single == cached):
        for name, other in (("batched", batched), ("prefix-cached", cached)):
            diff = [i for i, (a, b) in enumerate(zip(other, single, strict=True)) if a != b]
            if diff:
                print(f"FAIL: {name} and one-at-a-time outputs differ at {diff}", file=sys.stderr)
        return 1
    tokens = sum(o.new_tokens for o in batched)
    print(
        f"model {model_dir.name}{' + random LoRA' if adapter_dir else ''}, {len(prompts)} prompts, "
        f"max_new_tokens {args.max_new_tokens}, {tokens} tokens generated, "
        f"torch threads {torch.get_num_threads()}, float32"
    )
    print(
        f"distinct outputs: {len({o.text for o in batched})}/{len(batched)}; "
        "outputs identical (one at a time, batched, prefix-cached): yes"
    )
    prefix = runs["cached"][2].prefix_tokens
    labels = {
        "single": "one at a time     ",
        "batched": f"batched (bs {args.batch_size:>3}) ",
        "cached": f"prefix-cached (bs {args.batch_size:>3})",
    }
    for key, label in labels.items():
        secs, stats = runs[key][1], runs[key][2]
        print(
            f"{label.strip():<22}: {secs:7.2f} s  {tokens / secs:8.1f} tokens/s  "
            f"{len(prompts) / secs:6.2f} prompts/s"
            f"  prefill {stats.prefill_tokens} tokens"
        )
    t_single, t_batched, t_cached = (runs[k][1] for k in ("single", "batched", "cached"))
    print(f"speed-up          : {t_single / t_batched:.2f}x")
    print(
        f"prefix cache      : {t_batched / t_cached:.2f}x over batched, "
        f"{t_single / t_cached:.2f}x over one at "
        f"a time; shared prefix {prefix} tokens, prefill "
        f"{runs['batched'][2].prefill_tokens / max(runs['cached'][2].prefill_tokens, 1):.2f}x fewer tokens"
    )
    if bf16 is not None:
        differ = [i for i, (a, b) in enumerate(zip(*bf16, strict=True)) if a != b]
        print(
            f"bfloat16          : prefix-cached vs batched outputs differ for {len(differ)}/{len(prompts)} "
            f"prompts{' ' + str(differ) if differ else ''}"
        )
    return 0


def measure(model, tokenizer, prompts, max_new_tokens: int, batch_size: int) -> dict:
    """{"single" | "batched" | "cached": (outputs, seconds, GenerationStats)}, measured in turn."""
    from retrain.evaluate.generate import GenerationStats, generate

    runs = {}
    for key, bs, pc in (("batched", batch_size, False), ("cached", batch_size, True)):
        stats = GenerationStats()
        t0 = time.perf_counter()
        outs = generate(model, tokenizer, prompts, max_new_tokens, bs, prefix_cache=pc, stats=stats)
        runs[key] = (outs, time.perf_counter() - t0, stats)
    stats, outs = GenerationStats(), []
    t0 = time.perf_counter()
    for q in prompts:
        one = GenerationStats()
        outs.append(generate(model, tokenizer, [q], max_new_tokens, 1, stats=one)[0])
        stats.prefill_tokens += one.prefill_tokens
        stats.batches += 1
    runs["single"] = (outs, time.perf_counter() - t0, stats)
    return runs


if __name__ == "__main__":
    sys.exit(main())
