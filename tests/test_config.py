from pathlib import Path

import pytest

from retrain.config import ConfigError, load_settings

CONF = Path(__file__).resolve().parents[1] / "conf"


def test_defaults_are_the_recipe():
    s = load_settings(environ={})
    cfg = s.llamafactory_config("production")
    assert cfg["lora_rank"] == 8 and cfg["lora_target"] == "all"
    assert cfg["num_train_epochs"] == 3.0 and cfg["learning_rate"] == 1.0e-4
    assert cfg["cutoff_len"] == 1024 and cfg["template"] == "qwen" and cfg["bf16"] is True
    assert s.train.base_model == "Qwen/Qwen2.5-7B-Instruct"
    text = s.prompt.render_instruction()
    assert "name, organization, scene, company, movie, book, government, position, address, game" in text
    assert '[{"label": "实体类别", "text": "实体名称"}]' in text


def test_profile_merges_over_production():
    cfg = load_settings(environ={}).llamafactory_config("cpu_tiny")
    assert cfg["bf16"] is False and cfg["cutoff_len"] == 256
    assert cfg["lora_target"] == "all"  # inherited


def test_env_override_and_unknown_key(tmp_path):
    s = load_settings(environ={"RETRAIN__S3__BUCKET": "other", "RETRAIN__GATE__MIN_DELTA": "0.02"})
    assert s.s3.bucket == "other" and s.gate.min_delta == 0.02
    with pytest.raises(ConfigError, match="s3.bukket"):
        load_settings(environ={"RETRAIN__S3__BUKKET": "x"})


def test_local_override_file(tmp_path):
    import shutil

    conf = tmp_path / "conf"
    shutil.copytree(CONF, conf, ignore=shutil.ignore_patterns("local"))
    (conf / "local").mkdir()
    (conf / "local" / "pipeline.yaml").write_text("train:\n  launcher: docker\n")
    assert load_settings(conf, environ={}).train.launcher == "docker"
    (conf / "local" / "pipeline.yaml").write_text("train:\n  launcher: spaceship\n")
    with pytest.raises(ConfigError, match="train.launcher"):
        load_settings(conf, environ={})


def test_missing_profile_is_a_clear_error():
    with pytest.raises(ConfigError, match="nope"):
        load_settings(environ={}).llamafactory_config("nope")
