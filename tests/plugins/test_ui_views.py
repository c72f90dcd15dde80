"""The UI's HTML (plugins/retrain_airflow/ui/views.py and templates/): autoescaping of everything
annotators, run ids and the registry can put on a page, the formatting helpers, and the links.

The pages over a real S3 bucket and registry are tested through the app in test_ui.py; here the
templates get hostile text directly."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

XSS = "<script>alert('x')</script>"
ESCAPED = "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"
BUCKET = "views-bucket"


@pytest.fixture(scope="module")
def links():
    from retrain_airflow.ui.links import Links

    from retrain.config import load_settings

    return Links("/retrain", load_settings(environ={"RETRAIN__S3__BUCKET": BUCKET}))


def _hostile_run():
    from retrain_airflow.ui.page_data import RunRecord

    run_id = f"manual__2026-11-28T10:00:00{XSS}"
    intake = {
        "run_id": run_id,
        "read": 3,
        "accepted": 2,
        "quarantined": 1,
        "report_uri": f"s3://{BUCKET}/quarantine/r/report.md",
        "objects": [
            {
                "key": f"incoming/{XSS}.jsonl",
                "change": XSS,
                "read": 3,
                "accepted": 2,
                "quarantined": 1,
                "reasons": {XSS: 1},
                "warnings": [XSS],
                "docs_uri": f"s3://{BUCKET}/reports/r/{XSS}/index.html",
                "quarantine_uri": f"s3://{BUCKET}/quarantine/r/{XSS}.jsonl",
            }
        ],
    }
    summary = {
        "run_id": run_id,
        "dataset": {"version": XSS, "golden_hash": XSS},
        "train": {"loss_curve": [[1, 2.0], [2, 1.0]], "steps": XSS},
        "evaluation": {
            "candidate": {"micro_f1": 0.5, "per_label_f1": {XSS: 0.5}},
            "champion": {"micro_f1": 0.4, "per_label_f1": {XSS: 0.4}, "name": XSS},
        },
        "champion_name": XSS,
        "decision": {
            "promote": True,
            "reason": XSS,
            "candidate_f1": 0.5,
            "champion_f1": 0.4,
            "champion_name": XSS,
            "rules": [{"rule": XSS, "passed": True, "detail": XSS}],
        },
        "registered_version": "2",
        "registry": {"model": XSS, "champion_version": "2"},
    }
    return RunRecord("r", summary, intake, datetime(2026, 11, 28, 10, 5, tzinfo=UTC))


def _registry():
    versions = [
        {
            "version": "1",
            "aliases": [XSS],
            "tags": {"decision": XSS, "decision_reason": XSS},
            "micro_f1": 0.4,
            "dataset_version": XSS,
            "airflow_run_id": XSS,
            "adapter_uri": "s3://x/a/",
            "created": 1796032800000,
        },
        {"version": "2", "aliases": ["champion"], "tags": {}, "micro_f1": 0.5, "adapter_uri": "s3://x/b/"},
    ]
    return {
        "describe": {
            "name": f"model{XSS}",
            "tracking_uri": f"postgresql://user:secret@db/mlflow{XSS}",
            "champion": versions[1],
            "previous": versions[0],
            "versions": versions,
        },
        "history": [
            {"at": XSS, "kind": XSS, "to_version": "1", "reason": XSS, "actor": XSS, "status": XSS},
            {
                "at": "2026-11-28T10:00:00",
                "kind": "promote",
                "from_version": "1",
                "to_version": "2",
                "reason": XSS,
                "actor": f"ner_retrain/{XSS}",
                "status": "FINISHED",
            },
        ],
    }


def _assert_escaped(page: str, min_count: int) -> None:
    assert "<script>" not in page and "alert('x')" not in page, "annotator text reached the page as markup"
    assert page.count(ESCAPED) >= min_count, page.count(ESCAPED)
    # the only scripts on a page are the app's own asset
    assert re.findall(r"<script[^>]*>", page) == ['<script src="/retrain/static/retrain.js">']


def test_run_report_escapes_annotator_and_run_text(links):
    from retrain_airflow.ui.views import render_run_report

    run = _hostile_run()
    page = render_run_report(
        run=run,
        run_id=run.run_id,
        validation_pages={run.intake["objects"][0]["docs_uri"]: [f"reports/r/{XSS}/validations/v.html"]},
        links=links,
    )
    # run id (title, heading), key, change, reason, warning, dataset, steps, champion name (2 tables),
    # per-label name, decision reason, rule, rule detail, model, the DAG-run note
    _assert_escaped(page, 16)
    assert f"<title>Retrain report manual__2026-11-28T10:00:00{ESCAPED}</title>" in page
    assert f"<td>{ESCAPED}: 1<ul" in page and f"<li>{ESCAPED}</li>" in page
    # links into S3 are percent-encoded by the proxy's URL, not just escaped
    assert 'href="/retrain/s3/quarantine/r/%3Cscript%3Ealert%28%27x%27%29%3C/script%3E.jsonl"' in page
    assert f'<p id="decision"><span class="badge ok">promoted</span> {ESCAPED}</p>' in page


def test_overview_escapes_registry_and_run_text(links):
    from retrain_airflow.ui.page_data import Overview
    from retrain_airflow.ui.views import render_overview

    overview = Overview(runs=[_hostile_run()], registry=_registry(), registry_error=XSS, s3_error=XSS)
    page = render_overview(overview, links, triggered=f"manual__{XSS}", paused=True)
    _assert_escaped(page, 20)
    assert "secret" not in page, "the tracking URI's password is masked"
    assert f'<div class="banner err">S3 unavailable: {ESCAPED}</div>' in page
    assert 'Triggered <a href="/dags/ner_rollback/runs/manual__%3Cscript%3E' in page
    assert f'data-nav="top">manual__{ESCAPED}</a> of ner_rollback' in page
    assert '<span class="badge err">&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;</span>' in page  # status
    form = page.split('<form id="rollback"')[1].split("</form>")[0]
    assert f'<input type="hidden" name="model" value="model{ESCAPED}">' in form
    assert '<option value="1">previous (v1)</option>' in form and '<option value="1">v1' in form


def test_error_pages_escape_what_they_echo(links):
    from retrain_airflow.ui.views import render_other_dag, render_rollback_refused, render_rollback_report

    _assert_escaped(render_other_dag(dag_id=XSS, links=links), 1)
    _assert_escaped(render_rollback_refused(detail=f"target: {XSS!r} is not a version", links=links), 0)
    refused = render_rollback_refused(detail=XSS, links=links)
    assert f'<div class="banner err" id="error">{ESCAPED}</div>' in refused
    events = [{"actor": f"ner_rollback/{XSS}", "from_version": "2", "to_version": "1", "reason": XSS}]
    page = render_rollback_report(run_id=XSS, events=events, links=links)
    _assert_escaped(page, 3)
    assert f"champion v2 → v1 at —: {ESCAPED}</div>" in page


def test_templates_autoescape_and_never_mark_text_safe():
    from retrain_airflow.ui.views import TEMPLATES_DIR, environment

    env = environment()
    assert env.autoescape is True
    assert env.from_string("{{ x }}").render(x=XSS) == ESCAPED
    templates = sorted(TEMPLATES_DIR.glob("*.html"))
    assert len(templates) >= 8
    for path in templates:
        text = path.read_text()
        assert not re.search(r"\|\s*safe\b", text), f"{path.name} marks text safe"
        assert "Markup" not in text and "autoescape false" not in text, path.name


def test_formatting_helpers():
    from retrain_airflow.ui.views import bar_width, delta, figure, moment

    assert (figure(0.41254), figure("0.5", 1), figure(None), figure("n/a")) == ("0.4125", "0.5", "—", "—")
    assert delta(0.5, 0.4) == ("up", "+0.1000") and delta(0.4, 0.5) == ("down", "-0.1000")
    assert delta(0.5, 0.5) == ("flat", "+0.0000") and delta(None, 0.5) is None
    assert (bar_width(0.25), bar_width(1.7), bar_width(-1), bar_width(None)) == (
        "25.0",
        "100.0",
        "0.0",
        "0.0",
    )
    assert moment(None) == "—" and moment("") == "—" and moment("not a time") == "not a time"
    assert moment(1796032800000) == ("2026-11-30T10:00:00+00:00", "2026-11-30 10:00 UTC")  # epoch ms
    assert moment("2026-11-28T10:00:00+02:00").text == "2026-11-28 08:00 UTC"
    assert moment(datetime(2026, 1, 2, 3, 4)).iso == "2026-01-02T03:04:00+00:00"  # naive = UTC


def test_links(links):
    assert links.airflow == "" and links.app("/rollback") == "/retrain/rollback"
    assert links.static("retrain.css") == "/retrain/static/retrain.css"
    assert links.s3_uri(f"s3://{BUCKET}/reports/a b/i.html") == "/retrain/s3/reports/a%20b/i.html"
    assert links.s3_uri("s3://another-bucket/reports/x.html") is None
    assert links.s3_uri(f"s3://{BUCKET}") is None and links.s3_uri("https://x/y") is None
    assert links.s3_uri(None) is None
    assert links.run_file("f", "train/training_loss.png") == "/retrain/s3/runs/f/train/training_loss.png"
    assert links.report("a/b", "ner_rollback") == "/retrain/report/ner_rollback/a%2Fb"
    assert links.airflow_run("manual__1+2") == "/dags/ner_retrain/runs/manual__1%2B2"
    from retrain_airflow.ui.links import Links

    behind = Links("/airflow/retrain/", links.settings)
    assert behind.airflow_dag("ner_rollback") == "/airflow/dags/ner_rollback"
    assert behind.app() == "/airflow/retrain/"


def test_run_report_shows_the_exam_the_interval_and_how_outputs_were_read(links):
    from retrain_airflow.ui.page_data import RunRecord
    from retrain_airflow.ui.views import render_run_report

    from retrain.config import GateConfig
    from retrain.gate import decide
    from retrain.runs import ShortScores
    from tests.support.contracts import model_scores

    cand = model_scores(0.8, parse_readings={"valid": 90, "repaired": 5, "salvaged": 3, "unparseable": 2})
    champ = model_scores(0.5, name="champion v1")
    decision = decide(
        cand, champ, GateConfig(min_support=5), champion_name="champion v1", exam="c" * 16 + "/100"
    )
    summary = {
        "run_id": "r2",
        "dataset": {"version": "d", "golden_hash": "c" * 16, "golden": 100},
        "train": {},
        "evaluation": {
            "candidate": ShortScores.of(cand).model_dump(),
            "champion": ShortScores.of(champ).model_dump(),
        },
        "champion_name": "champion v1",
        "decision": decision.model_dump(),
        "registered_version": "2",
        "registry": {"model": "m", "champion_version": "2"},
        "benchmarks": [
            {
                "name": "team-dev",
                "exam": "e" * 16 + "/500",
                "candidate": {"micro_f1": 0.61},
                "champion": {"micro_f1": 0.58},
            }
        ],
    }
    page = render_run_report(
        run=RunRecord("r2", summary, None, None), run_id="r2", validation_pages={}, links=links
    )
    bench = re.search(r'<table id="benchmarks">.*?</table>', page, re.S).group(0)
    assert "<td>team-dev</td><td><code>eeeeeeee/500</code></td>" in bench and "+0.0300" in bench
    sig = decision.significance
    assert '<p id="exam">Exam <code>cccccccc/100</code>' in page
    assert f"<b>{sig.difference:+.4f}</b>, 95% interval <b>[{sig.low:+.4f}, {sig.high:+.4f}]</b>" in page
    assert "2000 resamples, seed 20261202" in page
    label_row = re.search(r'<table id="label-intervals">.*?</table>', page, re.S).group(0)
    assert '<td>name</td><td class="num">100</td>' in label_row
    readings = re.search(r'<table id="readings">.*?</table>', page, re.S).group(0)
    assert '<tr><td>salvaged</td><td class="num">—</td><td class="num">3</td></tr>' in readings
    assert "micro F1 (lenient: salvaged entities count)" in page


def test_run_report_shows_what_the_night_trained_on(links):
    from retrain_airflow.ui.page_data import RunRecord
    from retrain_airflow.ui.views import render_run_report

    selection = {
        "mode": "full",
        "requested_mode": "warm_start",
        "fallback_reason": f"the LoRA rank changed {XSS}",
        "examples": 120,
        "new": 40,
        "replayed": 80,
        "old": 150,
        "old_left_out": 70,
        "new_over_cap": 0,
        "max_samples": 120,
        "replay_share": 0.5,
        "replay_seed": 7,
    }
    summary = {"run_id": "r3", "dataset": {}, "train": {"selection": selection}, "evaluation": {}}
    page = render_run_report(
        run=RunRecord("r3", summary, None, None), run_id="r3", validation_pages={}, links=links
    )
    shown = " ".join(re.search(r'<p id="selection">(.*?)</p>', page, re.S).group(1).split())
    assert "<b>120</b> examples, full training: <b>40</b> new (every one) + <b>80</b> of 150 old" in shown
    assert "(70 left out; cap 120)" in shown and "replay share 0.5, seed 7" in shown
    assert f"not possible: the LoRA rank changed {ESCAPED}." in shown and XSS not in page
    warm = {**selection, "mode": "warm_start", "parent": {"version": "3"}, "fallback_reason": None}
    page = render_run_report(
        run=RunRecord("r3", {**summary, "train": {"selection": warm}}, None, None),
        run_id="r3",
        validation_pages={},
        links=links,
    )
    assert "warm start from v3" in page and "not possible" not in page
    # a summary without a selection (written before the platform chose the examples): no paragraph
    page = render_run_report(
        run=RunRecord("r3", {**summary, "train": {}}, None, None),
        run_id="r3",
        validation_pages={},
        links=links,
    )
    assert 'id="selection"' not in page
