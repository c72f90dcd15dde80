"""ner_retrain: nightly (and manual) LoRA retraining of the Chinese NER model.

Wiring only: every task calls a function of plugins/retrain_airflow, which calls the library.
Nothing heavy is imported at parse time and no connection or Variable is read while parsing.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG, Param, task
from retrain_airflow import assets, events, notify
from retrain_airflow import tasks as t
from retrain_airflow.launchers import stage_operator

from retrain.config import load_settings

settings = load_settings()

DOC = """
### ner_retrain
Finds new or changed annotation batches in S3, validates them with Great Expectations (bad records are
quarantined with a report), builds a versioned alpaca dataset, trains a LoRA adapter with LLaMA-Factory
(launcher from conf: local / docker / kubernetes), evaluates it against the current champion on the
golden set, and promotes it in the MLflow registry when it passes the gate (`decide`, then `promote`,
which moves the alias only if the champion is still the one evaluated against). With conf
`gate.approval: borderline | always` an `approve_promotion` task (human in the loop) waits between them
when the decision needs a person; a rejection or a timeout keeps the champion.

**Params** (trigger form):
- `force`: run training even when no new data arrived.
- `dry_run`: evaluate and decide, but register nothing and move no alias.
- `epochs`, `learning_rate`, `lora_rank`: override the LLaMA-Factory profile for this run.
- `max_samples`: the most examples this night trains (conf `train.max_samples`); new data is never cut.
- `train_mode`: `full` | `warm_start` (conf `train.mode`): warm start continues the champion's adapter on
  the new data plus a replay sample; it falls back to full (reason in the summary) when it cannot.
- `base_model`: a local path or a ModelScope id (default from conf `train.base_model`); it must match conf
  `models.allow` (and an id needs a pinned `models.revisions` entry), else `prepare_training` fails.
- `golden_set`: a fixed golden file (local path or s3:// URI, CLUENER json lines) instead of the hash split.
- `baseline_approval`: used only when the champion's adapter is gone from the bucket (`prepare_evaluation`
  then fails, alerting, and says so): who approved comparing the candidate with the base model, and why.

**Event-driven** (conf `events.enabled`): also runs when S3 notifications about the incoming prefix arrive
on the SQS queue; `wait_for_quiet_incoming` first waits until no object was added or removed for
`events.quiet_period_seconds`, so a burst of uploads is ingested by one run.
"""

with DAG(
    dag_id="ner_retrain",
    description="Nightly LoRA retraining of the CLUENER NER model",
    schedule=events.retrain_schedule(settings),  # the cron, OR new data when conf events.enabled
    catchup=False,
    max_active_runs=settings.schedule.max_active_runs,
    doc_md=DOC,
    tags=["retrain", "ner", "lora"],
    default_args={
        "retries": settings.schedule.retries,
        "retry_delay": timedelta(seconds=settings.schedule.retry_delay_seconds),
        "on_failure_callback": notify.failure_callbacks(settings),
    },
    params={
        "force": Param(False, type="boolean", description="Train even without new data"),
        "dry_run": Param(False, type="boolean", description="Evaluate and decide, do not register/promote"),
        "epochs": Param(
            None, type=["null", "number"], minimum=0.01, maximum=100, description="num_train_epochs override"
        ),
        "learning_rate": Param(
            None, type=["null", "number"], exclusiveMinimum=0, maximum=1, description="learning_rate override"
        ),
        "lora_rank": Param(
            None, type=["null", "integer"], minimum=1, maximum=256, description="lora_rank override"
        ),
        "max_samples": Param(
            None,
            type=["null", "integer"],
            minimum=1,
            description="train.max_samples override (never cuts new data)",
        ),
        "train_mode": Param(
            None,
            type=["null", "string"],
            enum=[None, "full", "warm_start"],
            description="train.mode override: full | warm_start",
        ),
        "base_model": Param(
            None,
            type=["null", "string"],
            description="Local path or ModelScope id (must match conf models.allow)",
        ),
        "golden_set": Param(
            None, type=["null", "string"], description="Fixed golden file (path or s3:// URI)"
        ),
        "baseline_approval": Param(
            None,
            type=["null", "string"],
            description="Only when the champion's adapter is gone from the bucket: who approved comparing "
            "the candidate with the base model instead, and why",
        ),
    },
) as dag:
    plan = task.short_circuit(task_id="find_new_batches")(t.find_new_batches)()
    intake = task(task_id="validate_batches")(t.ingest_batches)(plan)
    dataset = task(task_id="build_dataset", outlets=assets.build_dataset_outlets(settings))(t.build_dataset)()
    run_uri = task(task_id="prepare_training")(t.prepare_training)(dataset)
    train = stage_operator("train", "{{ ti.xcom_pull(task_ids='prepare_training') }}", settings)
    eval_uri = task(task_id="prepare_evaluation")(t.prepare_evaluation)(dataset, run_uri)
    evaluate = stage_operator("evaluate", "{{ ti.xcom_pull(task_ids='prepare_evaluation') }}", settings)
    decided = task(task_id="decide")(t.decide)(dataset, intake, run_uri)
    # promote moves the alias: serialised with ner_rollback by a one-slot pool (conf registry.alias_pool)
    decision = task(
        task_id="promote",
        pool=settings.registry.alias_pool,
        trigger_rule="none_failed_min_one_success",  # runs after the approval, or when it was skipped
        outlets=assets.promote_outlets(settings),
    )(t.promote)(run_uri)

    intake >> dataset
    if settings.events.enabled:  # conf switch: coalesce a burst of uploads before the intake check
        task(task_id="wait_for_quiet_incoming")(events.wait_for_quiet_incoming)() >> plan
    run_uri >> train >> eval_uri >> evaluate >> decided

    if (
        settings.gate.approval != "never"
    ):  # conf switch: a person confirms (plugins/retrain_airflow/approval.py)
        from retrain_airflow.approval import PromotionApprovalOperator

        route = task.branch(task_id="approval_needed")(t.approval_route)(decided)
        approve = PromotionApprovalOperator(settings=settings)
        route >> [approve, decision]
        approve >> decision
    else:
        decided >> decision

    if settings.registry.export_merged:  # conf switch: merged model for serving after a promotion
        export_uri = task.short_circuit(task_id="prepare_export")(t.prepare_export)(decision, run_uri)
        export = stage_operator("export", "{{ ti.xcom_pull(task_ids='prepare_export') }}", settings)
        export_uri >> export >> task(task_id="record_export")(t.record_export)(decision, run_uri)
