"""deploy_champion: runs when the champion asset gets an event (ner_retrain promoted a candidate).

Wiring only: the asset comes from conf through plugins/retrain_airflow/assets.py; the task checks the
event against the registry and logs the new champion. A real deployment (push the adapter to the
serving fleet, reload vLLM, …) would be the next task here.
"""

from __future__ import annotations

from airflow.sdk import DAG, task
from retrain_airflow import assets

from retrain.config import load_settings

settings = load_settings()
champion = assets.champion_asset(settings)

DOC = f"""
### deploy_champion
Scheduled on the asset **{champion.name}** (`{champion.uri}`): ner_retrain's `promote` task emits an
event on it only when a candidate becomes the champion, with the model, version, micro F1 and dataset
version in the event's extra. This DAG validates that version against the MLflow registry and logs it.
"""

with DAG(
    dag_id="deploy_champion",
    description="Validate (and, later, deploy) each new NER champion adapter",
    schedule=[champion],
    catchup=False,
    max_active_runs=1,
    doc_md=DOC,
    tags=["retrain", "ner", "deploy"],
) as dag:
    task(task_id="validate_champion")(assets.validate_new_champion)()
