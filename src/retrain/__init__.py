"""retrain: the library behind the Airflow-scheduled LoRA retraining platform.

One module per stage (ingest, validate, dataset, train, evaluate, promote). Nothing here imports
Airflow; heavy dependencies (great_expectations, mlflow, torch, llamafactory) are imported inside
the functions that need them, so each environment imports only what it has.
"""

__version__ = "0.1.0"
