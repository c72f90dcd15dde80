"""The glue's settings: conf (`retrain.config.load_settings`) read once per process.

Every module of the glue (task callables, assets, launchers, listeners, the UI) takes its settings from
here, so none of them has to import another for it. Tests that change the environment call
``settings.cache_clear()``.
"""

from __future__ import annotations

from functools import lru_cache

from retrain.config import Settings, load_settings
from retrain.redact import uri_secrets


@lru_cache(maxsize=1)
def settings() -> Settings:
    """conf/pipeline.yaml + conf/local + RETRAIN__* overrides, loaded on first use.

    The secret parts of ``registry.tracking_uri`` (a password, a token in the query) are handed to
    Airflow's secrets masker here, so that whatever quotes the URI in this process (an MLflow or
    SQLAlchemy error, a traceback) shows ``***`` in the task log."""
    loaded = load_settings()
    mask_tracking_uri(loaded.registry.tracking_uri)
    return loaded


def mask_tracking_uri(uri: str | None) -> None:
    """Register the URI's secrets with Airflow's masker (this process's logs, and the supervisor's).

    No ``name``: the masker would keep a named secret only for names that look sensitive. Airflow
    skips secrets under 5 characters (a password that short is not worth hiding anyway)."""
    from airflow.sdk.log import mask_secret

    for secret in uri_secrets(uri):
        mask_secret(secret)
