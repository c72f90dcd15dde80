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
after checking that the version exists and has an adapter and, when **expected_champion** is given
(the Retraining form sends the champion it showed), that the champion has not moved since. The change
is recorded in the alias history with the **reason** and this DAG run as the actor. Trigger it from the
UI form or the Retraining page.
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
        "expected_champion": Param(
            None,
            type=["null", "string"],
            pattern=r"^(none|[0-9]+)$",
            description="The champion version the requester saw ('none': no champion); the rollback "
            "refuses if the champion moved since. Empty: whatever it is now.",
        ),
        "base_model": Param(
            None,
            type=["null", "string"],
            description="Base model of the registered model (default: conf train.base_model)",
        ),
    },
) as dag:
    # serialised with ner_retrain's promote by a one-slot pool (conf registry.alias_pool)
    task(task_id="rollback", pool=settings.registry.alias_pool, outlets=assets.promote_outlets(settings))(
        t.rollback
    )()
