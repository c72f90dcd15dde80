"""The Airflow plugin of the retraining platform's UI (Airflow loads this file from plugins/).

- ``/retrain``: a FastAPI app (``retrain_airflow.ui.routes``), every route behind the Airflow login;
- "Retraining" in the navigation: champion history, F1 per label across runs, per-run intake with
  GX Data Docs, loss curves, decisions and a rollback form (an iframe of ``/retrain/``);
- "Retrain report": a tab on each DAG-run page with that run's report.

Every Airflow component loads plugins; only the API server uses ``fastapi_apps``, so the app (and
FastAPI, Airflow's security module, boto3, MLflow) is built on first access, not at import.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from airflow.plugins_manager import AirflowPlugin

URL_PREFIX = "/retrain"  # as retrain_airflow.ui.links.URL_PREFIX (not imported: keep this file light)


@cache
def _app() -> Any:
    from retrain_airflow.ui.routes import create_app

    return create_app()


class RetrainUIPlugin(AirflowPlugin):
    name = "retrain_ui"
    external_views = [
        {
            "name": "Retraining",
            "href": f"{URL_PREFIX}/",
            "url_route": "retraining",
            "nav_top_level": True,
            "icon": f"{URL_PREFIX}/static/icon.svg",
        },
        {
            "name": "Retrain report",
            "href": f"{URL_PREFIX}/report/{{DAG_ID}}/{{RUN_ID}}",
            "url_route": "retrain-report",
            "destination": "dag_run",
        },
    ]

    @property
    def fastapi_apps(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return [{"app": _app(), "url_prefix": URL_PREFIX, "name": "retrain_ui"}]
