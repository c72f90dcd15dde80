"""Registers the ner_retrain DAG-run note listener (plugins/retrain_airflow/listeners.py)."""

from airflow.plugins_manager import AirflowPlugin
from retrain_airflow import listeners


class RetrainListenersPlugin(AirflowPlugin):
    name = "retrain_listeners"
    listeners = [listeners]
