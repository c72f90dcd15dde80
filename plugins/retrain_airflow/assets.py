"""Airflow Assets of the retraining pipeline: the dataset versions and the champion model.

Both are named from conf, so every DAG that parses the same settings agrees on them:

- ``dataset_asset``: ``Asset(name="<task>.dataset", uri="s3://<s3.bucket>/<s3.datasets_prefix>")`` (the amazon
  provider normalises away the trailing slash).
  ``build_dataset`` declares it in ``outlets``; every successful build emits an event whose extra says
  which version (``version``, ``uri``, ``created`` = a new version rather than an existing one, split
  sizes, ``golden_hash``).
- ``champion_asset``: ``Asset(name="<task>.champion", uri="mlflow://<registered model>/champion")``,
  the registered model being the one conf's ``train.base_model`` maps to (``registry.model_name_template``).
  An event means "the champion alias moved": ``promote`` emits one only when the candidate was promoted.
  A plain outlet would emit an event on every successful ``promote`` (also when the candidate is kept),
  so ``promote`` declares the asset *alias* ``champion_alias`` instead and attaches the champion asset
  to it at run time, only on promotion. DAGs schedule on ``champion_asset`` itself (see
  dags/deploy_champion.py); the event extra carries ``model``, ``version``, ``micro_f1``, the previous
  champion, the dataset version and the run id.

The task side (``record_dataset_event`` / ``record_champion_event``) writes into the running task's
``outlet_events``; nothing here reads a connection at parse time.
"""

from __future__ import annotations

import logging
from typing import Any

from airflow.sdk import Asset, AssetAlias

from retrain.config import Settings
from retrain_airflow import settings as glue

log = logging.getLogger(__name__)


def _bucket_uri(settings: Settings, prefix: str) -> str:
    return f"s3://{settings.s3.bucket}/{prefix.strip('/')}/"


def champion_model_name(settings: Settings) -> str:
    """The registered model the champion asset stands for (conf ``train.base_model``)."""
    from retrain.registry import model_name

    return model_name(settings, settings.train.base_model)


def dataset_asset(settings: Settings) -> Asset:
    return Asset(
        name=f"{settings.task}.dataset",
        uri=_bucket_uri(settings, settings.s3.datasets_prefix),
        group="dataset",
    )


def champion_asset(settings: Settings) -> Asset:
    return Asset(
        name=f"{settings.task}.champion",
        uri=f"mlflow://{champion_model_name(settings)}/champion",
        group="model",
    )


def champion_alias(settings: Settings) -> AssetAlias:
    return AssetAlias(name=f"{settings.task}.champion-moves")


def build_dataset_outlets(settings: Settings) -> list[Asset]:
    """``outlets=`` of the build_dataset task."""
    return [dataset_asset(settings)]


def promote_outlets(settings: Settings) -> list[AssetAlias]:
    """``outlets=`` of the promote task (an alias: an event only when the champion moves)."""
    return [champion_alias(settings)]


def _outlet_events(context: Any | None) -> Any:
    if context is None:
        from airflow.sdk import get_current_context

        context = get_current_context()
    return context["outlet_events"]


def dataset_event_extra(dataset: dict[str, Any]) -> dict[str, Any]:
    """The extra of a dataset event, from ``build_dataset``'s result (``DatasetResult.to_json()``)."""
    return {
        k: dataset.get(k)
        for k in ("version", "uri", "created", "train", "validation", "golden", "golden_hash")
    }


def record_dataset_event(
    settings: Settings, dataset: dict[str, Any], context: Any | None = None
) -> dict[str, Any]:
    """Attach the version to the dataset event of the running ``build_dataset`` task; return the extra."""
    extra = dataset_event_extra(dataset)
    _outlet_events(context)[dataset_asset(settings)].extra = extra
    log.info("dataset asset event: %s", extra)
    return extra


def champion_event_extra(summary: dict[str, Any], base_model: str | None = None) -> dict[str, Any] | None:
    """The extra of a champion event from the promote task's run summary; None when nothing moved."""
    decision = summary.get("decision") or {}
    if not decision.get("promote") or decision.get("dry_run") or not summary.get("registered_version"):
        return None
    evaluation = summary.get("evaluation") or {}
    return {
        "model": (summary.get("registry") or {}).get("model"),
        "version": str(summary["registered_version"]),
        "micro_f1": (evaluation.get("candidate") or {}).get("micro_f1"),
        "previous": summary.get("champion_name"),
        "previous_micro_f1": (evaluation.get("champion") or {}).get("micro_f1"),
        "dataset_version": (summary.get("dataset") or {}).get("version"),
        "base_model": base_model,
        "run_id": summary.get("run_id"),
        "kind": "promote",
    }


def record_champion_event(
    settings: Settings, summary: dict[str, Any], base_model: str | None = None, context: Any | None = None
) -> dict[str, Any] | None:
    """In the running ``promote`` task: emit a champion asset event when the summary says the candidate
    was promoted (through ``champion_alias``, which must be in the task's outlets). Returns the extra,
    or None when no event was emitted."""
    extra = champion_event_extra(summary, base_model)
    if extra is None:
        log.info("champion unchanged: no champion asset event")
        return None
    _outlet_events(context)[champion_alias(settings)].add(champion_asset(settings), extra=extra)
    log.info("champion asset event: %s", extra)
    return extra


def record_rollback_event(
    settings: Settings, event: dict[str, Any], base_model: str | None = None, context: Any | None = None
) -> dict[str, Any] | None:
    """In the running ner_rollback task: the alias moved back, so consumers of the champion asset hear of
    it too. ``event`` is what ``Registry.rollback`` returned; nothing is emitted when it changed nothing."""
    if not event.get("changed"):
        return None
    extra = {
        "model": event.get("model"),
        "version": str(event["to_version"]),
        "kind": "rollback",
        "previous": f"v{event['from_version']}" if event.get("from_version") else None,
        "reason": event.get("reason"),
        "base_model": base_model,
        "actor": event.get("actor"),
    }
    _outlet_events(context)[champion_alias(settings)].add(champion_asset(settings), extra=extra)
    log.info("champion asset event (rollback): %s", extra)
    return extra


# -- consumer side ----------------------------------------------------------------------------------
class ChampionEventError(RuntimeError):
    """A champion event cannot be acted on (no extra, no such version, champion without adapter)."""


def validate_new_champion() -> dict[str, Any]:
    """Task callable of deploy_champion: check the triggering champion event against the registry.

    Fails when the event carries no version, or the registry has no champion or none with an adapter, or
    the champion's adapter is gone or does not hash to its registered digest (`retrain.adapters`);
    logs (and carries on with the registry's champion) when the alias moved again since the event."""
    from airflow.sdk import get_current_context

    from retrain.registry import Registry

    s = glue.settings()
    context = get_current_context()
    events = list(context["triggering_asset_events"].get(champion_asset(s), []))
    if not events:
        raise ChampionEventError(f"no {champion_asset(s).uri} event triggered this run (manual trigger?)")
    extra = dict(events[-1].extra or {})
    if not extra.get("version"):
        raise ChampionEventError(f"champion event without a version in its extra: {extra}")
    registry = Registry.from_settings(s, extra.get("base_model") or s.train.base_model)
    champion = registry.champion()
    if champion is None:
        raise ChampionEventError(
            f"registry {registry.name} has no champion, yet event says v{extra['version']}"
        )
    if not champion.get("adapter_uri"):
        raise ChampionEventError(f"{registry.name} champion v{champion['version']} has no adapter_uri tag")
    from retrain.adapters import verify_adapter
    from retrain_airflow.s3 import object_store

    # what a deployment would load: present, and the bytes that were registered (the digest)
    verify_adapter(
        lambda bucket: object_store(s, bucket), champion["adapter_uri"], champion["adapter_digest"] or None
    )
    if champion["version"] != extra["version"]:
        log.warning(
            "champion moved again since the event (event v%s, registry v%s): validating the registry's",
            extra["version"],
            champion["version"],
        )
    log.info(
        "new champion %s v%s (micro F1 %s, dataset %s), adapter %s",
        registry.name,
        champion["version"],
        extra.get("micro_f1"),
        extra.get("dataset_version"),
        champion["adapter_uri"],
    )
    return {
        "model": registry.name,
        "version": champion["version"],
        "adapter_uri": champion["adapter_uri"],
        "event_version": extra["version"],
        "micro_f1": extra.get("micro_f1"),
    }
