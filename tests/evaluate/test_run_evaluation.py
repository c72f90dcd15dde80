"""The evaluate stage end to end (trainer env): a real S3 API (moto), the tiny model, random
LoRA adapters, the CLUENER dev sentences as a golden set; report files, predictions, the cache."""

from __future__ import annotations

import hashlib
import json
import uuid

import pytest

from retrain.adapters import adapter_digest

pytestmark = pytest.mark.trainer

N_GOLDEN = 10


@pytest.fixture
def bucket(s3_server, monkeypatch):
    from retrain.storage import ObjectStore

    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    store = ObjectStore(s3_server.client(), f"eval-{uuid.uuid4().hex[:10]}")
    store.ensure_bucket()
    return store


@pytest.fixture
def golden(cluener_dir, bucket):
    """CLUENER dev sentences as the dataset stage writes them (alpaca, canonical output)."""
    from retrain.config import load_settings
    from retrain.formats import cluener
    from retrain.prompt import alpaca_example

    prompt = load_settings(environ={"RETRAIN__S3__BUCKET": "unused"}).prompt
    instruction = prompt.render_instruction()
    examples = []
    for line in (cluener_dir / "dev.json").read_text(encoding="utf-8").splitlines()[:N_GOLDEN]:
        d = json.loads(line)
        examples.append(alpaca_example(instruction, d["text"], cluener.entities(d, prompt.labels)))
    data = json.dumps(examples, ensure_ascii=False, indent=2).encode("utf-8")
    key = "datasets/v1/golden.json"
    bucket.put_bytes(key, data)
    return {"uri": bucket.uri(key), "hash": hashlib.sha256(data).hexdigest()[:16], "examples": examples}


def upload_adapter(store, adapter_dir, run_id):
    prefix = f"runs/{run_id}/adapter"
    store.upload_dir(adapter_dir, prefix)
    # A checkpoint folder beside the adapter files must not be fetched.
    store.put_bytes(f"{prefix}/checkpoint-5/optimizer.pt", b"not an adapter")
    return store.uri(prefix + "/")


def request(run_id, golden, tiny_model_dir, candidate_uri, champion, labels):
    return {
        "run_id": run_id,
        "golden_uri": golden["uri"],
        "golden_hash": golden["hash"],
        "base_model": str(tiny_model_dir),
        "candidate": {"name": "candidate", "adapter_uri": candidate_uri},
        "champion": champion,
        "max_new_tokens": 12,
        "batch_size": 4,
        "backend": "hf",
        "labels": labels,
        "model_cache_dir": "/nonexistent/models",  # as the Airflow task writes it; unused for a local dir
    }


def read_jsonl(store, key):
    return [json.loads(line) for line in store.get_bytes(key).decode("utf-8").splitlines()]


def test_evaluate_candidate_against_base_then_cached_champion(
    bucket, golden, tiny_model_dir, random_adapter_dir, other_adapter_dir, tmp_path
):
    from retrain.config import load_settings
    from retrain.evaluate import run_evaluation_from_uri
    from retrain.evaluate.metrics import score

    labels = load_settings(environ={"RETRAIN__S3__BUCKET": "unused"}).prompt.labels

    # Run 1: candidate (random adapter) against the base model (no champion yet).
    cand1 = upload_adapter(bucket, random_adapter_dir, "r1")
    bucket.put_json(
        "runs/r1/eval_request.json",
        request(
            "r1",
            golden,
            tiny_model_dir,
            cand1,
            {"name": "base model", "adapter_uri": None, "version": None},
            labels,
        ),
    )
    returned = run_evaluation_from_uri(bucket.uri("runs/r1"), workdir=tmp_path / "w1")

    assert returned.run_id == "r1" and returned.n == N_GOLDEN and not returned.champion.cached
    report = bucket.get_json("runs/r1/eval/report.json")
    assert report == json.loads(returned.model_dump_json())
    assert report["golden_hash"] == golden["hash"] and report["n"] == N_GOLDEN
    assert report["decoding"] == {
        "backend": "hf",
        "max_new_tokens": 12,
        "batch_size": 4,
        "prefix_cache": True,
        "template": "qwen",
        "strategy": "greedy",
    }
    cand, champ = report["candidate"], report["champion"]
    assert cand["name"] == "candidate" and champ["name"] == "base model"
    assert cand["adapter_digest"] == adapter_digest(random_adapter_dir)
    assert champ["adapter_digest"] is None and champ["cached"] is False
    assert not (tmp_path / "w1" / "adapters" / "candidate" / "checkpoint-5").exists()

    gold = [[(e["label"], e["text"]) for e in json.loads(ex["output"])] for ex in golden["examples"]]
    for role, result in (("candidate", cand), ("champion", champ)):
        rows = read_jsonl(bucket, f"runs/r1/eval/predictions_{role}.jsonl")
        assert [r["index"] for r in rows] == list(range(N_GOLDEN))
        assert [r["input"] for r in rows] == [ex["input"] for ex in golden["examples"]]
        # The report's figures are what the predictions file gives, recomputed here.
        rescored = score(gold, [[tuple(p) for p in r["pred"]] for r in rows], labels)
        assert result["micro"] == rescored["micro"] and result["per_label"] == rescored["per_label"]
        failures = [r for r in rows if not r["parse_ok"]]
        assert result["parse_failure_rate"] == len(failures) / N_GOLDEN
        assert [f["raw"] for f in result["parse_failures"]] == [r["raw"] for r in failures]
        assert result["new_tokens"] == sum(r["new_tokens"] for r in rows) > 0
        assert result["latency_s"] > 0 and result["tokens_per_s"] == pytest.approx(
            result["new_tokens"] / result["latency_s"]
        )
    cand_rows = read_jsonl(bucket, "runs/r1/eval/predictions_candidate.jsonl")
    base_rows = read_jsonl(bucket, "runs/r1/eval/predictions_champion.jsonl")
    assert [r["raw"] for r in cand_rows] != [r["raw"] for r in base_rows]

    html = bucket.get_bytes("runs/r1/eval/report.html").decode("utf-8")
    assert "data:image/png;base64," in html and "CLUENER score" in html and "base model" in html
    assert bucket.get_bytes("runs/r1/eval/per_label_f1.png").startswith(b"\x89PNG\r\n\x1a\n")

    # Run 2: the run-1 candidate is now the champion: its result comes from the cache.
    cand2 = upload_adapter(bucket, other_adapter_dir, "r2")
    bucket.put_json(
        "runs/r2/eval_request.json",
        request(
            "r2",
            golden,
            tiny_model_dir,
            cand2,
            {"name": "champion v1", "adapter_uri": cand1, "version": "1"},
            labels,
        ),
    )
    returned2 = run_evaluation_from_uri(bucket.uri("runs/r2"))
    assert returned2.champion.cached is True
    report2 = bucket.get_json("runs/r2/eval/report.json")
    champ2 = report2["champion"]
    assert champ2["cached"] is True and champ2["name"] == "champion v1" and champ2["version"] == "1"
    volatile = {"name", "version", "adapter_uri", "cached"}
    assert {k: v for k, v in champ2.items() if k not in volatile} == {
        k: v for k, v in cand.items() if k not in volatile
    }
    assert read_jsonl(bucket, "runs/r2/eval/predictions_champion.jsonl") == cand_rows
    assert report2["candidate"]["adapter_digest"] != cand["adapter_digest"]
    assert returned2.champion.micro == returned.candidate.micro


def test_golden_set_changed_after_request_is_refused(bucket, golden, tiny_model_dir, random_adapter_dir):
    from retrain.evaluate import run_evaluation_from_uri

    cand = upload_adapter(bucket, random_adapter_dir, "r3")
    req = request("r3", golden, tiny_model_dir, cand, {"name": "base model", "adapter_uri": None}, ["name"])
    req["golden_hash"] = "0" * 16
    bucket.put_json("runs/r3/eval_request.json", req)
    with pytest.raises(ValueError, match="does not match golden_hash"):
        run_evaluation_from_uri(bucket.uri("runs/r3"))


def test_bad_request_names_the_field(bucket, golden, tiny_model_dir):
    from retrain.evaluate import EvalRequestError, run_evaluation_from_uri

    req = request(
        "r4", golden, tiny_model_dir, "s3://x/a/", {"name": "base model", "adapter_uri": None}, ["name"]
    )
    req["backend"] = "tgi"
    bucket.put_json("runs/r4/eval_request.json", req)
    with pytest.raises(EvalRequestError, match="backend"):
        run_evaluation_from_uri(bucket.uri("runs/r4"))


def test_benchmark_files_are_scored_beside_the_golden_set(bucket, golden, tiny_model_dir, random_adapter_dir):
    from retrain.evaluate import run_evaluation_from_uri

    data = json.dumps(golden["examples"][:4], ensure_ascii=False).encode("utf-8")
    bucket.put_bytes("datasets/v1/benchmark_dev.json", data)
    bench = {
        "name": "dev",
        "source": "dev.jsonl",
        "uri": bucket.uri("datasets/v1/benchmark_dev.json"),
        "hash": hashlib.sha256(data).hexdigest()[:16],
        "size": 4,
    }
    cand = upload_adapter(bucket, random_adapter_dir, "r5")
    req = request("r5", golden, tiny_model_dir, cand, {"name": "base model", "adapter_uri": None}, ["name"])
    req["benchmarks"] = [bench]
    bucket.put_json("runs/r5/eval_request.json", req)
    report = run_evaluation_from_uri(bucket.uri("runs/r5"))
    assert [b.name for b in report.benchmarks] == ["dev"]
    scores = report.benchmarks[0]
    assert scores.exam == f"{bench['hash']}/4" and report.exam == f"{golden['hash']}/{N_GOLDEN}"
    assert scores.candidate.name == "candidate" and scores.champion.name == "base model"
    readings = scores.candidate.parse_readings
    assert sum(readings.values()) == 4 and scores.candidate.micro_f1 is not None
    # scored again from the cache: the same figures
    bucket.put_json("runs/r6/eval_request.json", {**req, "run_id": "r6"})
    again = run_evaluation_from_uri(bucket.uri("runs/r6"))
    assert again.benchmarks == report.benchmarks
    # a benchmark file changed after the request is refused
    bucket.put_json(
        "runs/r7/eval_request.json", {**req, "run_id": "r7", "benchmarks": [{**bench, "hash": "0" * 16}]}
    )
    with pytest.raises(ValueError, match="does not match the request"):
        run_evaluation_from_uri(bucket.uri("runs/r7"))
