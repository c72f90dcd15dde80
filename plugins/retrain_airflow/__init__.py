"""Airflow glue for the retrain library: S3 from connections, stage tasks, launchers, UI plugin.

Everything Airflow-specific lives here; the library (src/retrain) never imports Airflow.
"""
