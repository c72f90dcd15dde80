"""Which base models a run may load: the allowlist, pinned revisions and remote code (conf ``models:``).

A base model is named by ``train.base_model`` or the DAG param ``base_model``: free text typed by
whoever may trigger a run, while the trainer that loads it holds S3 write credentials. So a name
is checked against conf before anything is downloaded or loaded:

- it must match ``models.allow`` (exact strings or shell-style patterns, `fnmatch`; ``*`` also
  matches ``/``). A local directory is matched by its normalised absolute path, so
  ``/models/../etc`` is ``/etc`` and does not match ``/models/*``;
- a ModelScope id (``owner/name``) must have a revision in ``models.revisions`` (a tag or a commit
  id): the same name then always means the same files, and the trainer downloads or takes from the
  cache exactly that snapshot, never "whatever master is today";
- ``models.trust_remote_code`` (default false) is passed to every loader (LLaMA-Factory's
  ``trust_remote_code`` for train and export, transformers/vLLM for evaluation): a model that ships
  its own Python code does not run it unless conf says so.

`check_base_model` decides on the Airflow side, before the train request is written (so a refused
name fails the run at ``prepare_training`` naming the allowlist); the train, evaluate and export
requests carry the decision (``base_model_revision``, ``trust_remote_code``), and the trainer
resolves the name with `resolve_base_model`, which refuses an unpinned ModelScope id on its own.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from retrain.config import ModelsConfig
from retrain.errors import InputError

log = logging.getLogger(__name__)

#: A ModelScope model id: ``owner/name``.
HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")


class BaseModelRefused(InputError, ValueError):
    """The base model's name is not allowed by conf ``models`` (or is not pinned): an input error."""


class BaseModelUnavailable(InputError, ValueError):
    """An allowed base model names no model: not a model directory, not a ModelScope id, or an id
    with nowhere to cache it (retrying will not help: the CLI exits with the input-error status and
    the task is not retried)."""


class BaseModelDownloadFailed(RuntimeError):
    """An allowed, pinned ModelScope model is not in the cache and the hub could not be reached or
    the download failed: a network condition that may pass, so NOT an input error (the CLI exits 1
    and the task is retried, `schedule.retries`)."""


@dataclass(frozen=True)
class BaseModelChoice:
    """An allowed base model: the name as given, its pinned revision (ModelScope) and the remote-code
    policy every loader gets."""

    name: str
    revision: str | None
    local: bool
    trust_remote_code: bool


def is_local_name(name: str) -> bool:
    """True for a path (absolute, ``./``, ``../`` or ``~``), False for anything else."""
    return name.startswith(("/", ".", "~"))


def is_hub_id(name: str) -> bool:
    """True for a ModelScope id of the form ``owner/name``."""
    return not is_local_name(name) and HUB_ID.fullmatch(name) is not None


def _normalised(name: str) -> str:
    return os.path.normpath(os.path.abspath(os.path.expanduser(name)))


def check_base_model(name: str, policy: ModelsConfig, *, where: str = "train.base_model") -> BaseModelChoice:
    """The `BaseModelChoice` for ``name``, or `BaseModelRefused` naming the allowlist.

    ``where`` names where the value came from (conf key or DAG param), for the message.
    """
    name = (name or "").strip()
    allow = ", ".join(policy.allow) or "(empty)"
    if not name:
        raise BaseModelRefused(f"{where}: empty base model name; allowed (conf models.allow): {allow}")
    local = is_local_name(name)
    if not local and not is_hub_id(name):
        raise BaseModelRefused(
            f"{where}: {name!r} is neither a local directory path nor a ModelScope id (owner/name)"
        )
    subject = _normalised(name) if local else name
    patterns = [_normalised(p) if is_local_name(p) else p for p in policy.allow]
    if not any(fnmatch.fnmatchcase(subject, p) for p in patterns):
        shown = f"{name!r}" + (f" (as {subject})" if local and subject != name else "")
        raise BaseModelRefused(
            f"{where}: base model {shown} is not allowed: it matches no entry of conf models.allow "
            f"[{allow}]. Add it there (conf/pipeline.yaml or conf/local/pipeline.yaml) to allow it."
        )
    revision = None
    if not local:
        revision = policy.revisions.get(name)
        if not revision:
            raise BaseModelRefused(
                f"{where}: ModelScope id {name!r} is allowed but has no pinned revision in conf "
                f"models.revisions; pin a tag or commit id (the hub's model page lists them) so that "
                f"the name always means the same files"
            )
    return BaseModelChoice(name, revision, local, policy.trust_remote_code)


# --------------------------------------------------------------------------- resolution (trainer side)


def resolve_base_model(
    name: str, cache_dir: str | Path, revision: str | None = None, *, connect_timeout_s: float = 10.0
) -> Path:
    """The local directory of the base model ``name``.

    An existing local directory is used as is. Anything else must be a ModelScope id pinned to
    ``revision`` (`BaseModelRefused` otherwise, before any network access): taken from the
    ModelScope cache under ``cache_dir`` (``models/<owner>--<name>/snapshots/<revision>/``) when
    there, otherwise downloaded at that revision with ``modelscope.snapshot_download``. Before
    downloading, the hub endpoint is probed with a ``connect_timeout_s`` TCP connect, so an
    unreachable hub fails within seconds (modelscope itself retries for ~20 s and has no setting to
    stop that) with a `BaseModelDownloadFailed` naming the id and the cache directory.
    """
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise BaseModelUnavailable(f"base model {name!r}: a directory without config.json, not a model")
        return path.resolve()
    if not is_hub_id(name):
        raise BaseModelUnavailable(
            f"base model {name!r}: no such local directory, and not a ModelScope id of the form owner/name"
        )
    if not cache_dir:
        raise BaseModelUnavailable(
            f"base model {name!r} is not a local directory and the request has no model_cache_dir"
        )
    if not revision:
        raise BaseModelRefused(
            f"base model {name!r}: a ModelScope id needs a pinned revision (conf models.revisions)"
        )
    cache = Path(cache_dir).expanduser()
    cached = _cached_snapshot(name, revision, cache)
    if cached is not None:
        return cached
    endpoint = _modelscope_endpoint()
    problem = _unreachable(endpoint, connect_timeout_s)
    if problem:
        raise BaseModelDownloadFailed(
            f"base model {name!r} at revision {revision!r} is not in the ModelScope cache {cache} and the "
            f"hub {endpoint} is unreachable ({problem}). Download it there first (`modelscope download "
            f"--model {name} --revision {revision} --cache_dir {cache}`) or set train.base_model to a "
            "local model directory."
        )
    from modelscope import snapshot_download

    log.info("downloading base model %s@%s from %s into %s", name, revision, endpoint, cache)
    try:
        return Path(snapshot_download(name, revision=revision, cache_dir=str(cache)))
    except Exception as exc:
        raise BaseModelDownloadFailed(
            f"base model {name!r}@{revision}: download from {endpoint} into {cache} failed: "
            f"{type(exc).__name__}: {exc}"
        ) from exc


def _cached_snapshot(name: str, revision: str, cache: Path) -> Path | None:
    """The cached snapshot of ``name`` at exactly ``revision``, through modelscope's own lookup
    (``local_files_only``, no network), or None. A legacy (pre-1.38) cache folder, which records
    no revision, is not taken for a pinned one."""
    from modelscope import snapshot_download

    try:
        found = Path(snapshot_download(name, revision=revision, cache_dir=str(cache), local_files_only=True))
    except Exception as exc:  # modelscope raises its own CacheNotFound (an Exception subclass)
        log.info("%s@%s not in the ModelScope cache %s (%s)", name, revision, cache, type(exc).__name__)
        return None
    if found.name != revision or found.parent.name != "snapshots":
        log.warning("ignoring %s for %s@%s: a cache folder with no revision", found, name, revision)
        return None
    if not (found / "config.json").is_file():
        log.warning("ignoring cached snapshot %s: no config.json", found)
        return None
    log.info("base model %s@%s found in the ModelScope cache: %s", name, revision, found)
    return found


def _modelscope_endpoint() -> str:
    try:
        from modelscope.hub.api import HubApi

        return str(HubApi().endpoint)
    except Exception:  # the probe only needs a host; fall back to the public hub
        return "https://" + os.environ.get("MODELSCOPE_DOMAIN", "modelscope.cn")


def _unreachable(endpoint: str, timeout_s: float) -> str | None:
    """None when a TCP connection to the endpoint (or the HTTPS proxy in use) opens in time."""
    url = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
    host, port = url.hostname or "", url.port or (443 if url.scheme == "https" else 80)
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    if proxy and url.scheme == "https":
        p = urlparse(proxy if "://" in proxy else f"http://{proxy}")
        host, port = p.hostname or host, p.port or 3128
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return None
    except OSError as exc:
        return f"cannot connect to {host}:{port}: {exc}"
