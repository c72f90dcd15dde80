"""Real generation with the project's tiny model (trainer env): prompt rendering identical to
LLaMA-Factory's training tokenization, left-padded batches equal to one-at-a-time generation,
adapters that change the output, adapter switching, stop tokens, and the vllm guard."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.trainer

N_PROMPTS = 8
MAX_NEW = 20


@pytest.fixture(scope="module")
def instruction() -> str:
    from retrain.config import load_settings

    return load_settings(environ={"RETRAIN__S3__BUCKET": "unused"}).prompt.render_instruction()


@pytest.fixture(scope="module")
def prompts(cluener_dir, instruction) -> list[str]:
    from retrain.prompt import user_message

    lines = (cluener_dir / "dev.json").read_text(encoding="utf-8").splitlines()
    # Sentences of different lengths, so batches really need padding.
    texts = sorted((json.loads(line)["text"] for line in lines[:40]), key=len)[:: 40 // N_PROMPTS][:N_PROMPTS]
    assert len({len(t) for t in texts}) > 3
    return [user_message(instruction, t) for t in texts]


@pytest.fixture(scope="module")
def base(tiny_model_dir):
    from retrain.evaluate.generate import load_model

    return load_model(tiny_model_dir)


@pytest.fixture(scope="module")
def adapted(tiny_model_dir, random_adapter_dir):
    from retrain.evaluate.generate import load_model

    return load_model(tiny_model_dir, random_adapter_dir)


def test_prompt_tokens_match_llamafactory_training_tokenization(tiny_model_dir, tmp_path, instruction):
    """LLaMA-Factory's own SFT preprocessing (get_dataset on an alpaca file) must give, as the
    masked prompt part of each example, exactly the ids the evaluator generates from."""
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.extras.constants import IGNORE_INDEX
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_tokenizer
    from transformers import AutoTokenizer

    from retrain.evaluate.generate import prompt_encoder
    from retrain.prompt import user_message

    examples = [
        {
            "instruction": instruction,
            "input": "温格的球队终于又踢了一场经典的比赛，2比1战胜曼联",
            "output": '[{"label": "name", "text": "温格"}, {"label": "organization", "text": "曼联"}]',
        },
        {
            "instruction": instruction,
            "input": "彭小军认为，国内银行现在走的是台湾的发卡模式",
            "output": '[{"label": "name", "text": "彭小军"}]',
            "system": "你是命名实体识别专家。",
        },
    ]
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "golden.json").write_text(json.dumps(examples, ensure_ascii=False), encoding="utf-8")
    columns = {"prompt": "instruction", "query": "input", "response": "output", "system": "system"}
    (data_dir / "dataset_info.json").write_text(
        json.dumps({"g": {"file_name": "golden.json", "columns": columns}})
    )
    model_args, data_args, training_args, _, _ = get_train_args(
        {
            "model_name_or_path": str(tiny_model_dir),
            "stage": "sft",
            "do_train": True,
            "finetuning_type": "lora",
            "dataset_dir": str(data_dir),
            "dataset": "g",
            "template": "qwen",
            "cutoff_len": 1024,
            "output_dir": str(tmp_path / "out"),
            "overwrite_cache": True,
            "report_to": "none",
            "preprocessing_num_workers": 1,
            "bf16": False,
        }
    )
    tokenizer_module = load_tokenizer(model_args)
    template = get_template_and_fix_tokenizer(tokenizer_module["tokenizer"], data_args)
    dataset = get_dataset(template, model_args, data_args, training_args, "sft", **tokenizer_module)[
        "train_dataset"
    ]

    enc = prompt_encoder(AutoTokenizer.from_pretrained(str(tiny_model_dir)))
    assert len(dataset) == len(examples)
    for row, ex in zip(dataset, examples, strict=True):
        n_prompt = sum(1 for label in row["labels"] if label == IGNORE_INDEX)
        ours = enc.encode(user_message(ex["instruction"], ex["input"]), ex.get("system"))
        assert row["input_ids"][:n_prompt] == ours
        assert row["labels"][n_prompt] != IGNORE_INDEX  # the answer starts right after our prompt
    rendered = [
        enc.tokenizer.decode(enc.encode(user_message(e["instruction"], e["input"]), e.get("system")))
        for e in examples
    ]
    assert rendered[0].startswith("<|im_start|>system\nYou are Qwen")  # default system, as in training
    assert rendered[1].startswith("<|im_start|>system\n你是命名实体识别专家。<|im_end|>")
    assert rendered[0].endswith("<|im_end|>\n<|im_start|>assistant\n")


def test_batched_equals_one_at_a_time_with_left_padding(adapted, prompts):
    from retrain.evaluate.generate import generate

    model, tokenizer = adapted
    seen = []
    real_generate = model.generate

    def spy(*args, **kwargs):
        seen.append(kwargs["attention_mask"].clone())
        return real_generate(*args, **kwargs)

    model.generate = spy
    try:
        progress = []
        batched = generate(
            model, tokenizer, prompts, MAX_NEW, batch_size=3, progress=lambda d, t: progress.append((d, t))
        )
        first_batches = len(seen)
        single = [generate(model, tokenizer, [p], MAX_NEW, batch_size=1)[0] for p in prompts]
    finally:
        del model.generate
    assert batched == single
    assert len({o.text for o in batched}) > N_PROMPTS // 2  # the adapter makes outputs differ per prompt
    assert all(0 < o.new_tokens <= MAX_NEW for o in batched)
    assert progress == [(3, N_PROMPTS), (6, N_PROMPTS), (8, N_PROMPTS)]
    # Left padding: in every batch row the zeros of the mask come first, and some rows have them.
    padded_rows = 0
    for mask in seen[:first_batches]:
        for row in mask.tolist():
            k = row.index(1)
            assert row[k:] == [1] * (len(row) - k)
            padded_rows += k > 0
    assert padded_rows > 0


def test_batched_equals_one_at_a_time_base_model(base, prompts):
    from retrain.evaluate.generate import generate

    model, tokenizer = base
    batched = generate(model, tokenizer, prompts, 8, batch_size=4, sort_by_length=False)
    single = [generate(model, tokenizer, [p], 8, batch_size=1)[0] for p in prompts]
    assert batched == single


def test_prefix_cache_equals_plain_batching_and_prefills_the_prefix_once(adapted, prompts):
    """The shared prefix (system turn + instruction) is run once and its KV cache reused per batch:
    outputs identical to plain left-padded batching (float32), and the model really runs over
    fewer tokens: (N - 1) x prefix fewer, counted at the embedding layer."""
    from retrain.evaluate.generate import GenerationStats, generate, prompt_encoder, shared_prefix_length

    model, tokenizer = adapted
    fed = [0]
    hook = model.get_input_embeddings().register_forward_hook(
        lambda _m, args, _out: fed.__setitem__(0, fed[0] + args[0].numel())
    )
    try:
        plain_stats, cached_stats = GenerationStats(), GenerationStats()
        plain = generate(model, tokenizer, prompts, MAX_NEW, 3, prefix_cache=False, stats=plain_stats)
        fed_plain, fed[0] = fed[0], 0
        cached = generate(model, tokenizer, prompts, MAX_NEW, 3, prefix_cache=True, stats=cached_stats)
        fed_cached = fed[0]
    finally:
        hook.remove()
    assert cached == plain
    assert len({o.text for o in cached}) > N_PROMPTS // 2
    enc = prompt_encoder(tokenizer)
    encoded = [enc.encode(p) for p in prompts]
    n_prefix = shared_prefix_length(encoded)
    assert cached_stats.prefix_tokens == n_prefix > 50  # the instruction is long
    assert plain_stats.prefix_tokens == 0 and plain_stats.batches == cached_stats.batches == 3
    assert fed_plain - fed_cached == n_prefix * (N_PROMPTS - 1)
    assert plain_stats.prefill_tokens - cached_stats.prefill_tokens == n_prefix * (N_PROMPTS - 1)
    # The prefix ends inside the user turn, after the instruction's opening.
    assert "<|im_start|>user" in tokenizer.decode(encoded[0][:n_prefix])


def test_prefix_cache_is_skipped_when_prompts_share_little(adapted, prompts):
    from retrain.evaluate.generate import GenerationStats, generate

    model, tokenizer = adapted
    some = prompts[:4]
    systems = [None, "你是命名实体识别专家。"] * 2  # the prompts differ from the system turn on
    stats = GenerationStats()
    cached = generate(*adapted, some, MAX_NEW, 2, systems=systems, prefix_cache=True, stats=stats)
    assert stats.prefix_tokens == 0
    assert cached == generate(model, tokenizer, some, MAX_NEW, 2, systems=systems)


def test_adapter_changes_the_output(base, adapted, prompts):
    from retrain.evaluate.generate import generate

    out_base = generate(*base, prompts, MAX_NEW, batch_size=4)
    out_adapted = generate(*adapted, prompts, MAX_NEW, batch_size=4)
    assert [o.text for o in out_base] != [o.text for o in out_adapted]
    assert sum(a.text != b.text for a, b in zip(out_base, out_adapted, strict=True)) >= N_PROMPTS // 2


def test_hf_backend_switches_adapters_like_separate_models(
    tiny_model_dir, random_adapter_dir, other_adapter_dir, base, adapted, prompts
):
    from retrain.evaluate.generate import HFBackend, generate, load_model

    some = prompts[:4]
    # prefix_cache on (the default): the prefix's KV cache must follow the adapter switches too.
    backend = HFBackend(tiny_model_dir)
    systems = [None] * len(some)
    b1 = backend.generate(some, systems, None, MAX_NEW, 2)
    a1 = backend.generate(some, systems, random_adapter_dir, MAX_NEW, 2)
    o1 = backend.generate(some, systems, other_adapter_dir, MAX_NEW, 2)
    b2 = backend.generate(some, systems, None, MAX_NEW, 2)
    a2 = backend.generate(some, systems, random_adapter_dir, MAX_NEW, 2)
    assert b1 == b2 == generate(*base, some, MAX_NEW, 2)
    assert a1 == a2 == generate(*adapted, some, MAX_NEW, 2)
    assert o1 == generate(*load_model(tiny_model_dir, other_adapter_dir), some, MAX_NEW, 2)
    assert o1 != a1


def test_stop_tokens_and_finish(base):
    from retrain.evaluate.generate import _finish, prompt_encoder

    model, tokenizer = base
    enc = prompt_encoder(tokenizer)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    endoftext = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert im_end in enc.stop_token_ids
    body = tokenizer.encode('[{"label": "name", "text": "张三"}]', add_special_tokens=False)
    done = _finish(body + [im_end, endoftext, endoftext], enc, tokenizer)
    assert done.text == '[{"label": "name", "text": "张三"}]'
    assert done.new_tokens == len(body) + 1 and done.stopped
    cut = _finish(body, enc, tokenizer)
    assert cut.text == done.text and cut.new_tokens == len(body) and not cut.stopped


def test_system_prompt_count_must_match(base, prompts):
    from retrain.evaluate.generate import generate

    model, tokenizer = base
    with pytest.raises(ValueError, match="system prompts"):
        generate(model, tokenizer, prompts[:2], 4, 2, systems=["a"])


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed here")
def test_vllm_backend_without_vllm_is_a_clear_error(tiny_model_dir):
    from retrain.evaluate.generate import BackendUnavailableError, make_backend

    with pytest.raises(BackendUnavailableError, match="vllm is not importable"):
        make_backend("vllm", tiny_model_dir)
    with pytest.raises(ValueError, match="unknown evaluation backend"):
        make_backend("tgi", Path(tiny_model_dir))
