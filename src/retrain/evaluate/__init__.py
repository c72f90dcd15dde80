"""Stage 5 (evaluate): score the candidate adapter and the champion on the same golden set.

Entry point: `run_evaluation_from_uri` (``retrain evaluate --run-uri s3://bucket/runs/<id>``).
It reads ``runs/<id>/eval_request.json`` (`EvalRequest`), generates greedily for every golden
example with the candidate and with the champion (a champion with no adapter is the base model
alone), parses the outputs (`parsing`), scores them (`metrics`) and writes under
``runs/<id>/eval/``: ``report.json``, ``predictions_candidate.jsonl``,
``predictions_champion.jsonl``, ``per_label_f1.png`` and ``report.html``.

A result is cached under ``<bucket>/eval_cache/<key>.json``; the key is the SHA-256 of the
adapter's hash (SHA-256 of adapter_model.safetensors, or null for the base model), the golden
set's hash, the decoding configuration, a fingerprint of the base model and the parser/metrics
versions. The champion's result is read from the cache when present; both results are written
to it, so a promoted candidate is never generated twice for the same golden set.

This module imports only the standard library at import time: `parsing` and `metrics` are used
from the Airflow environment too. Model code is imported when a model is needed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retrain.evaluate.metrics import METRICS_VERSION, score
from retrain.evaluate.parsing import PARSER_VERSION, GoldFormatError, parse_entities, parse_gold
from retrain.prompt import user_message
from retrain.records import dumps_jsonl
from retrain.storage import ObjectStore, join_key, parse_s3_uri

log = logging.getLogger(__name__)

EVAL_REQUEST = "eval_request.json"
CACHE_PREFIX = "eval_cache"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
MAX_FAILURES_IN_REPORT = 200


class EvalRequestError(ValueError):
    """eval_request.json is missing a field or has a wrong value; the message names it."""


@dataclass(frozen=True)
class ModelSpec:
    """A model to score: a display name and an adapter (None: the base model alone)."""

    name: str
    adapter_uri: str | None
    version: str | None = None


@dataclass(frozen=True)
class EvalRequest:
    """The contents of ``runs/<run_id>/eval_request.json``."""

    run_id: str
    golden_uri: str
    golden_hash: str
    base_model: str
    candidate: ModelSpec
    champion: ModelSpec
    labels: list[str]
    max_new_tokens: int = 256
    batch_size: int = 8
    backend: str = "hf"
    template: str = "qwen"
    model_cache_dir: str | None = None

    @classmethod
    def from_json(cls, data: Any, where: str = EVAL_REQUEST) -> EvalRequest:
        """Validate the request; unknown keys and wrong types are errors naming the field."""
        if not isinstance(data, dict):
            raise EvalRequestError(f"{where}: expected a JSON object")
        allowed = {
            "run_id",
            "golden_uri",
            "golden_hash",
            "base_model",
            "candidate",
            "champion",
            "labels",
            "max_new_tokens",
            "batch_size",
            "backend",
            "template",
            "model_cache_dir",
        }
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise EvalRequestError(f"{where}: unknown field(s) {unknown}; expected {sorted(allowed)}")

        def need(key: str, typ: type | tuple[type, ...], default: Any = ...) -> Any:
            if key not in data:
                if default is ...:
                    raise EvalRequestError(f"{where}: field {key!r} is required")
                return default
            value = data[key]
            if not isinstance(value, typ) or isinstance(value, bool) and typ is int:
                raise EvalRequestError(f"{where}: field {key!r} has the wrong type ({value!r})")
            return value

        def model(key: str) -> ModelSpec:
            m = need(key, dict)
            extra = sorted(set(m) - {"name", "adapter_uri", "version"})
            if extra:
                raise EvalRequestError(f"{where}: {key}: unknown field(s) {extra}")
            if not isinstance(m.get("name"), str) or not m["name"]:
                raise EvalRequestError(f"{where}: {key}.name must be a non-empty string")
            uri = m.get("adapter_uri")
            if uri is not None and (not isinstance(uri, str) or not uri):
                raise EvalRequestError(f"{where}: {key}.adapter_uri must be a string or null")
            version = m.get("version")
            return ModelSpec(m["name"], uri, None if version is None else str(version))

        labels = need("labels", list)
        if not labels or not all(isinstance(x, str) and x for x in labels):
            raise EvalRequestError(f"{where}: field 'labels' must be a non-empty list of strings")
        backend = need("backend", str, "hf")
        if backend not in ("hf", "vllm"):
            raise EvalRequestError(f"{where}: field 'backend' must be 'hf' or 'vllm', got {backend!r}")
        req = cls(
            run_id=need("run_id", str),
            golden_uri=need("golden_uri", str),
            golden_hash=need("golden_hash", str),
            base_model=need("base_model", str),
            candidate=model("candidate"),
            champion=model("champion"),
            labels=list(labels),
            max_new_tokens=need("max_new_tokens", int, 256),
            batch_size=need("batch_size", int, 8),
            backend=backend,
            template=need("template", str, "qwen"),
            model_cache_dir=need("model_cache_dir", (str, type(None)), None),
        )
        if req.candidate.adapter_uri is None:
            raise EvalRequestError(f"{where}: candidate.adapter_uri is required")
        if req.max_new_tokens < 1 or req.batch_size < 1:
            raise EvalRequestError(f"{where}: max_new_tokens and batch_size must be >= 1")
        return req

    def decoding(self) -> dict[str, Any]:
        """The decoding configuration (part of the cache key and of the report)."""
        return {
            "backend": self.backend,
            "max_new_tokens": self.max_new_tokens,
            "batch_size": self.batch_size,
            "template": self.template,
            "strategy": "greedy",
        }


@dataclass
class GoldenSet:
    """The golden examples: prompts (user turns), per-example system prompts, gold pairs."""

    inputs: list[str]
    prompts: list[str]
    systems: list[str | None]
    gold: list[list[tuple[str, str]]]
    sha256: str = ""

    @property
    def n(self) -> int:
        return len(self.prompts)


def load_golden(data: bytes, where: str = "golden.json") -> GoldenSet:
    """Parse an alpaca golden list; gold answers are parsed strictly (`parsing.parse_gold`)."""
    try:
        examples = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{where}: not valid UTF-8 JSON: {exc}") from exc
    if not isinstance(examples, list) or not examples:
        raise ValueError(f"{where}: expected a non-empty JSON list of alpaca examples")
    gs = GoldenSet([], [], [], [], hashlib.sha256(data).hexdigest())
    for i, ex in enumerate(examples):
        if (
            not isinstance(ex, dict)
            or not isinstance(ex.get("instruction"), str)
            or not isinstance(ex.get("output"), str)
        ):
            raise ValueError(f"{where}: example {i}: needs string fields 'instruction' and 'output'")
        text = ex.get("input") or ""
        try:
            gold = parse_gold(ex["output"])
        except GoldFormatError as exc:
            raise ValueError(f"{where}: example {i}: field 'output': {exc}") from exc
        gs.inputs.append(text)
        gs.prompts.append(user_message(ex["instruction"], text))
        gs.systems.append(ex.get("system") or None)
        gs.gold.append(gold)
    return gs


@dataclass
class ModelResult:
    """What one model produced on the golden set, scored."""

    metrics: dict[str, Any]
    predictions: list[dict[str, Any]] = field(default_factory=list)


def score_outputs(
    golden: GoldenSet,
    raws: Sequence[str],
    labels: Sequence[str],
    *,
    new_tokens: Sequence[int] | None = None,
    stopped: Sequence[bool] | None = None,
    latency_s: float | None = None,
) -> ModelResult:
    """Parse every raw output, score against gold and collect the per-model report fields.

    Unparseable outputs count as predicting nothing. Adds to `metrics.score`'s dict:
    ``parse_failure_rate``, ``parse_failures`` ([{"input", "raw", "error"}], at most
    MAX_FAILURES_IN_REPORT), ``n_parse_failures``, ``latency_s`` (wall seconds for all
    generations), ``tokens_per_s`` (generated tokens / latency), ``new_tokens`` and
    ``n_truncated`` (outputs cut at max_new_tokens).
    """
    if len(raws) != golden.n:
        raise ValueError(f"{len(raws)} outputs for {golden.n} golden examples")
    preds, rows, failures = [], [], []
    for i, raw in enumerate(raws):
        parsed = parse_entities(raw)
        preds.append(parsed.entities)
        if not parsed.ok:
            failures.append({"index": i, "input": golden.inputs[i], "raw": raw, "error": parsed.error})
        row = {
            "index": i,
            "input": golden.inputs[i],
            "gold": [list(p) for p in golden.gold[i]],
            "raw": raw,
            "pred": [list(p) for p in parsed.entities],
            "parse_ok": parsed.ok,
            "parse_error": parsed.error,
        }
        if new_tokens is not None:
            row["new_tokens"] = int(new_tokens[i])
        if stopped is not None:
            row["stopped"] = bool(stopped[i])
        rows.append(row)
    metrics = score(golden.gold, preds, labels)
    total_tokens = int(sum(new_tokens)) if new_tokens is not None else None
    metrics.update(
        {
            "parse_failure_rate": len(failures) / golden.n,
            "n_parse_failures": len(failures),
            "parse_failures": failures[:MAX_FAILURES_IN_REPORT],
            "latency_s": latency_s,
            "new_tokens": total_tokens,
            "tokens_per_s": (total_tokens / latency_s) if total_tokens is not None and latency_s else None,
            "n_truncated": (sum(1 for s in stopped if not s) if stopped is not None else None),
        }
    )
    return ModelResult(metrics, rows)


# --- files and hashes -------------------------------------------------------------------------


def resolve_base_model(base_model: str, model_cache_dir: str | None) -> Path:
    """A local model directory as it is; otherwise a ModelScope id resolved (cache first, then a
    download) into ``model_cache_dir`` by the training stage's own `retrain.train.resolve_base_model`."""
    path = Path(base_model)
    if (path / "config.json").is_file():
        return path
    if path.is_absolute() or base_model.startswith("."):
        raise FileNotFoundError(f"base_model {base_model}: not a local model directory (no config.json)")
    if not model_cache_dir:
        raise FileNotFoundError(
            f"base_model {base_model!r} is not a local directory and the request has no model_cache_dir"
        )
    from retrain.train import resolve_base_model as resolve

    return Path(resolve(base_model, model_cache_dir))


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def base_model_fingerprint(base_model_dir: str | Path) -> str:
    """Cheap identity of a local base model: config.json and tokenizer files' bytes, weight
    files' names and sizes (hashing many GB of weights on every run would cost minutes)."""
    root = Path(base_model_dir)
    h = hashlib.sha256()
    for path in sorted(p for p in root.iterdir() if p.is_file()):
        if path.suffix in (".safetensors", ".bin", ".pt", ".gguf"):
            h.update(f"{path.name}\x00{path.stat().st_size}\n".encode())
        elif path.name.endswith(".json") or path.name.endswith(".txt") or path.name.endswith(".model"):
            h.update(path.name.encode() + b"\x00" + hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def cache_key(
    adapter_hash: str | None,
    golden_hash: str,
    decoding: dict[str, Any],
    base_fingerprint: str,
    labels: Sequence[str],
) -> str:
    """SHA-256 naming a cached result: same adapter, golden set, decoding, base and scorer."""
    material = {
        "adapter_hash": adapter_hash,
        "golden_hash": golden_hash,
        "decoding": decoding,
        "base_model": base_fingerprint,
        "labels": list(labels),
        "parser_version": PARSER_VERSION,
        "metrics_version": METRICS_VERSION,
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode("utf-8")).hexdigest()


def fetch_adapter(store_for: Any, uri: str, dest: Path) -> Path:
    """Download the adapter's top-level files (s3://…/adapter/) into ``dest``, or use a local
    directory as it is. Checkpoint sub-folders are not fetched."""
    if not uri.startswith("s3://"):
        path = Path(uri)
        if not (path / ADAPTER_WEIGHTS).is_file():
            raise FileNotFoundError(f"adapter {uri}: no {ADAPTER_WEIGHTS} there")
        return path
    bucket, prefix = parse_s3_uri(uri)
    store = store_for(bucket)
    base = prefix.rstrip("/") + "/"
    dest.mkdir(parents=True, exist_ok=True)
    n = 0
    for obj in store.iter_objects(base):
        rel = obj.key[len(base) :]
        if not rel or "/" in rel:
            continue
        store.download_file(obj.key, dest / rel)
        n += 1
    if not (dest / ADAPTER_WEIGHTS).is_file():
        raise FileNotFoundError(f"adapter {uri}: {n} file(s) found but no {ADAPTER_WEIGHTS}")
    return dest


# --- the stage --------------------------------------------------------------------------------


def run_evaluation_from_uri(run_uri: str, workdir: str | Path | None = None) -> dict[str, Any]:
    """Evaluate the run at ``s3://bucket/runs/<run_id>``; see the module docstring. The S3 client
    comes from `retrain.storage.client_from_env`. Returns `run_evaluation`'s summary."""
    from retrain.storage import client_from_env

    client = client_from_env()
    bucket, run_prefix = parse_s3_uri(run_uri.rstrip("/"))
    if not run_prefix:
        raise ValueError(f"{run_uri}: expected s3://bucket/runs/<run_id>")
    return run_evaluation(client, bucket, run_prefix, workdir=workdir)


def run_evaluation(
    client: Any,
    bucket: str,
    run_prefix: str,
    *,
    workdir: str | Path | None = None,
    backend_factory: Any = None,
) -> dict[str, Any]:
    """Evaluate candidate and champion for the run under ``run_prefix`` in ``bucket``.

    Writes under ``<run_prefix>/eval/``: report.json =
    ``{"run_id", "golden_hash", "golden_uri", "golden_sha256", "n", "labels", "decoding",
    "base_model", "base_model_path", "candidate": R, "champion": R}`` where R is `metrics.score`'s dict plus
    `score_outputs`'s fields plus ``name``, ``version``, ``adapter_uri``, ``adapter_hash``,
    ``cached``, ``cache_key``; predictions_candidate.jsonl, predictions_champion.jsonl (one row
    per golden example: index, input, gold, raw, pred, parse_ok, parse_error, new_tokens,
    stopped), per_label_f1.png, report.html. Returns a summary: micro F1 of both, names, URIs.
    ``backend_factory(backend, base_model, template=, adapter_dirs=)`` defaults to
    `generate.make_backend`.
    """
    stores: dict[str, ObjectStore] = {}

    def store_for(name: str) -> ObjectStore:
        return stores.setdefault(name, ObjectStore(client, name))

    store = store_for(bucket)
    request_key = join_key(run_prefix, EVAL_REQUEST)
    request = EvalRequest.from_json(store.get_json(request_key), where=store.uri(request_key))
    eval_prefix = join_key(run_prefix, "eval")

    with _workdir(workdir) as wd:
        g_bucket, g_key = parse_s3_uri(request.golden_uri)
        golden_bytes = store_for(g_bucket).get_bytes(g_key)
        golden = load_golden(golden_bytes, where=request.golden_uri)
        if not golden.sha256.startswith(request.golden_hash.lower()):
            raise ValueError(
                f"{request.golden_uri}: sha256 {golden.sha256[:16]}… does not match golden_hash "
                f"{request.golden_hash!r} in {store.uri(request_key)}: "
                "the golden set changed after the request was made"
            )
        base_dir = resolve_base_model(request.base_model, request.model_cache_dir)
        fingerprint = base_model_fingerprint(base_dir)
        decoding = request.decoding()

        cand_dir = fetch_adapter(
            store_for, request.candidate.adapter_uri or "", Path(wd) / "adapters" / "candidate"
        )
        champ_dir = (
            fetch_adapter(store_for, request.champion.adapter_uri, Path(wd) / "adapters" / "champion")
            if request.champion.adapter_uri
            else None
        )
        cand_hash = sha256_file(cand_dir / ADAPTER_WEIGHTS)
        champ_hash = sha256_file(champ_dir / ADAPTER_WEIGHTS) if champ_dir else None
        cand_key = cache_key(cand_hash, request.golden_hash, decoding, fingerprint, request.labels)
        champ_key = cache_key(champ_hash, request.golden_hash, decoding, fingerprint, request.labels)

        cached = _read_cache(store, champ_key)
        factory = backend_factory
        if factory is None:
            from retrain.evaluate.generate import make_backend as factory
        backend = factory(
            request.backend,
            str(base_dir),
            template=request.template,
            adapter_dirs=[cand_dir] + ([champ_dir] if cached is None else []),
        )

        results: dict[str, ModelResult] = {}
        for role, spec, adapter_dir, a_hash, key in (
            ("candidate", request.candidate, cand_dir, cand_hash, cand_key),
            ("champion", request.champion, champ_dir, champ_hash, champ_key),
        ):
            if role == "champion" and cached is not None:
                log.info("champion %s: cached result %s reused", spec.name, key[:12])
                res = ModelResult(cached["metrics"], cached["predictions"])
                res.metrics["cached"] = True
            else:
                log.info("%s (%s): generating %d outputs", role, spec.name, golden.n)
                from retrain.evaluate.generate import timed_generate

                outs, secs = timed_generate(
                    backend,
                    golden.prompts,
                    golden.systems,
                    adapter_dir,
                    request.max_new_tokens,
                    request.batch_size,
                )
                res = score_outputs(
                    golden,
                    [o.text for o in outs],
                    request.labels,
                    new_tokens=[o.new_tokens for o in outs],
                    stopped=[o.stopped for o in outs],
                    latency_s=secs,
                )
                res.metrics["cached"] = False
                _write_cache(
                    store,
                    key,
                    res,
                    {
                        "adapter_hash": a_hash,
                        "golden_hash": request.golden_hash,
                        "decoding": decoding,
                        "base_model": fingerprint,
                    },
                )
            res.metrics.update(
                {
                    "name": spec.name,
                    "version": spec.version,
                    "adapter_uri": spec.adapter_uri,
                    "adapter_hash": a_hash,
                    "cache_key": key,
                }
            )
            results[role] = res
            m = res.metrics
            log.info(
                "%s (%s): micro F1 %s, macro F1 %s, CLUENER %s, parse failures %d/%d",
                role,
                spec.name,
                _f(m["micro"]["f1"]),
                _f(m["macro_f1"]),
                _f(m["cluener_score"]),
                m["n_parse_failures"],
                golden.n,
            )

        report = {
            "run_id": request.run_id,
            "golden_hash": request.golden_hash,
            "golden_uri": request.golden_uri,
            "golden_sha256": golden.sha256,
            "n": golden.n,
            "labels": request.labels,
            "decoding": decoding,
            "base_model": request.base_model,
            "base_model_path": str(base_dir),
            "candidate": results["candidate"].metrics,
            "champion": results["champion"].metrics,
        }
        from retrain.evaluate.report import write_report

        out_dir = Path(wd) / "eval"
        write_report(report, out_dir)
        for role in ("candidate", "champion"):
            (out_dir / f"predictions_{role}.jsonl").write_bytes(dumps_jsonl(results[role].predictions))
        uris = {}
        for name, content_type in (
            ("report.json", "application/json"),
            ("report.html", "text/html"),
            ("per_label_f1.png", "image/png"),
            ("predictions_candidate.jsonl", "application/x-ndjson"),
            ("predictions_champion.jsonl", "application/x-ndjson"),
        ):
            key = join_key(eval_prefix, name)
            store.put_bytes(key, (out_dir / name).read_bytes(), content_type)
            uris[name] = store.uri(key)

    return {
        "run_id": request.run_id,
        "n": golden.n,
        "candidate_micro_f1": results["candidate"].metrics["micro"]["f1"],
        "champion_micro_f1": results["champion"].metrics["micro"]["f1"],
        "candidate_parse_failure_rate": results["candidate"].metrics["parse_failure_rate"],
        "champion_name": request.champion.name,
        "champion_cached": bool(results["champion"].metrics.get("cached")),
        "report_uri": uris["report.json"],
        "html_uri": uris["report.html"],
        "chart_uri": uris["per_label_f1.png"],
        "predictions_uris": {
            "candidate": uris["predictions_candidate.jsonl"],
            "champion": uris["predictions_champion.jsonl"],
        },
    }


def _f(value: Any) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _read_cache(store: ObjectStore, key: str) -> dict[str, Any] | None:
    cache_obj = f"{CACHE_PREFIX}/{key}.json"
    if not store.exists(cache_obj):
        return None
    try:
        data = store.get_json(cache_obj)
        if data.get("key") != key or "metrics" not in data or "predictions" not in data:
            raise ValueError("unexpected layout")
        return data
    except (ValueError, AttributeError) as exc:
        log.warning("ignoring unreadable eval cache entry %s: %s", store.uri(cache_obj), exc)
        return None


def _write_cache(store: ObjectStore, key: str, res: ModelResult, material: dict[str, Any]) -> None:
    metrics = {k: v for k, v in res.metrics.items() if k not in ("cached",)}
    store.put_json(
        f"{CACHE_PREFIX}/{key}.json",
        {"key": key, "material": material, "metrics": metrics, "predictions": res.predictions},
    )


@contextlib.contextmanager
def _workdir(workdir: str | Path | None) -> Iterator[str]:
    """``workdir`` as it is (created if needed), or a temporary directory removed on exit."""
    if workdir is not None:
        Path(workdir).mkdir(parents=True, exist_ok=True)
        yield str(workdir)
        return
    with tempfile.TemporaryDirectory(prefix="retrain-eval-") as tmp:
        yield tmp
