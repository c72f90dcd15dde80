"""Greedy generation for evaluation, rendered exactly as LLaMA-Factory rendered the training data.

Prompts are user turns (`retrain.prompt.user_message`). They are turned into token ids by
LLaMA-Factory's own template machinery (`get_template_and_fix_tokenizer` + ``encode_oneturn``
with the example's ``system`` field, or the template's default system when there is none), the
same code path its SFT preprocessing uses, so training and evaluation see identical prompt tokens.

Two backends:
- ``hf``: transformers + peft, batched with LEFT padding and an attention mask, pure greedy
  decoding (no sampling, no repetition penalty, whatever the model's generation_config says).
  Batched output equals one-at-a-time output (tested on the tiny model). With ``prefix_cache``
  (conf evaluate.prefix_cache) the token prefix shared by every prompt of a call (the system turn
  and the long NER instruction) is run through the model once; its KV cache is expanded to each
  batch and only the rest of each prompt is prefilled (`PrefixCache`).
- ``vllm``: used when ``backend: vllm`` and vllm is importable (the GPU trainer image); LoRA
  adapters are served by one engine with ``enable_lora``. Without vllm: `BackendUnavailableError`.

Generation stops at the template's stop words (``<|im_end|>`` for qwen) or the model's eos.
Progress is logged with counts ("generated 64/200") and reported to an optional callback.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
DEFAULT_TEMPLATE = "qwen"


class BackendUnavailableError(RuntimeError):
    """The requested generation backend cannot run in this environment."""


@dataclass(frozen=True)
class GenerationOutput:
    """One completion: decoded text (stop token and special tokens removed), how many tokens were
    generated (the stop token included), and whether a stop token ended it (False: cut at
    max_new_tokens)."""

    text: str
    new_tokens: int
    stopped: bool = True


# --- prompt rendering (shared by both backends) -----------------------------------------------


@dataclass
class PromptEncoder:
    """LLaMA-Factory's chat template bound to a tokenizer."""

    tokenizer: Any
    template: Any
    stop_token_ids: list[int]
    pad_token_id: int

    def encode(self, user: str, system: str | None = None) -> list[int]:
        """Token ids of the prompt (system + user turn + assistant header), as in training."""
        messages = [{"role": "user", "content": user}, {"role": "assistant", "content": ""}]
        prompt_ids, _ = self.template.encode_oneturn(self.tokenizer, messages, system or None, None)
        return list(prompt_ids)


def prompt_encoder(
    tokenizer: Any, template: str = DEFAULT_TEMPLATE, extra_stop_ids: Sequence[int] = ()
) -> PromptEncoder:
    """Bind LLaMA-Factory's template ``template`` to ``tokenizer`` (fixing its special tokens the
    way training does: for qwen, eos becomes ``<|im_end|>``)."""
    from llamafactory.data import get_template_and_fix_tokenizer
    from llamafactory.hparams import DataArguments

    original_eos = tokenizer.eos_token_id
    tmpl = get_template_and_fix_tokenizer(tokenizer, DataArguments(template=template))
    stops = set(tmpl.get_stop_token_ids(tokenizer))
    stops.update(i for i in (original_eos, tokenizer.eos_token_id, *extra_stop_ids) if i is not None)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return PromptEncoder(
        tokenizer=tokenizer, template=tmpl, stop_token_ids=sorted(stops), pad_token_id=int(pad)
    )


def _generation_eos_ids(model: Any) -> list[int]:
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        return []
    return [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]


# --- transformers backend ---------------------------------------------------------------------


@dataclass
class GenerationStats:
    """What one `generate` call did, filled in when passed: ``prefix_tokens`` is the length of the
    shared prefix whose KV cache was computed once and reused (0: none), ``prefill_tokens`` the
    prompt tokens the model ran over (the shared prefix counted once, padding included)."""

    prefix_tokens: int = 0
    prefill_tokens: int = 0
    batches: int = 0


#: A shared prefix shorter than this is not worth a separate forward pass.
MIN_PREFIX_TOKENS = 8


def shared_prefix_length(encoded: Sequence[Sequence[int]]) -> int:
    """Length of the token prefix common to every prompt, leaving at least one token of each prompt
    outside it (generation needs the last prompt token's logits)."""
    if not encoded:
        return 0
    first = encoded[0]
    n = min(len(e) for e in encoded) - 1
    for ids in encoded[1:]:
        k = 0
        while k < n and ids[k] == first[k]:
            k += 1
        n = k
    return max(n, 0)


class PrefixCache:
    """The KV cache of a token prefix, computed once by ``model`` (with its active adapter: a LoRA
    adapter changes the keys and values, so the cache belongs to one model + adapter) and handed
    out as a fresh `DynamicCache` per batch (`for_batch`): generation appends to the cache it gets,
    so each batch needs its own; the prefix tensors are expanded (a view), and the first append
    copies them.

    The batch then holds ``[prefix | left padding | rest of the prompt]`` per row, with the attention
    mask 0 on the padding. transformers derives position ids from the mask (cumsum - 1) and
    prefills only the tokens past the cache, so every real token keeps the position and the
    attended tokens it has in plain left-padded batching. Only for models whose every layer is a
    full-attention `DynamicLayer` (a sliding window would count the padding): `build` returns None
    otherwise.
    """

    def __init__(self, prefix_ids: list[int], layers: list[tuple[Any, Any]], config: Any) -> None:
        self.prefix_ids = prefix_ids
        self._layers = layers
        self._config = config

    @classmethod
    def build(cls, model: Any, prefix_ids: Sequence[int]) -> PrefixCache | None:
        import torch
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        cache = DynamicCache(config=model.config)
        if not cache.layers or any(type(layer) is not DynamicLayer for layer in cache.layers):
            log.info("prefix cache off: the model has non-full-attention cache layers")
            return None
        device = next(model.parameters()).device
        ids = torch.tensor([list(prefix_ids)], dtype=torch.long, device=device)
        with torch.inference_mode():
            model(input_ids=ids, attention_mask=torch.ones_like(ids), past_key_values=cache, use_cache=True)
        layers = [(layer.keys, layer.values) for layer in cache.layers]
        return cls(list(prefix_ids), layers, model.config)

    def for_batch(self, rows: int) -> Any:
        """A new cache holding the prefix for ``rows`` sequences."""
        from transformers import DynamicCache

        data = [(k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1)) for k, v in self._layers]
        return DynamicCache(ddp_cache_data=data, config=self._config)


def load_model(
    base_model_dir: str | Path,
    adapter_dir: str | Path | None = None,
    *,
    device: str | None = None,
    dtype: Any = None,
    trust_remote_code: bool = False,
) -> tuple[Any, Any]:
    """(model, tokenizer) for greedy evaluation: the base model, with the LoRA adapter at
    ``adapter_dir`` applied (unmerged, through peft) when given. ``device`` defaults to cuda when
    available; ``dtype`` to bfloat16 on a GPU that supports it (else float16) and float32 on CPU.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype is None:
        if device.startswith("cuda"):
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        else:
            dtype = torch.float32
    tokenizer = AutoTokenizer.from_pretrained(str(base_model_dir), trust_remote_code=trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(
        str(base_model_dir), dtype=dtype, trust_remote_code=trust_remote_code
    )
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_dir), adapter_name="default")
    model.to(device)
    model.eval()
    return model, tokenizer


def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    max_new_tokens: int = 256,
    batch_size: int = 8,
    progress: Progress | None = None,
    *,
    systems: Sequence[str | None] | str | None = None,
    template: str = DEFAULT_TEMPLATE,
    sort_by_length: bool = True,
    prefix_cache: bool = False,
    stats: GenerationStats | None = None,
) -> list[GenerationOutput]:
    """Greedy completions for user turns ``prompts``, in input order.

    Batches of ``batch_size`` are LEFT-padded (pad id, attention mask 0); with
    ``sort_by_length`` prompts of similar length are batched together (results are returned in
    input order either way). ``systems``: one system prompt for all, or one per prompt (None: the
    template's default, as in training). ``progress(done, total)`` is called after each batch.
    ``prefix_cache``: run the prefix shared by all prompts once and reuse its KV cache in every
    batch (`PrefixCache`; skipped when it is shorter than `MIN_PREFIX_TOKENS`). ``stats`` is filled
    in with what was done.
    """
    import torch

    enc = prompt_encoder(tokenizer, template, extra_stop_ids=_generation_eos_ids(model))
    system_list = _systems(systems, len(prompts))
    encoded = [enc.encode(p, s) for p, s in zip(prompts, system_list, strict=True)]
    order = list(range(len(encoded)))
    if sort_by_length:
        order.sort(key=lambda i: -len(encoded[i]))
    stats = stats if stats is not None else GenerationStats()
    cache = None
    if prefix_cache:
        n_prefix = shared_prefix_length(encoded)
        if n_prefix >= MIN_PREFIX_TOKENS:
            cache = PrefixCache.build(model, encoded[0][:n_prefix])
    stats.prefix_tokens = len(cache.prefix_ids) if cache else 0
    stats.prefill_tokens = stats.prefix_tokens
    config = _greedy_config(max_new_tokens, enc)
    device = next(model.parameters()).device
    results: list[GenerationOutput | None] = [None] * len(encoded)
    total = len(encoded)
    bs = max(1, int(batch_size))
    with torch.inference_mode():
        for start in range(0, total, bs):
            idx = order[start : start + bs]
            batch = _batch_inputs([encoded[i] for i in idx], enc.pad_token_id, cache)
            width = batch["input_ids"].shape[1]
            stats.prefill_tokens += (width - stats.prefix_tokens) * len(idx)
            stats.batches += 1
            inputs = {k: v.to(device) if k != "past_key_values" else v for k, v in batch.items()}
            out = model.generate(**inputs, generation_config=config)
            new = out[:, width:].tolist()
            for row, i in enumerate(idx):
                results[i] = _finish(new[row], enc, tokenizer)
            log.info("generated %d/%d", start + len(idx), total)
            if progress is not None:
                progress(start + len(idx), total)
    return [r for r in results if r is not None]


def _greedy_config(max_new_tokens: int, enc: PromptEncoder) -> Any:
    from transformers import GenerationConfig

    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        repetition_penalty=1.0,
        eos_token_id=enc.stop_token_ids,
        pad_token_id=enc.pad_token_id,
        temperature=None,
        top_p=None,
        top_k=None,
    )


def _batch_inputs(rows: list[list[int]], pad_id: int, cache: PrefixCache | None) -> dict[str, Any]:
    """``input_ids`` and ``attention_mask`` of one batch, LEFT-padded; with a prefix cache, rows
    are ``[prefix | padding | rest]`` and ``past_key_values`` holds the prefix for every row."""
    import torch

    p = len(cache.prefix_ids) if cache is not None else 0
    width = max(len(ids) for ids in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for row, ids in enumerate(rows):
        rest = ids[p:]
        input_ids[row, width - len(rest) :] = torch.tensor(rest, dtype=torch.long)
        attention[row, width - len(rest) :] = 1
        if p:
            input_ids[row, :p] = torch.tensor(ids[:p], dtype=torch.long)
            attention[row, :p] = 1
    batch: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention}
    if cache is not None:
        batch["past_key_values"] = cache.for_batch(len(rows))
    return batch


def _systems(systems: Sequence[str | None] | str | None, n: int) -> list[str | None]:
    if systems is None or isinstance(systems, str):
        return [systems] * n
    if len(systems) != n:
        raise ValueError(f"{len(systems)} system prompts for {n} prompts")
    return list(systems)


def _finish(ids: list[int], enc: PromptEncoder, tokenizer: Any) -> GenerationOutput:
    stops = set(enc.stop_token_ids)
    for k, tok in enumerate(ids):
        if tok in stops:
            return GenerationOutput(tokenizer.decode(ids[:k], skip_special_tokens=True), k + 1, True)
    return GenerationOutput(tokenizer.decode(ids, skip_special_tokens=True), len(ids), False)


# --- backends used by the evaluation stage ----------------------------------------------------


class HFBackend:
    """One base model in memory; LoRA adapters loaded by name and switched per call."""

    name = "hf"

    def __init__(
        self,
        base_model_dir: str | Path,
        template: str = DEFAULT_TEMPLATE,
        prefix_cache: bool = True,
        **load_kwargs: Any,
    ) -> None:
        self.template = template
        self.prefix_cache = prefix_cache
        self.model, self.tokenizer = load_model(base_model_dir, None, **load_kwargs)
        self._adapters: dict[str, str] = {}
        # Warm-up (template set-up, first kernels) so it is not billed to the first model's latency.
        generate(self.model, self.tokenizer, ["warm-up"], 1, 1, template=template)

    def prepare(self, adapter_dir: str | Path | None) -> None:
        """Load an adapter ahead of `generate`, so loading is not part of the timed generation."""
        if adapter_dir is not None:
            self._ensure_adapter(adapter_dir)

    def _ensure_adapter(self, adapter_dir: str | Path) -> str:
        key = str(Path(adapter_dir).resolve())
        if key in self._adapters:
            return self._adapters[key]
        name = f"adapter{len(self._adapters)}"
        from peft import PeftModel

        if isinstance(self.model, PeftModel):
            self.model.load_adapter(key, adapter_name=name)
        else:
            device = next(self.model.parameters()).device
            self.model = PeftModel.from_pretrained(self.model, key, adapter_name=name)
            self.model.to(device)
        self.model.eval()
        self._adapters[key] = name
        return name

    @contextlib.contextmanager
    def _using(self, adapter_dir: str | Path | None) -> Iterator[None]:
        from peft import PeftModel

        if adapter_dir is None:
            ctx = (
                self.model.disable_adapter()
                if isinstance(self.model, PeftModel)
                else contextlib.nullcontext()
            )
            with ctx:
                yield
            return
        self.model.set_adapter(self._ensure_adapter(adapter_dir))
        yield

    def generate(
        self,
        prompts: Sequence[str],
        systems: Sequence[str | None],
        adapter_dir: str | Path | None,
        max_new_tokens: int,
        batch_size: int,
        progress: Progress | None = None,
    ) -> list[GenerationOutput]:
        if adapter_dir is not None:
            self._ensure_adapter(adapter_dir)
        with self._using(adapter_dir):
            return generate(
                self.model,
                self.tokenizer,
                prompts,
                max_new_tokens,
                batch_size,
                progress,
                systems=systems,
                template=self.template,
                prefix_cache=self.prefix_cache,
            )


_VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)


def adapter_rank(adapter_dir: str | Path) -> int:
    """LoRA rank ``r`` from adapter_config.json."""
    cfg = json.loads((Path(adapter_dir) / "adapter_config.json").read_text(encoding="utf-8"))
    return int(cfg.get("r", 8))


class VllmBackend:
    """vLLM engine over the base model with LoRA enabled; greedy (temperature 0)."""

    name = "vllm"

    def __init__(
        self,
        base_model_dir: str | Path,
        template: str = DEFAULT_TEMPLATE,
        max_lora_rank: int = 8,
        trust_remote_code: bool = False,
        **engine_kwargs: Any,
    ) -> None:
        try:
            from vllm import LLM
        except ImportError as exc:
            raise BackendUnavailableError(
                "evaluate.backend is 'vllm' but vllm is not importable in this environment "
                f"({exc}); it is installed only in the GPU trainer image. Use backend: hf here."
            ) from exc
        from transformers import AutoTokenizer

        self.template = template
        self.tokenizer = AutoTokenizer.from_pretrained(
            str(base_model_dir), trust_remote_code=trust_remote_code
        )
        self.encoder = prompt_encoder(self.tokenizer, template)
        rank = next((r for r in _VLLM_LORA_RANKS if r >= max_lora_rank), max_lora_rank)
        self.llm = LLM(
            model=str(base_model_dir),
            enable_lora=True,
            max_lora_rank=rank,
            seed=0,
            trust_remote_code=trust_remote_code,
            **engine_kwargs,
        )
        self._lora_ids: dict[str, int] = {}

    def prepare(self, adapter_dir: str | Path | None) -> None:
        """Nothing to do ahead: vLLM loads a LoRA adapter on its first request."""

    def generate(
        self,
        prompts: Sequence[str],
        systems: Sequence[str | None],
        adapter_dir: str | Path | None,
        max_new_tokens: int,
        batch_size: int,
        progress: Progress | None = None,
    ) -> list[GenerationOutput]:
        from vllm import SamplingParams
        from vllm.lora.request import LoRARequest

        lora = None
        if adapter_dir is not None:
            key = str(Path(adapter_dir).resolve())
            lora_id = self._lora_ids.setdefault(key, len(self._lora_ids) + 1)
            lora = LoRARequest(f"adapter{lora_id}", lora_id, key)
        params = SamplingParams(
            temperature=0.0,
            max_tokens=max_new_tokens,
            stop_token_ids=self.encoder.stop_token_ids,
            skip_special_tokens=True,
        )
        encoded = [
            self.encoder.encode(p, s) for p, s in zip(prompts, _systems(systems, len(prompts)), strict=True)
        ]
        results: list[GenerationOutput] = []
        total = len(encoded)
        chunk = (
            max(int(batch_size), 1) * 8
        )  # the engine batches internally; chunks only pace the progress log
        for start in range(0, total, chunk):
            part = [{"prompt_token_ids": ids} for ids in encoded[start : start + chunk]]
            outs = self.llm.generate(part, params, lora_request=lora, use_tqdm=False)
            for o in outs:
                c = o.outputs[0]
                stopped = c.finish_reason == "stop"
                results.append(GenerationOutput(c.text, len(c.token_ids), stopped))
            log.info("generated %d/%d", len(results), total)
            if progress is not None:
                progress(len(results), total)
        return results


def make_backend(
    backend: str,
    base_model_dir: str | Path,
    *,
    template: str = DEFAULT_TEMPLATE,
    adapter_dirs: Sequence[str | Path | None] = (),
    trust_remote_code: bool = False,
    prefix_cache: bool = True,
) -> HFBackend | VllmBackend:
    """The backend named in the eval request; for vllm, sized for the given adapters' ranks.
    ``trust_remote_code``: conf models.trust_remote_code (`retrain.base_models`), off by default.
    ``prefix_cache``: conf evaluate.prefix_cache (hf only; vLLM manages its own KV cache)."""
    if backend == "hf":
        return HFBackend(base_model_dir, template, prefix_cache, trust_remote_code=trust_remote_code)
    if backend == "vllm":
        ranks = [adapter_rank(d) for d in adapter_dirs if d is not None]
        return VllmBackend(
            base_model_dir,
            template,
            max_lora_rank=max(ranks, default=8),
            trust_remote_code=trust_remote_code,
        )
    raise ValueError(f"unknown evaluation backend {backend!r}: expected 'hf' or 'vllm'")


def timed_generate(
    backend: HFBackend | VllmBackend,
    prompts: Sequence[str],
    systems: Sequence[str | None],
    adapter_dir: str | Path | None,
    max_new_tokens: int,
    batch_size: int,
    progress: Progress | None = None,
) -> tuple[list[GenerationOutput], float]:
    """Generate and return (outputs, wall seconds); adapter loading is done before the clock starts."""
    backend.prepare(adapter_dir)
    t0 = time.perf_counter()
    outs = backend.generate(prompts, systems, adapter_dir, max_new_tokens, batch_size, progress)
    return outs, time.perf_counter() - t0
