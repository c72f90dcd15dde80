"""Stage 5 (evaluate): score the candidate adapter and the champion on the same golden set.

Entry point: `run_evaluation_from_uri` (``retrain evaluate --run-uri s3://bucket/runs/<id>``).
It reads ``runs/<id>/eval_request.json`` (`EvalRequest`), generates greedily for every golden
example with the candidate and with the champion (a champion with no adapter is the base model
alone), parses the outputs (`parsing`), scores them (`metrics`) and writes under
``runs/<id>/eval/``: ``report.json``, ``predictions_candidate.jsonl``,
``predictions_champion.jsonl``, ``per_label_f1.png`` and ``report.html``.

Adapters are fetched through `retrain.adapters.fetch_adapter`, which recomputes their digest and
refuses one that differs from the digest the request names (a registered version cannot change).

A result is cached under ``<bucket>/eval_cache/<key>.json``; the key is the SHA-256 of the
adapter's digest (`retrain.adapters.adapter_digest`, or null for the base model), the golden
set's hash, the decoding configuration, a fingerprint of the base model and the parser/metrics
versions. The champion's result is read from the cache when present; both results are written
to it, so a promoted candidate is never generated twice for the same golden set.

This module imports only the standard library and pydantic at import time: `parsing` and `metrics`
are used from the Airflow environment too. Model code is imported when a model is needed.
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

from pydantic import ValidationError

from retrain import runs
from retrain.adapters import fetch_adapter
from retrain.errors import InputError
from retrain.evaluate.metrics import METRICS_VERSION, score, sentence_counts
from retrain.evaluate.parsing import PARSER_VERSION, READINGS, GoldFormatError, parse_entities, parse_gold
from retrain.prompt import user_message
from retrain.records import dumps_jsonl
from retrain.runs import EvalReport, EvalRequest, ModelRef
from retrain.storage import ObjectStore, join_key, parse_s3_uri

log = logging.getLogger(__name__)

CACHE_PREFIX = "eval_cache"
MAX_FAILURES_IN_REPORT = 200


class EvalRequestError(InputError, ValueError):
    """eval_request.json is missing a field or has a wrong value; the message names it."""


def parse_eval_request(data: Any, where: str = runs.EVAL_REQUEST) -> EvalRequest:
    """Validate an eval request (`retrain.runs.EvalRequest`); EvalRequestError naming every wrong field."""
    try:
        return EvalRequest.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}" for err in exc.errors()
        )
        raise EvalRequestError(f"{where}: {problems}") from exc


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

    The headline figures (`metrics.score`'s dict: ``micro``, ``macro_f1``, ``cluener_score``,
    ``per_label``) are the **strict** reading: only valid and repaired outputs count
    (`parsing.READINGS`); a salvaged or unparseable output predicts nothing. ``lenient_micro`` scores
    the salvaged entities too. Adds: ``parse_readings`` (count per reading), ``parse_failure_rate``
    and ``n_parse_failures`` (salvaged + unparseable), ``parse_failures`` ([{"index", "input", "raw",
    "reading", "error"}], at most MAX_FAILURES_IN_REPORT), ``sentences`` ({"strict"|"lenient": per-
    sentence counts, `metrics.sentence_counts`}, what the significance gate resamples),
    ``latency_s`` (wall seconds for all generations), ``tokens_per_s`` (generated tokens / latency),
    ``new_tokens`` and ``n_truncated`` (outputs cut at max_new_tokens).
    """
    if len(raws) != golden.n:
        raise ValueError(f"{len(raws)} outputs for {golden.n} golden examples")
    strict, lenient, rows, failures = [], [], [], []
    readings = dict.fromkeys(READINGS, 0)
    for i, raw in enumerate(raws):
        parsed = parse_entities(raw)
        readings[parsed.reading] += 1
        strict.append(parsed.strict_entities)
        lenient.append(parsed.entities)
        error = parsed.error or ("salvaged from invalid JSON: " + "; ".join(parsed.notes))
        if not parsed.is_parsed:
            failures.append(
                {"index": i, "input": golden.inputs[i], "raw": raw, "reading": parsed.reading, "error": error}
            )
        row = {
            "index": i,
            "input": golden.inputs[i],
            "gold": [list(p) for p in golden.gold[i]],
            "raw": raw,
            "pred": [list(p) for p in parsed.strict_entities],
            "pred_lenient": [list(p) for p in parsed.entities],
            "reading": parsed.reading,
            "parse_ok": parsed.is_parsed,
            "parse_error": "" if parsed.is_parsed else error,
        }
        if new_tokens is not None:
            row["new_tokens"] = int(new_tokens[i])
        if stopped is not None:
            row["stopped"] = bool(stopped[i])
        rows.append(row)
    metrics = score(golden.gold, strict, labels)
    total_tokens = int(sum(new_tokens)) if new_tokens is not None else None
    metrics.update(
        {
            "lenient_micro": score(golden.gold, lenient, labels)["micro"],
            "parse_readings": readings,
            "parse_failure_rate": len(failures) / golden.n,
            "n_parse_failures": len(failures),
            "parse_failures": failures[:MAX_FAILURES_IN_REPORT],
            "sentences": {
                "strict": sentence_counts(golden.gold, strict),
                "lenient": sentence_counts(golden.gold, lenient),
            },
            "latency_s": latency_s,
            "new_tokens": total_tokens,
            "tokens_per_s": (total_tokens / latency_s) if total_tokens is not None and latency_s else None,
            "n_truncated": (sum(1 for s in stopped if not s) if stopped is not None else None),
        }
    )
    return ModelResult(metrics, rows)


def score_model(golden: GoldenSet, raws: Sequence[str], labels: Sequence[str], name: str) -> runs.ModelScores:
    """One model's typed scores from its raw outputs (what `run_evaluation` reports for each side;
    `retrain gate` replays a decision with it)."""
    metrics = score_outputs(golden, raws, labels).metrics
    return runs.ModelScores.model_validate({**metrics, "name": name})


def read_predictions(path: str | Path, n: int) -> list[str]:
    """The raw outputs of one model from a prediction file (``retrain gate``): one JSON line per golden
    example, in golden order; each line a JSON string (the raw output) or an object with a ``raw``
    string (and, if present, an ``index`` equal to the line's position), as in a run's
    ``eval/predictions_<role>.jsonl``. ValueError naming the file, line and field otherwise."""
    raws: list[str] = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(
                    f"{path}: line {lineno}: not JSON ({exc.msg}); expected a JSON string or "
                    'an object with a "raw" string'
                ) from exc
            if isinstance(value, dict):
                if "index" in value and value["index"] != len(raws):
                    raise ValueError(
                        f"{path}: line {lineno}: field 'index' is {value['index']!r}, "
                        f"expected {len(raws)} (lines must follow the golden order)"
                    )
                value = value.get("raw")
                if not isinstance(value, str):
                    raise ValueError(f"{path}: line {lineno}: field 'raw' must be a string")
            elif not isinstance(value, str):
                raise ValueError(
                    f"{path}: line {lineno}: expected a JSON string or an object with a "
                    f'"raw" string, got {type(value).__name__}'
                )
            raws.append(value)
    if len(raws) != n:
        raise ValueError(f"{path}: {len(raws)} predictions for {n} golden examples (one line per example)")
    return raws


# --- files and hashes -------------------------------------------------------------------------


def _base_model_dir(request: Any) -> Path:
    """The request's base model as a local directory, by the one resolver train and export use."""
    from retrain.base_models import resolve_base_model

    return resolve_base_model(request.base_model, request.model_cache_dir or "", request.base_model_revision)


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
    adapter_digest: str | None,
    golden_hash: str,
    decoding: dict[str, Any],
    base_fingerprint: str,
    labels: Sequence[str],
) -> str:
    """SHA-256 naming a cached result: same adapter, golden set, decoding, base and scorer."""
    material = {
        "adapter_digest": adapter_digest,
        "golden_hash": golden_hash,
        "decoding": decoding,
        "base_model": base_fingerprint,
        "labels": list(labels),
        "parser_version": PARSER_VERSION,
        "metrics_version": METRICS_VERSION,
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode("utf-8")).hexdigest()


# --- the stage --------------------------------------------------------------------------------


def run_evaluation_from_uri(run_uri: str, workdir: str | Path | None = None) -> EvalReport:
    """Evaluate the run at ``s3://bucket/runs/<run_id>``; see the module docstring. The S3 client
    comes from `retrain.storage.client_from_env`. Returns the report (`retrain.runs.EvalReport`)."""
    from retrain.storage import client_from_env

    run = runs.RunFolder.from_uri(run_uri)
    return run_evaluation(client_from_env(), run.bucket, run.prefix, workdir=workdir)


@dataclass
class _Side:
    """One model of the comparison, fetched and keyed."""

    role: str
    spec: ModelRef
    adapter_dir: Path | None
    digest: str | None
    key: str


def _load_checked_golden(store_for: Any, request: EvalRequest, request_uri: str) -> GoldenSet:
    g_bucket, g_key = parse_s3_uri(request.golden_uri)
    golden = load_golden(store_for(g_bucket).get_bytes(g_key), where=request.golden_uri)
    if not golden.sha256.startswith(request.golden_hash.lower()):
        raise ValueError(
            f"{request.golden_uri}: sha256 {golden.sha256[:16]}… does not match golden_hash "
            f"{request.golden_hash!r} in {request_uri}: the golden set changed after the request was made"
        )
    return golden


def _sides(store_for: Any, request: EvalRequest, wd: Path, fingerprint: str) -> list[_Side]:
    """Fetch both adapters (digests verified, `retrain.adapters`) and name their cache entries."""
    out = []
    for role, spec in (("candidate", request.candidate), ("champion", request.champion)):
        adapter_dir = digest = None
        if spec.adapter_uri:
            adapter_dir, digest = fetch_adapter(
                store_for, spec.adapter_uri, wd / "adapters" / role, spec.adapter_digest
            )
        key = cache_key(digest, request.golden_hash, request.decoding(), fingerprint, request.labels)
        out.append(_Side(role, spec, adapter_dir, digest, key))
    return out


def _examine(side: _Side, backend: Any, golden: GoldenSet, request: EvalRequest) -> ModelResult:
    """Generate for every golden prompt with one model and score the outputs."""
    from retrain.evaluate.generate import timed_generate

    log.info("%s (%s): generating %d outputs", side.role, side.spec.name, golden.n)
    outs, secs = timed_generate(
        backend, golden.prompts, golden.systems, side.adapter_dir, request.max_new_tokens, request.batch_size
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
    return res


def _publish(
    store: ObjectStore, run_prefix: str, report: EvalReport, results: dict[str, ModelResult], wd: Path
) -> None:
    """Write the report files locally, upload them; report.json last (evaluate's commit marker)."""
    from retrain.evaluate.report import write_report

    out_dir = wd / runs.EVAL_DIR
    write_report(runs.to_json(report), out_dir)
    for role in ("candidate", "champion"):
        (out_dir / f"predictions_{role}.jsonl").write_bytes(dumps_jsonl(results[role].predictions))
    for name, content_type in (
        (runs.EVAL_HTML, "text/html"),
        (runs.EVAL_CHART, "image/png"),
        (runs.predictions_file("candidate"), "application/x-ndjson"),
        (runs.predictions_file("champion"), "application/x-ndjson"),
    ):
        store.put_bytes(join_key(run_prefix, name), (wd / name).read_bytes(), content_type)
    runs.write(store, join_key(run_prefix, runs.EVAL_REPORT), report)


def run_evaluation(
    client: Any,
    bucket: str,
    run_prefix: str,
    *,
    workdir: str | Path | None = None,
    backend_factory: Any = None,
) -> EvalReport:
    """Evaluate candidate and champion for the run under ``run_prefix`` in ``bucket``.

    Writes under ``<run_prefix>/eval/`` (names: `retrain.runs`): report.json (`retrain.runs.EvalReport`:
    each side is `metrics.score`'s dict plus `score_outputs`'s fields plus ``name``, ``version``,
    ``adapter_uri``, ``adapter_digest``, ``cached``, ``cache_key``), predictions_candidate.jsonl,
    predictions_champion.jsonl (one row per golden example: index, input, gold, raw, pred, parse_ok,
    parse_error, new_tokens, stopped), per_label_f1.png, report.html. ``backend_factory(backend,
    base_model, template=, adapter_dirs=, trust_remote_code=, prefix_cache=)`` defaults to
    `generate.make_backend`.
    """
    stores: dict[str, ObjectStore] = {}

    def store_for(name: str) -> ObjectStore:
        return stores.setdefault(name, ObjectStore(client, name))

    store = store_for(bucket)
    request_key = join_key(run_prefix, runs.EVAL_REQUEST)
    if not store.exists(request_key):
        raise EvalRequestError(f"{store.uri(request_key)} is missing")
    request = parse_eval_request(store.get_json(request_key), where=store.uri(request_key))
    with _workdir(workdir) as wd:
        golden = _load_checked_golden(store_for, request, store.uri(request_key))
        base_dir = _base_model_dir(request)
        fingerprint = base_model_fingerprint(base_dir)
        candidate, champion = _sides(store_for, request, Path(wd), fingerprint)
        cached = _read_cache(store, champion.key)
        benchmarks = [(b, _load_benchmark(store_for, b)) for b in request.benchmarks]
        champion_needed = cached is None or any(
            not store.exists(_cache_object(_bench_key(champion, b, request, fingerprint)))
            for b, _ in benchmarks
        )
        factory = backend_factory
        if factory is None:
            from retrain.evaluate.generate import make_backend as factory
        adapter_dirs = [candidate.adapter_dir] + ([champion.adapter_dir] if champion_needed else [])
        backend = factory(
            request.backend,
            str(base_dir),
            template=request.template,
            adapter_dirs=adapter_dirs,
            trust_remote_code=request.trust_remote_code,
            prefix_cache=request.prefix_cache,
        )
        results = {
            side.role: _score_side(store, side, backend, golden, request, fingerprint, cached)
            for side in (candidate, champion)
        }
        report = runs.EvalReport(
            run_id=request.run_id,
            golden_hash=request.golden_hash,
            golden_uri=request.golden_uri,
            golden_sha256=golden.sha256,
            n=golden.n,
            labels=request.labels,
            decoding=request.decoding(),
            base_model=request.base_model,
            base_model_path=str(base_dir),
            candidate=runs.ModelScores.model_validate(results["candidate"].metrics),
            champion=runs.ModelScores.model_validate(results["champion"].metrics),
            benchmarks=[
                _score_benchmark(store, (candidate, champion), backend, bench, request, fingerprint)
                for bench in benchmarks
            ],
        )
        _publish(store, run_prefix, report, results, Path(wd))
    return report


def _score_side(
    store: ObjectStore,
    side: _Side,
    backend: Any,
    golden: GoldenSet,
    request: EvalRequest,
    fingerprint: str,
    cached: dict[str, Any] | None,
) -> ModelResult:
    """One side's result on the golden set: the champion's cached one when there is one, else
    generated, scored and cached; tagged with the side's name, version, adapter and cache key."""
    if side.role == "champion" and cached is not None:
        log.info("champion %s: cached result %s reused", side.spec.name, side.key[:12])
        res = ModelResult({**cached["metrics"], "cached": True}, cached["predictions"])
    else:
        res = _examine(side, backend, golden, request)
        material = {
            "adapter_digest": side.digest,
            "golden_hash": request.golden_hash,
            "decoding": request.decoding(),
            "base_model": fingerprint,
        }
        _write_cache(store, side.key, res, material)
    res.metrics.update(
        name=side.spec.name,
        version=side.spec.version,
        adapter_uri=side.spec.adapter_uri,
        adapter_digest=side.digest,
        cache_key=side.key,
    )
    _log_scores(side, res.metrics, golden.n)
    return res


def _load_benchmark(store_for: Any, bench: runs.BenchmarkRef) -> GoldenSet:
    bucket, key = parse_s3_uri(bench.uri)
    golden = load_golden(store_for(bucket).get_bytes(key), where=bench.uri)
    if not golden.sha256.startswith(bench.hash.lower()):
        raise ValueError(
            f"{bench.uri}: sha256 {golden.sha256[:16]}… does not match the request's {bench.hash}"
        )
    return golden


def _bench_key(side: _Side, bench: runs.BenchmarkRef, request: EvalRequest, fingerprint: str) -> str:
    return cache_key(side.digest, bench.hash, request.decoding(), fingerprint, request.labels)


def _score_benchmark(
    store: ObjectStore,
    sides: tuple[_Side, _Side],
    backend: Any,
    bench: tuple[runs.BenchmarkRef, GoldenSet],
    request: EvalRequest,
    fingerprint: str,
) -> runs.BenchmarkScores:
    """Candidate and champion on one fixed benchmark file (cached like the golden results)."""
    ref, golden = bench
    scores = {}
    for side in sides:
        key = _bench_key(side, ref, request, fingerprint)
        cached = _read_cache(store, key)
        if cached is not None:
            res = ModelResult(cached["metrics"], cached["predictions"])
        else:
            log.info("benchmark %s (%d sentences)", ref.name, golden.n)
            res = _examine(side, backend, golden, request)
            _write_cache(store, key, res, {"adapter_digest": side.digest, "golden_hash": ref.hash})
        model = runs.ModelScores.model_validate({**res.metrics, "name": side.spec.name, "cached": False})
        scores[side.role] = runs.ShortScores.of(model)
    log.info(
        "benchmark %s (exam %s): candidate micro F1 %s, %s %s",
        ref.name,
        ref.exam,
        _f(scores["candidate"].micro_f1),
        sides[1].spec.name,
        _f(scores["champion"].micro_f1),
    )
    return runs.BenchmarkScores(
        name=ref.name, exam=ref.exam, candidate=scores["candidate"], champion=scores["champion"]
    )


def _log_scores(side: _Side, m: dict[str, Any], n: int) -> None:
    log.info(
        "%s (%s): micro F1 %s, macro F1 %s, CLUENER %s, parse failures %d/%d",
        side.role,
        side.spec.name,
        _f(m["micro"]["f1"]),
        _f(m["macro_f1"]),
        _f(m["cluener_score"]),
        m["n_parse_failures"],
        n,
    )


def _f(value: Any) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _cache_object(key: str) -> str:
    return f"{CACHE_PREFIX}/{key}.json"


def _read_cache(store: ObjectStore, key: str) -> dict[str, Any] | None:
    cache_obj = _cache_object(key)
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
