"""The ner_retrain pipeline run at library level, for fault injection.

`Pipeline` runs the DAG's task callables (plugins/retrain_airflow/tasks.py) in DAG order, with
what Airflow would give them replaced by plain values: the task context (params, run id, dag,
outlet_events),
the S3 store (a real boto3 client on the moto server, with `S3Faults` hooks) and the settings.
The stages themselves are the real ones: intake with Great Expectations, the dataset build,
`retrain.train.run_training` (the code behind `retrain train`), `retrain.evaluate.run_evaluation`
and the promotion into a real MLflow registry (sqlite).

Two things cannot run in the Airflow environment and are replaced, both at their process edge:
- ``llamafactory-cli`` is `fake_trainer.py` (torch is not installed here); peft's adapter-load
  check is skipped for the same reason (it runs for real in tests/train).
- generation is `ScriptedModel`: a "good" adapter answers the golden set's gold, a "fair" one
  half of it, a "bad" one ``[]``, the base model nothing; parsing and scoring are the real ones.

`Night` keeps each task's XCom, so a failed task can be re-run with its upstream results, as an
Airflow retry or a cleared task does (`Pipeline.resume`). `check_invariants` states what must hold
after any fault.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from tests.faults.s3faults import S3Faults, retrying_client

HERE = Path(__file__).resolve().parent
_ACTIVE = threading.local()


def _active() -> Pipeline:
    return _ACTIVE.pipeline


STAGES = (
    "find_new_batches",
    "validate_batches",
    "build_dataset",
    "prepare_training",
    "train",
    "prepare_evaluation",
    "evaluate",
    "decide",
    "promote",
)


class ScriptedModel:
    """A generation backend for `run_evaluation(backend_factory=…)` whose answers are scripted.

    The adapter's quality tag decides: "good" answers every golden sentence's gold, "fair" every
    other one (``[]`` for the rest), "bad" always ``[]``; the base model answers nothing (a parse
    failure). ``crash(tag)`` (tag: "good", "fair", "bad" or "base") may raise to inject a fault
    mid-evaluation.
    ``calls`` lists the tag of every generate call."""

    def __init__(self) -> None:
        self.answers: dict[str, str] = {}
        self.calls: list[str] = []
        self.crash: Callable[[str], None] | None = None

    def factory(
        self,
        backend: str,
        base_model_dir: str,
        *,
        template: str = "qwen",
        adapter_dirs: Any = (),
        trust_remote_code: bool = False,
        prefix_cache: bool = True,
    ) -> ScriptedModel:
        return self

    def prepare(self, adapter_dir: Any) -> None:
        pass

    @staticmethod
    def tag(adapter_dir: Any) -> str:
        if adapter_dir is None:
            return "base"
        text = (Path(adapter_dir) / "adapter_model.safetensors").read_text()
        return text.split("quality=", 1)[1].split()[0]

    def generate(
        self,
        prompts: list[str],
        systems: Any,
        adapter_dir: Any,
        max_new_tokens: int,
        batch_size: int,
        progress: Any = None,
    ) -> list[Any]:
        from retrain.evaluate.generate import GenerationOutput

        tag = self.tag(adapter_dir)
        self.calls.append(tag)
        if self.crash is not None:
            self.crash(tag)
        outs = []
        for i, p in enumerate(prompts):
            right = tag == "good" or (tag == "fair" and i % 2 == 0)
            text = self.answers[p] if right else ("[]" if tag != "base" else "")
            outs.append(GenerationOutput(text, max(1, len(text) // 2), True))
        return outs


class _OutletEventAccessor:
    """What ``context["outlet_events"][asset_or_alias]`` gives a task: ``.extra`` and ``.add``."""

    def __init__(self) -> None:
        self.extra: dict[str, Any] = {}
        self.added: list[tuple[Any, dict[str, Any]]] = []

    def add(self, asset: Any, extra: dict[str, Any] | None = None) -> None:
        self.added.append((asset, dict(extra or {})))


class OutletEvents(dict):
    """The task context's ``outlet_events``, recording what the tasks attach to their outlets."""

    def __missing__(self, key: Any) -> _OutletEventAccessor:
        self[key] = _OutletEventAccessor()
        return self[key]


@dataclass
class Night:
    """One DAG run: its id, params, and each finished task's XCom."""

    run_id: str
    params: dict[str, Any]
    xcom: dict[str, Any] = field(default_factory=dict)
    failed_at: str | None = None
    error: BaseException | None = None
    skipped: bool = False
    seconds: dict[str, float] = field(default_factory=dict)
    outlet_events: OutletEvents = field(default_factory=lambda: OutletEvents())

    @property
    def done(self) -> bool:
        return "promote" in self.xcom

    @property
    def prefix(self) -> str:
        from retrain.ingest import safe_run_id

        return f"runs/{safe_run_id(self.run_id)}"


class Pipeline:
    """One bucket + one registered model, and the DAG's tasks run against them."""

    def __init__(
        self,
        *,
        moto: Any,
        workdir: Path,
        monkeypatch: Any,
        registry_uri: str,
        artifact_uri: str,
        model: str | None = None,
    ) -> None:
        from retrain.config import load_settings
        from retrain.storage import ObjectStore

        self.moto = moto
        self.tag = uuid.uuid4().hex[:8]
        self.workdir = workdir / self.tag
        self.bucket = f"faults-{self.tag}"
        self.client = retrying_client(moto.endpoint, moto.access_key, moto.secret_key)
        self.faults = S3Faults(self.client)
        self.store = ObjectStore(self.client, self.bucket)
        self.store.ensure_bucket()
        self.clean = ObjectStore(moto.client(), self.bucket)  # no faults: for checks
        self.base_model = self.workdir / "models" / (model or f"tiny-{self.tag}")  # its name names the model
        self.base_model.mkdir(parents=True)
        (self.base_model / "config.json").write_text(json.dumps({"model_type": "qwen2", "hidden_size": 64}))
        (self.base_model / "tokenizer.json").write_text("{}")
        self.registry_uri = registry_uri
        self.env = {
            "RETRAIN__S3__BUCKET": self.bucket,
            "RETRAIN__TRAIN__BASE_MODEL": str(self.base_model),
            "RETRAIN__TRAIN__PROFILE": "cpu_tiny",
            "RETRAIN__TRAIN__MODEL_CACHE_DIR": str(self.workdir / "models"),
            "RETRAIN__MODELS__ALLOW": json.dumps([str(self.workdir / "models" / "*")]),
            "RETRAIN__REGISTRY__TRACKING_URI": registry_uri,
            "RETRAIN__REGISTRY__ARTIFACT_LOCATION": artifact_uri,
            "RETRAIN__EVALUATE__MAX_NEW_TOKENS": "32",
        }
        self.settings = load_settings(environ=self.env)
        self.model = ScriptedModel()
        self.trainer_log = self.workdir / "trainer_runs.jsonl"
        self._ctx: dict[str, Any] = {}
        self._install(monkeypatch)

    # -- what Airflow would provide ------------------------------------------------------------
    def _install(self, mp: Any) -> None:
        from retrain_airflow import settings as glue
        from retrain_airflow import tasks

        import retrain.train

        _ACTIVE.pipeline = self
        mp.setenv("RETRAIN_HOME", str(self.workdir / "home"))
        # The task callables read these at call time; they answer for the pipeline the calling
        # thread works for (two pipelines may promote at once in threads).
        mp.setattr(tasks, "settings", lambda: _active().settings)
        mp.setattr(glue, "settings", lambda: _active().settings)  # launchers, assets, listeners
        mp.setattr(tasks, "_store", lambda: _active().store)
        mp.setattr(tasks, "_context", lambda: _active()._ctx)
        import airflow.sdk

        mp.setattr(airflow.sdk, "get_current_context", lambda: _active()._ctx)  # asset events, alerts
        cli = self.workdir / "bin" / "llamafactory-cli"
        cli.parent.mkdir(parents=True, exist_ok=True)
        cli.write_text(f'#!/bin/sh\nexec {sys.executable} {HERE / "fake_trainer.py"} "$@"\n')
        cli.chmod(0o755)
        mp.setattr(retrain.train, "llamafactory_cli", lambda: cli)
        mp.setattr(retrain.train, "verify_adapter_loads", lambda *a, **k: None)  # needs torch
        mp.setenv("RETRAIN_FAKE_TRAINER", "ok")
        mp.setenv("RETRAIN_FAKE_QUALITY", "good")
        mp.setenv("RETRAIN_FAKE_TRAINER_LOG", str(self.trainer_log))

    def use_settings(self, **env: str) -> None:
        """Replace the settings (RETRAIN__* overrides on top of this pipeline's own)."""
        from retrain.config import load_settings

        self.settings = load_settings(environ={**self.env, **env})

    def registry(self) -> Any:
        from retrain.registry import Registry

        return Registry.from_settings(self.settings, str(self.base_model))

    # -- data ----------------------------------------------------------------------------------
    def upload_batch(self, key: str, records: int, seed: int, bad: int = 0) -> None:
        from tests.support.synth import make_batch

        self.clean.put_bytes(key, ("\n".join(make_batch(records, seed=seed, bad=bad)) + "\n").encode("utf-8"))

    # -- the DAG -------------------------------------------------------------------------------
    def night(self, run_id: str | None = None, **params: Any) -> Night:
        defaults = {
            "force": False,
            "dry_run": False,
            "epochs": None,
            "learning_rate": None,
            "lora_rank": None,
            "max_samples": None,
            "base_model": None,
            "golden_set": None,
        }
        return Night(run_id or f"manual__{uuid.uuid4().hex[:8]}", {**defaults, **params})

    def run(self, night: Night | None = None, *, until: str | None = None) -> Night:
        """Run (or continue) ``night`` in DAG order; stop at the first failing task (recorded)."""
        night = night or self.night()
        return self.resume(night, until=until)

    def resume(self, night: Night, *, start: str | None = None, until: str | None = None) -> Night:
        """Run the tasks of ``night`` that have no XCom yet (from ``start`` on, re-running it and
        what follows even if they had one), like an Airflow retry of a failed task."""
        from retrain_airflow import tasks

        _ACTIVE.pipeline = self
        self._ctx = {
            "params": night.params,
            "run_id": night.run_id,
            "dag": SimpleNamespace(dag_id="ner_retrain"),
            "outlet_events": night.outlet_events,
        }
        night.failed_at, night.error = None, None
        if start is not None:
            for stage in STAGES[STAGES.index(start) :]:
                night.xcom.pop(stage, None)
        x = night.xcom
        calls: dict[str, Callable[[], Any]] = {
            "find_new_batches": tasks.find_new_batches,
            "validate_batches": lambda: tasks.ingest_batches(x["find_new_batches"]),
            "build_dataset": tasks.build_dataset,
            "prepare_training": lambda: tasks.prepare_training(x["build_dataset"]),
            "train": lambda: self._train(x["prepare_training"]),
            "prepare_evaluation": lambda: tasks.prepare_evaluation(x["build_dataset"], x["prepare_training"]),
            "evaluate": lambda: self._evaluate(x["prepare_evaluation"]),
            "decide": lambda: tasks.decide(x["build_dataset"], x["validate_batches"], x["prepare_training"]),
            "promote": lambda: tasks.promote(x["prepare_training"]),
        }
        for stage in STAGES:
            if stage in x:
                continue
            t0 = time.monotonic()
            try:
                x[stage] = calls[stage]()
            except Exception as exc:  # the task fails; downstream tasks do not run
                night.failed_at, night.error = stage, exc
                return night
            finally:
                night.seconds[stage] = round(time.monotonic() - t0, 2)
            if stage == "find_new_batches" and not x[stage]:
                night.skipped = True
                return night
            if stage == until:
                return night
        return night

    def _train(self, run_uri: str) -> str:
        """The train stage as `retrain train --run-uri` runs it (same function), on this store."""
        from retrain.storage import parse_s3_uri
        from retrain.train import run_training

        _, prefix = parse_s3_uri(run_uri)
        run_training(self.store, prefix, self.workdir / "work" / prefix.replace("/", "_"))
        return run_uri

    def _evaluate(self, run_uri: str) -> str:
        from retrain.evaluate import run_evaluation
        from retrain.prompt import user_message
        from retrain.storage import parse_s3_uri

        _, prefix = parse_s3_uri(run_uri)
        request = self.clean.get_json(f"{prefix}/eval_request.json")
        golden = json.loads(self.clean.get_bytes(parse_s3_uri(request["golden_uri"])[1]))
        self.model.answers = {user_message(ex["instruction"], ex["input"]): ex["output"] for ex in golden}
        run_evaluation(
            self.client,
            self.bucket,
            prefix,
            workdir=self.workdir / "eval" / prefix.replace("/", "_"),
            backend_factory=self.model.factory,
        )
        return run_uri

    # -- reading state -------------------------------------------------------------------------
    def keys(self, prefix: str = "") -> list[str]:
        return [o.key for o in self.clean.iter_objects(prefix)]

    def pending_marker(self) -> bool:
        return self.clean.exists("state/dataset_pending.json")

    def trainer_runs(self) -> list[dict[str, Any]]:
        if not self.trainer_log.exists():
            return []
        return [json.loads(line) for line in self.trainer_log.read_text().splitlines()]


def jsonl(store: Any, key: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in store.get_bytes(key).decode("utf-8").splitlines() if line.strip()]


def check_invariants(p: Pipeline) -> None:
    """What must hold after any fault, read from S3 and the registry with a fault-free client.

    1. The champion passed the gate: its version is tagged decision=promoted, its run's
       decision.json says promote, and the gate re-applied to its run's eval/report.json promotes;
       the same for every version a finished alias-history event promoted (an unfinished event is
       an alias move that was interrupted).
    2. No registry duplicates: one version per adapter digest (versions are immutable), and every
       version's adapter is still at its content address with that digest.
    3. No labeled record lost: every incoming object is either in the ledger at its current ETag
       (and then its run's intake.json accounts for it, accepted + quarantined == read, and its
       accepted/ and quarantine/ files hold exactly those records) or still pending for intake.
    4. Accepted data nobody trained on stays flagged: without the pending marker, every accepted
       source (key, ETag) is in the manifest of a dataset that a finished promotion used, or its
       object is still pending (intake will process it again and set the marker).
    5. No half-written state in use: a registered version's run has train_result.json and
       eval/report.json; an eval_request.json only exists where train_result.json does; a dataset
       folder whose manifest is there has every file the manifest lists, with its hash.
    """
    import hashlib

    from retrain.adapters import verify_adapter
    from retrain.gate import decide
    from retrain.ingest import find_new_batches, object_slug, read_ledger
    from retrain.runs import EvalReport, safe_run_id
    from retrain.storage import ObjectStore, parse_s3_uri

    store, s = p.clean, p.settings
    reg = p.registry()
    versions = reg.versions()
    champion = reg.champion()
    # 1
    by_version = {v["version"]: v for v in versions}
    promoted = {
        e["to_version"] for e in reg.history() if e.get("kind") == "promote" and e["status"] == "FINISHED"
    }
    for version in promoted | ({champion["version"]} if champion else set()):
        tags = by_version[version]["tags"]
        assert tags.get("decision") == "promoted", ("a version that did not pass the gate was promoted", tags)
        bucket, run_prefix = parse_s3_uri(tags["run_uri"])  # the run may be another pipeline's
        runs = ObjectStore(store.client, bucket)
        assert runs.get_json(f"{run_prefix}/decision.json")["promote"] is True
        report = EvalReport.model_validate(runs.get_json(f"{run_prefix}/eval/report.json"))
        assert decide(report.candidate, report.champion, s.gate).promote, (  # the gate, re-applied
            version,
            report.champion.name,
        )
    # 2
    digests = [v["adapter_digest"] for v in versions]
    assert len(digests) == len(set(digests)), f"duplicate registry versions: {digests}"
    for v in versions:
        verify_adapter(lambda b: ObjectStore(store.client, b), v["adapter_uri"], v["adapter_digest"])
    # 3
    ledger = read_ledger(store, s)
    pending = {o.key for o in find_new_batches(store, s).objects}
    for obj in store.iter_objects(s.s3.incoming_prefix):
        entry = ledger.get(obj.key)
        in_ledger = entry is not None and entry["etag"] == obj.etag and not entry.get("retracted")
        assert in_ledger != (obj.key in pending), (obj.key, entry, obj.key in pending)
        if not in_ledger:
            continue
        rid = safe_run_id(entry["run_id"])
        intake = store.get_json(f"{s.s3.runs_prefix}{rid}/intake.json")
        (outcome,) = [o for o in intake["objects"] if o["key"] == obj.key]
        assert outcome["accepted"] + outcome["quarantined"] == outcome["read"] > 0, outcome
        slug = object_slug(obj.key)
        rows = [
            r for r in jsonl(store, f"{s.s3.accepted_prefix}{slug}.jsonl") if r["source_etag"] == obj.etag
        ]
        assert len(rows) == outcome["accepted"], (obj.key, len(rows), outcome)
        quarantined = jsonl(store, f"{s.s3.quarantine_prefix}{rid}/{slug}.jsonl")
        assert len(quarantined) == outcome["quarantined"], (obj.key, len(quarantined), outcome)
    # 4
    if not store.exists("state/dataset_pending.json"):
        sources = set()
        for o in store.iter_objects(s.s3.accepted_prefix):
            sources |= {(r["source_key"], r["source_etag"]) for r in jsonl(store, o.key)}
        trained: set[tuple[str, str]] = set()
        for key in (k for k in p.keys(s.s3.runs_prefix) if k.endswith("/summary.json")):
            summary = store.get_json(key)
            if summary["decision"].get("dry_run"):
                continue
            manifest = store.get_json(parse_s3_uri(summary["dataset"]["uri"])[1] + "manifest.json")
            trained |= {(x["key"], x["etag"]) for x in manifest["sources"]}
        still_pending = {(o.key, o.etag) for o in find_new_batches(store, s).objects}  # re-ingested next run
        untrained = sources - trained - still_pending
        assert not untrained, f"accepted but never trained, and no pending marker: {untrained}"
    # 5
    for v in versions:
        bucket, run_prefix = parse_s3_uri(v["tags"]["run_uri"])
        runs = ObjectStore(store.client, bucket)
        assert runs.exists(f"{run_prefix}/train_result.json") and runs.exists(
            f"{run_prefix}/eval/report.json"
        ), v
    all_keys = p.keys()
    for key in all_keys:
        if key.endswith("/eval_request.json"):
            assert key.replace("eval_request.json", "train_result.json") in all_keys, key
        if key.startswith(s.s3.datasets_prefix) and key.endswith("/manifest.json"):
            manifest = store.get_json(key)
            folder = key.rsplit("/", 1)[0]
            for name, digest in manifest["files"].items():
                assert hashlib.sha256(store.get_bytes(f"{folder}/{name}")).hexdigest() == digest, (
                    folder,
                    name,
                )
