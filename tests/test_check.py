"""`retrain check`: the pre-flight command annotators run, as a subprocess of this (the Airflow,
Great Expectations) environment, on the hand-written export fixtures and the real CLUENER file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from retrain.check import FileCheck, exit_code

FIXTURES = Path(__file__).parent / "formats" / "fixtures"
# Runs `retrain check` and reports which heavy or remote-service modules the run imported.
RUNNER = (
    "import sys\n"
    "from retrain.cli import main\n"
    "rc = main(sys.argv[1:])\n"
    "seen = [m for m in ('airflow', 'mlflow', 'retrain.storage', 'retrain.ingest') if m in sys.modules]\n"
    "print('IMPORTED=' + ','.join(seen), file=sys.stderr)\n"
    "sys.exit(rc)\n"
)


def check(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RETRAIN__", "MLFLOW_"))}
    env["AWS_ENDPOINT_URL"] = "http://127.0.0.1:9"  # nothing listens: any S3 call would fail
    return subprocess.run(
        [sys.executable, "-c", RUNNER, "check", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def cluener_file(path: Path, lines: list[dict]) -> Path:
    path.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines), encoding="utf-8")
    return path


CLEAN = [
    {
        "text": "王小明在杭州的阿里巴巴工作。",
        "label": {"name": {"王小明": [[0, 2]]}, "company": {"阿里巴巴": [[7, 10]]}},
    },
    {
        "text": "《三体》是刘慈欣写的书。",
        "label": {"book": {"《三体》": [[0, 3]]}, "name": {"刘慈欣": [[5, 7]]}},
    },
]
BAD = [
    CLEAN[0],
    {"text": "张\u200b伟在北京", "label": {"name": {"张伟": [[0, 2]]}}},  # ZWSP: normalised, warned
    {"text": "叶老桂博士", "label": {"人物": {"叶老桂": [[0, 2]]}}},  # unknown label
    CLEAN[0],  # exact duplicate: dropped, not quarantined
    {"text": "李雷去了上海玩", "label": {"address": {"上海": [[4, 6]]}}},  # an exclusive end in CLUENER
]


def test_clean_files_pass_with_a_table(tmp_path):
    cluener_file(tmp_path / "clean.jsonl", CLEAN)
    relations = FIXTURES / "doccano_export_relations.jsonl"
    run = check("clean.jsonl", str(relations), cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "IMPORTED=\n" in run.stderr  # no Airflow, MLflow or S3 code
    rows = [line for line in run.stdout.splitlines() if line.startswith("| ")][1:]
    assert rows[0].startswith("| clean.jsonl | cluener | 2 | 2 | 0 | 0 | — | ok |")
    assert rows[1].startswith(f"| {relations} | doccano | 2 | 2 | 0 | 0 | — | ok |")


def test_quarantine_exits_one_and_names_file_line_field(tmp_path):
    cluener_file(tmp_path / "bad.jsonl", BAD)
    ls = FIXTURES / "label_studio_export.json"
    docs = tmp_path / "docs"
    run = check("bad.jsonl", str(ls), "--data-docs", str(docs), cwd=tmp_path)
    assert run.returncode == 1, run.stdout + run.stderr
    out = run.stdout
    assert "| bad.jsonl | cluener | 5 | 2 | 2 | 1 | gx" not in out  # not judged by GX alone
    assert "| bad.jsonl | cluener | 5 | 2 | 2 | 1 |" in out and "fix and re-check" in out
    assert "bad.jsonl:3 field 'label.人物': unknown_label" in out
    assert "bad.jsonl:5 field 'label.address.上海[0]': span_text_mismatch" in out
    assert "looks exclusive" in out  # the off-by-one is explained
    assert "1 exact duplicates dropped (first copy kept): lines 4" in out
    assert "warning bad.jsonl:2: invisible_characters (normalised)" in out and "U+200B" in out
    assert f"{ls}:1 field 'annotations[0].result[5].value.labels': unknown_label" in out
    assert f"{ls}:5 field 'annotations': no_annotation" in out
    # Data Docs, one site per file, written locally
    sites = sorted(p.parent.name for p in docs.glob("*/index.html"))
    assert len(sites) == 2 and sites[0] == "bad_jsonl" and sites[1].endswith("label_studio_export_json")
    assert "INFO great_expectations" not in run.stderr  # GX's set-up chatter is not shown


def test_json_report(tmp_path):
    bad = cluener_file(tmp_path / "bad.jsonl", BAD)
    run = check("--json", str(bad), cwd=tmp_path)
    assert run.returncode == 1
    report = json.loads(run.stdout)
    assert report["ok"] is False
    (f,) = report["files"]
    assert (f["read"], f["accepted"], f["quarantined"], f["duplicates_dropped"]) == (5, 2, 2, 1)
    assert f["reasons"] == {"duplicate_record": 1, "span_text_mismatch": 1, "unknown_label": 1}
    assert [(r["line"], r["reason"], r["field"]) for r in f["rejections"]] == [
        (3, "unknown_label", "label.人物"),
        (4, "duplicate_record", ""),
        (5, "span_text_mismatch", "label.address.上海[0]"),
    ]
    assert [w["line"] for w in f["warnings"]] == [2, 2]
    assert f["batch_quarantined"] is False and f["data_docs"] is None


def test_missing_path_is_a_usage_error(tmp_path):
    run = check(str(tmp_path / "nope.jsonl"), cwd=tmp_path)
    assert run.returncode == 2 and "nope.jsonl: no such file or folder" in run.stderr


def test_large_repeated_export_shows_progress_and_passes(tmp_path, cluener_dir):
    """CLUENER train pasted four times (9 MB, above the progress threshold): the 10,748 unique
    records pass, the repeats are dropped and reported, and reading shows progress."""
    big = tmp_path / "train_x4.json"
    big.write_bytes((cluener_dir / "train.json").read_bytes() * 4)
    run = check("--json", str(big), cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    (f,) = json.loads(run.stdout)["files"]
    assert (f["read"], f["accepted"], f["quarantined"], f["duplicates_dropped"]) == (
        42_992,
        10_748,
        0,
        32_244,
    )
    assert not f["batch_quarantined"]
    progress = [line for line in run.stderr.splitlines() if line.startswith(f"check {big}: read")]
    assert len(progress) >= 5 and progress[-1].startswith(f"check {big}: read 100%")
    # validated as intake does: in chunks of intake.chunk_records, the batch judged once on the totals
    assert f"check {big}: validated 10748 records with Great Expectations in 5 chunks" in run.stderr


def _file(**kw) -> FileCheck:
    base = dict(path="f", format="cluener", bytes=1, read=1, accepted=1, quarantined=0, duplicates=0)
    base.update(reasons={}, batch_quarantined=False, batch_reason="", rejections=[], warnings=[])
    base.update(kw)
    return FileCheck(**base)


def test_exit_code_rules():
    assert exit_code([_file()]) == 0
    assert exit_code([_file(), _file(quarantined=1)]) == 1
    assert exit_code([_file(batch_quarantined=True)]) == 1
    assert exit_code([_file(duplicates=3, warnings=[(2, "w")])]) == 0
    assert exit_code([_file(duplicates=3)], strict=True) == 1
    assert exit_code([_file(warnings=[(2, "w")])], strict=True) == 1
