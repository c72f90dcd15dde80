"""The Retraining UI in a real browser over REAL runs.

The demo's nights (the `demo` fixture, tests/e2e/conftest.py: the real `ner_retrain` DAG under
Airflow, GX, LLaMA-Factory training of the tiny model, evaluation, the MLflow registry) leave their
metadata DB, their bucket in the session's moto server and their registry behind. Here the real
Airflow API server (127.0.0.1, stopped by its PID) serves the Airflow UI over them, and headless
Chromium logs in through Airflow's login form, opens the Retraining page and the "Retrain report" tab
of the first night's DAG run, and finds the figures those runs wrote: champion, F1, intake counts,
the decision and its rules, the loss curve (the SVG and the trainer's training_loss.png), the GX
Data Docs. Chromium runs with the network cut (no host name resolves but 127.0.0.1): the Data Docs
index must list the batch's validations and every Data Docs page must be styled from the proxy's own
origin, with no script (retrain.datadocs, the proxy's policy). It also triggers a rollback through
the page's form. Screenshots go to the test artifacts directory (tests/artifacts, or
$RETRAIN_TEST_ARTIFACTS); README's picture (docs/retraining_page.png) is a copy of the Retraining
page's.
"""

from __future__ import annotations

import re
import shutil
import time
from urllib.parse import quote

import pytest

from tests.support.demo import DEMO_RECORDS

pytestmark = pytest.mark.e2e

RETRAINING_FRAME = "iframe[src*='/retrain/']"
REPORT_FRAME = "iframe[src*='/retrain/report/']"


@pytest.fixture(scope="module")
def ui(demo, moto_server, tmp_path_factory):
    """The Airflow API server over the demo's metadata DB, bucket and registry; user ``admin``."""
    from tests.support.airflow_ui import ApiServer, artifacts_dir
    from tests.support.stack import AirflowEnv

    env = AirflowEnv(
        demo.airflow_home,
        demo.database,
        moto_server,
        {
            **demo.retrain_env,
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
        },
    )
    t0 = time.monotonic()
    # `dags test` stored ner_retrain; the rollback form needs ner_rollback in the DB as well.
    env.run("dags", "reserialize", timeout=300)
    server = ApiServer(env, tmp_path_factory.mktemp("ui_real_run") / "api-server.log")
    try:
        server.start()
        print(f"\nairflow UI over the demo's runs ready in {time.monotonic() - t0:.1f}s at {server.url}")
        yield server
    finally:
        server.stop()
        if server.log_file.exists():
            shutil.copyfile(server.log_file, artifacts_dir() / "api-server-real-run.log")


def _f(value: float) -> str:
    """A figure as the pages show it."""
    return f"{value:.4f}"


def _tick(run_id: str) -> str:
    """A run's label on the F1 trend's x axis: the date and time in its run id."""
    m = re.search(r"\d{4}-(\d{2}-\d{2})T(\d{2}):(\d{2})", run_id)
    assert m, run_id
    return f"{m[1]} {m[2]}:{m[3]}"


def _enter_view(browser, url: str, frame_css: str):
    """Open an Airflow page that embeds one of our views; switch into the view's iframe."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(url)
    frame = WebDriverWait(browser, 60).until(ec.presence_of_element_located((By.CSS_SELECTOR, frame_css)))
    browser.switch_to.frame(frame)


def _in_new_tab(browser, link, check):
    """Click a link that opens in a new tab, run ``check`` there, close it and come back (to the top
    document: the caller enters its iframe again)."""
    from selenium.webdriver.support.ui import WebDriverWait

    main, before = browser.current_window_handle, set(browser.window_handles)
    link.click()
    WebDriverWait(browser, 60).until(lambda b: len(b.window_handles) == len(before) + 1)
    browser.switch_to.window((set(browser.window_handles) - before).pop())
    try:
        return check()
    finally:
        browser.close()
        browser.switch_to.window(main)


def _docs_page_facts(browser) -> dict:
    """What a Data Docs page got: bootstrap's styles applied, the icon font loaded, the URLs of the
    resources it loaded, its script elements, its text."""
    return browser.execute_async_script(
        """const done = arguments[arguments.length - 1];
        document.fonts.ready.then(() => {
          const fa = [...document.fonts].filter(f => f.family.replace(/"/g, "") === "Font Awesome 6 Free");
          done({
            bootstrap: getComputedStyle(document.body).fontFamily.startsWith("-apple-system"),
            icons: fa.some(f => f.status === "loaded") ? "loaded" : fa.map(f => f.status).join() || "absent",
            resources: performance.getEntriesByType("resource").map(e => e.name),
            scripts: document.scripts.length,
            text: document.body.innerText.slice(0, 2000),
          });
        });"""
    )


def test_browser_shows_the_real_runs(demo, ui):
    import httpx
    from retrain_airflow.ui.page_data import exam_label
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    from retrain.ingest import safe_run_id
    from tests.support.airflow_ui import artifacts_dir, chrome, login

    a, b, _ = demo.nights
    assert a.summary and b.summary, "the first two nights must have trained (see test_nightly_demo.py)"
    champion = demo.registry["champion"]["version"]
    trained = {n.summary["registered_version"]: n for n in (a, b)}
    champion_f1 = trained[champion].summary["evaluation"]["candidate"]["micro_f1"]
    out = artifacts_dir()
    page_png, tab_png, loss_png = (
        out / "retraining_page.png",
        out / "retrain_report_tab.png",
        out / "loss_png_tab.png",
    )

    browser = chrome(offline=True)
    wait = WebDriverWait(browser, 60)
    try:
        login(browser, ui, "admin")

        # ---- the Retraining page
        _enter_view(browser, f"{ui.url}/plugin/retraining", RETRAINING_FRAME)
        assert wait.until(ec.presence_of_element_located((By.ID, "champion-version"))).text == f"v{champion}"
        assert browser.find_element(By.ID, "champion-f1").text == _f(champion_f1)
        # champion history, newest first: every alias change, the oldest being night a's promotion of v1
        history = browser.find_elements(By.CSS_SELECTOR, "#champion-history tbody tr")
        assert len(history) == len(demo.history)
        oldest = history[-1].text
        assert "promote" in oldest and "v1" in oldest and demo.history[0]["reason"] in oldest, oldest
        # the runs table, newest first: one row per night that read data (night c left no report)
        rows = {
            r.find_element(By.CSS_SELECTOR, "td").text.split("\n")[0]: r
            for r in browser.find_elements(By.CSS_SELECTOR, "#runs tbody tr")
        }
        assert set(rows) == {a.run_id, b.run_id}, list(rows)
        for night in (a, b):
            cells = [td.text for td in rows[night.run_id].find_elements(By.CSS_SELECTOR, "td")]
            ev = night.summary["evaluation"]
            assert cells[1:3] == [str(night.intake["read"]), str(night.intake["accepted"])], cells
            assert cells[3].startswith(f"{night.intake['quarantined']} · report"), cells
            exam = night.summary["decision"]["exam"]  # the golden-set version the scores are on
            assert cells[5] == exam_label(exam), cells
            assert cells[6:9] == [
                _f(ev["candidate"]["micro_f1"]),
                _f(ev["champion"]["micro_f1"]),
                f"v{night.summary['registered_version']}",
            ], cells
            assert night.summary["decision"]["reason"] in cells[9], cells
        assert a.intake["read"] == DEMO_RECORDS + 5 and a.intake["quarantined"] >= 5
        # the F1 trend: a line per label + micro F1 + the champion's, the real figures as tooltips
        trend = browser.find_element(By.CSS_SELECTOR, "svg.chart[aria-label^='Candidate F1']")
        labels = set(a.summary["evaluation"]["candidate"]["per_label_f1"]) | set(
            b.summary["evaluation"]["candidate"]["per_label_f1"]
        )
        # one legend entry per series; lines join only runs on the same exam, and a marker names each
        # exam where it starts (night b's golden set holds night a's and more: another exam)
        legend = {t.text for t in trend.find_elements(By.CSS_SELECTOR, "text.legend")}
        assert len(legend) == len(labels) + 2, legend
        exams = [exam_label(n.summary["decision"]["exam"]) for n in (a, b)]
        markers = [t.text for t in trend.find_elements(By.CSS_SELECTOR, "text.marker-label")]
        assert markers == [f"exam {e}" for i, e in enumerate(exams) if i == 0 or e != exams[i - 1]], markers
        tips = {t.get_attribute("textContent") for t in trend.find_elements(By.TAG_NAME, "title")}
        assert f"micro F1 @ {_tick(a.run_id)}: {_f(a.summary['evaluation']['candidate']['micro_f1'])}" in tips
        assert (
            f"champion micro F1 @ {_tick(b.run_id)}: {_f(b.summary['evaluation']['champion']['micro_f1'])}"
            in tips
        )
        browser.switch_to.default_content()
        time.sleep(0.5)
        browser.save_screenshot(str(page_png))

        # the GX Data Docs of night a's batch: out of Airflow's sandboxed iframe into a new tab
        browser.switch_to.frame(browser.find_element(By.CSS_SELECTOR, RETRAINING_FRAME))
        docs_key = a.intake["objects"][0]["docs_uri"].split("/", 3)[3]
        docs = rows[a.run_id].find_element(
            By.CSS_SELECTOR, f"a[data-nav=tab][href$='/retrain/s3/{docs_key}']"
        )

        def data_docs():
            wait.until(lambda br: br.execute_script("return document.readyState") == "complete")
            index_url, index_title, index = browser.current_url, browser.title, _docs_page_facts(browser)
            rows = browser.find_elements(By.CSS_SELECTOR, "#validations tbody tr a")
            pages = {a.text: a.get_attribute("href") for a in rows}
            results = {}
            for suite, href in pages.items():
                browser.get(href)
                wait.until(lambda br: br.execute_script("return document.readyState") == "complete")
                results[suite] = _docs_page_facts(browser)
            return index_url, index_title, index, pages, results

        docs_url, docs_title, index, pages, results = _in_new_tab(browser, docs, data_docs)
        assert docs_url.endswith(f"/retrain/s3/{docs_key}")
        assert docs_title == "Data Docs created by Great Expectations", docs_title
        # with the network cut (chrome(offline=True)) and no script allowed (the proxy's policy), the
        # index lists the batch's three validations and every page is styled from its own origin
        assert sorted(pages) == ["ner_batch", "ner_sentences", "ner_spans"], pages
        origin = ui.url + "/retrain/s3/"
        for name, facts in [("index", index), *results.items()]:
            assert facts["bootstrap"] and facts["icons"] == "loaded", (name, facts)
            assert facts["resources"] and all(r.startswith(origin) for r in facts["resources"]), (name, facts)
            assert facts["scripts"] == 0, (name, facts)
        assert all("Expectation Validation Result" in f["text"] for f in results.values()), results

        # the rollback form, as a person uses it: session cookie, same-origin post, a required checkbox
        browser.switch_to.frame(browser.find_element(By.CSS_SELECTOR, RETRAINING_FRAME))
        admin = {"Authorization": f"Bearer {ui.token('admin')}"}

        def rollback_runs() -> int:
            r = httpx.get(f"{ui.url}/api/v2/dags/ner_rollback/dagRuns", headers=admin, timeout=60)
            return int(r.json()["total_entries"])

        before = rollback_runs()
        form = browser.find_element(By.ID, "rollback")
        target = form.find_element(By.CSS_SELECTOR, "select[name=target] option[value]:not([value=previous])")
        version = target.get_attribute("value")
        assert version != champion
        target.click()
        form.find_element(By.NAME, "reason").send_keys("browser rollback check")
        form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        time.sleep(1)  # the confirmation box is required: nothing is posted without it
        assert rollback_runs() == before
        form.find_element(By.NAME, "confirm").click()
        form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        banner = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, ".banner.ok")))
        assert banner.text.startswith("Triggered manual__"), banner.text
        runs = httpx.get(f"{ui.url}/api/v2/dags/ner_rollback/dagRuns", headers=admin, timeout=60).json()
        assert runs["total_entries"] == before + 1
        newest = max(runs["dag_runs"], key=lambda d: d["run_after"])
        assert newest["conf"]["target"] == version and newest["conf"]["reason"] == "browser rollback check"
        assert newest["triggering_user_name"] == "admin"

        # an Airflow link in the page replaces the whole UI (not just the iframe)
        run_path = f"/dags/ner_retrain/runs/{quote(a.run_id, safe='')}"
        browser.find_element(By.CSS_SELECTOR, f"#runs a[data-nav=top][href='{run_path}']").click()
        browser.switch_to.default_content()
        wait.until(lambda br: br.current_url.endswith(run_path))

        # ---- the "Retrain report" tab of night a's DAG run
        _enter_view(browser, f"{ui.url}{run_path}/plugin/retrain-report", REPORT_FRAME)
        note = wait.until(ec.presence_of_element_located((By.ID, "run-note")))
        assert note.text == a.note, "the tab and the DAG-run note say the same"
        assert a.note.startswith(
            f"promoted v1: micro F1 {_f(a.summary['evaluation']['candidate']['micro_f1'])}"
        )
        assert browser.find_element(By.ID, "accepted").text == str(a.intake["accepted"])
        assert browser.find_element(By.ID, "quarantined").text == str(a.intake["quarantined"])
        reasons = browser.find_element(By.CSS_SELECTOR, "#intake tbody").text
        for reason, count in a.intake["objects"][0]["reasons"].items():
            assert f"{reason}: {count}" in reasons, (reason, reasons)
        decision = a.summary["decision"]
        assert browser.find_element(By.ID, "decision").text == f"promoted {decision['reason']}"
        rules = [r.text for r in browser.find_elements(By.CSS_SELECTOR, "#rules tbody tr")]
        assert len(rules) == len(decision["rules"])
        for shown, rule in zip(rules, decision["rules"], strict=True):
            assert shown.startswith(rule["rule"]) and ("pass" if rule["passed"] else "FAIL") in shown, shown
        metrics = browser.find_element(By.ID, "metrics").text
        assert (
            f"micro F1 (strict) {_f(a.summary['evaluation']['champion']['micro_f1'])} "
            f"{_f(a.summary['evaluation']['candidate']['micro_f1'])}" in metrics
        ), metrics
        # the loss curve: every point the trainer logged, drawn as SVG, and the final loss
        train = a.summary["train"]
        loss = browser.find_element(By.CSS_SELECTOR, "svg.chart[aria-label='Training loss']")
        lines = loss.find_elements(By.TAG_NAME, "polyline")
        assert (
            len(lines) == 1 and len(lines[0].get_attribute("points").split()) == len(train["loss_curve"]) > 10
        )
        figures = browser.find_element(By.XPATH, "//h2[.='Training']/following-sibling::p[1]").text
        assert figures.startswith(f"Final loss {_f(train['train_loss'])} · steps {train['steps']} · "), (
            figures
        )
        browser.switch_to.default_content()
        time.sleep(0.5)
        browser.save_screenshot(str(tab_png))

        # ... and the trainer's own training_loss.png, through the report proxy
        browser.switch_to.frame(browser.find_element(By.CSS_SELECTOR, REPORT_FRAME))
        png_key = f"runs/{safe_run_id(a.run_id)}/train/training_loss.png"
        png = browser.find_element(By.CSS_SELECTOR, f"a[data-nav=tab][href$='/retrain/s3/{png_key}']")

        def loss_image():
            img = wait.until(ec.presence_of_element_located((By.TAG_NAME, "img")))
            wait.until(lambda br: br.execute_script("return arguments[0].complete", img))
            browser.save_screenshot(str(loss_png))
            return browser.execute_script(
                "return [arguments[0].naturalWidth, arguments[0].naturalHeight]", img
            )

        width, height = _in_new_tab(browser, png, loss_image)
        assert width > 0 and height > 0, "training_loss.png did not load"
    finally:
        browser.quit()
    for shot in (page_png, tab_png, loss_png):
        assert shot.stat().st_size > 10_000, shot
    print(f"\nscreenshots: {page_png} {tab_png} {loss_png}")
