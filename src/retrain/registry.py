"""Stage 6 (registry): MLflow model registry with aliases, history and rollback.

- One registered model per task and base model (conf ``registry.model_name_template``).
- Each training run is an MLflow run (params: the LLaMA-Factory YAML; metrics: loss curve and
  evaluation figures; artifacts: adapter, eval report, loss plot, dataset manifest; tags: dataset and
  golden hashes, the exam version, Airflow dag/run ids, git commit). A registered version also carries
  the gate's decision: verdict, reason, micro-F1 difference and its bootstrap interval.
- Aliases ``champion`` and ``previous``. A promotion first points ``previous`` at the old champion,
  then moves ``champion`` (an overwrite, never a delete), so at no moment is there no champion.
- MLflow keeps no history of alias changes, so every change is also recorded as an append-only
  event: a run in the experiment ``<model>-alias-history`` (visible in the MLflow UI), opened before
  the aliases move and closed FINISHED after. A change interrupted half-way stays visible as an
  unfinished event.
- Versions are immutable: a version's ``adapter_uri`` is a content address (`retrain.adapters`) and
  its ``adapter_digest`` tag the digest every consumer verifies; registering the same content again
  (a retried task) returns the existing version.
"""

from __future__ import annotations

import json
import logging
import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from retrain.config import Settings
from retrain.redact import mask_uri

log = logging.getLogger(__name__)

CHAMPION = "champion"
PREVIOUS = "previous"


#: ``expected_champion`` default: move the alias whatever it names now.
ANY_CHAMPION: object = object()


class RegistryError(RuntimeError):
    """A registry action cannot be carried out (unknown version, no adapter, …)."""


class ChampionMoved(RegistryError):
    """The champion is no longer the version an alias move was decided against (a lost update refused)."""


def _v(version: object) -> str:
    return f"v{version}" if version else "no champion"


def retrain_home() -> Path:
    """Local state for the embedded defaults (``$RETRAIN_HOME``, else <repo>/.work)."""
    env = os.environ.get("RETRAIN_HOME")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / ".work"
    path.mkdir(parents=True, exist_ok=True)
    return path


def model_name(settings: Settings, base_model: str) -> str:
    base = re.sub(r"[^A-Za-z0-9._-]", "-", base_model.rstrip("/").rsplit("/", 1)[-1]) or "base"
    return settings.registry.model_name_template.format(task=settings.task, base=base)


class Registry:
    def __init__(self, tracking_uri: str, name: str, artifact_location: str | None = None) -> None:
        from mlflow.tracking import MlflowClient

        self.tracking_uri = tracking_uri
        self.name = name
        self.artifact_location = artifact_location
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

    @classmethod
    def from_settings(cls, settings: Settings, base_model: str) -> Registry:
        uri = (
            settings.registry.tracking_uri
            or os.environ.get("MLFLOW_TRACKING_URI")
            or f"sqlite:///{retrain_home() / 'mlflow.db'}"
        )
        artifacts = settings.registry.artifact_location
        if artifacts is None and uri.startswith("sqlite:"):
            artifacts = (retrain_home() / "mlartifacts").as_uri()
        return cls(uri, model_name(settings, base_model), artifacts)

    # -- experiments -------------------------------------------------------------------------
    def _experiment_id(self, name: str) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        kwargs: dict[str, Any] = (
            {"artifact_location": f"{self.artifact_location.rstrip('/')}/{name}"}
            if self.artifact_location
            else {}
        )
        return self.client.create_experiment(name, **kwargs)

    def _ensure_model(self) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(self.name)
        except MlflowException:
            self.client.create_registered_model(
                self.name,
                description="LoRA adapters for Chinese NER (CLUENER labels), trained by ner_retrain.",
            )

    # -- reading -----------------------------------------------------------------------------
    def _version_info(self, mv: Any) -> dict[str, Any]:
        return {
            "version": str(mv.version),
            "adapter_uri": mv.tags.get("adapter_uri", ""),
            "adapter_digest": mv.tags.get("adapter_digest", ""),
            "micro_f1": float(mv.tags["micro_f1"]) if "micro_f1" in mv.tags else None,
            "dataset_version": mv.tags.get("dataset_version", ""),
            # the golden-set version micro_f1 was measured on, and the gate's difference with its
            # interval (tags written by `retrain.promote.decision_tags`; empty for older versions)
            "exam_version": mv.tags.get("exam_version", ""),
            "decision_interval": mv.tags.get("decision_interval", ""),
            "airflow_run_id": mv.tags.get("airflow_run_id", ""),
            "aliases": list(getattr(mv, "aliases", []) or []),
            "created": mv.creation_timestamp,
            "mlflow_run_id": mv.run_id,
            "tags": dict(mv.tags),
        }

    def get_alias(self, alias: str) -> dict[str, Any] | None:
        from mlflow.exceptions import MlflowException

        try:
            mv = self.client.get_model_version_by_alias(self.name, alias)
        except MlflowException:
            return None
        return self._version_info(mv)

    def champion(self) -> dict[str, Any] | None:
        return self.get_alias(CHAMPION)

    def versions(self) -> list[dict[str, Any]]:
        from mlflow.exceptions import MlflowException

        try:
            mvs = self.client.search_model_versions(f"name='{self.name}'")
        except MlflowException:
            return []
        return sorted((self._version_info(mv) for mv in mvs), key=lambda v: int(v["version"]))

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "tracking_uri": mask_uri(self.tracking_uri),
            "champion": self.champion(),
            "previous": self.get_alias(PREVIOUS),
            "versions": self.versions(),
        }

    # -- writing -----------------------------------------------------------------------------
    def _log_batch(
        self, rid: str, params: dict[str, Any], metrics: dict[str, float], loss_curve: list[tuple[int, float]]
    ) -> None:
        """Params, metrics and the loss curve in as few requests as MLflow's log-batch limits allow
        (100 params, 1000 metrics per request). One request per value took ~1 s each behind the
        basic-auth app (a password hash checked per request): a 560-step loss curve took minutes."""
        from mlflow.entities import Metric, Param

        now = int(datetime.now(UTC).timestamp() * 1000)
        plist = [Param(k[:250], str(v)[:6000]) for k, v in sorted(params.items())]
        mlist = [Metric(k, float(v), now, 0) for k, v in sorted(metrics.items())]
        mlist += [Metric("train_loss", float(loss), now, int(step)) for step, loss in loss_curve]
        for i in range(0, len(plist), 100):
            self.client.log_batch(rid, params=plist[i : i + 100])
        for i in range(0, len(mlist), 1000):
            self.client.log_batch(rid, metrics=mlist[i : i + 1000])

    def log_training_run(
        self,
        *,
        airflow_run_id: str,
        dag_id: str,
        params: dict[str, Any],
        metrics: dict[str, float],
        loss_curve: list[tuple[int, float]],
        tags: dict[str, str],
        artifacts: dict[str, str | Path],
    ) -> str:
        """One MLflow run per trained adapter; returns its id (reused when the same Airflow run logs the
        same adapter again: ``tags["adapter_digest"]``; a retry that trained new weights gets a new run)."""
        exp_id = self._experiment_id(f"{self.name}-training")
        query = f"tags.airflow_run_id = '{airflow_run_id}'"
        if tags.get("adapter_digest"):
            query += f" and tags.adapter_digest = '{tags['adapter_digest']}'"
        existing = self.client.search_runs([exp_id], query, max_results=1)
        if existing:
            return existing[0].info.run_id
        run = self.client.create_run(
            exp_id,
            tags={**tags, "airflow_run_id": airflow_run_id, "airflow_dag_id": dag_id},
            run_name=airflow_run_id,
        )
        rid = run.info.run_id
        self._log_batch(rid, params, metrics, loss_curve)
        for dest, path in artifacts.items():
            p = Path(path)
            if p.is_dir():
                self.client.log_artifacts(rid, str(p), dest)
            elif p.exists():
                self.client.log_artifact(rid, str(p), dest)
        self.client.set_terminated(rid, "FINISHED")
        return rid

    def register(
        self,
        *,
        adapter_uri: str,
        adapter_digest: str,
        mlflow_run_id: str,
        airflow_run_id: str,
        tags: dict[str, str],
    ) -> str:
        """Register the adapter as a new version. Versions are immutable: registering the same content
        (adapter digest) again returns the existing version, whichever run asks."""
        self._ensure_model()
        for v in self.versions():
            if v["adapter_digest"] and v["adapter_digest"] == adapter_digest:
                log.info(
                    "adapter %s… already registered as %s v%s", adapter_digest[:12], self.name, v["version"]
                )
                return v["version"]
        run = self.client.get_run(mlflow_run_id)
        source = f"{run.info.artifact_uri.rstrip('/')}/adapter"
        all_tags = {
            **tags,
            "adapter_uri": adapter_uri,
            "adapter_digest": adapter_digest,
            "airflow_run_id": airflow_run_id,
        }
        mv = self.client.create_model_version(
            self.name, source=source, run_id=mlflow_run_id, tags={k: str(v) for k, v in all_tags.items()}
        )
        log.info("registered %s v%s from %s", self.name, mv.version, adapter_uri)
        return str(mv.version)

    def set_version_tags(self, version: str, tags: dict[str, Any]) -> None:
        for k, v in tags.items():
            self.client.set_model_version_tag(self.name, version, k, str(v)[:5000])

    def move_champion(
        self,
        version: str,
        *,
        reason: str,
        actor: str,
        kind: str = "promote",
        expected_champion: str | None | object = ANY_CHAMPION,
        extra: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """Point ``champion`` at ``version`` (``previous`` at the old champion) and record the event.

        ``expected_champion``: the version the caller saw as champion (None: no champion); when the
        alias names another version now, nothing moves and `ChampionMoved` says from what to what
        (unless it names ``version`` already: a retried move that had succeeded is a no-op).
        ``extra``: more fields for the history event (e.g. who approved and when)."""
        self.client.get_model_version(self.name, version)  # raises for an unknown version
        old = self.champion()
        now = old["version"] if old else None
        if old and old["version"] == str(version):
            return {
                "kind": kind,
                "from_version": old["version"],
                "to_version": str(version),
                "reason": "already champion",
                "actor": actor,
                "changed": False,
            }
        if expected_champion is not ANY_CHAMPION and now != expected_champion:
            raise ChampionMoved(
                f"{self.name}: champion is {_v(now)} now, not {_v(expected_champion)} as when this "
                f"{kind} was decided; refusing to move it to v{version}"
            )
        event = self.record_event(
            kind,
            from_version=now or "",
            to_version=str(version),
            reason=reason,
            actor=actor,
            extra=extra,
            finish=False,
        )
        if old:
            self.client.set_registered_model_alias(self.name, PREVIOUS, old["version"])
        self.client.set_registered_model_alias(self.name, CHAMPION, str(version))
        self.client.set_terminated(event.pop("_run_id"), "FINISHED")
        log.info("%s: champion %s -> v%s (%s) by %s", self.name, _v(now), version, reason, actor)
        return {**event, "changed": True}

    def record_event(
        self,
        kind: str,
        *,
        from_version: str,
        to_version: str,
        reason: str,
        actor: str,
        extra: dict[str, str] | None = None,
        finish: bool = True,
    ) -> dict[str, Any]:
        """Append one event to the alias history (an alias move, or a decision that left the alias
        where it was, such as a rejected approval: ``from_version == to_version`` then)."""
        event = {
            "kind": kind,
            "from_version": from_version,
            "to_version": to_version,
            "reason": reason,
            "actor": actor,
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
            "model": self.name,
            **(extra or {}),
        }
        exp_id = self._experiment_id(f"{self.name}-alias-history")
        run = self.client.create_run(
            exp_id,
            run_name=f"{kind} v{to_version}",
            tags={f"event.{k}": str(v)[:5000] for k, v in event.items()},
        )
        if finish:
            self.client.set_terminated(run.info.run_id, "FINISHED")
            return event
        return {**event, "_run_id": run.info.run_id}

    def resolve(self, target: str) -> dict[str, Any]:
        """The version ``target`` names (a version number or 'previous'); it must exist and have an
        adapter. RegistryError otherwise."""
        if target == PREVIOUS:
            prev = self.get_alias(PREVIOUS)
            if prev is None:
                raise RegistryError(f"{self.name}: no 'previous' alias to roll back to")
            target = prev["version"]
        known = {v["version"]: v for v in self.versions()}
        if str(target) not in known:
            raise RegistryError(
                f"{self.name}: version {target!r} does not exist (have {sorted(known, key=int)})"
            )
        info = known[str(target)]
        if not info["adapter_uri"]:
            raise RegistryError(
                f"{self.name} v{target}: has no adapter_uri tag; refusing to make it champion"
            )
        return info

    def rollback(
        self,
        target: str,
        *,
        reason: str,
        actor: str,
        expected_champion: str | None | object = ANY_CHAMPION,
    ) -> dict[str, Any]:
        """Move ``champion`` to ``target`` (a version number or 'previous'); it must have an adapter.
        With ``expected_champion`` it refuses (`ChampionMoved`) when the champion is no longer the
        version the person saw. `retrain.promote.rollback` also checks the adapter's files first."""
        info = self.resolve(target)
        return self.move_champion(
            info["version"], reason=reason, actor=actor, kind="rollback", expected_champion=expected_champion
        )

    def history(self) -> list[dict[str, Any]]:
        """Every alias change, oldest first (unfinished ones marked ``status``)."""
        exp = self.client.get_experiment_by_name(f"{self.name}-alias-history")
        if exp is None:
            return []
        runs = self.client.search_runs(
            [exp.experiment_id], order_by=["attributes.start_time ASC"], max_results=5000
        )
        out = []
        for r in runs:
            ev = {k[len("event.") :]: v for k, v in r.data.tags.items() if k.startswith("event.")}
            ev["status"] = r.info.status
            out.append(ev)
        return out


def dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, indent=2, default=str)
