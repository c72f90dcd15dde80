"""Typed configuration, validated once at the edge.

`load_settings()` reads ``conf/pipeline.yaml`` (the committed defaults), then
``conf/local/pipeline.yaml`` when present (git-ignored overrides), then environment variables
``RETRAIN__SECTION__KEY``. Unknown keys are rejected with the file and key named, so a typo in
conf/ fails loudly instead of being ignored.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from retrain.errors import InputError


class ConfigError(InputError, ValueError):
    """A configuration file or value is invalid; the message names the file and field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ScheduleConfig(_Strict):
    cron: str | None = "0 2 * * *"
    max_active_runs: int = 1
    retries: int = 1
    retry_delay_seconds: int = 60


class AirflowConfig(_Strict):
    aws_conn_id: str = "aws_default"
    listener_s3_timeout_s: float = Field(3.0, gt=0)


class S3Config(_Strict):
    bucket: str
    incoming_prefix: str = "incoming/"
    accepted_prefix: str = "accepted/"
    quarantine_prefix: str = "quarantine/"
    reports_prefix: str = "reports/"
    datasets_prefix: str = "datasets/"
    runs_prefix: str = "runs/"
    adapters_prefix: str = "adapters/"
    state_prefix: str = "state/"
    # Trainer stages get credentials of a per-stage IAM role (`retrain.scoped_credentials`), not the
    # connection's; conf/pipeline.yaml says where this works.
    scoped_credentials: Literal["off", "assume_role"] = "off"
    scoped_duration_seconds: int = Field(43200, ge=900, le=43200)  # STS allows 900-43200
    scoped_role_path: str = Field("/retrain/", pattern=r"^/([\w+=,.@-]+/)*$")
    scoped_permissions_boundary: str | None = None

    @field_validator("scoped_credentials", mode="before")
    @classmethod
    def _yaml_off(cls, v: Any) -> Any:
        return "off" if v is False else v  # YAML 1.1 reads an unquoted off as false


class EventsConfig(_Strict):
    """Event-driven runs: S3 object-created/removed notifications on an SQS queue, watched by the
    triggerer (AssetWatcher + common-messaging MessageQueueTrigger), start ``ner_retrain`` besides
    the cron."""

    enabled: bool = False
    queue_url: str | None = None  # the SQS queue the bucket notifies (https://sqs.<region>.amazonaws.com/…)
    aws_conn_id: str | None = None  # null = airflow.aws_conn_id
    region_name: str | None = None  # null = the connection's region
    wait_time_seconds: int = Field(20, ge=0, le=20)  # SQS long poll per receive (SQS allows 0-20)
    poll_delay_seconds: int = Field(1, ge=0)  # pause after an empty long poll
    max_messages: int = Field(10, ge=1, le=10)  # per receive (SQS allows 1-10)
    quiet_period_seconds: int = Field(60, ge=0)
    max_wait_seconds: int = Field(1800, ge=0)
    check_interval_seconds: int = Field(5, gt=0)

    @model_validator(mode="after")
    def _queue_when_enabled(self) -> EventsConfig:
        if self.enabled and not self.queue_url:
            raise ValueError("events.enabled is true but events.queue_url is not set")
        return self


AnnotationFormat = Literal["auto", "cluener", "label_studio", "doccano"]


class IntakeConfig(_Strict):
    max_object_bytes: int = Field(256 * 1024 * 1024, gt=0)
    max_line_bytes: int = Field(1024 * 1024, gt=0)
    page_size: int = 1000
    chunk_records: int = Field(10000, gt=0)  # records parsed + validated + written at a time per object
    docs_max_chunks: int = Field(10, ge=1)  # chunks of one object kept in its GX Data Docs
    retract_removed: bool = True  # an object removed from the incoming prefix retracts its records
    # key prefix -> format; the longest matching prefix wins, "auto" (or no match) = detect by content
    formats: dict[str, AnnotationFormat] = {}
    # zero-width / bidi / soft-hyphen characters in a sentence or entity (retrain.formats.hygiene)
    invisible_characters: Literal["warn", "normalise", "quarantine"] = "normalise"
    # Label Studio: from_name of the <Labels> controls holding the NER spans; empty = every labels result
    label_studio_controls: list[str] = []


Policy = Literal["accept", "warn", "reject"]


class ValidationConfig(_Strict):
    suite: str = "gx/ner_records_suite.yaml"
    max_text_chars: int | None = Field(None, gt=0)
    length_profile: str | None = "production"
    template_reserve_tokens: int = Field(32, ge=0)
    output_tokens_per_char: float = Field(1.0, ge=0)
    min_rows: int = Field(1, ge=0)
    max_bad_fraction: float = Field(0.5, ge=0, le=1)
    duplicates_are_bad_rows: bool = False  # exact repeats (duplicate_record) in the bad share?
    drift_min_spans: int = Field(200, ge=1)
    drift_warn: float = Field(0.15, ge=0, le=1)
    drift_fail: float = Field(0.35, ge=0, le=1)
    overlapping_spans: Policy = "warn"
    same_text_two_labels: Policy = "warn"
    duplicate_span: Policy = "reject"
    unlabeled_repeat: Policy = "accept"
    half_open_title_mark: Policy = "warn"


class DatasetConfig(_Strict):
    split_seed: str = "clue-ner-v1"
    validation_fraction: float = Field(0.1, ge=0, lt=1)
    golden_fraction: float = Field(0.1, gt=0, lt=1)
    golden_file: str | None = None
    benchmark_files: list[str] = []
    system_prompt: str | None = None


class WarmStartConfig(_Strict):
    """conf ``train.warm_start``: the replay sample and the learning-rate re-warm (`retrain.selection`)."""

    replay_share: float = Field(0.5, ge=0.0, lt=1.0)
    replay_seed: int = 20261202
    warmup_ratio: float = Field(0.1, ge=0.0, le=1.0)


class TrainConfig(_Strict):
    launcher: Literal["local", "docker", "kubernetes"] = "local"
    profile: str = "production"
    base_model: str = "Qwen/Qwen2.5-7B-Instruct"
    model_cache_dir: str = "/models"
    trainer_python: str | None = None
    mode: Literal["full", "warm_start"] = "full"
    warm_start: WarmStartConfig = WarmStartConfig()
    max_samples: int | None = Field(15000, ge=1)
    tokenized_cache_dir: str | None = None


class ModelsConfig(_Strict):
    """Which base models a run may load (`retrain.base_models`): an allowlist, pinned revisions and
    whether a model's own Python code may run."""

    # ModelScope ids or local directories, exact or shell-style patterns (fnmatch: * also matches /).
    allow: list[str] = []
    # ModelScope id -> revision (tag or commit id); an id without a revision here is refused.
    revisions: dict[str, str | None] = {}
    trust_remote_code: bool = False


_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_byte_size(value: int | str) -> int:
    """``16g`` / ``512m`` / ``1024`` -> bytes (Docker's binary units; ``16Gi``/``16GB`` accepted too)."""
    if isinstance(value, int):
        return value
    text = str(value).strip().lower().removesuffix("ib").removesuffix("i").removesuffix("b")
    num, unit = text, ""
    if text and text[-1] in "kmgt":
        num, unit = text[:-1], text[-1]
    try:
        return int(float(num) * _SIZE_UNITS[unit])
    except ValueError:
        raise ValueError(f"not a size: {value!r} (expected e.g. 16g, 512m or a number of bytes)") from None


class RetryPolicy(_Strict):
    """Retries of a trainer-container task: delay, then delay * backoff**n, capped."""

    retries: int = Field(2, ge=0)
    delay_seconds: int = Field(300, ge=0)
    exponential_backoff: float = Field(2.0, ge=0)  # 0 = a fixed delay
    max_delay_seconds: int = Field(3600, ge=0)


class MountConfig(_Strict):
    """A host path (or named volume) mounted into the trainer container."""

    source: str
    target: str
    type: Literal["bind", "volume"] = "bind"
    read_only: bool = True


class DockerConfig(_Strict):
    """``train.launcher: docker``: the trainer image run by DockerOperator on the worker's engine."""

    image: str = "retrain/trainer:cu122"
    url: str | None = None  # null = $DOCKER_HOST of the worker, else unix://var/run/docker.sock
    gpus: int | Literal["all"] = "all"  # 0 = CPU only (no device request)
    shm_size: str | int = "16g"
    network_mode: str | None = None  # null = the engine's default (bridge); "host" for an S3 on loopback
    model_cache_host_path: str | None = "/var/lib/retrain/models"  # mounted at train.model_cache_dir
    scratch_host_path: str | None = None  # mounted at /work; null = the container's own filesystem
    mounts: list[MountConfig] = []
    environment: dict[str, str] = {}  # extra, non-secret variables (secrets come from the connection)
    mem_limit: str | None = None
    user: str | None = None  # null = the image's user (trainer, uid 1000)
    cap_add: list[str] = []  # capabilities added back after dropping ALL (the trainer needs none)
    security_opt: list[str] = ["no-new-privileges"]  # Docker --security-opt values
    execution_timeout_minutes: int = Field(24 * 60, gt=0)
    retry: RetryPolicy = RetryPolicy()

    @field_validator("shm_size")
    @classmethod
    def _size(cls, v: str | int) -> str | int:
        parse_byte_size(v)
        return v

    @field_validator("gpus")
    @classmethod
    def _gpus(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 0:
            raise ValueError("gpus must be 'all', 0 (CPU only) or a positive number of GPUs")
        return v


class KubernetesConfig(_Strict):
    """``train.launcher: kubernetes``: the same image and command as a pod (KubernetesPodOperator)."""

    namespace: str = "retrain"
    image: str | None = None  # null = docker.image
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    kubernetes_conn_id: str | None = "kubernetes_default"
    in_cluster: bool | None = None
    service_account_name: str | None = None
    gpus: int = Field(1, ge=0)  # nvidia.com/gpu limit; 0 = CPU only
    gpu_resource: str = "nvidia.com/gpu"
    cpu_request: str | None = "8"
    memory_request: str | None = "64Gi"
    memory_limit: str | None = None
    shm_size: str = "16Gi"  # a memory-backed emptyDir at /dev/shm
    node_selector: dict[str, str] = {}
    tolerations: list[dict[str, Any]] = [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    s3_secret_name: str = (
        "retrain-s3"  # keys: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, [AWS_ENDPOINT_URL, AWS_DEFAULT_REGION]
    )
    model_cache_pvc: str | None = "retrain-models"  # mounted at train.model_cache_dir; null = an emptyDir
    environment: dict[str, str] = {}
    startup_timeout_seconds: int = Field(900, gt=0)  # image pull + GPU node scale-up
    execution_timeout_minutes: int = Field(24 * 60, gt=0)
    retry: RetryPolicy = RetryPolicy()


class EvaluateConfig(_Strict):
    max_new_tokens: int = 256
    batch_size: int = 8
    backend: Literal["hf", "vllm"] = "hf"
    #: hf backend: reuse the KV cache of the prompts' shared prefix (`retrain.evaluate.generate.PrefixCache`)
    prefix_cache: bool = True


class RegistryConfig(_Strict):
    tracking_uri: str | None = None
    artifact_location: str | None = None
    model_name_template: str = "{task}-{base}-lora"
    export_merged: bool = False
    #: The one-slot Airflow pool that serialises every alias move (promote, rollback).
    alias_pool: str = Field("registry_aliases", min_length=1)


class GateConfig(_Strict):
    """The promotion gate (`retrain.gate`); conf/pipeline.yaml says why each default is what it is."""

    reading: Literal["strict", "lenient"] = "strict"
    resamples: int = Field(2000, ge=100, le=100_000)
    confidence: float = Field(0.95, gt=0.5, lt=1)
    seed: int = Field(20261202, ge=0)
    min_delta: float = Field(0.0, ge=-1, le=1)  # < 0 only for demos: see tests/support/demo.py
    min_support: int = Field(20, ge=1)
    max_label_drop: float = Field(0.05, ge=0, le=1)
    max_parse_failure: float = Field(0.05, ge=0, le=1)
    min_f1: float | None = Field(None, ge=0, le=1)
    #: never: the gate decides alone; borderline: a person confirms close calls; always: a person
    #: confirms every promotion (`retrain.gate.needs_approval`).
    approval: Literal["never", "borderline", "always"] = "never"
    approval_timeout_hours: float = Field(24.0, gt=0)


AlertEvent = Literal["failure", "quarantine", "promotion"]


class SmtpAlertChannel(_Strict):
    """E-mail through Airflow's SmtpNotifier; server, credentials and sender live in the connection."""

    kind: Literal["smtp"]
    conn_id: str = "smtp_default"
    to: list[str] = Field(min_length=1)
    from_email: str | None = None  # None = the connection's extra ``from_email``
    events: list[AlertEvent] = ["failure", "quarantine", "promotion"]


class WebhookAlertChannel(_Strict):
    """A JSON POST to the URL of an HTTP connection (host = the URL; password = optional bearer token)."""

    kind: Literal["webhook"]
    conn_id: str
    timeout_seconds: float = Field(10.0, gt=0)
    events: list[AlertEvent] = ["failure", "quarantine", "promotion"]


class AlertsConfig(_Strict):
    # Share of the records read in one run that may be quarantined before an alert goes out.
    quarantine_threshold: float | None = Field(0.1, ge=0, le=1)
    channels: list[Annotated[SmtpAlertChannel | WebhookAlertChannel, Field(discriminator="kind")]] = []

    def channels_for(self, event: AlertEvent) -> list[SmtpAlertChannel | WebhookAlertChannel]:
        return [c for c in self.channels if event in c.events]


class PromptConfig(_Strict):
    labels: list[str]
    instruction: str

    def render_instruction(self) -> str:
        """The instruction text with the label list filled in (the recipe's exact wording)."""
        return self.instruction.format(labels=", ".join(self.labels))


class Settings(_Strict):
    task: str = "clue-ner"
    schedule: ScheduleConfig = ScheduleConfig()
    airflow: AirflowConfig = AirflowConfig()
    s3: S3Config
    intake: IntakeConfig = IntakeConfig()
    events: EventsConfig = EventsConfig()
    validation: ValidationConfig = ValidationConfig()
    dataset: DatasetConfig = DatasetConfig()
    train: TrainConfig = TrainConfig()
    models: ModelsConfig = ModelsConfig()
    docker: DockerConfig = DockerConfig()
    kubernetes: KubernetesConfig = KubernetesConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    registry: RegistryConfig = RegistryConfig()
    gate: GateConfig = GateConfig()
    alerts: AlertsConfig = AlertsConfig()
    # Loaded from sibling files, not from pipeline.yaml:
    prompt: PromptConfig
    label_map: dict[str, str] = {}
    conf_dir: str

    def llamafactory_config(self, profile: str | None = None) -> dict[str, Any]:
        """production.yaml merged with the profile file (``train.profile`` unless given)."""
        base = _read_yaml(Path(self.conf_dir) / "llamafactory" / "production.yaml")
        name = profile or self.train.profile
        if name != "production":
            path = Path(self.conf_dir) / "llamafactory" / f"{name}.yaml"
            if not path.exists():
                raise ConfigError(f"{path}: LLaMA-Factory profile {name!r} does not exist")
            base.update(_read_yaml(path))
        return base


def default_conf_dir() -> Path:
    """``$RETRAIN_CONF_DIR``, else the repository's conf/ next to src/."""
    env = os.environ.get("RETRAIN_CONF_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "conf"


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: file not found") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _env_overrides(environ: dict[str, str]) -> dict[str, Any]:
    """RETRAIN__S3__BUCKET=x -> {"s3": {"bucket": "x"}}; values parsed as YAML scalars."""
    out: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith("RETRAIN__"):
            continue
        parts = [p.lower() for p in name[len("RETRAIN__") :].split("__") if p]
        if not parts:
            continue
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(raw) if raw != "" else None
    return out


def load_settings(conf_dir: str | Path | None = None, environ: dict[str, str] | None = None) -> Settings:
    """Load and validate every setting; raise ConfigError naming the file and field on error."""
    conf = Path(conf_dir) if conf_dir else default_conf_dir()
    env = dict(os.environ if environ is None else environ)
    data = _read_yaml(conf / "pipeline.yaml")
    local = conf / "local" / "pipeline.yaml"
    if local.exists():
        data = _deep_merge(data, _read_yaml(local))
    data = _deep_merge(data, _env_overrides(env))
    data["prompt"] = _read_yaml(conf / "prompt.yaml")
    label_map = _read_yaml(conf / "label_map.yaml") if (conf / "label_map.yaml").exists() else {}
    data["label_map"] = {str(k): str(v) for k, v in label_map.items()}
    data["conf_dir"] = str(conf)
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors())
        raise ConfigError(f"{conf / 'pipeline.yaml'} (with overrides): {problems}") from exc
    unknown = [v for v in settings.label_map.values() if v not in settings.prompt.labels]
    if unknown:
        raise ConfigError(
            f"{conf / 'label_map.yaml'}: maps to labels not in prompt.yaml: {sorted(set(unknown))}"
        )
    return settings
