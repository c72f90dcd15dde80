# ruff: noqa: F811  (fixtures imported from tests.fixtures_trainer are used as arguments)
"""Merged export: a real `llamafactory-cli export` of the tiny model + a random LoRA adapter, via S3."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from retrain.export import check_export, export_config
from tests.fixtures_trainer import moto_s3, tiny_model_dir  # noqa: F401

pytestmark = pytest.mark.trainer


def test_export_config_is_llamafactory_merge():
    cfg = export_config("/m", "/a", "/out")
    assert (
        cfg["finetuning_type"] == "lora"
        and cfg["adapter_name_or_path"] == "/a"
        and cfg["export_dir"] == "/out"
    )


def test_check_export_names_what_is_missing(tmp_path):
    assert set(check_export(tmp_path)) == {
        "config.json missing",
        "no *.safetensors weights",
        "no tokenizer files",
    }


def test_export_merges_and_matches_base_plus_adapter(moto_s3, tiny_model_dir, tmp_path):
    import boto3
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(3)
    peft_model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)
    s3 = boto3.client(
        "s3",
        endpoint_url=moto_s3.endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    bucket = "export-test"
    s3.create_bucket(Bucket=bucket)
    for f in adapter.iterdir():
        s3.upload_file(str(f), bucket, f"runs/r1/adapter/{f.name}")
    s3.put_object(
        Bucket=bucket,
        Key="runs/r1/export_request.json",
        Body=json.dumps(
            {
                "adapter_uri": f"s3://{bucket}/runs/r1/adapter/",
                "base_model": str(tiny_model_dir),
                "model_cache_dir": str(tmp_path / "cache"),
                "template": "qwen",
            }
        ).encode(),
    )
    proc = subprocess.run(
        [sys.executable, "-m", "retrain.cli", "export", "--run-uri", f"s3://{bucket}/runs/r1"],
        env=moto_s3.env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(s3.get_object(Bucket=bucket, Key="runs/r1/export_result.json")["Body"].read())
    assert result["merged_uri"] == f"s3://{bucket}/runs/r1/merged/"
    merged = tmp_path / "merged"
    for obj in s3.list_objects_v2(Bucket=bucket, Prefix="runs/r1/merged/")["Contents"]:
        dest = merged / obj["Key"].rsplit("/", 1)[1]
        dest.parent.mkdir(parents=True, exist_ok=True)
        s3.download_file(bucket, obj["Key"], str(dest))
    assert check_export(merged) == []
    ids = torch.tensor([[1, 5, 9, 30, 2]])
    with torch.no_grad():
        want = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), adapter)(
            ids
        ).logits
        got = AutoModelForCausalLM.from_pretrained(merged)(ids).logits
    assert torch.allclose(want, got, atol=1e-4)
