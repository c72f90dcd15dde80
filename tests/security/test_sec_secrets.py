"""Secrets come only from connections and the environment, and task logs do not show them.

- conf/ and the DAG files hold no credentials (the S3 credentials come from the Airflow connection
  ``airflow.aws_conn_id``, or AWS_* variables for the CLI and the trainer);
- the logs of a real Airflow run (the DAG-level fault scenario, tests/faults/dag_scenario.py: the
  ``airflow dags test`` output of three runs, the trainer's LLaMA-Factory log kept in S3 and MLflow)
  and every text object the runs wrote to S3 (requests, results, reports) are scanned for the moto
  server's S3 secret key. In run A the trainer itself prints the secret it was given; that line is
  the one place it may appear, and whether the task output masks it is tested separately.
(Also: the docker launcher's private environment, tests/plugins/launchers/test_launcher_docker.py;
the UI plugin refuses unauthenticated requests on every route, tests/plugins/test_ui.py.)
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LEAK_MARKER = "debug: AWS_SECRET_ACCESS_KEY="  # what the deliberately leaky trainer of run A prints


def test_conf_and_dags_hold_no_credentials():
    pattern = re.compile(
        r"(?i)(aws_secret_access_key|secret_key|password|passwd|token)\s*[:=]\s*['\"]?[^\s'\"{}$]{6,}"
    )
    files = [p for p in (REPO / "conf").rglob("*") if p.is_file() and "local" not in p.parts]
    files += list((REPO / "dags").glob("*.py"))
    assert files
    hits = []
    for path in files:
        for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            code = line.split(" #", 1)[0] if not line.lstrip().startswith("#") else ""
            hits += [(f"{path.relative_to(REPO)}:{n}", m.group(0)) for m in pattern.finditer(code)]
    assert not hits, hits


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    from tests.faults.dag_scenario import scenario

    result = scenario(tmp_path_factory.getbasetemp() / "dag-fault-scenario")
    assert not result.error, result.error
    return result


@pytest.mark.e2e
def test_s3_secret_appears_in_no_log_and_no_object(scenario):
    secret = scenario.secret_key
    assert len(secret) >= 30
    texts = scenario.logs
    run_logs = [t for name, t in texts.items() if name.endswith(("A-trainer-exit-137.log", "C-rerun.log"))]
    assert len(run_logs) == 2 and all("[DAG TEST]" in t for t in run_logs)  # the scan sees the task output
    assert any(name.startswith("s3://") and name.endswith("train_request.json") for name in texts)
    leaks = {}
    for name, text in texts.items():
        kept = "\n".join(line for line in text.splitlines() if LEAK_MARKER not in line)
        if secret in kept:
            leaks[name] = [line[:200] for line in kept.splitlines() if secret in line][:3]
    assert not leaks, leaks


@pytest.mark.e2e
def test_a_secret_printed_by_the_trainer_is_masked_in_the_task_output(scenario):
    ((name, text),) = [(n, t) for n, t in scenario.logs.items() if n.endswith("A-trainer-exit-137.log")]
    assert LEAK_MARKER in text  # the trainer did print it
    assert scenario.secret_key not in text, [
        line[:120] for line in text.splitlines() if scenario.secret_key in line
    ]
