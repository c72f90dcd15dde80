"""The run folder: every file a stage reads or writes under ``runs/<run id>/``, and its typed shape.

One module owns the contract between the stages, so the producer and the consumer of a file use the
same name and the same model (pydantic, unknown keys rejected): the Airflow tasks, the trainer-side
stages (``retrain train|evaluate|export --run-uri``), the promotion, the UI and the tests.

    runs/<run id>/
      intake.json              IntakeSummary     validate_batches: read, accepted, quarantined, retracted
      dataset.json             DatasetRef        build_dataset: the dataset version this run trains on
      train_request.json       TrainRequest      prepare_training -> train (with its TrainSelection)
      train_data/night.json    the night's training examples the platform chose (`retrain.selection`)
      train/                   trainer_log.jsonl, training_loss.png, all_results.json,
                               train_config.yaml, versions.json, llamafactory.log
      checkpoints/             the newest checkpoint of a failed attempt (resume), hashes.json
      train_result.json        TrainResult       train's commit marker (written last)
      eval_request.json        EvalRequest       prepare_evaluation -> evaluate
      eval/report.json         EvalReport        evaluate's commit marker; report.html, per_label_f1.png,
                                                 predictions_candidate.jsonl, predictions_champion.jsonl
      decision.json            PromotionDecision promote
      summary.json             RunSummary        promote (written last: the run's outcome)
      export_request.json      ExportRequest     prepare_export -> export
      export_result.json       ExportResult      export's commit marker
      merged/                  the merged model (optional export)

Adapters are not stored in the run folder: a trained adapter is written once, content-addressed, under
``<s3.adapters_prefix><digest>/`` (see `retrain.adapters`), so a registered version can never change.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from retrain.errors import InputError
from retrain.storage import ObjectStore, join_key, parse_s3_uri

# -- file names (relative to the run prefix) ---------------------------------------------------------
INTAKE = "intake.json"
DATASET = "dataset.json"
TRAIN_REQUEST = "train_request.json"
TRAIN_RESULT = "train_result.json"
TRAIN_DIR = "train"
TRAIN_DATA = "train_data/night.json"
CHECKPOINTS_DIR = "checkpoints"
CHECKPOINT_HASHES = "checkpoints/hashes.json"
EVAL_REQUEST = "eval_request.json"
EVAL_DIR = "eval"
EVAL_REPORT = "eval/report.json"
EVAL_HTML = "eval/report.html"
EVAL_CHART = "eval/per_label_f1.png"
DECISION = "decision.json"
SUMMARY = "summary.json"
EXPORT_REQUEST = "export_request.json"
EXPORT_RESULT = "export_result.json"
MERGED_DIR = "merged"
#: Files of the train/ folder that the UI and the registry read.
TRAINER_LOG = "train/trainer_log.jsonl"
LOSS_PLOT = "train/training_loss.png"


def predictions_file(role: str) -> str:
    """``eval/predictions_<role>.jsonl`` (role: candidate | champion)."""
    return f"{EVAL_DIR}/predictions_{role}.jsonl"


def safe_run_id(run_id: str) -> str:
    """An Airflow run id as one safe key segment (``manual__2026-…+00:00`` -> ``manual__2026-…_00_00``)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", run_id)[:200] or "run"


def exam_version(golden_hash: str, size: int) -> str:
    """The name of one golden-set version ("the exam"): its content hash and its size, e.g.
    ``3f2a9c1b0d4e5f60/43``. Scores are comparable only on the same exam version."""
    return f"{golden_hash[:16]}/{size}"


class ContractError(InputError, ValueError):
    """A run-folder file is missing or does not have its contract's shape; the message names both."""


@dataclass(frozen=True)
class RunFolder:
    """The S3 prefix of one run (``runs/<safe run id>``) in one bucket."""

    bucket: str
    prefix: str

    @classmethod
    def for_run(cls, bucket: str, runs_prefix: str, run_id: str) -> RunFolder:
        return cls(bucket, join_key(runs_prefix, safe_run_id(run_id)))

    @classmethod
    def from_uri(cls, run_uri: str) -> RunFolder:
        """``s3://bucket/runs/<id>`` -> RunFolder; the URI must name a run, not a bucket."""
        bucket, prefix = parse_s3_uri(run_uri.rstrip("/"))
        if not prefix.strip("/"):
            raise ContractError(f"{run_uri}: expected s3://bucket/<runs prefix>/<run id>")
        return cls(bucket, prefix.strip("/"))

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def key(self, name: str) -> str:
        """The key of a file (one of this module's names) under the run prefix."""
        return join_key(self.prefix, name)

    def file_uri(self, name: str) -> str:
        return f"s3://{self.bucket}/{self.key(name)}"


# -- reading and writing -----------------------------------------------------------------------------
M = TypeVar("M", bound=BaseModel)


def read(store: ObjectStore, key: str, model: type[M]) -> M:
    """Load ``key`` as ``model``; ContractError naming the object and every wrong field."""
    uri = store.uri(key)
    if not store.exists(key):
        raise ContractError(f"{uri} is missing")
    try:
        data = store.get_json(key)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ContractError(f"{uri} is not JSON: {exc}") from exc
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in exc.errors()
        )
        raise ContractError(f"{uri} is not a valid {model.__name__}: {problems}") from exc


def read_if_exists(store: ObjectStore, key: str, model: type[M]) -> M | None:
    return read(store, key, model) if store.exists(key) else None


def write(store: ObjectStore, key: str, value: BaseModel) -> str:
    """Store ``value`` as JSON at ``key`` (stable key order, UTF-8); returns the ETag."""
    return store.put_json(key, value.model_dump(mode="json"))


def to_json(value: BaseModel) -> dict[str, Any]:
    """A JSON-safe dict of a contract (what XCom carries and what the files hold)."""
    return json.loads(value.model_dump_json())


class Contract(BaseModel):
    """Base of every run-folder model: unknown keys and wrong types are errors (strict: "64" is not
    an int, true is not a number), so a typo or a hand-edited file never passes silently."""

    model_config = ConfigDict(extra="forbid", strict=True)


# -- intake and dataset ------------------------------------------------------------------------------
class ObjectOutcome(Contract):
    """One source object of an intake: what was read and where each record went."""

    key: str
    etag: str
    change: str  # new | changed
    read: int
    accepted: int
    quarantined: int
    reasons: dict[str, int]
    batch_quarantined: bool
    warnings: list[str]
    accepted_uri: str
    quarantine_uri: str
    docs_uri: str


class RetractionOutcome(Contract):
    """One source object removed from the incoming prefix: its accepted records left the dataset.

    ``etag`` is the version whose records were removed (the one the ledger had processed, by
    ``processed_by_run``); ``evidence_uri`` holds those records as they were accepted."""

    key: str
    etag: str
    processed_by_run: str
    records: int
    retracted_at: str
    evidence_uri: str


class IntakeSummary(Contract):
    """``intake.json``: every object processed by one run; ``read == accepted + quarantined``;
    ``retracted``: the accepted records this run removed with their objects (``retractions``)."""

    run_id: str
    objects: list[ObjectOutcome] = []
    retractions: list[RetractionOutcome] = []
    report_uri: str = ""
    read: int = 0
    accepted: int = 0
    quarantined: int = 0
    retracted: int = 0


class BenchmarkRef(Contract):
    """A fixed benchmark file (conf ``dataset.benchmark_files``) as written into a dataset version."""

    name: str
    source: str
    uri: str
    hash: str
    size: int

    @property
    def exam(self) -> str:
        return exam_version(self.hash, self.size)


class DatasetRef(Contract):
    """``dataset.json``: the dataset version a run trains and is examined on (`retrain.dataset`)."""

    version: str
    uri: str
    train: int
    validation: int
    golden: int
    golden_hash: str
    golden_removed_from_train: int
    conflicts: int
    duplicates: int
    label_counts: dict[str, int]
    created: bool
    benchmarks: list[BenchmarkRef] = []
    benchmark_removed_from_train: int = 0
    retracted: int = 0  # accepted records removed by retractions so far (the manifest's count)

    @property
    def exam(self) -> str:
        """The golden set's version (`exam_version`)."""
        return exam_version(self.golden_hash, self.golden)

    @property
    def golden_uri(self) -> str:
        return self.uri.rstrip("/") + "/golden.json"

    @property
    def manifest_key(self) -> str:
        return join_key(parse_s3_uri(self.uri)[1].rstrip("/"), "manifest.json")


# -- train -------------------------------------------------------------------------------------------
class ParentAdapter(Contract):
    """The registered version a warm start continues from (the champion when the run was planned)."""

    version: str
    adapter_uri: str
    adapter_digest: str  # verified when the trainer fetches it (`retrain.adapters.fetch_adapter`)
    dataset_version: str
    run_uri: str


class TrainSelection(Contract):
    """What one night trains on, chosen by the platform (`retrain.selection`), never by a trainer cap.

    ``new``: training examples of this dataset version that the reference (the champion's dataset
    version; none = every example) did not hold; all of them are always trained. ``old`` = the rest,
    of which ``replayed`` are trained: all of them in full mode unless ``max_samples`` leaves less
    room, a ``replay_share`` of the night in warm-start mode; chosen stratified by label with
    ``replay_seed`` (``replay_by_label``: replayed examples per rarest label). ``new_over_cap``: new
    examples beyond ``max_samples``, trained anyway (the cap never drops new data)."""

    mode: Literal["full", "warm_start"]
    requested_mode: Literal["full", "warm_start"]
    fallback_reason: str | None = None
    parent: ParentAdapter | None = None
    reference_version: str | None = None  # the dataset version "new" is measured against
    train_uri: str
    train_sha256: str
    available: int
    new: int
    old: int
    replayed: int
    old_left_out: int
    new_over_cap: int = 0
    examples: int
    max_samples: int | None = None
    replay_share: float
    replay_seed: int
    replay_by_label: dict[str, int] = {}

    def describe(self) -> str:
        """One line for logs and notes."""
        head = f"{self.mode}" + (f" from v{self.parent.version}" if self.parent else "")
        if self.fallback_reason:
            head += f" (warm start not possible: {self.fallback_reason})"
        cap = f", cap {self.max_samples}" if self.max_samples else ""
        over = f", {self.new_over_cap} new beyond the cap trained anyway" if self.new_over_cap else ""
        return (
            f"{head}: {self.examples} examples = {self.new} new + {self.replayed} of {self.old} old "
            f"({self.old_left_out} old left out{cap}{over}; replay share {self.replay_share}, "
            f"seed {self.replay_seed})"
        )


class TrainRequest(Contract):
    """``train_request.json``: what `retrain train` trains (the merged LLaMA-Factory config included)
    and where it publishes the adapter (``adapter_store_uri``: the content-addressed adapter store)."""

    run_id: str
    adapter_store_uri: str
    dataset_uri: str
    dataset_version: str
    base_model: str
    # the pinned ModelScope revision (conf models.revisions); None for a local directory
    base_model_revision: str | None = None
    model_cache_dir: str
    llamafactory: dict[str, Any]
    #: the night's examples and the parent adapter (None: train the dataset version's train split whole)
    selection: TrainSelection | None = None
    #: where tokenized datasets are cached (None: <model_cache_dir>/tokenized; `retrain.train`)
    tokenized_cache_dir: str | None = None


class TrainResult(Contract):
    """``train_result.json``, train's commit marker: the adapter (content-addressed) and the figures."""

    status: Literal["succeeded"]
    run_id: str
    adapter_uri: str
    adapter_digest: str
    base_model: str
    dataset_version: str
    config_hash: str
    train_loss: float | None = None
    steps: int
    epochs: float | None = None
    runtime_s: float | None = None
    wall_s: float
    resumed_from: str | None = None
    loss_curve: list[list[float]] = []
    # tag@sha256 id of the image the Docker launcher ran (None outside a container)
    trainer_image: str | None = None
    mode: Literal["full", "warm_start"] = "full"
    parent_version: str | None = None
    #: the tokenized-dataset cache: its key, and whether this attempt reused it ("hit") or wrote it
    tokenized_key: str | None = None
    tokenized_cache: Literal["hit", "miss"] | None = None
    #: tokens LLaMA-Factory trained on (input_ids of the tokenized train split x epochs), when known
    train_tokens: int | None = None


# -- evaluate ----------------------------------------------------------------------------------------
class ModelRef(Contract):
    """A model to examine: the base model alone (no adapter) or an adapter, with its registry version."""

    name: str = Field(min_length=1)
    adapter_uri: str | None = None
    adapter_digest: str | None = None
    version: str | None = None


class EvalRequest(Contract):
    """``eval_request.json``: candidate and champion, examined on one golden version."""

    run_id: str
    golden_uri: str
    golden_hash: str
    base_model: str
    candidate: ModelRef
    champion: ModelRef
    labels: list[str] = Field(min_length=1)
    max_new_tokens: int = Field(256, ge=1)
    batch_size: int = Field(8, ge=1)
    backend: Literal["hf", "vllm"] = "hf"
    prefix_cache: bool = True  # conf evaluate.prefix_cache (hf backend)
    template: str = "qwen"
    model_cache_dir: str | None = None
    base_model_revision: str | None = None  # as in the train request (`retrain.base_models`)
    trust_remote_code: bool = False  # conf models.trust_remote_code
    benchmarks: list[BenchmarkRef] = []
    #: The version the registry's ``champion`` alias named when this evaluation was planned (None: no
    #: champion). Promotion moves the alias only if it still names that version at commit (no lost
    #: updates: a rollback or another promotion in between makes the commit refuse).
    registry_champion: str | None = None

    @model_validator(mode="after")
    def _candidate_has_adapter(self) -> EvalRequest:
        if not self.candidate.adapter_uri:
            raise ValueError("candidate.adapter_uri is required (the candidate is a trained adapter)")
        return self

    def decoding(self) -> dict[str, Any]:
        """The decoding configuration (part of the evaluation cache key and of the report)."""
        return {
            "backend": self.backend,
            "max_new_tokens": self.max_new_tokens,
            "batch_size": self.batch_size,
            "prefix_cache": self.prefix_cache,
            "template": self.template,
            "strategy": "greedy",
        }


class PRF(Contract):
    """Precision, recall, F1 (None where undefined, see `retrain.evaluate.metrics`) and the counts."""

    precision: float | None
    recall: float | None
    f1: float | None
    tp: int
    fp: int
    fn: int


class LabelScores(PRF):
    support: int


class ModelScores(Contract):
    """One model's examination on the golden set (one side of ``eval/report.json``).

    ``micro``, ``macro_f1``, ``cluener_score`` and ``per_label`` are the strict reading (only valid or
    repaired outputs count, `retrain.evaluate.parsing`); ``lenient_micro`` also counts entities
    salvaged from invalid JSON. ``parse_readings``: outputs per reading (valid, repaired, salvaged,
    unparseable); ``parse_failure_rate`` = (salvaged + unparseable) / sentences. ``sentences``: per
    reading ("strict", "lenient"), each golden sentence's label -> [tp, fp, fn] counts, which the
    significance gate resamples (empty in reports written before the gate needed them).
    """

    name: str
    version: str | None = None
    adapter_uri: str | None = None
    adapter_digest: str | None = None
    cache_key: str = ""
    cached: bool = False
    micro: PRF
    macro_f1: float | None
    cluener_score: float | None
    per_label: dict[str, LabelScores]
    n_sentences: int
    unknown_label_predictions: int
    parse_failure_rate: float
    n_parse_failures: int
    parse_failures: list[dict[str, Any]] = []
    lenient_micro: PRF | None = None
    parse_readings: dict[str, int] = {}
    sentences: dict[Literal["strict", "lenient"], list[dict[str, list[int]]]] = {}
    latency_s: float | None = None
    new_tokens: int | None = None
    tokens_per_s: float | None = None
    n_truncated: int | None = None


class EvalReport(Contract):
    """``eval/report.json``, evaluate's commit marker."""

    run_id: str
    golden_hash: str
    golden_uri: str
    golden_sha256: str
    n: int
    labels: list[str]
    decoding: dict[str, Any]
    base_model: str
    base_model_path: str
    candidate: ModelScores
    champion: ModelScores
    benchmarks: list[BenchmarkScores] = []

    @property
    def exam(self) -> str:
        """The golden set's version (`exam_version`) both sides were scored on."""
        return exam_version(self.golden_hash, self.n)


# -- promote -----------------------------------------------------------------------------------------
class RuleOutcome(Contract):
    rule: str
    passed: bool
    detail: str


class LabelDifference(Contract):
    """One label's F1 difference (candidate - champion) with its bootstrap interval."""

    label: str
    support: int
    candidate_f1: float
    champion_f1: float
    difference: float
    low: float
    high: float
    #: The per-label guard fired: the whole interval lies below -max_label_drop.
    regressed: bool


class Significance(Contract):
    """The paired bootstrap behind a decision (`retrain.gate`): the micro-F1 difference candidate -
    champion on the golden set, its ``confidence`` interval [low, high] over ``resamples`` resamples of
    the golden sentences drawn with ``seed``, the margin the lower bound had to exceed, and the
    labels with enough support to get their own interval."""

    reading: Literal["strict", "lenient"]
    n_sentences: int
    difference: float
    low: float
    high: float
    confidence: float
    resamples: int
    seed: int
    min_delta: float
    labels: list[LabelDifference] = []

    def interval(self) -> str:
        """``+0.1232 (95% CI +0.0500 to +0.1900)``."""
        return f"{self.difference:+.4f} ({self.confidence:.0%} CI {self.low:+.4f} to {self.high:+.4f})"


class ApprovalResponse(Contract):
    """A person's answer to a promotion approval request (Airflow's ApprovalOperator), or the
    timeout's default (``timed_out``: nobody answered in time, the request's default applied)."""

    approved: bool
    responded_by: str  # the Airflow user name; "timeout" when nobody answered
    responded_at: str  # ISO 8601, UTC
    timed_out: bool = False

    def describe(self) -> str:
        verb = "approved" if self.approved else "rejected"
        who = "by timeout (no answer)" if self.timed_out else f"by {self.responded_by}"
        return f"{verb} {who} at {self.responded_at}"


class PromotionDecision(Contract):
    """``decision.json``: the gate's verdict with every rule's outcome and a one-line reason.
    ``significance`` is None only in decisions written before the significance gate existed.

    Written twice by a promotion: by ``decide`` (the gate's verdict, ``needs_approval``) and by the
    commit (the final outcome: ``promote`` false and ``refused`` set when the champion moved since
    the evaluation, or a person rejected or did not answer)."""

    promote: bool
    reason: str
    rules: list[RuleOutcome] = []
    candidate_f1: float = 0.0
    champion_f1: float = 0.0
    champion_name: str = ""
    dry_run: bool = False
    significance: Significance | None = None
    exam: str | None = None
    #: conf gate.approval asked a person to confirm this decision (`retrain.gate.needs_approval`).
    needs_approval: bool = False
    approval: ApprovalResponse | None = None
    #: Why the commit did not do what the gate proposed (None: it did).
    refused: str | None = None
    registered_version: str | None = None


class ShortScores(Contract):
    """The headline figures of one model in the run summary."""

    name: str = ""
    micro_f1: float | None
    precision: float | None
    recall: float | None
    macro_f1: float | None = None
    cluener_score: float | None = None
    parse_failure_rate: float | None = None
    per_label_f1: dict[str, float | None] = {}
    #: micro F1 counting entities salvaged from invalid JSON (micro_f1 is the strict reading)
    lenient_micro_f1: float | None = None
    parse_readings: dict[str, int] = {}

    @classmethod
    def of(cls, m: ModelScores) -> ShortScores:
        return cls(
            name=m.name,
            micro_f1=m.micro.f1,
            lenient_micro_f1=m.lenient_micro.f1 if m.lenient_micro else None,
            parse_readings=m.parse_readings,
            precision=m.micro.precision,
            recall=m.micro.recall,
            macro_f1=m.macro_f1,
            cluener_score=m.cluener_score,
            parse_failure_rate=m.parse_failure_rate,
            per_label_f1={k: v.f1 for k, v in m.per_label.items()},
        )


class BenchmarkScores(Contract):
    """Candidate and champion on one fixed benchmark file (informs; the gate decides on the golden set)."""

    name: str
    exam: str
    candidate: ShortScores
    champion: ShortScores


EvalReport.model_rebuild()


class TrainFigures(Contract):
    train_loss: float | None = None
    steps: int | None = None
    epochs: float | None = None
    runtime_s: float | None = None
    loss_curve: list[list[float]] = []
    selection: TrainSelection | None = None  # what the night trained on (mode, parent, replay)


class RegistryState(Contract):
    model: str
    tracking_uri: str
    champion_version: str | None = None


class RunSummary(Contract):
    """``summary.json``: a run's outcome, written last by promote; read by the UI, notes and alerts."""

    run_id: str
    run_uri: str
    intake: IntakeSummary | None = None
    dataset: DatasetRef
    train: TrainFigures
    evaluation: dict[Literal["candidate", "champion"], ShortScores]
    champion_name: str
    decision: PromotionDecision
    registered_version: str | None = None
    registry: RegistryState
    benchmarks: list[BenchmarkScores] = []


# -- export ------------------------------------------------------------------------------------------
class ExportRequest(Contract):
    """``export_request.json``: merge this adapter into its base model (`retrain.export`)."""

    adapter_uri: str
    adapter_digest: str | None = None
    base_model: str
    base_model_revision: str | None = None  # as in the train request (`retrain.base_models`)
    trust_remote_code: bool = False  # conf models.trust_remote_code
    model_cache_dir: str = "/models"
    template: str = "qwen"


class ExportResult(Contract):
    """``export_result.json``, export's commit marker."""

    status: Literal["succeeded"]
    merged_uri: str
    files: int
    adapter_uri: str
    wall_s: float
