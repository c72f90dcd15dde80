"""Full retraining vs warm start with replay over five nights of growing data (CPU, tiny model; trainer env).

    .venv-tr/bin/python bench/warm_start.py [--first 120] [--per-night 30] [--nights 5] [--epochs 2]
                                            [--golden 24] [--json]

Night 1 trains a first model on ``--first`` synthetic CLUENER sentences (tests/support/synth); every
later night adds ``--per-night`` new ones. Each night, each mode trains with LLaMA-Factory on the
cpu_tiny profile and the examples `retrain.selection.select_examples` chooses (the same function the
DAG's prepare_training uses):

- full: a new adapter from the base model on the whole history;
- warm start: night 1 is full (no champion yet); later nights continue the previous night's adapter of
  this mode (``adapter_name_or_path``) on the new examples plus a label-stratified replay sample
  (conf ``train.warm_start.replay_share``), with the learning-rate re-warm (``warmup_ratio``).

Per night it prints the training tokens (tokens of LLaMA-Factory's tokenized train split x epochs),
the wall seconds of ``llamafactory-cli train`` and the micro F1 (strict) of each mode's adapter on a
fixed golden set of synthetic sentences no night trains on; then the ratios of training tokens (night
``--nights`` and all nights). The tiny model is random and small: its F1 shows whether warm start loses
what full training learns, not what Qwen2.5-7B would score.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit_json, load_average, row  # noqa: E402

GOLDEN_SEED = 990_001


def _alpaca(lines: list[str], instruction: str, labels: list[str]) -> list[dict[str, Any]]:
    """Synthetic CLUENER lines as the dataset stage writes them (`retrain.prompt.alpaca_example`)."""
    from retrain.formats import cluener
    from retrain.prompt import alpaca_example

    out = []
    for line in lines:
        rec = json.loads(line)
        out.append(alpaca_example(instruction, rec["text"], cluener.entities(rec, labels)))
    return out


def _nights(args: argparse.Namespace, instruction: str, labels: list[str]) -> list[list[dict[str, Any]]]:
    """The training split of each night: night n holds every earlier night's examples plus new ones."""
    from tests.support.synth import make_batch

    seen: set[str] = set()
    nights: list[list[dict[str, Any]]] = []
    history: list[dict[str, Any]] = []
    for n in range(args.nights):
        size = args.first if n == 0 else args.per_night
        fresh = [
            e
            for e in _alpaca(make_batch(size * 2, seed=1000 + n), instruction, labels)
            if e["input"] not in seen
        ]
        fresh = fresh[:size]
        seen.update(e["input"] for e in fresh)
        history = history + fresh
        nights.append(list(history))
    return nights


def _train(
    model_dir: Path,
    examples: list[dict[str, Any]],
    work: Path,
    epochs: float,
    parent: Path | None,
    warmup: float,
) -> tuple[Path, int, float]:
    """Train one adapter with llamafactory-cli; (adapter dir, training tokens, wall seconds)."""
    from retrain import tokenized_cache
    from retrain.config import load_settings
    from retrain.train import render_llamafactory_yaml, run_llamafactory

    shutil.rmtree(work, ignore_errors=True)
    (work / "data").mkdir(parents=True)
    (work / "data" / "night.json").write_text(json.dumps(examples, ensure_ascii=False), encoding="utf-8")
    (work / "data" / "dataset_info.json").write_text(json.dumps({"night": {"file_name": "night.json"}}))
    cfg = load_settings(environ={"RETRAIN__S3__BUCKET": "bench"}).llamafactory_config("cpu_tiny")
    cfg.pop("eval_dataset", None)
    cfg.update(num_train_epochs=epochs, tokenized_path=str(work / "tokenized"), plot_loss=False)
    if parent is not None:
        cfg.update(adapter_name_or_path=str(parent), warmup_ratio=warmup)
    text = render_llamafactory_yaml(
        cfg,
        model_name_or_path=str(model_dir),
        dataset_dir=str(work / "data"),
        output_dir=str(work / "out"),
        dataset="night",
    )
    (work / "train.yaml").write_text(text, encoding="utf-8")
    started = time.perf_counter()
    run_llamafactory(work / "train.yaml", work / "llamafactory.log", cwd=work)
    seconds = time.perf_counter() - started
    tokens = tokenized_cache.train_tokens(work / "tokenized") or 0
    return work / "out", round(tokens * epochs), seconds


def _micro_f1(model_dir: Path, adapter: Path, golden: list[dict[str, Any]], labels: list[str]) -> float:
    from retrain.evaluate.generate import generate, load_model
    from retrain.evaluate.metrics import score
    from retrain.evaluate.parsing import parse_entities, parse_gold
    from retrain.prompt import user_message

    model, tokenizer = load_model(model_dir, adapter, device="cpu")
    prompts = [user_message(e["instruction"], e["input"]) for e in golden]
    outs = generate(model, tokenizer, prompts, max_new_tokens=48, batch_size=16)
    pred = [parse_entities(o.text).strict_entities for o in outs]
    gold = [parse_gold(e["output"]) for e in golden]
    return float(score(gold, pred, labels)["micro"]["f1"] or 0.0)


def _night_row(
    n: int, full: tuple[int, float, float], warm: tuple[int, float, float], examples: tuple[int, int]
) -> dict[str, Any]:
    return {
        "night": n,
        "full_examples": examples[0],
        "warm_examples": examples[1],
        "full_tokens": full[0],
        "warm_tokens": warm[0],
        "full_s": round(full[1], 1),
        "warm_s": round(warm[1], 1),
        "full_f1": round(full[2], 4),
        "warm_f1": round(warm[2], 4),
    }


def run(args: argparse.Namespace, tmp: Path) -> list[dict[str, Any]]:
    from retrain.config import load_settings
    from retrain.selection import select_examples
    from tests.support.synth import make_batch
    from tests.support.tiny_model import build_tiny_model

    settings = load_settings(environ={"RETRAIN__S3__BUCKET": "bench"})
    warm_cfg = settings.train.warm_start
    instruction = settings.prompt.render_instruction()
    model_dir = build_tiny_model(tmp / "tiny", seed=0)
    nights = _nights(args, instruction, settings.prompt.labels)
    trained = {e["input"] for night in nights for e in night}
    golden = [
        e
        for e in _alpaca(make_batch(args.golden * 2, seed=GOLDEN_SEED), instruction, settings.prompt.labels)
        if e["input"] not in trained
    ]
    golden = golden[: args.golden]
    rows: list[dict[str, Any]] = []
    warm_parent: Path | None = None
    for n, current in enumerate(nights, start=1):
        full_dir, full_tokens, full_s = _train(model_dir, current, tmp / f"full-{n}", args.epochs, None, 0.0)
        full = (full_tokens, full_s, _micro_f1(model_dir, full_dir, golden, settings.prompt.labels))
        if warm_parent is None:  # the first model: warm start falls back to full
            warm_dir, warm, warm_examples = full_dir, full, len(current)
        else:
            sample = select_examples(
                current, nights[n - 2], mode="warm_start", max_samples=None,
                replay_share=warm_cfg.replay_share, seed=warm_cfg.replay_seed,
            )  # fmt: skip
            warm_dir, tokens, secs = _train(
                model_dir, sample.examples, tmp / f"warm-{n}", args.epochs, warm_parent, warm_cfg.warmup_ratio
            )
            warm = (tokens, secs, _micro_f1(model_dir, warm_dir, golden, settings.prompt.labels))
            warm_examples = len(sample.examples)
        warm_parent = tmp / f"warm-adapter-{n}"
        shutil.copytree(warm_dir, warm_parent, ignore=shutil.ignore_patterns("checkpoint-*"))
        rows.append(_night_row(n, full, warm, (len(current), warm_examples)))
        r = rows[-1]
        print(
            f"night {n}: full {r['full_examples']:4d} ex {r['full_tokens']:8d} tok {r['full_s']:6.1f} s "
            f"F1 {r['full_f1']:.4f} | warm {r['warm_examples']:4d} ex {r['warm_tokens']:8d} tok "
            f"{r['warm_s']:6.1f} s F1 {r['warm_f1']:.4f}",
            flush=True,
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--first", type=int, default=120, help="night 1's examples")
    p.add_argument("--per-night", type=int, default=30, help="new examples of each later night")
    p.add_argument("--nights", type=int, default=5)
    p.add_argument("--epochs", type=float, default=2.0)
    p.add_argument("--golden", type=int, default=24, help="golden sentences (never trained on)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON line last")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    print(f"load average at start: {load_average()}", flush=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-warm-") as tmp:
        rows = run(args, Path(tmp))
    last = rows[-1]
    total_full, total_warm = sum(r["full_tokens"] for r in rows), sum(r["warm_tokens"] for r in rows)
    later_full = sum(r["full_tokens"] for r in rows[1:])
    later_warm = sum(r["warm_tokens"] for r in rows[1:])
    print(
        f"night {last['night']} training tokens full / warm: {last['full_tokens'] / last['warm_tokens']:.2f}x"
    )
    print(f"nights 2-{last['night']} training tokens full / warm: {later_full / later_warm:.2f}x")
    print(f"all {last['night']} nights training tokens full / warm: {total_full / total_warm:.2f}x")
    print(f"night {last['night']} golden micro F1: full {last['full_f1']:.4f}, warm {last['warm_f1']:.4f}")
    print(f"total {time.perf_counter() - started:.0f} s; load average at end: {load_average()}", flush=True)
    if args.json:
        n = last["night"]
        rows_out = [
            row(
                f"night {n} training tokens, warm start (baseline: full)",
                last["warm_tokens"],
                "tok",
                last["full_tokens"],
            ),
            row(
                f"all {n} nights training tokens, warm start (baseline: full)", total_warm, "tok", total_full
            ),
            row(
                f"night {n} golden micro F1, warm start (baseline: full)",
                last["warm_f1"],
                "F1",
                last["full_f1"],
            ),
        ]
        emit_json("warm_start", rows_out, {"nights": rows, "args": vars(args)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
