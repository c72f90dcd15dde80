"""Where the trainer-side stages (train, evaluate, export) run: one conf setting, ``train.launcher``.

Every launcher is an operator that mixes in `base.StageLauncher` and runs the same command line,
``retrain <stage> --run-uri s3://<bucket>/runs/<id>`` (`base.stage_command`):

- ``local`` (`local.LocalStageOperator`): a subprocess in the trainer environment on the worker.
- ``docker`` (`docker.DockerStageOperator`): the trainer image through DockerOperator (GPUs from conf).
- ``kubernetes`` (`kubernetes.KubernetesStageOperator`): the same image as a pod.

`LAUNCHERS` maps the setting to the class, as ``module:Class`` text so that a DAG file imports only
the provider of the launcher it uses. The DAG file calls `stage_operator` and does not change with
the launcher. docs/extending.md says how to add one.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from retrain.config import Settings
    from retrain_airflow.launchers.base import StageLauncher

#: ``train.launcher`` -> the operator class that runs a stage there (``module:Class``).
LAUNCHERS: dict[str, str] = {
    "local": "retrain_airflow.launchers.local:LocalStageOperator",
    "docker": "retrain_airflow.launchers.docker:DockerStageOperator",
    "kubernetes": "retrain_airflow.launchers.kubernetes:KubernetesStageOperator",
}


def launcher_class(name: str) -> type[StageLauncher]:
    """The operator class registered for ``train.launcher: <name>``."""
    try:
        module, _, attr = LAUNCHERS[name].partition(":")
    except KeyError:
        raise ValueError(f"unknown train.launcher {name!r} (known: {', '.join(LAUNCHERS)})") from None
    cls: type[StageLauncher] = getattr(importlib.import_module(module), attr)
    return cls


def stage_operator(stage: str, run_uri: str, settings: Settings, **kwargs: Any) -> Any:
    """The operator that runs ``retrain <stage> --run-uri <run_uri>`` with the configured launcher.

    ``run_uri`` is usually a Jinja template pulling the URI from XCom; keyword arguments override
    the operator arguments built from conf (``task_id`` defaults to ``stage``)."""
    return launcher_class(settings.train.launcher).from_settings(stage, run_uri, settings, **kwargs)
