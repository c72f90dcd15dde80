"""Typed configuration, validated once at the edge.

`load_settings()` reads ``conf/pipeline.yaml`` (the committed defaults), then
``conf/local/pipeline.yaml`` when present (git-ignored overrides), then environment variables
``RETRAIN__SECTION__KEY``. Unknown keys are rejected with the file and key named, so a typo in
conf/ fails loudly instead of being ignored.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class ConfigError(ValueError):
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


class S3Config(_Strict):
    bucket: str
    incoming_prefix: str = "incoming/"
    accepted_prefix: str = "accepted/"
    quarantine_prefix: str = "quarantine/"
    reports_prefix: str = "reports/"
    datasets_prefix: str = "datasets/"
    runs_prefix: str = "runs/"
    state_prefix: str = "state/"


class IntakeConfig(_Strict):
    max_object_bytes: int = 256 * 1024 * 1024
    max_line_bytes: int = 1024 * 1024
    page_size: int = 1000


Policy = Literal["accept", "warn", "reject"]


class ValidationConfig(_Strict):
    max_text_chars: int | None = None
    min_rows: int = 1
    max_bad_fraction: float = Field(0.5, ge=0, le=1)
    overlapping_spans: Policy = "warn"
    same_text_two_labels: Policy = "warn"
    duplicate_span: Policy = "reject"


class DatasetConfig(_Strict):
    split_seed: str = "clue-ner-v1"
    validation_fraction: float = Field(0.1, ge=0, lt=1)
    golden_fraction: float = Field(0.1, gt=0, lt=1)
    golden_file: str | None = None
    system_prompt: str | None = None


class TrainConfig(_Strict):
    launcher: Literal["local", "docker", "kubernetes"] = "local"
    profile: str = "production"
    base_model: str = "Qwen/Qwen2.5-7B-Instruct"
    model_cache_dir: str = "/models"
    trainer_python: str | None = None


class EvaluateConfig(_Strict):
    max_new_tokens: int = 256
    batch_size: int = 8
    backend: Literal["hf", "vllm"] = "hf"


class RegistryConfig(_Strict):
    tracking_uri: str | None = None
    artifact_location: str | None = None
    model_name_template: str = "{task}-{base}-lora"


class GateConfig(_Strict):
    min_delta: float = 0.0
    min_f1: float = 0.0
    max_parse_failure: float = 1.0
    min_support: int = 5
    max_label_drop: float = 1.0


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
    validation: ValidationConfig = ValidationConfig()
    dataset: DatasetConfig = DatasetConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    registry: RegistryConfig = RegistryConfig()
    gate: GateConfig = GateConfig()
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
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"{conf / 'pipeline.yaml'} (with overrides): {problems}") from exc
    unknown = [v for v in settings.label_map.values() if v not in settings.prompt.labels]
    if unknown:
        raise ConfigError(f"{conf / 'label_map.yaml'}: maps to labels not in prompt.yaml: {sorted(set(unknown))}")
    return settings
