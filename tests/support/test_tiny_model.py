# ruff: noqa: F811  (pytest fixtures imported from tests.fixtures_trainer are used as arguments)
"""The tiny random Qwen2 model: builds, loads, speaks ChatML like LLaMA-Factory's qwen template,
is deterministic and idempotent."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from retrain.config import load_settings  # noqa: E402
from tests.fixtures_trainer import make_alpaca_examples, tiny_model_dir  # noqa: E402,F401
from tests.support.tiny_model import (  # noqa: E402
    CHAT_TEMPLATE,
    DEFAULT_SYSTEM,
    MARKER_FILE,
    REQUIRED_FILES,
    build_tiny_model,
)

pytestmark = pytest.mark.trainer

REPO = Path(__file__).resolve().parents[2]


def _digests(d: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir()) if p.is_file()}


def test_builds_a_loadable_qwen2_with_the_right_shape(tiny_model_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    for name in REQUIRED_FILES:
        assert (tiny_model_dir / name).is_file(), name
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    cfg = model.config
    assert (cfg.model_type, cfg.hidden_size, cfg.num_hidden_layers) == ("qwen2", 64, 2)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads) == (4, 2)
    assert cfg.vocab_size == len(tok)
    assert model.num_parameters() < 500_000

    im_end, eot = tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    gen = GenerationConfig.from_pretrained(tiny_model_dir)
    assert gen.eos_token_id == im_end and gen.pad_token_id == eot
    for special in ("<|endoftext|>", "<|im_start|>", "<|im_end|>"):
        assert tok.tokenize(special) == [special]  # one token each, never split

    ids = tok("叶老桂在浙商银行工作。", return_tensors="pt")
    with torch.no_grad():
        logits = model(**ids).logits
    assert logits.shape[-1] == cfg.vocab_size and torch.isfinite(logits).all()


def test_chat_template_is_chatml_and_matches_llamafactory_qwen(tiny_model_dir: Path) -> None:
    pytest.importorskip("llamafactory")
    from llamafactory.data import get_template_and_fix_tokenizer
    from llamafactory.hparams import DataArguments
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert tok.chat_template == CHAT_TEMPLATE
    ex = make_alpaca_examples(1)[0]
    user = f"{ex['instruction']}\n{ex['input']}"
    text = tok.apply_chat_template(
        [{"role": "user", "content": user}], add_generation_prompt=True, tokenize=False
    )
    assert text == (
        f"<|im_start|>system\n{DEFAULT_SYSTEM}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
    )
    with_system = tok.apply_chat_template(
        [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}], tokenize=False
    )
    assert with_system == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n"

    # The exact token ids LLaMA-Factory trains on are what the chat template produces at inference.
    template = get_template_and_fix_tokenizer(tok, DataArguments(template="qwen"))
    prompt_ids, answer_ids = template.encode_oneturn(
        tok, [{"role": "user", "content": user}, {"role": "assistant", "content": ex["output"]}]
    )
    chat_ids = tok.apply_chat_template([{"role": "user", "content": user}], add_generation_prompt=True)
    chat_ids = chat_ids["input_ids"] if hasattr(chat_ids, "keys") else chat_ids
    assert list(chat_ids) == prompt_ids
    assert tok.decode(answer_ids) == ex["output"] + "<|im_end|>\n"


def test_prompts_fit_the_cpu_profile_and_any_text_round_trips(tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    cutoff = load_settings().llamafactory_config("cpu_tiny")["cutoff_len"]
    for ex in make_alpaca_examples(20):
        text = tok.apply_chat_template(
            [
                {"role": "user", "content": f"{ex['instruction']}\n{ex['input']}"},
                {"role": "assistant", "content": ex["output"]},
            ],
            tokenize=False,
        )
        assert len(tok(text)["input_ids"]) < cutoff * 0.9
    # The instruction was in the tokenizer's corpus: it compresses well below one token per character.
    instruction = load_settings().prompt.render_instruction()
    assert len(tok(instruction)["input_ids"]) < len(instruction) / 2
    # Byte-level BPE: characters never seen in the corpus still encode and decode exactly.
    for s in ("龘靐齉 😀", '[{"label": "game", "text": "CSOL生化狂潮"}]', "ＡＢＣ１２３"):
        assert tok.decode(tok(s)["input_ids"]) == s


def test_deterministic_for_a_seed(tiny_model_dir: Path, tmp_path: Path) -> None:
    again = build_tiny_model(tmp_path / "again", seed=0)
    assert _digests(again) == _digests(tiny_model_dir)
    other = _digests(build_tiny_model(tmp_path / "seed1", seed=1))
    same = _digests(tiny_model_dir)
    assert other["tokenizer.json"] == same["tokenizer.json"]  # the tokenizer does not depend on the seed
    assert other["model.safetensors"] != same["model.safetensors"]


def test_idempotent_and_refuses_to_clobber(tiny_model_dir: Path, tmp_path: Path) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in tiny_model_dir.iterdir()}
    assert build_tiny_model(tiny_model_dir, seed=0) == tiny_model_dir
    assert {p.name: p.stat().st_mtime_ns for p in tiny_model_dir.iterdir()} == before
    assert json.loads((tiny_model_dir / MARKER_FILE).read_text())["seed"] == 0

    with pytest.raises(ValueError, match="seed=0; asked for .* seed=7"):
        build_tiny_model(tiny_model_dir, seed=7)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a complete tiny model"):
        build_tiny_model(foreign)
    assert (foreign / "notes.txt").read_text() == "mine"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert build_tiny_model(empty) == empty.resolve()
    assert not [p for p in tmp_path.iterdir() if ".building-" in p.name]  # no temp dir left behind


def test_cli_returns_the_existing_build(tiny_model_dir: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tests.support", "tiny-model", "--out", str(tiny_model_dir)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(tiny_model_dir)


def test_synthetic_sentences_and_answers_are_one_token_per_character(tiny_model_dir: Path) -> None:
    """The demo's data must be copyable: no character of tests.support.synth falls back to bytes."""
    from transformers import AutoTokenizer

    from tests.support.synth import ENTITIES, TEMPLATES

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    chars = {ch for w in [e for v in ENTITIES.values() for e in v] + TEMPLATES for ch in w if ord(ch) > 127}
    split = sorted(ch for ch in chars if len(tok.tokenize(ch)) != 1)
    assert not split, split


def test_the_demo_size_starts_quiet_and_keeps_the_tokenizer(tiny_model_dir: Path, tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    demo = build_tiny_model(tmp_path / "demo", seed=0, size="demo")
    weights, tiny = load_file(demo / "model.safetensors"), load_file(tiny_model_dir / "model.safetensors")
    assert weights.keys() == tiny.keys()
    for name, tensor in weights.items():
        if any(part in name for part in ("q_proj", "o_proj", "down_proj")):
            assert torch.count_nonzero(tensor) == 0, name
            if name.endswith("weight"):
                assert torch.count_nonzero(tiny[name]) > 0, name
        else:  # the same seed draws the same random weights elsewhere
            assert torch.equal(tensor, tiny[name]), name
    assert (demo / "tokenizer.json").read_bytes() == (tiny_model_dir / "tokenizer.json").read_bytes()
    assert json.loads((demo / MARKER_FILE).read_text())["size"] == "demo"
    with pytest.raises(ValueError, match="size=demo seed=0; asked for .* size=tiny seed=0"):
        build_tiny_model(demo, seed=0)
    with pytest.raises(ValueError, match="unknown tiny-model size"):
        build_tiny_model(tmp_path / "other", seed=0, size="huge")
