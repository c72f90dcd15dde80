"""The authenticated S3 proxy for the pipeline's reports (GX Data Docs, quarantine reports, run files).

Keys come from the URL and are untrusted: only plain keys under the report, quarantine and runs
prefixes are served, with a policy that lets no script run on the Airflow origin.
"""

from __future__ import annotations

import mimetypes
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from retrain.storage import ObjectStore, UnsafeKeyError

# Proxied S3 content (GX Data Docs, reports) is user-influenced HTML: no script may run on the Airflow
# origin. Styles, fonts and images load from the same origin only: the published Data Docs carry their
# own (retrain.datadocs), so server-rendered tables stay readable with no internet access.
PROXY_CSP = (
    "default-src 'none'; script-src 'none'; connect-src 'none'; form-action 'none'; base-uri 'none'; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self' data:; "
    "frame-ancestors 'self'"
)
TEXT_SUFFIXES = {".md", ".jsonl", ".txt", ".log", ".yaml", ".yml", ".csv"}


def check_report_key(key: str, allowed_prefixes: Iterable[str]) -> str:
    """``key`` if it is a plain object key under one of ``allowed_prefixes``.

    Raises `retrain.storage.UnsafeKeyError` for ``..``/``.``/empty segments, a leading slash,
    backslashes or NUL, and
    `PermissionError` for a well-formed key outside the prefixes. Keys come from the URL: untrusted."""
    if not key or "\x00" in key or "\\" in key or key.startswith("/"):
        raise UnsafeKeyError(f"unsafe key {key!r}")
    if any(seg in ("", ".", "..") for seg in key.split("/")):
        raise UnsafeKeyError(f"key {key!r} has an empty, '.' or '..' segment")
    prefixes = tuple(p.rstrip("/") + "/" for p in allowed_prefixes if p.strip("/"))
    if not key.startswith(prefixes):
        raise PermissionError(f"key {key!r} is outside {', '.join(prefixes)}")
    return key


def content_type_for(key: str) -> str:
    """The content type the proxy serves ``key`` with (text reports as text/plain, never as HTML)."""
    suffix = Path(key).suffix.lower()
    if suffix in (".html", ".htm"):
        return "text/html; charset=utf-8"
    if suffix in TEXT_SUFFIXES:
        return "text/plain; charset=utf-8"
    if suffix == ".json":
        return "application/json"
    guessed, _ = mimetypes.guess_type(key)
    return guessed or "application/octet-stream"


@dataclass
class ProxiedObject:
    """An S3 object on its way out: the body's chunks, its content type and the response headers."""

    chunks: Iterator[bytes]
    media_type: str
    headers: dict[str, str]


def open_report(store: ObjectStore, key: str) -> ProxiedObject | None:
    """The object ``key`` of the store's bucket, streamed (None: no such object). Check the key first
    (`check_report_key`)."""
    obj = store.get_object(key)
    if obj is None:
        return None
    ctype = content_type_for(key)
    headers = {
        "Content-Security-Policy": PROXY_CSP,
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "private, max-age=60",
    }
    if "ContentLength" in obj:
        headers["Content-Length"] = str(obj["ContentLength"])
    if ctype == "application/octet-stream":
        headers["Content-Disposition"] = f"attachment; filename*=UTF-8''{quote(key.rsplit('/', 1)[-1])}"
    return ProxiedObject(_chunks(obj["Body"]), ctype, headers)


def _chunks(body: Any, size: int = 65536) -> Iterator[bytes]:
    try:
        yield from body.iter_chunks(size)
    finally:
        body.close()
