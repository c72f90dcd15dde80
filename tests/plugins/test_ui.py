"""The Retraining UI plugin (plugins/retrain_airflow/ui/, plugins/retrain_ui_plugin.py).

Unit: the FastAPI app over a real moto S3 server (reached through the Airflow connection, as in the
API server) and a real MLflow sqlite registry, seeded with two runs the way the pipeline writes them.
Only the permission dependencies are overridden (the Airflow permission check needs Airflow's
metadata DB); a test proves each route is guarded by the right one, and unauthenticated requests
go through Airflow's real `get_user`.

End to end (``-m e2e``): the real Airflow API server on 127.0.0.1 (Postgres metadata DB) over the
seeded reports: real logins and JWTs, every route refused without them, the rollback trigger. The
browser test (Chromium driving the Airflow UI, screenshots) runs over the demo's real runs instead:
tests/e2e/test_ui_real_run.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.support import mlflow_db

REPO = Path(__file__).resolve().parents[2]
BASE_MODEL = "Qwen/Qwen2.5-7B-Instruct"  # conf train.base_model
MODEL = "clue-ner-Qwen2.5-7B-Instruct-lora"
OLD_TRACKING_URI = "postgresql://mlflow:pw-summary-5e1c@db:5432/mlflow"
LABELS = [
    "address",
    "book",
    "company",
    "game",
    "government",
    "movie",
    "name",
    "organization",
    "position",
    "scene",
]
RUN_A = "scheduled__2026-11-27T02:00:00+00:00"
RUN_B = "manual__2026-11-28T10:00:00+00:00"
RUN_FAILED = "scheduled__2026-11-29T02:00:00+00:00"  # stopped after validation: intake only
ROLLBACK_RUN = "manual__2026-11-28T12:00:00+00:00"
ROLLBACK_REASON = "v2 misses 书名 in production traffic"


def _safe(run_id: str) -> str:
    from retrain.ingest import safe_run_id

    return safe_run_id(run_id)


def _metrics(name: str, micro: float, shift: float) -> dict:
    per_label = {
        lab: round(min(1.0, max(0.0, micro + shift * (i - 4.5) / 10)), 4) for i, lab in enumerate(LABELS)
    }
    return {
        "name": name,
        "micro_f1": micro,
        "precision": round(micro + 0.02, 4),
        "recall": round(micro - 0.02, 4),
        "macro_f1": round(sum(per_label.values()) / len(per_label), 4),
        "cluener_score": round(micro * 100, 2),
        "parse_failure_rate": 0.05,
        "per_label_f1": per_label,
    }


def _intake(bucket: str, run_id: str, objects: list[tuple[str, int, int, dict]]) -> dict:
    rid = _safe(run_id)
    out = []
    for key, accepted, quarantined, reasons in objects:
        slug = key.rsplit("/", 1)[-1].split(".")[0] + "-0123456789ab"
        out.append(
            {
                "key": key,
                "etag": uuid.uuid4().hex,
                "change": "new",
                "read": accepted + quarantined,
                "accepted": accepted,
                "quarantined": quarantined,
                "reasons": reasons,
                "batch_quarantined": False,
                "warnings": ["label drift not judged: 120 spans < validation.drift_min_spans 200"],
                "accepted_uri": f"s3://{bucket}/accepted/{slug}.jsonl",
                "quarantine_uri": f"s3://{bucket}/quarantine/{rid}/{slug}.jsonl",
                "docs_uri": f"s3://{bucket}/reports/{rid}/{slug}/index.html",
            }
        )
    return {
        "run_id": run_id,
        "objects": out,
        "report_uri": f"s3://{bucket}/quarantine/{rid}/report.md",
        "read": sum(o["read"] for o in out),
        "accepted": sum(o["accepted"] for o in out),
        "quarantined": sum(o["quarantined"] for o in out),
    }


def _summary(
    bucket: str,
    run_id: str,
    intake: dict,
    cand: dict,
    champ: dict,
    champion_name: str,
    version: str,
    champion_after: str,
    loss: list,
) -> dict:
    from retrain.config import GateConfig
    from retrain.gate import decide
    from tests.support.contracts import model_scores

    def full(m):  # the evaluation report's shape, for the real gate
        per_label = {k: (v, 20) for k, v in m["per_label_f1"].items()}
        return model_scores(m["micro_f1"], per_label, pfr=m["parse_failure_rate"])

    decision = decide(full(cand), full(champ), GateConfig(), champion_name=champion_name).model_dump()
    rid = _safe(run_id)
    return {
        "run_id": run_id,
        "run_uri": f"s3://{bucket}/runs/{rid}",
        "intake": {k: intake[k] for k in ("read", "accepted", "quarantined", "report_uri")} | {"objects": 1},
        "dataset": {
            "version": f"ds-{rid[:8]}",
            "uri": f"s3://{bucket}/datasets/ds-{rid[:8]}/",
            "train": 900,
            "validation": 100,
            "golden": 100,
            "golden_hash": "9f2c" * 8,
            "label_counts": {"name": 300},
        },
        "train": {
            "train_loss": loss[-1][1],
            "steps": loss[-1][0],
            "epochs": 3.0,
            "runtime_s": 812.4,
            "loss_curve": loss,
        },
        "evaluation": {"candidate": cand, "champion": champ},
        "champion_name": champion_name,
        "decision": decision,
        "registered_version": version,
        # as a summary written before retrain.redact held it: the password in clear
        "registry": {"model": MODEL, "tracking_uri": OLD_TRACKING_URI, "champion_version": champion_after},
    }


GX_INDEX = """<!doctype html><html><head>
<link rel="stylesheet" href="static/styles/data_docs_default_styles.css">
<script>document.title = "ran"</script></head><body><h1>Data Docs</h1><p>batch {slug}</p></body></html>"""


def seed(store, settings, *, with_failed_run: bool = True) -> dict:
    """Two runs as the pipeline leaves them in S3, and the registry they produced (v1, v2, then a
    rollback to v1). Returns the figures the pages must show."""
    import time as _time

    from retrain.registry import Registry

    bucket = store.bucket
    base = _metrics("base model", 0.0312, 0.02)
    v1 = _metrics("candidate", 0.4125, 0.3)
    v1_as_champ = {**v1, "name": "champion v1"}
    v2 = _metrics("candidate", 0.5371, 0.4)
    runs = {
        RUN_A: (
            _intake(
                bucket,
                RUN_A,
                [("incoming/batch-a.jsonl", 120, 5, {"span_text_mismatch": 3, "unknown_label": 2})],
            ),
            v1,
            base,
            "base model",
            "1",
            "1",
            [[5, 2.3104], [10, 1.8702], [15, 1.4233], [20, 1.1021]],
        ),
        RUN_B: (
            _intake(
                bucket,
                RUN_B,
                [
                    ("incoming/batch-b.jsonl", 118, 7, {"duplicate_span": 7}),
                    ("incoming/标注/batch-c.jsonl", 40, 0, {}),
                ],
            ),
            v2,
            v1_as_champ,
            "champion v1",
            "2",
            "2",
            [[5, 1.9001], [10, 1.2502], [15, 0.8803], [20, 0.6604]],
        ),
    }
    for run_id, (intake, cand, champ, cname, version, after, loss) in runs.items():
        rid = _safe(run_id)
        store.put_json(f"runs/{rid}/intake.json", intake)
        store.put_json(
            f"runs/{rid}/summary.json",
            _summary(bucket, run_id, intake, cand, champ, cname, version, after, loss),
        )
        store.put_json(f"runs/{rid}/train_request.json", {"run_id": run_id})
        store.put_bytes(
            f"quarantine/{rid}/report.md", f"# Intake report — run {run_id}\n".encode(), "text/markdown"
        )
        for o in intake["objects"]:
            prefix = o["docs_uri"][len(f"s3://{bucket}/") :].rsplit("/", 1)[0]
            slug = prefix.rsplit("/", 1)[-1]
            store.put_bytes(f"{prefix}/index.html", GX_INDEX.format(slug=slug).encode(), "text/html")
            store.put_bytes(
                f"{prefix}/static/styles/data_docs_default_styles.css", b"body{color:#333}", "text/css"
            )
            store.put_bytes(
                f"{prefix}/validations/ner_spans/{slug}/20261127T020101Z/{slug}-spans.html",
                b"<html><body>spans</body></html>",
                "text/html",
            )
        store.put_bytes(f"runs/{rid}/eval/report.html", b"<html><body>eval</body></html>", "text/html")
    if with_failed_run:
        store.put_json(
            f"runs/{_safe(RUN_FAILED)}/intake.json",
            _intake(bucket, RUN_FAILED, [("incoming/batch-d.jsonl", 3, 31, {"gx:label_drift": 31})]),
        )
    store.put_json(f"runs/{_safe('manual__2026-11-26T00:00:00+00:00')}/train_request.json", {"run_id": "x"})
    store.put_json("state/ledger.json", {"objects": {"secret": 1}})

    reg = Registry.from_settings(settings, BASE_MODEL)
    assert reg.name == MODEL
    for run_id, version in ((RUN_A, "1"), (RUN_B, "2")):
        cand = runs[run_id][1]
        mlflow_run = reg.log_training_run(
            airflow_run_id=run_id,
            dag_id="ner_retrain",
            params={"lora_rank": 8},
            metrics={"eval_micro_f1": cand["micro_f1"]},
            loss_curve=[],
            tags={"dataset_version": f"ds-{_safe(run_id)[:8]}"},
            artifacts={},
        )
        got = reg.register(
            adapter_uri=f"s3://{bucket}/adapters/{int(version):064x}/",
            adapter_digest=f"{int(version):064x}",
            mlflow_run_id=mlflow_run,
            airflow_run_id=run_id,
            tags={
                "micro_f1": f"{cand['micro_f1']:.6f}",
                "dataset_version": f"ds-{_safe(run_id)[:8]}",
                "base_model": BASE_MODEL,
                "airflow_dag_id": "ner_retrain",
            },
        )
        assert got == version
        reg.set_version_tags(
            version, {"decision": "promoted", "decision_reason": f"promoted: v{version} won"}
        )
        reg.move_champion(
            version, reason=f"promoted: micro F1 {cand['micro_f1']:.4f}", actor=f"ner_retrain/{run_id}"
        )
        _time.sleep(0.02)  # history is ordered by start time (ms)
    reg.rollback("1", reason=ROLLBACK_REASON, actor=f"ner_rollback/{ROLLBACK_RUN}")
    return {"champion": "1", "v2_f1": "0.5371", "v1_f1": "0.4125", "accepted_b": 158, "quarantined_b": 7}


# =========================================================================== unit
@pytest.fixture(scope="module")
def world(moto_server, tmp_path_factory):
    """moto S3 reached through the Airflow connection env var + a seeded sqlite MLflow registry."""
    from retrain.config import load_settings
    from retrain.storage import ObjectStore

    tmp = tmp_path_factory.mktemp("ui")
    bucket = f"ui-{uuid.uuid4().hex[:10]}"
    environ = {
        "RETRAIN__S3__BUCKET": bucket,
        "RETRAIN__REGISTRY__TRACKING_URI": mlflow_db.sqlite_uri(tmp / "mlflow.db"),
        "RETRAIN__REGISTRY__ARTIFACT_LOCATION": (tmp / "mlartifacts").as_uri(),
    }
    settings = load_settings(environ=environ)
    store = ObjectStore(moto_server.client(), bucket)
    store.ensure_bucket()
    figures = seed(store, settings)
    mp = pytest.MonkeyPatch()
    mp.setenv("AIRFLOW_CONN_AWS_DEFAULT", moto_server.airflow_connection())
    mp.setenv("RETRAIN_HOME", str(tmp / "retrain_home"))
    yield {"settings": settings, "store": store, "figures": figures, "environ": environ}
    mp.undo()


def _app(world, *, authorized: bool):
    from retrain_airflow.ui.routes import create_app

    app = create_app(settings_loader=lambda: world["settings"])
    if authorized:
        from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

        for dep in (
            app.state.auth.user,
            app.state.auth.read,
            app.state.auth.read_path_dag,
            app.state.auth.trigger_rollback,
        ):
            app.dependency_overrides[dep] = lambda: None
        app.dependency_overrides[app.state.get_user] = lambda: SimpleAuthManagerUser(
            username="ops", role="admin"
        )
    return app


@pytest.fixture(scope="module")
def client(world):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    root = FastAPI()
    root.mount("/retrain", _app(world, authorized=True))
    with TestClient(root, base_url="http://airflow.test") as c:
        yield c


@pytest.fixture(scope="module")
def anonymous(world):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    root = FastAPI()
    app = _app(world, authorized=False)
    root.mount("/retrain", app)
    with TestClient(root, base_url="http://airflow.test") as c:
        yield c, app


def _concrete_paths(app, world) -> list[tuple[str, str]]:
    """(method, URL) for every route of the app, path parameters filled with real values."""
    from fastapi.routing import APIRoute

    key = f"runs/{_safe(RUN_B)}/summary.json"
    values = {"key": key, "name": "retrain.css", "dag_id": "ner_retrain", "run_id": RUN_B}
    out = []
    for route in app.routes:
        assert isinstance(route, APIRoute), f"{route} is not an API route (a mount or static files?)"
        path = re.sub(r"{(\w+)(:\w+)?}", lambda m: quote(values[m.group(1)], safe="/"), route.path)
        for method in route.methods:
            out.append((method, "/retrain" + path))
    return out


def _dependency_calls(dependant) -> set:
    calls = {dependant.call}
    for sub in dependant.dependencies:
        calls |= _dependency_calls(sub)
    return calls


def test_every_route_requires_an_airflow_login_and_the_right_permission(world):
    from airflow.api_fastapi.core_api.security import get_user
    from fastapi.routing import APIRoute

    app = _app(world, authorized=False)
    auth = app.state.auth
    expected = {
        "/": auth.read,
        "/api/overview": auth.read,
        "/s3/{key:path}": auth.read,
        "/report/{dag_id}/{run_id:path}": auth.read_path_dag,
        "/static/{name}": auth.user,
        "/rollback": auth.trigger_rollback,
    }
    routes = {r.path: r for r in app.routes if isinstance(r, APIRoute)}
    assert set(routes) == set(expected), "a route was added or removed: give it a guard and list it here"
    assert len(routes) == len(app.routes), "only API routes (no mounts, no StaticFiles, no /docs)"
    for path, guard in expected.items():
        calls = _dependency_calls(routes[path].dependant)
        assert guard in calls, f"{path} is not guarded by {guard}"
        assert get_user in calls, f"{path} does not authenticate through Airflow's get_user"
    # the guards are Airflow's: the read/trigger ones check DAG permissions on the right DAGs
    assert auth.trigger_rollback.__closure__ and "ner_rollback" in repr(
        [c.cell_contents for c in auth.trigger_rollback.__closure__]
    )
    assert "POST" in repr([c.cell_contents for c in auth.trigger_rollback.__closure__])
    assert "ner_retrain" in repr([c.cell_contents for c in auth.read.__closure__])


def test_unauthenticated_requests_are_refused_on_every_route(anonymous, world):
    client, app = anonymous
    paths = _concrete_paths(app, world)
    assert len(paths) == 6
    for method, url in paths:
        r = client.request(
            method,
            url,
            data={"target": "2", "reason": "because"} if method == "POST" else None,
            follow_redirects=False,
        )
        assert r.status_code == 401, (method, url, r.status_code, r.text[:200])
        assert "Data Docs" not in r.text and "0.5371" not in r.text
    for url in ("/retrain/docs", "/retrain/openapi.json", "/retrain/redoc"):
        assert client.get(url).status_code == 404, url


def test_overview_shows_champion_history_trend_runs_and_rollback_form(client, world):
    r = client.get("/retrain/")
    assert r.status_code == 200, r.text[:500]
    assert "script-src 'self'" in r.headers["content-security-policy"]
    page = r.text
    # champion (after the rollback) and its F1, from the registry
    assert re.search(r'id="champion-version">v1<', page)
    assert re.search(r'id="champion-f1">0\.4125<', page)
    # champion history: newest first, with when / F1 / why / who
    history = page.split('id="champion-history"')[1].split("</table>")[0]
    rows = history.split("<tr>")[2:]
    assert len(rows) == 3
    assert "rollback" in rows[0] and "v2 → <b>v1</b>" in rows[0] and ROLLBACK_REASON in rows[0]
    assert "0.4125" in rows[0] and f"/dags/ner_rollback/runs/{quote(ROLLBACK_RUN, safe='')}" in rows[0]
    assert "promote" in rows[1] and "<b>v2</b>" in rows[1] and "0.5371" in rows[1]
    assert "v1</b>" in rows[2] and "—" in rows[2]
    # F1 trend: an SVG line per label, with the candidate's figures as tooltips
    svg = page.split('<svg class="chart"')[1].split("</svg>")[0]
    assert svg.count("<polyline") == len(LABELS) + 2
    assert "micro F1 @ 11-28 10:00: 0.5371" in svg and "micro F1 @ 11-27 02:00: 0.4125" in svg
    assert "champion micro F1 @ 11-28 10:00: 0.4125" in svg
    # runs table, newest first: counts, GX Data Docs through the proxy, decisions
    runs = page.split('id="runs"')[1].split("</table>")[0].split("<tr>")[2:]
    assert len(runs) == 3, "the intake-only run is listed, the folder with neither file is not"
    assert RUN_FAILED in runs[0] and "no decision" in runs[0] and ">31 · " in runs[0]
    assert RUN_B in runs[1] and ">158<" in runs[1] and ">7 · " in runs[1] and "promoted" in runs[1]
    rid_b = _safe(RUN_B)
    assert f'href="/retrain/s3/reports/{rid_b}/batch-b-0123456789ab/index.html"' in runs[1]
    assert f"/retrain/s3/reports/{rid_b}/batch-c-0123456789ab/index.html" in runs[1]
    assert f'href="/retrain/s3/quarantine/{rid_b}/report.md"' in runs[1]
    assert f'href="/retrain/report/ner_retrain/{quote(RUN_B, safe="")}"' in runs[1]
    assert "0.5371" in runs[1] and "0.4125" in runs[1]
    assert RUN_A in runs[2] and "base model" in runs[2]
    # rollback form: the versions that are not champion, and 'previous'
    form = page.split('<form id="rollback"')[1].split("</form>")[0]
    assert 'action="/retrain/rollback"' in form and 'name="reason"' in form
    assert '<option value="2">v2' in form and '<option value="2">previous (v2)' in form
    assert '<option value="1">' not in form and "previous" not in form.split("<option")[0]
    # the champion the page showed travels with the form: the rollback refuses if it moved meanwhile
    assert '<input type="hidden" name="champion" value="1">' in form


def test_overview_survives_an_unreachable_bucket(world):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    missing = world["settings"].model_copy(
        update={"s3": world["settings"].s3.model_copy(update={"bucket": f"missing-{uuid.uuid4().hex[:8]}"})}
    )
    root = FastAPI()
    app = _app({"settings": missing}, authorized=True)
    root.mount("/retrain", app)
    with TestClient(root) as c:
        r = c.get("/retrain/")
    assert r.status_code == 200
    assert "S3 unavailable: NoSuchBucket" in r.text
    assert 'id="champion-version">v1<' in r.text, "the registry part still renders"


def test_overview_json(client):
    data = client.get("/retrain/api/overview").json()
    assert [r["run_id"] for r in data["runs"]] == [RUN_A, RUN_B, RUN_FAILED]
    assert re.fullmatch(
        r"promoted v2: micro F1 0\.5371 \(\+0\.1246, 95% CI \+0\.\d{4} to \+0\.\d{4} vs champion v1\)",
        data["runs"][1]["note"],
    ), data["runs"][1]["note"]
    assert data["registry"]["describe"]["champion"]["version"] == "1"
    assert [e["kind"] for e in data["registry"]["history"]] == ["promote", "promote", "rollback"]
    shown = data["runs"][1]["summary"]["registry"]["tracking_uri"]
    assert shown == "postgresql://mlflow:***@db:5432/mlflow", shown
    assert "pw-summary-5e1c" not in json.dumps(data)


def test_run_report_tab(client):
    r = client.get(f"/retrain/report/ner_retrain/{quote(RUN_B, safe='')}")
    assert r.status_code == 200, r.text[:500]
    page = r.text
    assert "promoted v2: micro F1 0.5371 (+0.1246, 95% CI +0." in page
    assert re.search(r'id="accepted">158<', page) and re.search(r'id="quarantined">7<', page)
    assert "duplicate_span: 7" in page and "label drift not judged" in page
    assert "<code>incoming/标注/batch-c.jsonl</code>" in page
    # GX validation pages are linked directly (the Data Docs index needs scripts from a CDN)
    assert "batch-b-0123456789ab-spans</a>" in page
    # loss curve as SVG, with its points
    loss_svg = page.split('aria-label="Training loss"')[1].split("</svg>")[0]
    assert "<polyline" in loss_svg and "training loss @ 20: 0.6604" in loss_svg
    # candidate vs champion, per label, and the gate's rules
    per_label = page.split('id="per-label"')[1].split("</table>")[0]
    assert all(f"<td>{lab}</td>" in per_label for lab in LABELS)
    assert "champion v1" in per_label and 'class="up"' in per_label
    rules = page.split('id="rules"')[1].split("</table>")[0]
    assert "significant_gain" in rules and "micro F1 (strict) 0.5371 vs champion v1 0.4125" in rules
    significance = page.split('id="significance"')[1].split("</p>")[0]
    assert "95% interval <b>[+0." in significance and "2000 resamples" in significance
    assert "Registered version: <b>v2</b>" in page


def test_run_report_for_a_run_without_summary_and_a_skipped_run(client):
    page = client.get(f"/retrain/report/ner_retrain/{quote(RUN_FAILED, safe='')}").text
    assert "no decision: the run stopped before promote" in page and "gx:label_drift: 31" in page
    page = client.get("/retrain/report/ner_retrain/scheduled__2026-11-30T02:00:00+00:00").text
    assert "skipped: no new data" in page
    page = client.get(f"/retrain/report/ner_rollback/{quote(ROLLBACK_RUN, safe='')}").text
    assert "champion v2 → v1" in page and ROLLBACK_REASON in page
    page = client.get("/retrain/report/other_dag/manual__1").text
    assert "another DAG" in page


def test_s3_proxy_serves_reports_with_a_no_script_policy(client):
    rid = _safe(RUN_B)
    r = client.get(f"/retrain/s3/reports/{rid}/batch-b-0123456789ab/index.html")
    assert r.status_code == 200 and "<h1>Data Docs</h1>" in r.text
    assert r.headers["content-type"].startswith("text/html")
    assert "script-src 'none'" in r.headers["content-security-policy"]
    css = client.get(
        f"/retrain/s3/reports/{rid}/batch-b-0123456789ab/static/styles/data_docs_default_styles.css"
    )
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    md = client.get(f"/retrain/s3/quarantine/{rid}/report.md")
    assert md.status_code == 200 and md.headers["content-type"].startswith("text/plain")
    assert md.text.startswith(f"# Intake report — run {RUN_B}")
    assert r.headers["content-security-policy"].startswith("sandbox allow-same-origin;")
    assert client.get(f"/retrain/s3/runs/{rid}/summary.json").status_code == 403  # not linked by the UI


@pytest.mark.parametrize(
    "path",
    [
        "/retrain/s3/runs/%2E%2E/state/ledger.json",
        "/retrain/s3/reports/x/%2e%2e/%2e%2e/state/ledger.json",
        "/retrain/s3/runs/%2E/x/summary.json",
        "/retrain/s3/runs//summary.json",
        "/retrain/s3/runs/x%5C..%5Csummary.json",
    ],
)
def test_s3_proxy_refuses_dot_dot_keys(client, path):
    r = client.get(path)
    assert r.status_code == 400, (path, r.status_code)
    assert "secret" not in r.text


@pytest.mark.parametrize(
    "key",
    [
        "state/ledger.json",
        "incoming/batch-a.jsonl",
        "accepted/x.jsonl",
        "runsX/y",
        "runs/r/adapter/adapter_model.safetensors",
        "runs/r/checkpoints/checkpoint-2/adapter_model.safetensors",
        "runs/r/merged/model.safetensors",
    ],
)
def test_s3_proxy_refuses_keys_outside_the_report_prefixes(client, key):
    r = client.get(f"/retrain/s3/{key}")
    assert r.status_code == 403, (key, r.status_code)
    assert "secret" not in r.text


def test_static_assets(client):
    css = client.get("/retrain/static/retrain.css")
    assert (
        css.status_code == 200 and ".chart" in css.text and css.headers["content-type"].startswith("text/css")
    )
    assert client.get("/retrain/static/icon.svg").headers["content-type"] == "image/svg+xml"
    assert client.get("/retrain/static/..%2Fui.py").status_code == 404
    assert client.get("/retrain/static/ui.py").status_code == 404


@pytest.mark.parametrize(
    "form, status, message",
    [
        ({"target": "1", "reason": "because"}, 400, "already the champion"),
        ({"target": "7", "reason": "because"}, 400, "is not a version"),
        ({"target": "2", "reason": "no"}, 400, "reason: 3 to 500 characters"),
        ({"target": "2", "reason": "x" * 501}, 400, "reason: 3 to 500 characters"),
        (
            {"target": "2", "reason": "because", "champion": "2"},
            409,
            "the champion changed since the page was shown (it showed v2, it is v1 now)",
        ),
    ],
)
def test_rollback_form_is_validated_before_anything_is_triggered(client, form, status, message):
    r = client.post("/retrain/rollback", data=form, follow_redirects=False)
    assert r.status_code == status and message in r.text, (r.status_code, r.text[:300])


def test_another_registered_model_can_be_shown_and_names_are_checked(client):
    page = client.get("/retrain/?model=clue-ner-other-base-lora").text
    assert "Model <b>clue-ner-other-base-lora</b>" in page and 'id="champion-version"' not in page
    assert client.get("/retrain/?model=x'%20OR%20name%20LIKE%20'%25").status_code == 400
    assert client.get("/retrain/api/overview?model=a/b").status_code == 400
    r = client.post(
        "/retrain/rollback", data={"target": "2", "reason": "because", "model": "clue-ner-other-base-lora"}
    )
    assert r.status_code == 400 and "is not a version of clue-ner-other-base-lora" in r.text


@pytest.mark.parametrize(
    "headers", [{"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"}, {"Origin": "null"}]
)
def test_rollback_refuses_cross_site_posts(client, headers):
    r = client.post(
        "/retrain/rollback",
        data={"target": "2", "reason": "because"},
        headers=headers,
        follow_redirects=False,
    )
    assert r.status_code == 403 and "refused" in r.text


def test_plugin_declares_the_app_and_views_lazily():
    code = textwrap.dedent(f"""
        import json, sys
        sys.path.insert(0, {str(REPO / "plugins")!r})
        import retrain_ui_plugin as p
        heavy = sorted(m for m in ("fastapi", "mlflow", "boto3", "retrain_airflow.ui",
                                   "airflow.api_fastapi.core_api.security") if m in sys.modules)
        plugin = p.RetrainUIPlugin()
        views, apps = plugin.external_views, plugin.fastapi_apps
        print(json.dumps({{"heavy": heavy, "views": views, "prefix": apps[0]["url_prefix"],
                          "app": type(apps[0]["app"]).__name__}}))
    """)
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "AIRFLOW__CORE__LOAD_EXAMPLES": "False"},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["heavy"] == [], f"importing the plugin file pulled in {r['heavy']}"
    assert r["prefix"] == "/retrain" and r["app"] == "FastAPI"
    nav, tab = r["views"]
    assert nav["url_route"] == "retraining" and nav["href"] == "/retrain/"
    assert tab["destination"] == "dag_run" and tab["href"] == "/retrain/report/{DAG_ID}/{RUN_ID}"


# =========================================================================== end to end
@pytest.fixture(scope="module")
def airflow_ui(moto_server, tmp_path_factory):
    """A fresh AIRFLOW_HOME + Postgres DB, DAGs serialized, users admin and viewer, the API server up."""
    from retrain.config import load_settings
    from retrain.storage import ObjectStore
    from tests.support.airflow_ui import ApiServer, artifacts_dir
    from tests.support.stack import AirflowEnv, drop_database

    tmp = tmp_path_factory.mktemp("ui_e2e")
    bucket = f"ui-e2e-{uuid.uuid4().hex[:8]}"
    retrain_env = {
        "RETRAIN__S3__BUCKET": bucket,
        "RETRAIN_HOME": str(tmp / "retrain_home"),
        "RETRAIN__REGISTRY__TRACKING_URI": mlflow_db.sqlite_uri(tmp / "mlflow.db"),
        "RETRAIN__REGISTRY__ARTIFACT_LOCATION": (tmp / "mlartifacts").as_uri(),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin,viewer:viewer",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
    }
    settings = load_settings(environ=retrain_env)
    store = ObjectStore(moto_server.client(), bucket)
    store.ensure_bucket()
    figures = seed(store, settings, with_failed_run=False)
    env = AirflowEnv(tmp / "airflow", f"retrain_ui_{uuid.uuid4().hex[:8]}", moto_server, retrain_env)
    server = None
    try:
        t0 = time.monotonic()
        env.migrate()
        env.run("dags", "reserialize", timeout=300)
        server = ApiServer(env, tmp / "api-server.log").start()
        print(f"\nairflow ready in {time.monotonic() - t0:.1f}s at {server.url} (log {server.log_file})")
        yield {"url": server.url, "server": server, "figures": figures, "store": store, "tmp": tmp}
    finally:
        if server:
            server.stop()
            shutil.copyfile(server.log_file, artifacts_dir() / "api-server.log")
        drop_database(env.database)


@pytest.mark.e2e
def test_e2e_auth_is_airflows(airflow_ui):
    import httpx

    url = airflow_ui["url"]
    key = quote(f"runs/{_safe(RUN_B)}/decision.json")
    routes = [
        ("GET", "/retrain/"),
        ("GET", "/retrain/api/overview"),
        ("GET", f"/retrain/s3/{key}"),
        ("GET", f"/retrain/report/ner_retrain/{quote(RUN_B, safe='')}"),
        ("GET", "/retrain/static/retrain.css"),
        ("GET", "/retrain/static/icon.svg"),
        ("POST", "/retrain/rollback"),
    ]
    with httpx.Client(base_url=url, timeout=60) as c:
        admin = {"Authorization": f"Bearer {airflow_ui['server'].token('admin')}"}
        plugins = c.get("/api/v2/plugins", headers=admin).json()
        mine = [p for p in plugins["plugins"] if p["name"] == "retrain_ui"]
        assert mine and mine[0]["fastapi_apps"][0]["url_prefix"] == "/retrain"
        assert {v["name"] for v in mine[0]["external_views"]} == {"Retraining", "Retrain report"}
        for method, path in routes:
            r = c.request(
                method, path, data={"target": "2", "reason": "because"} if method == "POST" else None
            )
            assert r.status_code == 401, (path, r.status_code)
            r = c.request(
                method,
                path,
                headers={"Authorization": "Bearer not.a.jwt"},
                data={"target": "2", "reason": "because"} if method == "POST" else None,
            )
            assert r.status_code == 403, (path, r.status_code)
        viewer = {"Authorization": f"Bearer {airflow_ui['server'].token('viewer')}"}
        r = c.get("/retrain/", headers=viewer)
        assert r.status_code == 200 and 'id="champion-version">v1<' in r.text
        r = c.post("/retrain/rollback", headers=viewer, data={"target": "2", "reason": "viewer tries"})
        assert r.status_code == 403, r.text
        runs = c.get("/api/v2/dags/ner_rollback/dagRuns", headers=viewer).json()
        assert runs["total_entries"] == 0


@pytest.mark.e2e
def test_e2e_rollback_form_triggers_ner_rollback(airflow_ui):
    import httpx

    admin = {"Authorization": f"Bearer {airflow_ui['server'].token('admin')}"}
    with httpx.Client(base_url=airflow_ui["url"], timeout=60, headers=admin) as c:
        r = c.post(
            "/retrain/rollback",
            data={"target": "previous", "reason": "v1 drifted on 地址", "champion": "1"},
            follow_redirects=False,
        )
        assert r.status_code == 303, r.text[:500]
        assert r.headers["location"].startswith("/retrain/?triggered=")
        runs = c.get("/api/v2/dags/ner_rollback/dagRuns").json()["dag_runs"]
        assert len(runs) == 1
        run = runs[0]
        # the resolved version and the champion the page showed, never "previous"
        assert run["conf"] == {
            "target": "2",
            "reason": "v1 drifted on 地址",
            "base_model": None,
            "expected_champion": "1",
        }
        assert run["triggering_user_name"] == "admin" and run["state"] == "queued"
        assert run["note"].startswith("rollback to v2 requested by admin")
        page = c.get(r.headers["location"]).text
        assert f'Triggered <a href="/dags/ner_rollback/runs/{quote(run["dag_run_id"], safe="")}"' in page
        assert "ner_rollback is paused" in page  # new DAGs start paused here
        r = c.post("/retrain/rollback", data={"target": "9", "reason": "nope nope"})
        assert r.status_code == 400
        assert c.get("/api/v2/dags/ner_rollback/dagRuns").json()["total_entries"] == 1
