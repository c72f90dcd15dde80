"""The DAGs the Retraining UI is about, and the URLs it links to (its own routes and Airflow's pages)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

URL_PREFIX = "/retrain"  # where plugins/retrain_ui_plugin.py mounts the app (it repeats it, to stay light)
RETRAIN_DAG_ID = "ner_retrain"
ROLLBACK_DAG_ID = "ner_rollback"


class Links:
    """URLs of this app and of the Airflow UI, for the prefix the app is mounted under."""

    def __init__(self, root_path: str, settings: Any) -> None:
        self.root = root_path.rstrip("/")
        self.airflow = self.root[: -len(URL_PREFIX)] if self.root.endswith(URL_PREFIX) else ""
        self.settings = settings

    def app(self, path: str = "/") -> str:
        """A route of this app."""
        return self.root + path

    def static(self, name: str) -> str:
        """One of the app's static assets."""
        return self.app(f"/static/{name}")

    def s3_key(self, key: str) -> str:
        """The report proxy's URL of an object key of the pipeline bucket."""
        return self.app("/s3/" + quote(key, safe="/"))

    def s3_uri(self, uri: str | None) -> str | None:
        """A proxied link for ``s3://<our bucket>/<key>``; None for anything else."""
        if not uri or not uri.startswith("s3://"):
            return None
        bucket, _, key = uri[5:].partition("/")
        return self.s3_key(key) if bucket == self.settings.s3.bucket and key else None

    def run_file(self, folder: str, name: str) -> str:
        """The proxied URL of a file in a run's folder (``runs/<folder>/<name>``)."""
        return self.s3_key(f"{self.settings.s3.runs_prefix.rstrip('/')}/{folder}/{name}")

    def report(self, run_id: str, dag_id: str = RETRAIN_DAG_ID) -> str:
        """This app's report page of a DAG run."""
        return self.app(f"/report/{quote(dag_id, safe='')}/{quote(run_id, safe='')}")

    def airflow_run(self, run_id: str, dag_id: str = RETRAIN_DAG_ID) -> str:
        """Airflow's page of a DAG run."""
        return f"{self.airflow}/dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}"

    def airflow_dag(self, dag_id: str) -> str:
        """Airflow's page of a DAG."""
        return f"{self.airflow}/dags/{quote(dag_id, safe='')}"
