"""The glue's settings: conf (`retrain.config.load_settings`) read once per process.

Every module of the glue (task callables, assets, launchers, listeners, the UI) takes its settings from
here, so none of them has to import another for it. Tests that change the environment call
``settings.cache_clear()``.
"""

from __future__ import annotations

from functools import lru_cache

from retrain.config import Settings, load_settings


@lru_cache(maxsize=1)
def settings() -> Settings:
    """conf/pipeline.yaml + conf/local + RETRAIN__* overrides, loaded on first use."""
    return load_settings()
