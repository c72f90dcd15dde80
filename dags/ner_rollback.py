"""ner_rollback: move the `champion` alias back to an earlier adapter version (manual only).

Wiring only; the work is `Registry.rollback` (the same as `retrain registry rollback`).
"""

from __future__ import annotations

from airflow.sdk import DAG, Param, task
from retrain_airflow import assets
from retrain_airflow import tasks as t

from retrain.config import load_settings

settings = load_settings()

DOC = """
### ner_rollback
Moves the `champion` alias of the registered NER adapter to **target** (a version number, or `previous`),
after checking that the version exists and has an adapter. The change is recorded in the alias history
with the **reason** and this DAG run as the actor. Trigger it from the UI form or the Retraining page.
"""

with DAG(
    dag_id="ner_rollback",
    description="Roll the NER champion adapter back to an earlier version",
    schedule=None,
    catchup=False,
    max_active_runs=1,
    doc_md=DOC,
    tags=["retrain", "ner", "registry"],
    params={
        "target": Param(
            "previous",
            type="string",
            pattern=r"^(previous|[0-9]+)$",
            description="Version number, or 'previous'",
        ),
        "reason": Param(type="string", minLength=3, description="Why (kept in the alias history)"),
        "base_model": Param(
            None,
            type=["null", "string"],
            description="Base model of the registered model (default: conf train.base_model)",
        ),
    },
) as dag:
    task(task_id="rollback", outlets=assets.promote_outlets(settings))(t.rollback)()
