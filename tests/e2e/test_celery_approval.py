"""Human approval and lost updates under the real scheduler (CeleryExecutor), driven through REST.

api-server, scheduler, dag-processor and a Celery worker on 127.0.0.1 (tests/support/celery_stack.py),
Postgres metadata DB, Redis broker, moto S3, MLflow registry on sqlite, conf ``gate.approval: always``
and the one-slot alias pool created as compose's init does. The trainer env is
tests/faults/stand_in.py (the real ``retrain train|evaluate`` with LLaMA-Factory and generation
scripted: a "fair" adapter answers half the golden set right, a "good" one all of it), so each
decision is known in advance; a real tiny-model training is what test_celery_scheduler.py runs.

1. night 1 ("fair" beats the base model): the run waits in ``approve_promotion`` (awaiting_input); the
   request shows the decision, also in headless Chromium on the task's "Required actions" page
   (screenshot tests/artifacts/approval_pending.png); admin approves through the REST API -> v1 is
   champion and the alias history names admin and when.
2. night 2 ("good" beats v1): admin rejects -> v2 registered and kept, the rejection is in the history.
3. night 3 ("good" again): while it waits for approval, ner_rollback moves the champion to v2 (through
   the pool); the approval that follows does not undo it: promote refuses, champion stays v2.
4. the pool deleted: a rollback run is never scheduled and its note says which pool to create;
   created again, the rollback runs.
"""

from __future__ import annotations

import json
import time
import uuid

import pytest

pytestmark = pytest.mark.e2e

DAG = "ner_retrain"
ROLLBACK = "ner_rollback"
BUCKET = "ner-retrain"
POOL = "registry_aliases"
TASK = "approve_promotion"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    from tests.faults.dag_scenario import _fake_base_model, _stand_in
    from tests.support.celery_stack import CeleryStack
    from tests.support.stack import MotoServer, drop_database

    work = tmp_path_factory.mktemp("approval")
    base = _fake_base_model(work / "models" / "tiny-qwen2")
    env = {
        "RETRAIN_HOME": str(work / "state"),
        "RETRAIN__S3__BUCKET": BUCKET,
        "RETRAIN__TRAIN__BASE_MODEL": str(base),
        "RETRAIN__TRAIN__PROFILE": "cpu_tiny",
        "RETRAIN__TRAIN__MODEL_CACHE_DIR": str(work / "models"),
        "RETRAIN__MODELS__ALLOW": json.dumps([str(work / "models" / "*")]),  # conf models.allow
        "RETRAIN__TRAIN__TRAINER_PYTHON": str(_stand_in(work / "stand-in-python")),
        "RETRAIN__SCHEDULE__RETRIES": "0",
        "RETRAIN__SCHEDULE__CRON": "null",
        "RETRAIN__GATE__APPROVAL": "always",
        "RETRAIN_FAKE_TRAINER": "ok",
        "RETRAIN_FAKE_QUALITY": "fair",
        # the machine is shared: give a starved API server time before a task's state update fails it
        "AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT": "120",
        "AIRFLOW__WORKERS__EXECUTION_API_RETRIES": "10",
    }
    database = f"retrain_approval_{uuid.uuid4().hex[:8]}"
    with MotoServer() as moto:
        moto.client().create_bucket(Bucket=BUCKET)
        af = CeleryStack(work / "airflow", database, moto, env, broker_db=8)
        try:
            af.migrate()  # also creates the alias pool (conf registry.alias_pool)
            af.start()
            client = af.client(timeout=120)  # the machine is shared: a starved API server answers slowly
            for dag_id in (DAG, ROLLBACK):
                client.wait_for_dag(dag_id, timeout=180)
                client.set_paused(dag_id, False)
            assert client.import_errors() == []
            yield {"af": af, "client": client, "moto": moto, "env": env, "base": base}
        finally:
            af.stop()
            drop_database(database)


def _registry(stack, monkeypatch):
    from retrain.config import load_settings
    from retrain.registry import Registry

    monkeypatch.setenv("RETRAIN_HOME", stack["env"]["RETRAIN_HOME"])
    return Registry.from_settings(load_settings(environ=stack["env"]), str(stack["base"]))


def _night(stack, n: int) -> str:
    """Upload a new batch and trigger a run; returns its id once it waits for a person."""
    from tests.support.synth import make_batch

    lines = make_batch(60, seed=100 + n)
    stack["moto"].client().put_object(
        Bucket=BUCKET, Key=f"incoming/night-{n}/batch.json", Body=("\n".join(lines) + "\n").encode()
    )
    run_id = f"approval-{n}-{uuid.uuid4().hex[:6]}"
    stack["client"].trigger(DAG, {}, run_id=run_id)
    stack["client"].wait_for_task_state(DAG, run_id, TASK, {"awaiting_input"}, timeout=900)
    return run_id


def _summary(stack, run_id: str) -> dict:
    from retrain.runs import safe_run_id

    body = stack["moto"].client().get_object(Bucket=BUCKET, Key=f"runs/{safe_run_id(run_id)}/summary.json")
    return json.loads(body["Body"].read())


def test_1_night_one_waits_for_a_person_with_the_decision_in_the_request(stack):
    client = stack["client"]
    run_id = stack["night1"] = _night(stack, 1)
    detail = client.hitl_detail(DAG, run_id, TASK)
    assert detail["options"] == ["Approve", "Reject"] and detail["defaults"] == ["Reject"]
    assert detail["subject"].startswith("Promote NER candidate v1 (micro F1 ")
    body = detail["body"]
    assert "**Proposal:** promote v1" in body and "| significant_gain | pass |" in body
    assert f"/retrain/report/ner_retrain/{run_id}" in body and "eval/report.html" in body
    assert client.task_states(DAG, run_id)["promote"] in (None, "none")  # waits for the answer


def test_1_the_pending_approval_shows_in_the_browser(stack):
    from types import SimpleNamespace

    from selenium.webdriver.support.ui import WebDriverWait

    from tests.support.airflow_ui import artifacts_dir, chrome, login

    af, run_id = stack["af"], stack["night1"]
    server = SimpleNamespace(url=af.base_url, passwords=lambda: {af.username: af.password})
    browser = chrome()
    try:
        login(browser, server, af.username)
        browser.get(f"{af.base_url}/dags/{DAG}/runs/{run_id}/tasks/{TASK}/required_actions")
        WebDriverWait(browser, 120).until(lambda b: "Promote NER candidate v1" in b.page_source)
        WebDriverWait(browser, 60).until(lambda b: "significant_gain" in b.page_source)
        page = browser.page_source
        assert "Approve" in page and "Reject" in page
        browser.save_screenshot(str(artifacts_dir() / "approval_pending.png"))
    finally:
        browser.quit()


def test_1_approved_through_rest_promotes_and_the_history_names_the_responder(stack, monkeypatch):
    client, run_id = stack["client"], stack["night1"]
    answer = client.respond(DAG, run_id, TASK, ["Approve"])
    assert answer["responded_by"]["name"] == "admin"
    run = client.wait_for_run(DAG, run_id, timeout=600)
    states = client.task_states(DAG, run_id)
    assert run["state"] == "success" and states[TASK] == "success" and states["promote"] == "success", states
    decision = _summary(stack, run_id)["decision"]
    assert decision["promote"] and decision["approval"]["responded_by"] == "admin"
    registry = _registry(stack, monkeypatch)
    assert registry.champion()["version"] == "1"
    event = registry.history()[-1]
    assert (event["kind"], event["to_version"], event["responded_by"], event["approved"]) == (
        "promote",
        "1",
        "admin",
        "true",
    )
    assert event["responded_at"][:10] == answer["responded_at"][:10]
    tis = client._json("GET", f"/api/v2/dags/{DAG}/dagRuns/{run_id}/taskInstances")["task_instances"]
    assert {t["task_id"]: t["pool"] for t in tis}["promote"] == POOL


def test_2_rejected_through_rest_keeps_the_champion_and_records_who(stack, monkeypatch):
    client = stack["client"]
    stack["af"].restart("celery-worker", {"RETRAIN_FAKE_QUALITY": "good"})
    run_id = _night(stack, 2)
    client.respond(DAG, run_id, TASK, ["Reject"])
    run = client.wait_for_run(DAG, run_id, timeout=600)
    states = client.task_states(DAG, run_id)
    assert run["state"] == "success" and states["promote"] == "success", states
    summary = _summary(stack, run_id)
    decision = summary["decision"]
    assert not decision["promote"] and decision["refused"].startswith("promotion rejected by admin at ")
    assert summary["registered_version"] == "2"
    registry = _registry(stack, monkeypatch)
    assert registry.champion()["version"] == "1"
    event = registry.history()[-1]
    assert (event["kind"], event["to_version"], event["responded_by"], event["approved"]) == (
        "rejected",
        "2",
        "admin",
        "false",
    )
    assert "not promoted: promotion rejected by admin" in stack["af"].run_note(DAG, run_id)


def test_3_a_rollback_while_a_run_waits_is_not_undone_by_its_promotion(stack, monkeypatch):
    client = stack["client"]
    run_id = _night(stack, 3)  # "good" vs champion v1: proposes v3, waits
    rollback = client.trigger(
        ROLLBACK, {"target": "2", "reason": "v1 misses addresses", "expected_champion": "1"}
    )
    assert client.wait_for_run(ROLLBACK, rollback["dag_run_id"], timeout=300)["state"] == "success"
    registry = _registry(stack, monkeypatch)
    assert registry.champion()["version"] == "2"
    client.respond(DAG, run_id, TASK, ["Approve"])
    assert client.wait_for_run(DAG, run_id, timeout=600)["state"] == "success"
    decision = _summary(stack, run_id)["decision"]
    assert not decision["promote"] and decision["approval"]["approved"]
    assert "champion changed since evaluation" in decision["refused"] and "not v1" in decision["refused"]
    assert registry.champion()["version"] == "2"
    assert [e["kind"] for e in registry.history()] == ["promote", "rejected", "rollback"]
    # the form's stale view is refused by the run itself, too
    stale = client.trigger(
        ROLLBACK, {"target": "1", "reason": "saw v1 as champion", "expected_champion": "1"}
    )
    assert client.wait_for_run(ROLLBACK, stale["dag_run_id"], timeout=300)["state"] == "failed"
    assert registry.champion()["version"] == "2"


def test_4_a_missing_pool_is_named_and_nothing_moves_until_it_exists(stack, monkeypatch):
    client, af = stack["client"], stack["af"]
    assert client.request("DELETE", f"/api/v2/pools/{POOL}").status_code == 204
    run = client.trigger(ROLLBACK, {"target": "1", "reason": "back to v1", "expected_champion": "2"})
    run_id = run["dag_run_id"]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (af.run_note(ROLLBACK, run_id) or "").startswith("pool"):
        time.sleep(2)
    assert af.run_note(ROLLBACK, run_id).startswith(
        f"pool '{POOL}' (conf registry.alias_pool) does not exist"
    )
    assert f"airflow pools set {POOL} 1" in af.run_note(ROLLBACK, run_id)
    time.sleep(10)
    assert client.task_states(ROLLBACK, run_id)["rollback"] in ("scheduled", None, "none")
    assert _registry(stack, monkeypatch).champion()["version"] == "2"
    af.create_alias_pool()
    assert client.wait_for_run(ROLLBACK, run_id, timeout=300)["state"] == "success"
    assert _registry(stack, monkeypatch).champion()["version"] == "1"
