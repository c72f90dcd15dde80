"""Optional stage: export the promoted adapter merged into its base model, for serving.

Runs in the trainer environment (like train/evaluate): ``retrain export --run-uri s3://…/runs/<id>``
reads ``export_request.json``, merges with ``llamafactory-cli export`` and uploads the merged model
under ``runs/<id>/merged/``; ``export_result.json`` is written last (its presence commits the export).
Switched on by conf ``registry.export_merged``.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from retrain import runs
from retrain.adapters import fetch_adapter
from retrain.runs import ExportRequest, ExportResult
from retrain.storage import ObjectStore, client_from_env, join_key

log = logging.getLogger(__name__)


class ExportFailed(RuntimeError):
    """The merge did not produce a loadable model folder."""


def export_config(
    base_model: str,
    adapter_dir: str,
    export_dir: str,
    template: str = "qwen",
    *,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """The ``llamafactory-cli export`` YAML (LLaMA-Factory's merge_lora example, without a hub push).
    ``trust_remote_code``: conf models.trust_remote_code, carried by the export request."""
    return {
        "model_name_or_path": base_model,
        "adapter_name_or_path": adapter_dir,
        "template": template,
        "finetuning_type": "lora",
        "trust_remote_code": trust_remote_code,
        "export_dir": export_dir,
        "export_size": 5,
        "export_device": "cpu",
        "export_legacy_format": False,
    }


def check_export(export_dir: str | Path) -> list[str]:
    """Problems with a merged-model folder (empty list: it is complete)."""
    d = Path(export_dir)
    problems = []
    if not (d / "config.json").is_file():
        problems.append("config.json missing")
    if not list(d.glob("*.safetensors")):
        problems.append("no *.safetensors weights")
    if not any((d / n).is_file() for n in ("tokenizer.json", "tokenizer_config.json")):
        problems.append("no tokenizer files")
    return problems


def run_export(store: ObjectStore, run_prefix: str, workdir: str | Path) -> ExportResult:
    """Merge the adapter ``export_request.json`` names (digest verified) into its base model and upload
    the merged model under ``merged/``; ``export_result.json`` last (the commit marker)."""
    from retrain.base_models import resolve_base_model
    from retrain.train import run_llamafactory

    request = runs.read(store, join_key(run_prefix, runs.EXPORT_REQUEST), ExportRequest)
    work = Path(workdir)
    adapter_dir, _ = fetch_adapter(
        store.for_bucket,
        request.adapter_uri,
        work / "adapter",
        request.adapter_digest,
    )
    base = resolve_base_model(request.base_model, request.model_cache_dir, request.base_model_revision)
    export_dir = work / runs.MERGED_DIR
    cfg_path = work / "export.yaml"
    cfg = export_config(
        str(base),
        str(adapter_dir),
        str(export_dir),
        request.template,
        trust_remote_code=request.trust_remote_code,
    )
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    t0 = time.monotonic()
    run_llamafactory(cfg_path, work / "export.log", cwd=work, subcommand="export")
    problems = check_export(export_dir)
    if problems:
        raise ExportFailed(f"llamafactory-cli export exited 0 but {export_dir}: " + "; ".join(problems))
    merged_prefix = join_key(run_prefix, runs.MERGED_DIR)
    keys = store.upload_dir(export_dir, merged_prefix)
    result = ExportResult(
        status="succeeded",
        merged_uri=store.uri(merged_prefix + "/"),
        files=len(keys),
        adapter_uri=request.adapter_uri,
        wall_s=round(time.monotonic() - t0, 3),
    )
    runs.write(store, join_key(run_prefix, runs.EXPORT_RESULT), result)
    log.info("merged model exported to %s (%d files)", result.merged_uri, len(keys))
    return result


def run_export_from_uri(run_uri: str, workdir: str | Path | None = None) -> ExportResult:
    run = runs.RunFolder.from_uri(run_uri)
    store = ObjectStore(client_from_env(), run.bucket)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        return run_export(store, run.prefix, tmp)
