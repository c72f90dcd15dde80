"""Stage 6: promotion. Choose what the candidate is compared with, decide, register, move the aliases.

The whole promotion is library code: the ``prepare_evaluation`` and ``promote`` tasks of ner_retrain,
the ``retrain promote`` command and the tests call the same functions; the Airflow glue only passes
the store, the registry and who is acting.

- `choose_baseline`: the champion; for a re-run of a run whose candidate already became champion, the
  model it replaced (never the candidate itself); the base model when there is no champion.
- `plan_evaluation`: writes ``eval_request.json`` for the trained candidate and that baseline. A
  champion whose adapter is gone from the bucket (a lifecycle rule, a mistaken delete) fails it with
  `ChampionAdapterMissing`, which names the way out: roll back to a version whose adapter exists, or
  trigger the run with an approval to compare against the base model (``baseline_approval``).
- `decide_run`: reads the run folder (`retrain.runs`), applies the gate (`retrain.gate.decide`), logs
  the training to MLflow and registers the adapter (immutable versions: its content address and
  digest), and writes ``decision.json`` with ``needs_approval`` (conf ``gate.approval``).
- `commit_run`: applies a person's answer when one was needed, moves ``champion`` when the decision
  says so **and the alias still names the version the evaluation was planned against**
  (``eval_request.json`` ``registry_champion``; otherwise it refuses, with the reason in the decision,
  and moves nothing), records approvals and rejections in the alias history, writes ``decision.json``
  and ``summary.json`` (last), and marks the accepted data as trained on.
- `promote_run`: both in one call (the CLI, the tests); the DAG runs them as two tasks with the
  optional approval between, and the commit in a one-slot pool (conf ``registry.alias_pool``).
"""

from __future__ import annotations

import logging
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from retrain import runs
from retrain.adapters import ADAPTER_FILES, fetch_adapter, verify_adapter
from retrain.config import Settings
from retrain.gate import decide, is_borderline, needs_approval
from retrain.redact import mask_uri
from retrain.registry import ANY_CHAMPION, PREVIOUS, ChampionMoved, Registry
from retrain.runs import (
    ApprovalResponse,
    DatasetRef,
    EvalReport,
    EvalRequest,
    IntakeSummary,
    ModelRef,
    PromotionDecision,
    RunFolder,
    RunSummary,
    TrainRequest,
    TrainResult,
)
from retrain.storage import ObjectStore, join_key, parse_s3_uri

log = logging.getLogger(__name__)


class TrainingNotCommitted(RuntimeError):
    """Evaluation was asked for a run whose training did not commit (no valid train_result.json)."""


class ChampionAdapterMissing(RuntimeError):
    """The champion's adapter files are gone from the bucket: no candidate can be compared with it,
    and every run fails at ``prepare_evaluation`` until someone chooses a way out (see the message)."""


@dataclass(frozen=True)
class Provenance:
    """Who and what produced a run, recorded on its MLflow run and registered version."""

    dag_id: str
    git_commit: str
    launcher: str
    #: The trainer image when the train result does not name one (e.g. "local trainer env").
    trainer_image: str


def git_commit() -> str:
    """The deployed code's commit: $RETRAIN_GIT_COMMIT (images), else `git rev-parse` of the checkout."""
    if os.environ.get("RETRAIN_GIT_COMMIT"):
        return os.environ["RETRAIN_GIT_COMMIT"]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def choose_baseline(registry: Registry, run_id: str) -> ModelRef:
    """The model the run's candidate must beat (see the module docstring)."""
    champion = registry.champion()
    if champion and champion["airflow_run_id"] == run_id:
        # A re-run of a run whose candidate already became champion: compare against the champion it
        # replaced (what the first attempt compared against), never against itself.
        log.info(
            "champion v%s came from this run; comparing against the model it replaced", champion["version"]
        )
        champion = registry.get_alias(PREVIOUS)
        if champion and champion["airflow_run_id"] == run_id:
            champion = None
    if champion is None:
        return ModelRef(name="base model")
    return ModelRef(
        name=f"champion v{champion['version']}",
        adapter_uri=champion["adapter_uri"],
        adapter_digest=champion.get("adapter_digest") or None,
        version=champion["version"],
    )


def missing_adapter_files(store: ObjectStore, uri: str) -> list[str]:
    """The adapter files not present at ``uri`` (``s3://…/``; a local directory is checked on disk)."""
    if not uri.startswith("s3://"):
        return [name for name in ADAPTER_FILES if not (Path(uri) / name).is_file()]
    bucket, prefix = parse_s3_uri(uri)
    there = ObjectStore(store.client, bucket)
    return [name for name in ADAPTER_FILES if not there.exists(join_key(prefix.rstrip("/"), name))]


def check_baseline(
    store: ObjectStore, registry: Registry, baseline: ModelRef, approval: str | None
) -> ModelRef:
    """``baseline`` when it is the base model or its adapter is there. When a champion's adapter is
    gone: the base model if ``approval`` is given (the approval is in the baseline's name, so it
    reaches the decision, the summary and the run note), else `ChampionAdapterMissing`."""
    if not baseline.adapter_uri:
        return baseline
    missing = missing_adapter_files(store, baseline.adapter_uri)
    if not missing:
        return baseline
    gone = f"{baseline.name}'s adapter {baseline.adapter_uri} is gone ({', '.join(missing)} missing)"
    if approval and approval.strip():
        log.warning("%s; comparing with the base model, approved: %s", gone, approval.strip())
        return ModelRef(name=f"base model (approved: {approval.strip()}; {baseline.name} adapter gone)")
    usable = [
        v["version"]
        for v in registry.versions()
        if v["adapter_uri"]
        and v["version"] != baseline.version
        and not missing_adapter_files(store, v["adapter_uri"])
    ]
    rollback = (
        f"roll back to a version whose adapter exists ({', '.join('v' + v for v in usable)}): "
        f'`retrain registry rollback {usable[-1]} --reason "…"` or the ner_rollback DAG'
        if usable
        else "no registered version still has its adapter, so there is nothing to roll back to"
    )
    raise ChampionAdapterMissing(
        f"{registry.name}: {gone}; deleted, or expired by a bucket lifecycle rule? Nothing can be "
        f"compared with it, so every run fails here until one of: (1) {rollback}; (2) trigger "
        'ner_retrain with the param baseline_approval="<who approved, why>" to compare this run\'s '
        "candidate with the base model instead (README: 'When the champion's adapter is gone')"
    )


def plan_evaluation(
    store: ObjectStore,
    settings: Settings,
    run: RunFolder,
    registry: Registry,
    *,
    run_id: str,
    base_model: str,
    baseline_approval: str | None = None,
) -> EvalRequest:
    """Check the training committed, choose the baseline, write and return ``eval_request.json``.

    ``baseline_approval`` (who approved and why): used only when the champion's adapter is gone, to
    compare the candidate with the base model instead of failing (`ChampionAdapterMissing`)."""
    try:
        train = runs.read(store, run.key(runs.TRAIN_RESULT), TrainResult)
    except runs.ContractError as exc:
        raise TrainingNotCommitted(f"training did not commit its artifacts: {exc}") from exc
    dataset = runs.read(store, run.key(runs.DATASET), DatasetRef)
    trained = runs.read(store, run.key(runs.TRAIN_REQUEST), runs.TrainRequest)
    champion_now = registry.champion()
    baseline = check_baseline(store, registry, choose_baseline(registry, run_id), baseline_approval)
    request = EvalRequest(
        run_id=run_id,
        golden_uri=dataset.golden_uri,
        golden_hash=dataset.golden_hash,
        base_model=base_model,
        candidate=ModelRef(
            name="candidate", adapter_uri=train.adapter_uri, adapter_digest=train.adapter_digest
        ),
        champion=baseline,
        labels=settings.prompt.labels,
        max_new_tokens=settings.evaluate.max_new_tokens,
        batch_size=settings.evaluate.batch_size,
        backend=settings.evaluate.backend,
        prefix_cache=settings.evaluate.prefix_cache,
        model_cache_dir=settings.train.model_cache_dir,
        # the base model as trained (`retrain.base_models`): same pinned revision, same code policy
        base_model_revision=trained.base_model_revision,
        trust_remote_code=bool(trained.llamafactory.get("trust_remote_code", False)),
        benchmarks=dataset.benchmarks,
        registry_champion=champion_now["version"] if champion_now else None,
    )
    runs.write(store, run.key(runs.EVAL_REQUEST), request)
    log.info(
        "evaluating candidate %s against %s on golden %s (%d sentences)",
        train.adapter_uri,
        baseline.name,
        dataset.golden_hash,
        dataset.golden,
    )
    return request


@dataclass(frozen=True)
class _RunFiles:
    """Everything promotion reads from the run folder."""

    report: EvalReport
    train: TrainResult
    train_request: TrainRequest
    eval_request: EvalRequest
    dataset: DatasetRef
    intake: IntakeSummary | None

    @classmethod
    def load(cls, store: ObjectStore, run: RunFolder) -> _RunFiles:
        return cls(
            report=runs.read(store, run.key(runs.EVAL_REPORT), EvalReport),
            train=runs.read(store, run.key(runs.TRAIN_RESULT), TrainResult),
            train_request=runs.read(store, run.key(runs.TRAIN_REQUEST), TrainRequest),
            eval_request=runs.read(store, run.key(runs.EVAL_REQUEST), EvalRequest),
            dataset=runs.read(store, run.key(runs.DATASET), DatasetRef),
            intake=runs.read_if_exists(store, run.key(runs.INTAKE), IntakeSummary),
        )


def _metrics(files: _RunFiles) -> dict[str, float]:
    cand, champ = files.report.candidate, files.report.champion
    metrics: dict[str, float | None] = {
        "eval_micro_f1": cand.micro.f1,
        "eval_micro_precision": cand.micro.precision,
        "eval_micro_recall": cand.micro.recall,
        "eval_macro_f1": cand.macro_f1,
        "eval_cluener_score": cand.cluener_score,
        "eval_parse_failure_rate": cand.parse_failure_rate,
        "eval_micro_f1_lenient": cand.lenient_micro.f1 if cand.lenient_micro else None,
        "champion_micro_f1": champ.micro.f1,
        "train_loss_final": files.train.train_loss,
    }
    metrics.update({f"eval_f1_{label}": m.f1 for label, m in cand.per_label.items()})
    return {k: v for k, v in metrics.items() if v is not None}  # labels with no gold/pred have no F1


def _register(
    store: ObjectStore,
    run: RunFolder,
    registry: Registry,
    files: _RunFiles,
    *,
    run_id: str,
    provenance: Provenance,
) -> str:
    """Log the training as an MLflow run (adapter verified against its digest) and register the adapter."""
    train, dataset = files.train, files.dataset
    tags = {
        "dataset_version": dataset.version,
        "golden_hash": dataset.golden_hash,
        "exam_version": files.report.exam,
        "base_model": files.train_request.base_model,
        "run_uri": run.uri,
        "git_commit": provenance.git_commit,
        "launcher": provenance.launcher,
        "trainer_image": train.trainer_image or provenance.trainer_image,
        "adapter_digest": train.adapter_digest,
        **lineage_tags(files.train_request.selection),
    }
    with tempfile.TemporaryDirectory(prefix="retrain-promote-") as tmp:
        work = Path(tmp)
        fetch_adapter(store.for_bucket, train.adapter_uri, work / "adapter", train.adapter_digest)
        for sub in (runs.TRAIN_DIR, runs.EVAL_DIR):
            store.download_prefix(run.key(sub), work / sub)
        store.download_file(dataset.manifest_key, work / "manifest.json")
        mlflow_run = registry.log_training_run(
            airflow_run_id=run_id,
            dag_id=provenance.dag_id,
            params=files.train_request.llamafactory,
            metrics=_metrics(files),
            loss_curve=[(int(s), float(v)) for s, v in train.loss_curve],
            tags=tags,
            artifacts={
                "adapter": work / "adapter",
                "train": work / runs.TRAIN_DIR,
                "eval": work / runs.EVAL_DIR,
                "dataset": work / "manifest.json",
            },
        )
    micro = files.report.candidate.micro.f1 or 0.0
    version = registry.register(
        adapter_uri=train.adapter_uri,
        adapter_digest=train.adapter_digest,
        mlflow_run_id=mlflow_run,
        airflow_run_id=run_id,
        tags={**tags, "micro_f1": f"{micro:.6f}", "airflow_dag_id": provenance.dag_id},
    )
    return version


def lineage_tags(selection: runs.TrainSelection | None) -> dict[str, str]:
    """Registry tags of what a version was trained on: the mode, the parent version it continued and
    the replay sample (`retrain.selection`); empty for a request planned before selections existed."""
    if selection is None:
        return {}
    tags = {
        "train_mode": selection.mode,
        "train_examples": str(selection.examples),
        "train_new": str(selection.new),
        "train_replayed": str(selection.replayed),
        "train_old_left_out": str(selection.old_left_out),
        "replay_share": str(selection.replay_share),
        "replay_seed": str(selection.replay_seed),
        "train_data_sha256": selection.train_sha256,
    }
    if selection.parent:
        tags["parent_version"] = selection.parent.version
        tags["parent_adapter_digest"] = selection.parent.adapter_digest
    if selection.fallback_reason:
        tags["warm_start_fallback"] = selection.fallback_reason
    return tags


def decide_run(
    store: ObjectStore,
    settings: Settings,
    run: RunFolder,
    registry: Registry,
    *,
    run_id: str,
    provenance: Provenance,
    dry_run: bool = False,
) -> PromotionDecision:
    """Apply the gate, register the candidate (not in a dry run) and write ``decision.json`` with
    ``needs_approval`` (conf gate.approval); moves no alias: `commit_run` does."""
    files = _RunFiles.load(store, run)
    decision = decide(
        files.report.candidate,
        files.report.champion,
        settings.gate,
        champion_name=files.eval_request.champion.name,
        dry_run=dry_run,
        exam=files.report.exam,
    )
    log_decision(decision)
    updates: dict[str, Any] = {"needs_approval": needs_approval(decision, settings.gate.approval)}
    if not dry_run:
        updates["registered_version"] = _register(
            store, run, registry, files, run_id=run_id, provenance=provenance
        )
    decision = decision.model_copy(update=updates)
    if decision.needs_approval:
        log.info("gate.approval=%s: a person must confirm (%s)", settings.gate.approval, decision.reason)
    runs.write(store, run.key(runs.DECISION), decision)
    return decision


def _final(decision: PromotionDecision, approval: ApprovalResponse | None) -> PromotionDecision:
    """The decision after the person's answer: an approved close call promotes; a rejection, a
    timeout or a missing answer keeps the champion."""
    if not decision.needs_approval:
        return decision
    wanted = decision.promote or is_borderline(decision)
    if approval is None:
        why = "needs a person's approval (conf gate.approval) and none was given"
        return decision.model_copy(update={"promote": False, "refused": why, "reason": f"kept: {why}"})
    update: dict[str, Any] = {"approval": approval, "promote": wanted and approval.approved}
    if approval.approved:
        update["reason"] = f"{decision.reason} [{approval.describe()}]"
    else:
        update["refused"] = f"promotion {approval.describe()}"
        update["reason"] = (
            f"kept {decision.champion_name or 'champion'}: {update['refused']} ({decision.reason})"
        )
    return decision.model_copy(update=update)


def commit_run(
    store: ObjectStore,
    settings: Settings,
    run: RunFolder,
    registry: Registry,
    *,
    run_id: str,
    actor: str,
    approval: ApprovalResponse | None = None,
) -> RunSummary:
    """Carry out the decision ``decide_run`` wrote: move ``champion`` only if it still names the
    version the evaluation was planned against (else refuse, with the reason in the decision and the
    summary), record a person's answer in the alias history, tag the version, write ``decision.json``
    and ``summary.json`` (last)."""
    from retrain.ingest import clear_pending

    files = _RunFiles.load(store, run)
    decision = _final(runs.read(store, run.key(runs.DECISION), PromotionDecision), approval)
    version = decision.registered_version
    if version is not None:
        decision = _apply(registry, decision, version, files.eval_request, actor=actor)
        registry.set_version_tags(version, decision_tags(decision))
    log.info("decision: %s", decision.reason)
    summary = _summary(run, registry, files, decision, version, run_id=run_id)
    runs.write(store, run.key(runs.DECISION), decision)
    runs.write(store, run.key(runs.SUMMARY), summary)  # last: the run's outcome
    if not decision.dry_run:
        clear_pending(store, settings)
    log.info("run summary: registered version %s, champion %s", version, summary.registry.champion_version)
    return summary


def _apply(
    registry: Registry, decision: PromotionDecision, version: str, request: EvalRequest, *, actor: str
) -> PromotionDecision:
    """Move the alias when the decision says so and the champion did not move since the evaluation;
    record a rejection in the alias history."""
    extra = {}
    if decision.approval is not None:
        a = decision.approval
        extra = {
            "approved": str(a.approved).lower(),
            "responded_by": a.responded_by,
            "responded_at": a.responded_at,
            "timed_out": str(a.timed_out).lower(),
        }
    if not decision.promote:
        if decision.approval is not None and not decision.approval.approved:
            champion = registry.champion()
            now = champion["version"] if champion else ""
            registry.record_event(
                "rejected",
                from_version=now,
                to_version=version,
                reason=decision.reason,
                actor=actor,
                extra=extra,
            )
        return decision
    try:
        registry.move_champion(
            version,
            reason=decision.reason,
            actor=actor,
            expected_champion=request.registry_champion,
            extra=extra,
        )
    except ChampionMoved as exc:
        why = f"champion changed since evaluation: {exc}"
        log.warning("not promoted: %s", why)
        return decision.model_copy(
            update={"promote": False, "refused": why, "reason": f"not promoted, {why}"}
        )
    return decision


def promote_run(
    store: ObjectStore,
    settings: Settings,
    run: RunFolder,
    registry: Registry,
    *,
    run_id: str,
    actor: str,
    provenance: Provenance,
    dry_run: bool = False,
    approval: ApprovalResponse | None = None,
) -> RunSummary:
    """`decide_run` then `commit_run` in one go (the CLI and the tests; the DAG runs them as two
    tasks with the optional approval between): returns the run summary."""
    decide_run(store, settings, run, registry, run_id=run_id, provenance=provenance, dry_run=dry_run)
    return commit_run(store, settings, run, registry, run_id=run_id, actor=actor, approval=approval)


def log_decision(decision: PromotionDecision) -> None:
    """The decision in the task log: the interval, every label checked, every rule, the reason."""
    sig = decision.significance
    if sig is not None:
        log.info(
            "gate: exam %s, micro F1 (%s) difference %s; paired bootstrap of %d sentences, %d resamples, "
            "seed %d",
            decision.exam,
            sig.reading,
            sig.interval(),
            sig.n_sentences,
            sig.resamples,
            sig.seed,
        )
        for lab in sig.labels:
            log.info(
                "gate label %-14s support %4d  %+.4f [%+.4f, %+.4f]%s",
                lab.label,
                lab.support,
                lab.difference,
                lab.low,
                lab.high,
                "  REGRESSED" if lab.regressed else "",
            )
    for rule in decision.rules:
        log.info("gate %-20s %s  %s", rule.rule, "PASS" if rule.passed else "FAIL", rule.detail)
    log.info("decision: %s", decision.reason)


def decision_tags(decision: PromotionDecision) -> dict[str, str]:
    """Registry tags of a decided version: the verdict, its reason, the difference and its interval."""
    tags = {"decision": "promoted" if decision.promote else "kept", "decision_reason": decision.reason}
    sig = decision.significance
    if sig is not None:
        tags.update(
            {
                "decision_difference": f"{sig.difference:+.6f}",
                "decision_ci_low": f"{sig.low:+.6f}",
                "decision_ci_high": f"{sig.high:+.6f}",
                "decision_interval": sig.interval(),
                "decision_bootstrap": f"{sig.reading} micro F1, {sig.resamples} resamples, seed {sig.seed}, "
                f"confidence {sig.confidence}, min_delta {sig.min_delta}",
            }
        )
    if decision.exam:
        tags["exam_version"] = decision.exam
    return tags


def _summary(
    run: RunFolder,
    registry: Registry,
    files: _RunFiles,
    decision: PromotionDecision,
    version: str | None,
    *,
    run_id: str,
) -> RunSummary:
    champion = registry.champion()
    train = files.train
    return RunSummary(
        run_id=run_id,
        run_uri=run.uri,
        intake=files.intake,
        dataset=files.dataset,
        train=runs.TrainFigures(
            train_loss=train.train_loss,
            steps=train.steps,
            epochs=train.epochs,
            runtime_s=train.runtime_s,
            loss_curve=train.loss_curve,
            selection=files.train_request.selection,
        ),
        evaluation={
            "candidate": runs.ShortScores.of(files.report.candidate),
            "champion": runs.ShortScores.of(files.report.champion),
        },
        champion_name=files.eval_request.champion.name,
        decision=decision,
        registered_version=version,
        benchmarks=files.report.benchmarks,
        registry=runs.RegistryState(
            model=registry.name,
            tracking_uri=mask_uri(registry.tracking_uri),
            champion_version=champion["version"] if champion else None,
        ),
    )


def rollback(
    store: ObjectStore,
    registry: Registry,
    target: str,
    *,
    reason: str,
    actor: str,
    expected_champion: str | None | object = ANY_CHAMPION,
) -> dict[str, Any]:
    """Move ``champion`` to ``target`` (a version or 'previous') after checking that the version's adapter
    is still there and hashes to its registered digest (`Registry.rollback` records the event). With
    ``expected_champion`` (the version the person saw as champion) it refuses with `ChampionMoved`
    when a promotion or another rollback moved the champion meanwhile."""
    info = registry.resolve(target)
    verify_adapter(store.for_bucket, info["adapter_uri"], info["adapter_digest"] or None)
    return registry.rollback(info["version"], reason=reason, actor=actor, expected_champion=expected_champion)
