"""Batched vs one-at-a-time greedy generation on the tiny model, on CPU (trainer env).

Same prompts (CLUENER dev sentences wrapped in the project's instruction), same model: the
outputs must be identical (asserted); prints both throughputs and the speed-up.

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

        t0 = time.perf_counter()
        batched = generate(model, tokenizer, prompts, args.max_new_tokens, args.batch_size)
        t_batched = time.perf_counter() - t0
        t0 = time.perf_counter()
        single = [generate(model, tokenizer, [q], args.max_new_tokens, 1)[0] for q in prompts]
        t_single = time.perf_counter() - t0

    if batched != single:
        diff = [i for i, (a, b) in enumerate(zip(batched, single, strict=True)) if a != b]
        print(f"FAIL: batched and one-at-a-time outputs differ at {diff}", file=sys.stderr)
        return 1
    tokens = sum(o.new_tokens for o in batched)
    print(
        f"model {model_dir.name}{' + random LoRA' if adapter_dir else ''}, {len(prompts)} prompts, "
        f"max_new_tokens {args.max_new_tokens}, {tokens} tokens generated, "
        f"torch threads {torch.get_num_threads()}"
    )
    print(f"distinct outputs: {len({o.text for o in batched})}/{len(batched)}; outputs identical: yes")
    print(
        f"one at a time     : {t_single:7.2f} s  {tokens / t_single:8.1f} tokens/s  "
        f"{len(prompts) / t_single:6.2f} prompts/s"
    )
    print(
        f"batched (bs {args.batch_size:>3}) : {t_batched:7.2f} s  {tokens / t_batched:8.1f} tokens/s  "
        f"{len(prompts) / t_batched:6.2f} prompts/s"
    )
    print(f"speed-up          : {t_single / t_batched:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
