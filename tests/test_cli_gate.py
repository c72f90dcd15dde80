"""`retrain gate`: the promotion gate replayed offline, run as a user runs it (a subprocess)."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
N = 60


def _golden(path: Path) -> Path:
    examples = [
        {
            "instruction": "找出实体",
            "input": f"句子{i}里有实体{i}",
            "output": json.dumps([{"label": "name", "text": f"实体{i}"}], ensure_ascii=False),
        }
        for i in range(N)
    ]
    path.write_text(json.dumps(examples, ensure_ascii=False), encoding="utf-8")
    return path


def _right(i: int) -> str:
    return json.dumps([{"label": "name", "text": f"实体{i}"}], ensure_ascii=False)


def _predictions(path: Path, right: set[int], *, as_objects: bool = False, salvage: bool = False) -> Path:
    lines = []
    for i in range(N):
        raw = "[]"
        if i in right:
            raw = (
                f'[{{"label": "name", "text": "实体{i}"}} {{"label": "name", "text": "x"}}]'
                if salvage
                else _right(i)
            )
        value = {"index": i, "raw": raw, "pred": []} if as_objects else raw
        lines.append(json.dumps(value, ensure_ascii=False))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _gate(tmp: Path, champion: Path, candidate: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "retrain.cli", "gate", "--golden", str(tmp / "golden.json")]
        + ["--champion", str(champion), "--candidate", str(candidate), *extra],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )


def test_clearly_better_candidate_is_promoted(tmp_path):
    _golden(tmp_path / "golden.json")
    champ = _predictions(tmp_path / "champ.jsonl", set(range(20)), as_objects=True)
    cand = _predictions(tmp_path / "cand.jsonl", set(range(50)))
    out = _gate(tmp_path, champ, cand, "--champion-name", "champion v1")
    assert out.returncode == 0, out.stderr
    decision = json.loads(out.stdout)
    sig = decision["significance"]
    assert decision["promote"] is True and sig["low"] > 0 and sig["low"] <= sig["difference"] <= sig["high"]
    assert (sig["resamples"], sig["confidence"], sig["min_delta"]) == (2000, 0.95, 0.0)
    assert decision["exam"].endswith(f"/{N}") and "champion v1" in decision["reason"]


def test_noise_level_difference_keeps_the_champion(tmp_path):
    _golden(tmp_path / "golden.json")
    rnd = random.Random(7)
    champ = _predictions(tmp_path / "champ.jsonl", set(rnd.sample(range(N), 30)))
    cand = _predictions(tmp_path / "cand.jsonl", set(rnd.sample(range(N), 31)))
    decision = json.loads(_gate(tmp_path, champ, cand).stdout)
    sig = decision["significance"]
    assert decision["promote"] is False and sig["low"] < 0 < sig["high"]
    assert f"95% CI {sig['low']:+.4f} to {sig['high']:+.4f}" in decision["reason"]


def test_salvaged_outputs_are_parse_failures(tmp_path):
    _golden(tmp_path / "golden.json")
    champ = _predictions(tmp_path / "champ.jsonl", set(range(20)))
    cand = _predictions(tmp_path / "cand.jsonl", set(range(50)), salvage=True)
    decision = json.loads(_gate(tmp_path, champ, cand).stdout)
    failed = {r["rule"]: r["detail"] for r in decision["rules"] if not r["passed"]}
    assert decision["promote"] is False and "parse_failures" in failed and "significant_gain" in failed
    assert "50 salvaged or unparseable" in failed["parse_failures"]
    assert decision["candidate_f1"] == 0.0  # strict: salvaged entities do not count


def test_conf_dir_sets_the_gate(tmp_path):
    conf = tmp_path / "conf"
    shutil.copytree(REPO / "conf", conf, ignore=shutil.ignore_patterns("local"))
    pipeline = yaml.safe_load((conf / "pipeline.yaml").read_text(encoding="utf-8"))
    pipeline["gate"]["min_delta"] = 0.5
    (conf / "pipeline.yaml").write_text(yaml.safe_dump(pipeline), encoding="utf-8")
    _golden(tmp_path / "golden.json")
    champ = _predictions(tmp_path / "champ.jsonl", set(range(20)))
    cand = _predictions(tmp_path / "cand.jsonl", set(range(50)))
    decision = json.loads(_gate(tmp_path, champ, cand, "--conf", str(conf)).stdout)
    assert decision["promote"] is False and decision["significance"]["min_delta"] == 0.5


def test_bad_prediction_file_names_file_and_line(tmp_path):
    _golden(tmp_path / "golden.json")
    champ = _predictions(tmp_path / "champ.jsonl", set())
    bad = tmp_path / "cand.jsonl"
    bad.write_text('"[]"\n{"raw": 3}\n', encoding="utf-8")
    out = _gate(tmp_path, champ, bad)
    assert out.returncode == 1 and f"{bad}: line 2: field 'raw' must be a string" in out.stderr
    short = tmp_path / "short.jsonl"
    short.write_text('"[]"\n', encoding="utf-8")
    out = _gate(tmp_path, champ, short)
    assert out.returncode == 1 and f"1 predictions for {N} golden examples" in out.stderr
