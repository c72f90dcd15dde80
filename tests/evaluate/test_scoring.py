"""The pure parts of the evaluate stage (Airflow env, standard library + matplotlib): the request
contract, the golden set, scoring raw outputs, the cache key, the report files."""

from __future__ import annotations

import base64
import json
import re

import pytest

from retrain.evaluate import (
    EvalRequestError,
    cache_key,
    load_golden,
    parse_eval_request,
    score_outputs,
)

LABELS = ["name", "company", "game"]


def golden_bytes() -> bytes:
    examples = [
        {
            "instruction": "识别",
            "input": "张三在腾讯",
            "output": json.dumps(
                [{"label": "name", "text": "张三"}, {"label": "company", "text": "腾讯"}], ensure_ascii=False
            ),
        },
        {"instruction": "识别", "input": "今天天气好", "output": "[]", "system": "你是专家"},
        {
            "instruction": "识别",
            "input": "玩王者荣耀",
            "output": json.dumps([{"label": "game", "text": "王者荣耀"}], ensure_ascii=False),
        },
        {
            "instruction": "识别",
            "input": "李四",
            "output": json.dumps([{"label": "name", "text": "李四"}], ensure_ascii=False),
        },
    ]
    return json.dumps(examples, ensure_ascii=False).encode("utf-8")


def valid_request() -> dict:
    return {
        "run_id": "r1",
        "golden_uri": "s3://b/datasets/v/golden.json",
        "golden_hash": "abc",
        "base_model": "/models/x",
        "candidate": {"name": "candidate", "adapter_uri": "s3://b/runs/r1/adapter/"},
        "champion": {"name": "base model", "adapter_uri": None, "version": None},
        "max_new_tokens": 64,
        "batch_size": 4,
        "backend": "hf",
        "labels": LABELS,
        "model_cache_dir": "/models",
    }


def test_load_golden_builds_the_training_user_turn():
    g = load_golden(golden_bytes())
    assert g.n == 4
    assert g.prompts[0] == "识别\n张三在腾讯"
    assert g.systems == [None, "你是专家", None, None]
    assert g.gold[0] == [("name", "张三"), ("company", "腾讯")] and g.gold[1] == []


def test_load_golden_rejects_a_bad_answer_with_its_index():
    bad = json.dumps(
        [
            {"instruction": "i", "input": "x", "output": "[]"},
            {"instruction": "i", "input": "y", "output": '[{"label": "name"}]'},
        ]
    ).encode()
    with pytest.raises(ValueError, match=r"example 1: field 'output'.*'text'"):
        load_golden(bad)


def test_score_outputs_parses_messy_raws_and_counts_failures():
    g = load_golden(golden_bytes())
    raws = [
        '```json\n[{"label": "name", "text": "张三"}, {"label": "company", "text": "腾讯"},]\n```',  # 2 tp
        "没有实体。",  # ok, empty
        '[{"label": "game", "text": "王者',  # truncated: failure
        '结果：{"type": "name", "entity": "李四"} {"type": "name", "entity": "王五"}',  # tp + fp
    ]
    res = score_outputs(
        g, raws, LABELS, new_tokens=[10, 3, 64, 12], stopped=[True, True, False, True], latency_s=2.0
    )
    m = res.metrics
    # strict (the headline): the salvaged JSON-lines answer (index 3) predicts nothing
    assert (m["micro"]["tp"], m["micro"]["fp"], m["micro"]["fn"]) == (2, 0, 2)
    assert m["micro"]["f1"] == pytest.approx(2 / 3)
    # lenient: it counts (one tp, one fp)
    lenient = m["lenient_micro"]
    assert (lenient["tp"], lenient["fp"], lenient["fn"]) == (3, 1, 1) and lenient["f1"] == pytest.approx(0.75)
    assert m["parse_readings"] == {"valid": 0, "repaired": 2, "salvaged": 1, "unparseable": 1}
    assert m["parse_failure_rate"] == 0.5 and m["n_parse_failures"] == 2
    assert m["parse_failures"][0] == {
        "index": 2,
        "input": "玩王者荣耀",
        "raw": raws[2],
        "reading": "unparseable",
        "error": "unbalanced brackets (output truncated?)",
    }
    assert m["parse_failures"][1]["reading"] == "salvaged"
    assert m["parse_failures"][1]["error"].startswith("salvaged from invalid JSON")
    # per-sentence counts, per reading: what the significance gate resamples
    assert m["sentences"]["strict"][0] == {"company": [1, 0, 0], "name": [1, 0, 0]}
    assert m["sentences"]["strict"][3] == {"name": [0, 0, 1]}
    assert m["sentences"]["lenient"][3] == {"name": [1, 1, 0]}
    assert m["new_tokens"] == 89 and m["tokens_per_s"] == pytest.approx(44.5) and m["n_truncated"] == 1
    assert res.predictions[3]["pred"] == [] and res.predictions[3]["reading"] == "salvaged"
    assert res.predictions[3]["pred_lenient"] == [["name", "李四"], ["name", "王五"]]
    assert res.predictions[1]["parse_ok"] is True and res.predictions[1]["pred"] == []
    assert res.predictions[1]["reading"] == "repaired"
    with pytest.raises(ValueError, match="3 outputs for 4"):
        score_outputs(g, raws[:3], LABELS)


def test_request_contract():
    req = parse_eval_request(valid_request())
    assert req.champion.adapter_uri is None and req.template == "qwen" and req.model_cache_dir == "/models"
    assert req.decoding() == {
        "backend": "hf",
        "max_new_tokens": 64,
        "batch_size": 4,
        "prefix_cache": True,
        "template": "qwen",
        "strategy": "greedy",
    }
    for mutate, field in [
        (lambda r: r.pop("golden_uri"), "golden_uri"),
        (lambda r: r.update(extra=1), "extra"),
        (lambda r: r.update(backend="tgi"), "backend"),
        (lambda r: r.update(max_new_tokens="64"), "max_new_tokens"),
        (lambda r: r.update(batch_size=True), "batch_size"),
        (lambda r: r.update(labels=[]), "labels"),
        (lambda r: r["candidate"].update(adapter_uri=None), "candidate.adapter_uri"),
        (lambda r: r["champion"].update(path="x"), "champion"),
        (lambda r: r.update(model_cache_dir=3), "model_cache_dir"),
    ]:
        r = valid_request()
        mutate(r)
        with pytest.raises(EvalRequestError, match=re.escape(field)):
            parse_eval_request(r)


def test_cache_key_changes_with_each_input():
    dec = {"backend": "hf", "max_new_tokens": 64}
    k = cache_key("a" * 64, "g1", dec, "base", LABELS)
    assert k == cache_key("a" * 64, "g1", dict(dec), "base", list(LABELS))
    assert (
        len(
            {
                k,
                cache_key(None, "g1", dec, "base", LABELS),
                cache_key("a" * 64, "g2", dec, "base", LABELS),
                cache_key("a" * 64, "g1", {**dec, "max_new_tokens": 32}, "base", LABELS),
                cache_key("a" * 64, "g1", dec, "other base", LABELS),
                cache_key("a" * 64, "g1", dec, "base", LABELS[:2]),
            }
        )
        == 6
    )


def test_write_report_files(tmp_path):
    from retrain.evaluate.report import write_report

    g = load_golden(golden_bytes())
    cand = score_outputs(
        g,
        ['[{"label": "name", "text": "张三"}]', "[]", "<b>oops</b>", "李四"],
        LABELS,
        new_tokens=[5, 2, 4, 2],
        stopped=[True] * 4,
        latency_s=1.0,
    ).metrics
    champ = score_outputs(
        g, ["[]"] * 4, LABELS, new_tokens=[2] * 4, stopped=[True] * 4, latency_s=0.5
    ).metrics
    cand["name"], champ["name"] = "candidate", "champion v3"
    report = {
        "run_id": "r1",
        "golden_hash": "abc",
        "n": 4,
        "decoding": {"backend": "hf"},
        "candidate": cand,
        "champion": champ,
    }
    paths = write_report(report, tmp_path / "eval")
    assert json.loads(paths["json"].read_text(encoding="utf-8")) == report
    png = paths["png"].read_bytes()
    assert png.startswith(b"\x89PNG")
    html = paths["html"].read_text(encoding="utf-8")
    assert base64.b64encode(png).decode() in html
    assert "&lt;b&gt;oops&lt;/b&gt;" in html and "<b>oops</b>" not in html  # raw outputs escaped
    assert "champion v3" in html and "CLUENER score" in html and "tokens/s" in html
    assert "http://" not in html and "https://" not in html  # self-contained
