"""The adapter store: LoRA adapters written once, content-addressed, and checked wherever one is used.

A trained adapter is published under ``<s3.adapters_prefix><digest>/`` where ``digest`` is the
SHA-256 over its files (`adapter_digest`). The folder's name is its content, so a registered version's
``adapter_uri`` can never point at other weights: a retried or cleared ``train`` that trains again
publishes new weights under a new digest and leaves every earlier adapter untouched, and publishing the
same content twice is a no-op. Every consumer (evaluate, export, deploy, rollback) fetches an adapter
through `fetch_adapter` / `verify_adapter`, which recompute the digest and refuse a mismatch.
"""

from __future__ import annotations

import hashlib
import logging
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

from retrain.storage import ObjectStore, join_key, parse_s3_uri

log = logging.getLogger(__name__)

#: The files of a PEFT LoRA adapter that make its content (and its digest).
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_DIGEST = re.compile(r"[0-9a-f]{64}")


class AdapterIntegrityError(RuntimeError):
    """An adapter's files are missing or do not hash to the digest it was registered with."""


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def adapter_digest(adapter_dir: str | Path) -> str:
    """SHA-256 over ``name NUL sha256(content) LF`` of each file in `ADAPTER_FILES` (sorted)."""
    root = Path(adapter_dir)
    h = hashlib.sha256()
    for name in sorted(ADAPTER_FILES):
        path = root / name
        if not path.is_file():
            raise AdapterIntegrityError(f"adapter {root}: {name} is missing")
        h.update(f"{name}\x00{sha256_file(path)}\n".encode())
    return h.hexdigest()


def adapter_uri(store: ObjectStore, adapters_prefix: str, digest: str) -> str:
    """``s3://<bucket>/<adapters_prefix><digest>/``."""
    return store.uri(join_key(adapters_prefix, digest) + "/")


def digest_of_uri(uri: str) -> str | None:
    """The digest a content-addressed adapter URI names (its last folder), or None for another URI."""
    name = uri.rstrip("/").rsplit("/", 1)[-1]
    return name if _DIGEST.fullmatch(name) else None


def publish_adapter(store: ObjectStore, adapters_prefix: str, local_dir: str | Path) -> tuple[str, str]:
    """Upload the adapter in ``local_dir`` to its content address, once; return (uri, digest).

    Files already at the address are not written again (same digest, same bytes): publishing is
    idempotent and never overwrites an adapter a registered version points at."""
    digest = adapter_digest(local_dir)
    prefix = join_key(adapters_prefix, digest)
    written = 0
    for name in ADAPTER_FILES:
        key = join_key(prefix, name)
        if not store.exists(key):
            store.upload_file(Path(local_dir) / name, key)
            written += 1
    uri = store.uri(prefix + "/")
    log.info("adapter %s: %s", uri, f"published {written} file(s)" if written else "already published")
    return uri, digest


def fetch_adapter(
    store_for: Callable[[str], ObjectStore], uri: str, dest: Path, expected_digest: str | None = None
) -> tuple[Path, str]:
    """Download the adapter's files at ``uri`` (``s3://…/``; a local directory is used as it is) into
    ``dest`` and return (directory, digest). The digest must equal ``expected_digest`` when given, and
    the digest a content-addressed URI names; AdapterIntegrityError otherwise."""
    if not uri.startswith("s3://"):
        local = Path(uri)
        if not (local / ADAPTER_WEIGHTS).is_file():
            raise AdapterIntegrityError(f"adapter {uri}: no {ADAPTER_WEIGHTS} there")
        return local, _checked(uri, adapter_digest(local), expected_digest)
    bucket, prefix = parse_s3_uri(uri)
    store = store_for(bucket)
    dest.mkdir(parents=True, exist_ok=True)
    for name in ADAPTER_FILES:
        key = join_key(prefix.rstrip("/"), name)
        if not store.exists(key):
            raise AdapterIntegrityError(
                f"adapter {uri}: {name} is missing (deleted from the bucket?). A registered version "
                "whose adapter is gone cannot be evaluated or deployed: roll back to a version whose "
                "adapter exists (`retrain registry rollback <version>` or the ner_rollback DAG)"
            )
        store.download_file(key, dest / name)
    return dest, _checked(uri, adapter_digest(dest), expected_digest)


def _checked(uri: str, actual: str, expected: str | None) -> str:
    named = digest_of_uri(uri)
    for what, want in (("the registered digest", expected), ("the digest its URI names", named)):
        if want and want != actual:
            raise AdapterIntegrityError(
                f"adapter {uri}: its files hash to {actual[:16]}…, not {what} {want[:16]}…: "
                "the adapter was changed after it was published; refusing to use it"
            )
    return actual


def verify_adapter(
    store_for: Callable[[str], ObjectStore], uri: str, expected_digest: str | None = None
) -> str:
    """Check the adapter at ``uri`` (files present, digest as expected) without keeping it; its digest."""
    with tempfile.TemporaryDirectory(prefix="retrain-adapter-") as tmp:
        return fetch_adapter(store_for, uri, Path(tmp), expected_digest)[1]
