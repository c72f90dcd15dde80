"""The GPU check in one command: LoRA SFT seed YAML vs speed-tuned YAML, and golden-set generation
one-at-a-time vs batched vs prefix-cached, on a randomly initialised Qwen2.5-shaped model.

    python bench/gpu/run.py --out DIR [--shape 7b|3b|1.5b|0.5b] [--steps 30] [--dry-run]

Made for a GPU machine that has Python 3.12, torch, transformers, peft and accelerate, no network and
at most 64 MiB of files brought along (bench/README.md, "GPU check"):

1. setup: the wheels in --wheels (default bench/gpu/wheels/, made by bench/gpu/prepare_wheels.py) are
   installed with ``pip install --no-index --no-deps --target OUT/site``; OUT/site, the repository's
   src/ (the project requires Python < 3.12, so it is put on the path, not installed) and the
   repository root go first on PYTHONPATH of every later step, OUT/site/bin first on PATH
   (``llamafactory-cli``). A bare ``torchaudio`` import shim is written only where torchaudio is missing:
   LLaMA-Factory imports it unconditionally (data/mm_plugin.py) and never calls it for text SFT.
   Every later step runs in a fresh interpreter, so the installed versions are the ones imported.
2. model: `bench/gpu_lora_throughput.py`'s builder (``--internal build``): random weights of the
   chosen Qwen2.5 shape, bf16, initialised on the GPU, with the project's tokenizer.
3. (a) training, the same synthetic CLUENER examples for both: the seed's YAML
   (conf/llamafactory/production.yaml) and the seed's YAML + bench/gpu/tuned.yaml, each for --steps
   optimizer steps through `retrain.train.run_llamafactory`; tokens/s/GPU (non-padding, after
   --warmup-steps), MFU (6N per token with N the matmul parameters, as gpu_lora_throughput.py; the
   tuned YAML turns gradient checkpointing off, so ~4N are executed: its MFU is the same useful-work
   measure, comparable between rows), peak memory (torch, RECORD_VRAM), first and last loss.
4. (b) generation with each of the two adapters just trained, on --gen-n golden-style prompts
   (the project's instruction + synthetic sentences): one at a time (the first --single-n prompts),
   batched (--batch-size), prefix-cached (conf evaluate.prefix_cache); tokens/s, and whether the
   outputs agree (bf16: reported, not asserted).
5. one table on stdout and in OUT/table.txt; OUT/results.json; each step's log under OUT/logs/.

``--dry-run``: the same steps on CPU with the tiny model's shape, float32, 3 steps, 8 prompts: checks
the plumbing (run by `make test`, tests/bench/test_gpu_run.py); its numbers are not measurements.
A step that fails (e.g. out of memory) is a row marked FAILED, the others still run; exit 1 then.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
GLT = REPO / "bench" / "gpu_lora_throughput.py"

#: Qwen2.5 config.json shapes (Instruct models), random weights.
QWEN25_SHAPES: dict[str, dict[str, Any]] = {
    "7b": {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
           "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
           "tie_word_embeddings": False},
    "3b": {"hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36,
           "num_attention_heads": 16, "num_key_value_heads": 2, "vocab_size": 151936,
           "tie_word_embeddings": True},
    "1.5b": {"hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
             "num_attention_heads": 12, "num_key_value_heads": 2, "vocab_size": 151936,
             "tie_word_embeddings": True},
    "0.5b": {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
             "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936,
             "tie_word_embeddings": True},
}  # fmt: skip
COMMON_SHAPE = {"max_position_embeddings": 32768, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6}
MARK = "@@RESULT@@"


# --------------------------------------------------------------------------- orchestration (stdlib only)


def setup(out: Path, wheels: Path, dry_run: bool) -> dict[str, Any]:
    """Install the brought wheels into OUT/site and set PYTHONPATH/PATH for every later step."""
    site = out / "site"
    site.mkdir(parents=True, exist_ok=True)
    found = sorted(wheels.glob("*.whl")) if wheels.is_dir() else []
    info: dict[str, Any] = {"wheels": [(w.name, w.stat().st_size) for w in found], "install_s": 0.0}
    if found and not dry_run:
        t0 = time.perf_counter()
        cmd = [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--target", str(site)]
        subprocess.run([*cmd, *map(str, found)], check=True, stdout=subprocess.DEVNULL)
        info["install_s"] = time.perf_counter() - t0
    paths = [str(site), str(REPO / "src"), str(REPO)]
    if os.environ.get("PYTHONPATH"):
        paths.append(os.environ["PYTHONPATH"])
    os.environ["PYTHONPATH"] = os.pathsep.join(paths)
    os.environ["PATH"] = os.pathsep.join([str(site / "bin"), os.environ.get("PATH", "")])
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ["RECORD_VRAM"] = "1"
    probe = phase_child("probe", out, {})
    if not probe["torchaudio"]:
        shim = site / "torchaudio"
        shim.mkdir(exist_ok=True)
        (shim / "__init__.py").write_text(
            '"""Import shim written by bench/gpu/run.py: LLaMA-Factory imports torchaudio at module level;\n'
            'text SFT never calls it. Not a torchaudio."""\n__version__ = "0+shim"\n',
            encoding="utf-8",
        )
        info["torchaudio_shim"] = True
    info["probe"] = phase_child("probe", out, {})
    return info


def phase_child(phase: str, out: Path, opts: dict[str, Any], timeout: float = 1800) -> dict[str, Any]:
    """Run one step in a fresh interpreter (its log in OUT/logs/<phase>.log) and return its JSON result."""
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    name = opts.get("name", phase)
    with open(logs / f"{name}.log", "w", encoding="utf-8") as log:
        proc = subprocess.run(
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "--phase",
                phase,
                "--out",
                str(out),
                json.dumps(opts),
            ],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            timeout=timeout,
        )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(MARK)]
    if proc.returncode != 0 or not lines:
        tail = (logs / f"{name}.log").read_text(encoding="utf-8", errors="replace")[-1500:]
        return {"failed": f"exit {proc.returncode}", "log_tail": tail}
    return json.loads(lines[-1][len(MARK) :])


# --------------------------------------------------------------------------- steps (fresh interpreters)


def step_probe(out: Path, opts: dict[str, Any]) -> dict[str, Any]:
    import importlib.util

    def version(mod: str) -> str | None:
        if importlib.util.find_spec(mod) is None:
            return None
        try:
            return str(getattr(__import__(mod), "__version__", "?"))
        except Exception as exc:  # a broken install: say so instead of failing the probe
            return f"broken: {exc}"

    mods = ["torch", "transformers", "tokenizers", "peft", "accelerate", "datasets", "trl", "llamafactory",
            "liger_kernel", "pydantic", "yaml", "omegaconf", "pandas", "pyarrow", "matplotlib"]  # fmt: skip
    found = {m: version(m) for m in mods}
    found["torchaudio"] = importlib.util.find_spec("torchaudio") is not None
    import torch

    found["cuda"] = torch.cuda.is_available()
    found["device"] = torch.cuda.get_device_name(0) if found["cuda"] else "cpu"
    found["python"] = sys.version.split()[0]
    return found


def step_data(out: Path, opts: dict[str, Any]) -> dict[str, Any]:
    """The project's tokenizer (tiny model dir), the training set and the golden-style prompts."""
    sys.path.insert(0, str(REPO / "bench"))
    import gpu_lora_throughput as glt

    from retrain.config import load_settings
    from retrain.prompt import user_message
    from tests.support import tiny_model
    from tests.support.synth import make_batch

    settings = load_settings()
    tok = tiny_model.build_tiny_model(out / "tiny-qwen2", settings=settings)
    ds = glt.write_dataset(out / "dataset", opts["examples"], settings)
    instruction = settings.prompt.render_instruction()
    texts = [json.loads(line)["text"] for line in make_batch(opts["gen_n"], seed=7)]
    prompts = [user_message(instruction, t) for t in texts]
    (out / "prompts.json").write_text(json.dumps(prompts, ensure_ascii=False), encoding="utf-8")
    return {
        "tokenizer": str(tok),
        "dataset": ds,
        "prompts": len(prompts),
        "system": settings.dataset.system_prompt,
    }


def train_config(opts: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The seed's LLaMA-Factory config (+ tuned.yaml for the tuned row) with the bench's overrides."""
    import importlib.util

    import yaml

    from retrain.config import load_settings

    cfg = load_settings().llamafactory_config("production")
    notes: list[str] = []
    if opts["variant"] == "tuned":
        tuned = yaml.safe_load((HERE / "tuned.yaml").read_text(encoding="utf-8"))
        if tuned.get("enable_liger_kernel") and importlib.util.find_spec("liger_kernel") is None:
            tuned.pop("enable_liger_kernel")
            notes.append("liger_kernel not importable: enable_liger_kernel dropped")
        cfg.update(tuned)
    per_step = int(cfg["per_device_train_batch_size"]) * int(cfg["gradient_accumulation_steps"])
    cfg.update(
        {
            "max_steps": opts["steps"],
            "save_steps": opts["steps"]
            + 1000,  # no checkpoint inside the timed steps; the adapter is saved at the end
            "logging_steps": 1,
            "include_num_input_tokens_seen": "non_padding",
            "report_to": "none",
            "plot_loss": False,
            "max_samples": opts["examples"],
            "val_size": 0.0,  # the production eval split is not part of what is timed
            "eval_strategy": "no",
        }
    )
    # the profile's eval_dataset (the platform's validation split) is not in this bench's dataset folder
    cfg.pop("eval_dataset", None)
    if cfg.get("neat_packing"):
        # neat_packing hands the model a 4D block-diagonal float mask; HF's "non_padding" count sums
        # the attention mask and came out negative (dry run, 2026-12-02). Count every input position:
        # packed rows are full up to a short tail of padding, so this slightly overstates tokens/s.
        cfg["include_num_input_tokens_seen"] = "all"
        notes.append("tokens incl. packed rows' tail padding")
    if opts["dry_run"]:
        cfg.update(bf16=False, preprocessing_num_workers=1, dataloader_num_workers=0)
        cfg.update(per_device_train_batch_size=2, gradient_accumulation_steps=1)
        notes.append(f"dry run: batch 2 x 1 instead of {per_step} rows/step, float32")
    return cfg, notes


def step_train(out: Path, opts: dict[str, Any]) -> dict[str, Any]:
    sys.path.insert(0, str(REPO / "bench"))
    import gpu_lora_throughput as glt

    from retrain.train import read_trainer_log, render_llamafactory_yaml, run_llamafactory

    cfg, notes = train_config(opts)
    work = out / f"train-{opts['variant']}"
    work.mkdir(parents=True, exist_ok=True)
    text = render_llamafactory_yaml(
        cfg,
        model_name_or_path=opts["model_dir"],
        dataset_dir=str(out / "dataset"),
        output_dir=str(work / "output"),
        dataset=opts["dataset"],
        header=f"bench/gpu/run.py: {opts['variant']} YAML, {opts['steps']} steps",
    )
    (work / "train_config.yaml").write_text(text, encoding="utf-8")
    t0 = time.perf_counter()
    run_llamafactory(work / "train_config.yaml", work / "llamafactory.log", cwd=work)
    wall = time.perf_counter() - t0
    entries = read_trainer_log(work / "output" / "trainer_log.jsonl")
    thr = glt.throughput_from_log(entries, opts["warmup"])
    losses = [float(e["loss"]) for e in entries if isinstance(e.get("loss"), (int, float))]
    n = glt.matmul_params(Path(opts["model_dir"]) / "config.json", int(cfg.get("lora_rank", 8)))
    rate = thr["steady_tokens_per_s"] or thr["whole_run_tokens_per_s"]
    peak = opts.get("peak_tflops")
    return {
        "variant": opts["variant"],
        "notes": notes,
        "config": {
            k: cfg.get(k)
            for k in (
                "per_device_train_batch_size",
                "gradient_accumulation_steps",
                "packing",
                "neat_packing",
                "flash_attn",
                "enable_liger_kernel",
                "disable_gradient_checkpointing",
                "lora_rank",
                "learning_rate",
                "cutoff_len",
                "bf16",
            )
        },  # fmt: skip
        "throughput": thr,
        "tokens_per_s": rate,
        "mfu": rate * 6 * (n["linear"] + n["lora"]) / (peak * 1e12) if peak else None,
        "loss_first": losses[0] if losses else None,
        "loss_last": losses[-1] if losses else None,
        "loss_finite": bool(losses) and all(math.isfinite(v) for v in losses),
        "wall_s": wall,
        "adapter_dir": str(work / "output"),
    }


def step_generate(out: Path, opts: dict[str, Any]) -> dict[str, Any]:
    import torch

    from retrain.evaluate.generate import HFBackend

    prompts = json.loads((out / "prompts.json").read_text(encoding="utf-8"))
    dtype = torch.float32 if opts["dry_run"] else torch.bfloat16
    backend = HFBackend(opts["model_dir"], dtype=dtype)
    rows = []
    for adapter in opts["adapters"]:
        backend.prepare(adapter)
        systems = [opts["system"]] * len(prompts)
        row: dict[str, Any] = {"adapter": adapter}
        for mode, bs, cached, n in (
            ("single", 1, False, opts["single_n"]),
            ("batched", opts["batch_size"], False, len(prompts)),
            ("cached", opts["batch_size"], True, len(prompts)),
        ):
            backend.prefix_cache = cached
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            outs = backend.generate(prompts[:n], systems[:n], adapter, opts["max_new_tokens"], bs)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            secs = time.perf_counter() - t0
            tokens = sum(o.new_tokens for o in outs)
            row[mode] = {"prompts": n, "tokens": tokens, "s": secs, "tokens_per_s": tokens / secs}
            row[f"{mode}_texts"] = [o.text for o in outs]
        k = opts["single_n"]
        row["batched_equals_single"] = row["batched_texts"][:k] == row["single_texts"]
        row["cached_differs"] = sum(
            a != b for a, b in zip(row["cached_texts"], row["batched_texts"], strict=True)
        )
        for mode in ("single", "batched", "cached"):
            row.pop(f"{mode}_texts")
        rows.append(row)
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    return {"rows": rows, "peak_allocated_gib": peak}


STEPS = {"probe": step_probe, "data": step_data, "train": step_train, "generate": step_generate}


# --------------------------------------------------------------------------- the table


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "—"


def table(res: dict[str, Any]) -> str:
    lines = [
        f"GPU check{' (DRY RUN on CPU: plumbing only, not a measurement)' if res['dry_run'] else ''}: "
        f"{res['device']}, model {res['model']}",
        f"{'row':<44}{'tokens/s':>12}{'ratio':>9}{'MFU':>8}{'peak GiB':>10}  notes",
    ]
    seed = res["train"].get("seed", {})
    for variant in ("seed", "tuned"):
        r = res["train"].get(variant, {})
        name = f"(a) LoRA SFT, {variant} YAML"
        if "failed" in r:
            lines.append(f"{name:<44}{'FAILED':>12}  {r['failed']} (log: logs/train-{variant}.log)")
            continue
        mfu = f"{r['mfu']:.1%}" if r.get("mfu") is not None else "n/a"
        loss = (
            f"loss {r['loss_first']:.3f} -> {r['loss_last']:.3f}"
            if r.get("loss_finite")
            else "loss NOT finite"
        )
        lines.append(
            f"{name:<44}{r['tokens_per_s']:>12,.0f}{_ratio(r['tokens_per_s'], seed.get('tokens_per_s')):>9}"
            f"{mfu:>8}{r['throughput']['vram_allocated_gib']:>10.1f}  {loss}; {'; '.join(r['notes'])}"
        )
    gen = res.get("generate", {})
    if "failed" in gen:
        lines.append(f"{'(b) generation':<44}{'FAILED':>12}  {gen['failed']} (log: logs/generate.log)")
    for i, row in enumerate(gen.get("rows", [])):
        label = ("seed", "tuned")[i] if i < 2 else str(i)
        single = row["single"]["tokens_per_s"]
        for mode, text in (("single", "one at a time"), ("batched", "batched"), ("cached", "prefix-cached")):
            m = row[mode]
            note = f"{m['prompts']} prompts, {m['tokens']} tokens"
            if mode == "batched":
                note += f"; equals one-at-a-time on its prompts: {row['batched_equals_single']}"
            if mode == "cached":
                dtype = "float32" if res["dry_run"] else "bf16"
                note += f"; differs from batched: {row['cached_differs']}/{m['prompts']} ({dtype})"
            ratio = _ratio(m["tokens_per_s"], single) if mode != "single" else "1.00x"
            lines.append(
                f"{f'(b) {label} adapter, {text}':<44}{m['tokens_per_s']:>12,.1f}{ratio:>9}{'':>18}  {note}"
            )
    setup = res["setup"]
    lines.append(
        f"setup: {len(setup['wheels'])} wheels installed in {setup['install_s']:.1f} s; "
        f"total {res['total_s']:.0f} s; outputs in {res['out']}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for every output (model, logs, results)")
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny shape, 3 steps: plumbing only")
    ap.add_argument("--shape", choices=sorted(QWEN25_SHAPES), default="7b", help="Qwen2.5 shape (default 7b)")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps per YAML (default 30; 3 dry)")
    ap.add_argument("--warmup-steps", type=int, default=None, help="left out of tokens/s (default 5; 1 dry)")
    ap.add_argument("--gen-n", type=int, default=None, help="golden-style prompts (default 64; 8 dry)")
    ap.add_argument("--single-n", type=int, default=None, help="of which one at a time (default 8; 2 dry)")
    ap.add_argument("--batch-size", type=int, default=None, help="generation batch (default 32; 4 dry)")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="default 64 (8 dry)")
    ap.add_argument(
        "--peak-tflops", type=float, default=None, help="bf16 dense peak (default: by device name)"
    )
    ap.add_argument("--wheels", type=Path, default=HERE / "wheels", help="wheels to install first")
    ap.add_argument("--phase", default=None, help=argparse.SUPPRESS)
    ap.add_argument("opts", nargs="?", default="{}", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    out = args.out.resolve()
    if args.phase:  # a step, in its own interpreter
        print(MARK + json.dumps(STEPS[args.phase](out, json.loads(args.opts))), flush=True)
        return 0
    dry = args.dry_run
    steps = args.steps or (3 if dry else 30)
    warmup = args.warmup_steps if args.warmup_steps is not None else (1 if dry else 5)
    t_start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {"dry_run": dry, "out": str(out), "train": {}}
    res["setup"] = setup(out, args.wheels, dry)
    probe = res["setup"]["probe"]
    if "failed" in probe or (not dry and not probe["cuda"]):
        print(f"probe: {probe}", file=sys.stderr)
        print("needs CUDA (or --dry-run) and an importable torch/transformers", file=sys.stderr)
        return 2
    res["device"] = probe["device"]
    gen_n = args.gen_n or (8 if dry else 64)
    # enough examples for every step of both YAMLs (packed rows hold ~5 examples each)
    examples = steps * (4 if dry else 64) * 6 + 16
    data = phase_child("data", out, {"examples": examples, "gen_n": gen_n})
    if "failed" in data:
        print(f"data step failed: {data}", file=sys.stderr)
        return 1
    model = _build_model(out, args.shape, data["tokenizer"], dry)
    if "failed" in model:
        print(f"model build failed: {model}", file=sys.stderr)
        return 1
    res["model"] = model["name"]
    sys.path.insert(0, str(REPO / "bench"))
    import gpu_lora_throughput as glt  # stdlib-only at import

    peak = args.peak_tflops or (None if dry else glt.peak_tflops_for(probe["device"]))
    common = {"model_dir": model["dir"], "dataset": data["dataset"]["name"], "steps": steps, "warmup": warmup,
              "examples": data["dataset"]["examples"], "dry_run": dry, "peak_tflops": peak}  # fmt: skip
    for variant in ("seed", "tuned"):
        print(f"training with the {variant} YAML ({steps} steps) ...", flush=True)
        res["train"][variant] = phase_child(
            "train", out, {**common, "variant": variant, "name": f"train-{variant}"}
        )
    adapters = [r["adapter_dir"] for r in res["train"].values() if "adapter_dir" in r]
    print(f"generating with {len(adapters)} adapters ...", flush=True)
    res["generate"] = phase_child(
        "generate",
        out,
        {
            "model_dir": model["dir"],
            "adapters": adapters,
            "dry_run": dry,
            "system": data["system"],
            "single_n": args.single_n or (2 if dry else 8),
            "batch_size": args.batch_size or (4 if dry else 32),
            "max_new_tokens": args.max_new_tokens or (8 if dry else 64),
        },  # fmt: skip
    )
    res["total_s"] = time.perf_counter() - t_start
    text = table(res)
    print(text)
    (out / "table.txt").write_text(text + "\n", encoding="utf-8")
    (out / "results.json").write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    failed = [k for k, v in {**res["train"], "generate": res["generate"]}.items() if "failed" in v]
    return 1 if failed or len(adapters) < 2 else 0


def _build_model(out: Path, shape_name: str, tokenizer: str, dry: bool) -> dict[str, Any]:
    """gpu_lora_throughput.py's builder in a fresh interpreter: the Qwen2.5 shape (the tiny shape dry)."""
    sys.path.insert(0, str(REPO / "bench"))
    import gpu_lora_throughput as glt

    if dry:
        from_tiny = json.loads((Path(tokenizer) / "config.json").read_text(encoding="utf-8"))
        keys = (
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
        )
        shape = {k: from_tiny[k] for k in keys} | {"vocab_size": None, "tie_word_embeddings": False}
        name, device, dtype = "tiny shape (dry run)", "cpu", "float32"
    else:
        shape = QWEN25_SHAPES[shape_name] | COMMON_SHAPE
        name, device, dtype = f"Qwen2.5-{shape_name.upper()} shape, random weights", "cuda", "bfloat16"
    model_dir = out / f"model-{'dry' if dry else shape_name}"
    try:
        built = glt._child(
            ["--internal", "build", str(model_dir), json.dumps(shape), tokenizer, device, dtype], timeout=1800
        )
    except RuntimeError as exc:
        return {"failed": str(exc)}
    return {"dir": str(model_dir), "name": f"{name}, {built['parameters'] / 1e9:.2f} B parameters"}


if __name__ == "__main__":
    sys.exit(main())
