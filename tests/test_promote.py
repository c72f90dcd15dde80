"""retrain.promote: the whole promotion as a library function, on moto S3 and a real MLflow registry.

The Airflow task (plugins/retrain_airflow/tasks.py), the `retrain promote` command and these tests call
the same functions; the run folders are laid out with the contracts of `retrain.runs`.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from retrain import promote, runs
from retrain.adapters import AdapterIntegrityError
from retrain.config import load_settings
from retrain.registry import ChampionMoved, Registry
from tests.support import contracts, mlflow_db

PROVENANCE = promote.Provenance(
    dag_id="ner_retrain", git_commit="abc", launcher="local", trainer_image="local"
)


@pytest.fixture
def registry(tmp_path):
    uri = mlflow_db.sqlite_uri(tmp_path / "mlflow.db")
    return Registry(uri, "clue-ner-tiny-lora", (tmp_path / "art").as_uri())


def make_run(
    store, run_id, *, cand_f1, champ_f1, weights=None, champion="base model", seen=None, cand_label=None
):
    """A run folder as the stages leave it just before promote: trained, evaluated against
    ``champion`` while the registry's champion alias named ``seen`` (default: the version in
    ``champion``'s name, None for the base model)."""
    if seen is None and champion.startswith("champion v"):
        seen = champion.removeprefix("champion v")
    run = runs.RunFolder.for_run(store.bucket, "runs/", run_id)
    adapter = contracts.put_adapter(store, weights or run_id.encode())
    dataset = contracts.dataset_ref(bucket=store.bucket)
    store.put_json(dataset.manifest_key, {"version": dataset.version})
    runs.write(store, run.key(runs.DATASET), dataset)
    runs.write(store, run.key(runs.TRAIN_REQUEST), contracts.train_request(run_id, store.bucket))
    runs.write(store, run.key(runs.TRAIN_RESULT), contracts.train_result(run_id, adapter))
    store.put_bytes(run.key(runs.TRAINER_LOG), b'{"current_steps": 10, "total_steps": 10}\n')
    request = contracts.eval_request(run_id, adapter, champion={"name": champion}, registry_champion=seen)
    runs.write(store, run.key(runs.EVAL_REQUEST), request)
    report = contracts.eval_report(
        run_id,
        contracts.model_scores(cand_f1, {"name": (cand_f1 if cand_label is None else cand_label, 20)}),
        contracts.model_scores(champ_f1, {"name": (champ_f1, 20)}, name=champion),
    )
    runs.write(store, run.key(runs.EVAL_REPORT), report)
    return run, adapter


def _promote(store, settings, run, registry, run_id, **kw):
    return promote.promote_run(
        store, settings, run, registry, run_id=run_id, actor=f"test/{run_id}", provenance=PROVENANCE, **kw
    )


def test_a_better_candidate_is_registered_and_promoted(store, settings, registry):
    run, (uri, digest) = make_run(store, "r1", cand_f1=0.6, champ_f1=0.1)
    summary = _promote(store, settings, run, registry, "r1")
    assert summary.decision.promote and summary.registered_version == "1"
    champion = registry.champion()
    assert (
        champion["version"] == "1" and champion["adapter_uri"] == uri and champion["adapter_digest"] == digest
    )
    assert champion["tags"]["decision"] == "promoted" and champion["tags"]["git_commit"] == "abc"
    # the decision's interval and the exam, as registry tags
    sig = summary.decision.significance
    assert sig is not None and sig.low > 0 and summary.decision.exam == f"{'g' * 16}/100"
    assert champion["exam_version"] == summary.decision.exam
    assert champion["decision_interval"] == sig.interval() and "95% CI" in sig.interval()
    assert float(champion["tags"]["decision_ci_low"]) == pytest.approx(sig.low, abs=1e-6)
    assert champion["tags"]["decision_bootstrap"].startswith("strict micro F1, 2000 resamples, seed 20261202")
    # the files a reader uses, valid against their contracts
    assert runs.read(store, run.key(runs.SUMMARY), runs.RunSummary) == summary
    assert runs.read(store, run.key(runs.DECISION), runs.PromotionDecision) == summary.decision
    assert summary.registry.champion_version == "1" and summary.evaluation["candidate"].micro_f1 == 0.6


def test_a_worse_candidate_is_registered_but_kept(store, settings, registry):
    run, _ = make_run(store, "r1", cand_f1=0.6, champ_f1=0.1)
    _promote(store, settings, run, registry, "r1")
    run2, _ = make_run(store, "r2", cand_f1=0.5, champ_f1=0.6, champion="champion v1")
    summary = _promote(store, settings, run2, registry, "r2")
    assert not summary.decision.promote and summary.registered_version == "2"
    assert registry.champion()["version"] == "1"
    assert registry.versions()[1]["tags"]["decision"] == "kept"


def test_dry_run_registers_nothing(store, settings, registry):
    run, _ = make_run(store, "r1", cand_f1=0.6, champ_f1=0.1)
    summary = _promote(store, settings, run, registry, "r1", dry_run=True)
    assert not summary.decision.promote and summary.decision.dry_run and summary.registered_version is None
    assert registry.versions() == [] and registry.champion() is None


def test_a_retried_promote_returns_the_same_version(store, settings, registry):
    run, _ = make_run(store, "r1", cand_f1=0.6, champ_f1=0.1)
    first = _promote(store, settings, run, registry, "r1")
    again = _promote(store, settings, run, registry, "r1")
    assert again.registered_version == first.registered_version and len(registry.versions()) == 1


def test_a_tampered_adapter_is_never_registered(store, settings, registry):
    run, (uri, digest) = make_run(store, "r1", cand_f1=0.6, champ_f1=0.1)
    store.put_bytes(f"adapters/{digest}/adapter_model.safetensors", b"other weights")
    with pytest.raises(AdapterIntegrityError):
        _promote(store, settings, run, registry, "r1")
    assert registry.versions() == [] and not store.exists(run.key(runs.SUMMARY))


def test_baseline_is_the_champion_and_never_the_candidate_itself(store, settings, registry):
    assert promote.choose_baseline(registry, "r1").name == "base model"
    run, _ = make_run(store, "r1", cand_f1=0.6, champ_f1=0.1)
    _promote(store, settings, run, registry, "r1")
    v1 = registry.champion()
    ref = promote.choose_baseline(registry, "r2")
    assert (ref.name, ref.version, ref.adapter_digest) == ("champion v1", "1", v1["adapter_digest"])
    # re-running r1 after it became champion: compare with what it replaced (the base model here)
    assert promote.choose_baseline(registry, "r1").name == "base model"


def test_plan_evaluation_needs_a_committed_training(store, settings, registry):
    run, (uri, digest) = make_run(store, "r1", cand_f1=0.6, champ_f1=0.1)
    request = promote.plan_evaluation(store, settings, run, registry, run_id="r1", base_model="/models/tiny")
    assert request.candidate.adapter_digest == digest and request.champion.name == "base model"
    assert runs.read(store, run.key(runs.EVAL_REQUEST), runs.EvalRequest) == request
    store.delete(run.key(runs.TRAIN_RESULT))
    with pytest.raises(promote.TrainingNotCommitted, match="train_result.json is missing"):
        promote.plan_evaluation(store, settings, run, registry, run_id="r1", base_model="/models/tiny")


def _two_versions_champion_v2(store, settings, registry):
    for n, f1 in ((1, 0.5), (2, 0.7)):
        champion = "base model" if n == 1 else f"champion v{n - 1}"
        run, _ = make_run(store, f"r{n}", cand_f1=f1, champ_f1=f1 - 0.3, champion=champion)
        _promote(store, settings, run, registry, f"r{n}")
    v1, v2 = registry.versions()
    assert registry.champion()["version"] == "2"
    return v1, v2


def test_a_champion_whose_adapter_is_gone_fails_with_the_way_out(store, settings, registry):
    """A lifecycle rule or a mistaken delete removed the champion's adapter: planning the evaluation
    fails (the task fails, so the failure alerts go out) and the error names both ways out."""
    v1, v2 = _two_versions_champion_v2(store, settings, registry)
    run, _ = make_run(store, "r3", cand_f1=0.8, champ_f1=0.7)
    store.delete(f"adapters/{v2['adapter_digest']}/adapter_model.safetensors")
    with pytest.raises(promote.ChampionAdapterMissing) as err:
        promote.plan_evaluation(store, settings, run, registry, run_id="r3", base_model="/models/tiny")
    msg = str(err.value)
    assert "champion v2's adapter" in msg and "adapter_model.safetensors missing" in msg
    assert "(v1)" in msg and "retrain registry rollback 1" in msg and "baseline_approval" in msg
    # way out 1: roll back to v1 (its adapter is there), then the run compares with v1
    promote.rollback(store, registry, "1", reason="v2 adapter deleted", actor="alice")
    request = promote.plan_evaluation(store, settings, run, registry, run_id="r3", base_model="/models/tiny")
    assert (request.champion.name, request.champion.version) == ("champion v1", "1")


def test_an_approval_compares_with_the_base_model_when_the_adapter_is_gone(store, settings, registry):
    v1, v2 = _two_versions_champion_v2(store, settings, registry)
    for v in (v1, v2):
        store.delete(f"adapters/{v['adapter_digest']}/adapter_config.json")
    run, _ = make_run(store, "r3", cand_f1=0.8, champ_f1=0.2)
    with pytest.raises(promote.ChampionAdapterMissing, match="nothing to roll back to"):
        promote.plan_evaluation(store, settings, run, registry, run_id="r3", base_model="/models/tiny")
    request = promote.plan_evaluation(
        store,
        settings,
        run,
        registry,
        run_id="r3",
        base_model="/models/tiny",
        baseline_approval="alice: v1 and v2 expired",
    )
    assert (
        request.champion.adapter_uri is None and "approved: alice: v1 and v2 expired" in request.champion.name
    )
    # an approval changes nothing while the champion's adapter is there
    registry.rollback("2", reason="test", actor="t")
    contracts.put_adapter(store, b"r2")
    kept = promote.plan_evaluation(
        store, settings, run, registry, run_id="r3", base_model="/models/tiny", baseline_approval="x"
    )
    assert kept.champion.name == "champion v2"


def test_rollback_checks_the_adapter_against_its_digest(store, settings, registry):
    for n, f1 in ((1, 0.5), (2, 0.7)):
        champion = "champion v1" if n == 2 else "base model"
        run, _ = make_run(store, f"r{n}", cand_f1=f1, champ_f1=f1 - 0.3, champion=champion)
        _promote(store, settings, run, registry, f"r{n}")
    v1 = registry.versions()[0]
    store.put_bytes(f"adapters/{v1['adapter_digest']}/adapter_model.safetensors", b"swapped")
    with pytest.raises(AdapterIntegrityError, match="refusing to use it"):
        promote.rollback(store, registry, "previous", reason="bad outputs", actor="alice")
    assert registry.champion()["version"] == "2"
    store.put_bytes(f"adapters/{v1['adapter_digest']}/adapter_model.safetensors", b"r1")
    event = promote.rollback(store, registry, "previous", reason="bad outputs", actor="alice")
    assert event["to_version"] == "1" and registry.champion()["version"] == "1"


def test_the_cli_runs_the_same_promotion(store, moto_server, tmp_path, bucket_name):
    run, _ = make_run(store, "r1", cand_f1=0.6, champ_f1=0.1)
    env = {
        **moto_server.env(),
        "PATH": "/usr/bin:/bin",
        "RETRAIN__S3__BUCKET": bucket_name,
        "RETRAIN_HOME": str(tmp_path / "cli-home"),
        "RETRAIN__REGISTRY__TRACKING_URI": mlflow_db.sqlite_uri(tmp_path / "cli.db"),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "retrain.cli", "promote", "--run-uri", run.uri, "--actor", "alice"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    decision = runs.PromotionDecision.model_validate(json.loads(proc.stdout))
    assert decision.promote
    settings = load_settings(environ=env)
    reg = Registry.from_settings(settings, "/models/tiny")
    assert reg.champion()["version"] == "1" and reg.history()[-1]["actor"] == "alice"


# -- no lost updates (issue 11 item 7) ----------------------------------------------------------------
def test_two_promotions_racing_the_second_is_refused_and_moves_nothing(store, settings, registry):
    run, _ = make_run(store, "r1", cand_f1=0.5, champ_f1=0.1)
    _promote(store, settings, run, registry, "r1")
    # r2 and r3 were both evaluated while v1 was champion (two runs in flight, or a re-trigger)
    r2, _ = make_run(store, "r2", cand_f1=0.6, champ_f1=0.5, champion="champion v1")
    r3, _ = make_run(store, "r3", cand_f1=0.7, champ_f1=0.5, champion="champion v1")
    for run_id, folder in (("r2", r2), ("r3", r3)):
        promote.decide_run(store, settings, folder, registry, run_id=run_id, provenance=PROVENANCE)
    first = promote.commit_run(store, settings, r2, registry, run_id="r2", actor="test/r2")
    second = promote.commit_run(store, settings, r3, registry, run_id="r3", actor="test/r3")
    assert first.decision.promote and registry.champion()["version"] == "2"
    d = second.decision
    assert not d.promote and "champion changed since evaluation" in d.refused
    assert "champion is v2 now, not v1" in d.reason and second.registered_version == "3"
    assert registry.champion()["version"] == "2" and registry.get_alias("previous")["version"] == "1"
    assert runs.read(store, r3.key(runs.DECISION), runs.PromotionDecision) == d
    assert registry.versions()[2]["tags"]["decision"] == "kept"
    assert [e["to_version"] for e in registry.history()] == ["1", "2"]  # no event for the refused one


def test_a_rollback_between_evaluation_and_promote_is_not_undone(store, settings, registry):
    for n, f1 in ((1, 0.5), (2, 0.7)):
        run, _ = make_run(
            store, f"r{n}", cand_f1=f1, champ_f1=f1 - 0.3, champion="champion v1" if n == 2 else "base model"
        )
        _promote(store, settings, run, registry, f"r{n}")
    r3, _ = make_run(store, "r3", cand_f1=0.8, champ_f1=0.7, champion="champion v2")
    promote.decide_run(store, settings, r3, registry, run_id="r3", provenance=PROVENANCE)
    promote.rollback(store, registry, "1", reason="bad outputs", actor="alice", expected_champion="2")
    summary = promote.commit_run(store, settings, r3, registry, run_id="r3", actor="test/r3")
    assert not summary.decision.promote and "not v2" in summary.decision.refused
    assert registry.champion()["version"] == "1" and summary.registry.champion_version == "1"
    assert registry.history()[-1]["kind"] == "rollback"


def test_a_rollback_refuses_when_the_champion_moved_since_the_form_was_shown(store, settings, registry):
    for n, f1 in ((1, 0.5), (2, 0.7)):
        run, _ = make_run(
            store, f"r{n}", cand_f1=f1, champ_f1=f1 - 0.3, champion="champion v1" if n == 2 else "base model"
        )
        _promote(store, settings, run, registry, f"r{n}")
    with pytest.raises(ChampionMoved, match="champion is v2 now, not v1"):
        promote.rollback(
            store, registry, "1", reason="saw v1 as champion", actor="bob", expected_champion="1"
        )
    assert registry.champion()["version"] == "2" and len(registry.history()) == 2


# -- optional human approval (issue 11 item 8) ---------------------------------------------------------
def _gate(settings, **kw):
    return settings.model_copy(update={"gate": settings.gate.model_copy(update=kw)})


def _answer(approved, who="alice"):
    return runs.ApprovalResponse(
        approved=approved, responded_by=who, responded_at="2026-12-02T10:00:00+00:00"
    )


def test_approval_always_approved_moves_the_alias_and_the_history_names_the_responder(
    store, settings, registry
):
    s = _gate(settings, approval="always")
    run, _ = make_run(store, "r1", cand_f1=0.6, champ_f1=0.1)
    decided = promote.decide_run(store, s, run, registry, run_id="r1", provenance=PROVENANCE)
    assert decided.promote and decided.needs_approval and registry.champion() is None
    summary = promote.commit_run(
        store, s, run, registry, run_id="r1", actor="test/r1", approval=_answer(True)
    )
    assert summary.decision.promote and registry.champion()["version"] == "1"
    assert "approved by alice at 2026-12-02T10:00:00+00:00" in summary.decision.reason
    event = registry.history()[-1]
    assert (event["kind"], event["responded_by"], event["approved"]) == ("promote", "alice", "true")
    assert event["responded_at"] == "2026-12-02T10:00:00+00:00"


def test_approval_rejected_keeps_the_champion_and_records_who(store, settings, registry):
    s = _gate(settings, approval="always")
    run, _ = make_run(store, "r1", cand_f1=0.6, champ_f1=0.1)
    promote.decide_run(store, s, run, registry, run_id="r1", provenance=PROVENANCE)
    summary = promote.commit_run(
        store, s, run, registry, run_id="r1", actor="test/r1", approval=_answer(False, "bob")
    )
    d = summary.decision
    assert not d.promote and d.refused == "promotion rejected by bob at 2026-12-02T10:00:00+00:00"
    assert registry.champion() is None and registry.versions()[0]["tags"]["decision"] == "kept"
    event = registry.history()[-1]
    assert (event["kind"], event["responded_by"], event["approved"], event["to_version"]) == (
        "rejected",
        "bob",
        "false",
        "1",
    )


def test_no_answer_keeps_the_champion(store, settings, registry):
    s = _gate(settings, approval="always")
    run, _ = make_run(store, "r1", cand_f1=0.6, champ_f1=0.1)
    summary = _promote(store, s, run, registry, "r1")
    assert not summary.decision.promote and "none was given" in summary.decision.refused
    assert registry.champion() is None


def test_borderline_hands_a_close_call_to_a_person_and_leaves_clear_calls_alone(store, settings, registry):
    s = _gate(settings, approval="borderline", max_label_drop=0.1)
    run, _ = make_run(store, "r1", cand_f1=0.6, champ_f1=0.1)
    clear = promote.decide_run(store, s, run, registry, run_id="r1", provenance=PROVENANCE)
    assert clear.promote and not clear.needs_approval
    promote.commit_run(store, s, run, registry, run_id="r1", actor="test/r1")
    # better on one sentence of 100: the interval's lower bound is 0, so the gate keeps; the interval
    # straddles the margin, so borderline asks a person
    run2, _ = make_run(store, "r2", cand_f1=0.61, champ_f1=0.6, champion="champion v1")
    close = promote.decide_run(store, s, run2, registry, run_id="r2", provenance=PROVENANCE)
    assert not close.promote and close.needs_approval
    summary = promote.commit_run(
        store, s, run2, registry, run_id="r2", actor="test/r2", approval=_answer(True)
    )
    assert summary.decision.promote and registry.champion()["version"] == "2"


def test_lineage_of_a_warm_start_reaches_the_registry_and_the_summary(store, settings, registry):
    """The gate decides as before; the version's tags and summary.json say what it was trained on."""
    run, (uri, digest) = make_run(store, "r1", cand_f1=0.6, champ_f1=0.1)
    request = runs.read(store, run.key(runs.TRAIN_REQUEST), runs.TrainRequest)
    selection = runs.TrainSelection(
        mode="warm_start",
        requested_mode="warm_start",
        parent=runs.ParentAdapter(
            version="3",
            adapter_uri=uri,
            adapter_digest=digest,
            dataset_version="d0",
            run_uri="s3://b/runs/r0",
        ),
        reference_version="d0",
        train_uri=run.file_uri(runs.TRAIN_DATA),
        train_sha256="f" * 64,
        available=500,
        new=40,
        old=460,
        replayed=40,
        old_left_out=420,
        examples=80,
        replay_share=0.5,
        replay_seed=11,
        replay_by_label={"movie": 3, "name": 37},
    )
    runs.write(store, run.key(runs.TRAIN_REQUEST), request.model_copy(update={"selection": selection}))
    summary = _promote(store, settings, run, registry, "r1")
    assert summary.decision.promote and summary.train.selection == selection
    tags = registry.champion()["tags"]
    assert tags["train_mode"] == "warm_start" and tags["parent_version"] == "3"
    assert (tags["train_new"], tags["train_replayed"], tags["replay_seed"]) == ("40", "40", "11")
    assert tags["parent_adapter_digest"] == digest and "warm_start_fallback" not in tags
