"""The authenticated S3 proxy for the pipeline's reports (GX Data Docs, quarantine reports, run files).

Keys come from the URL and are untrusted: only plain keys of the files the UI links are served
(`ReportAllowlist`): the GX Data Docs sites, the quarantine records and intake reports, and, of a run's
folder, only the evaluation report, the loss plot and decision.json: adapters, checkpoints, merged
models, datasets and requests are refused. Every response carries a policy that sandboxes the
document and lets no script run and nothing load from another origin.
"""

from __future__ import annotations

import mimetypes
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from retrain import runs
from retrain.storage import ObjectStore, UnsafeKeyError

# Proxied S3 content (GX Data Docs, reports) is user-influenced HTML: no script may run on the Airflow
# origin. Styles, fonts and images load from the same origin only: the published Data Docs carry their
# own (retrain.datadocs), so server-rendered tables stay readable with no internet access.
# `sandbox` without allow-scripts: no script, form, popup, plugin or top-level navigation even if a
# directive above were loosened. allow-same-origin only keeps the document on the Airflow origin, so
# its styles and images (same origin, behind Airflow's login) are fetched with the login cookie (Lax:
# a sandboxed opaque-origin document's requests count as cross-site and would go without it) and
# match 'self'; without allow-scripts nothing can use that origin.
PROXY_CSP = (
    "sandbox allow-same-origin; "
    "default-src 'none'; script-src 'none'; connect-src 'none'; form-action 'none'; base-uri 'none'; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self' data:; "
    "frame-ancestors 'self'"
)
#: The files of a run's folder the UI links (retrain.runs names): nothing else under runs/ is served.
RUN_REPORT_FILES = frozenset({runs.EVAL_HTML, runs.LOSS_PLOT, runs.DECISION})
#: What a GX Data Docs site is made of (retrain.datadocs): pages, styles, images, fonts.
DATA_DOCS_SUFFIXES = frozenset({".html", ".css", ".png", ".svg", ".ico", ".woff", ".woff2", ".ttf"})
#: The quarantine folder of a DAG run: rejected records (.jsonl) and the intake report (.md).
QUARANTINE_SUFFIXES = frozenset({".jsonl", ".md"})
TEXT_SUFFIXES = {".md", ".jsonl", ".txt", ".log", ".yaml", ".yml", ".csv"}


@dataclass(frozen=True)
class ReportAllowlist:
    """The keys the proxy serves: the report files the UI links, by prefix and shape (conf's prefixes)."""

    reports_prefix: str
    quarantine_prefix: str
    runs_prefix: str

    @classmethod
    def from_settings(cls, settings: Any) -> ReportAllowlist:
        s3 = settings.s3
        return cls(s3.reports_prefix, s3.quarantine_prefix, s3.runs_prefix)

    def allows(self, key: str) -> bool:
        """``reports/<run>/<batch>/…`` Data Docs files, ``quarantine/<run>/<file>.jsonl|.md``, and
        ``runs/<run>/<file>`` for the `RUN_REPORT_FILES` only."""
        suffix = Path(key).suffix.lower()
        rest = _under(key, self.reports_prefix)
        if rest is not None:
            return rest.count("/") >= 2 and suffix in DATA_DOCS_SUFFIXES
        rest = _under(key, self.quarantine_prefix)
        if rest is not None:
            return rest.count("/") == 1 and suffix in QUARANTINE_SUFFIXES
        rest = _under(key, self.runs_prefix)
        return rest is not None and rest.partition("/")[2] in RUN_REPORT_FILES


def _under(key: str, prefix: str) -> str | None:
    """The rest of ``key`` after ``prefix/`` (None: not under it, or the prefix is empty)."""
    p = prefix.strip("/")
    return key[len(p) + 1 :] if p and key.startswith(p + "/") else None


def check_report_key(key: str, allowlist: ReportAllowlist) -> str:
    """``key`` if it is a plain object key of a report file the UI links (`ReportAllowlist`).

    Raises `retrain.storage.UnsafeKeyError` for ``..``/``.``/empty segments, a leading slash,
    backslashes or NUL, and `PermissionError` for a well-formed key of anything else (an adapter, a
    checkpoint, a dataset, the ledger). Keys come from the URL: untrusted."""
    if not key or "\x00" in key or "\\" in key or key.startswith("/"):
        raise UnsafeKeyError(f"unsafe key {key!r}")
    if any(seg in ("", ".", "..") for seg in key.split("/")):
        raise UnsafeKeyError(f"key {key!r} has an empty, '.' or '..' segment")
    if not allowlist.allows(key):
        raise PermissionError(f"key {key!r} is not a report the UI links")
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
