"""The "Retraining" page and the "Retrain report" DAG-run tab of the Airflow UI.

A FastAPI app (``create_app``) that ``plugins/retrain_ui_plugin.py`` mounts at ``/retrain``. It only
reads what the pipeline leaves behind:

- S3 (through the Airflow connection of conf ``airflow.aws_conn_id``): ``runs/<run>/summary.json``
  (written by the promote task), ``runs/<run>/intake.json`` (per-object counts, reasons, GX Data
  Docs), and the reports it links to, served by an authenticated proxy limited to the report,
  quarantine and runs prefixes;
- the MLflow registry (`retrain.registry.Registry`): versions, aliases and alias history.

Its one write is the rollback form, which triggers ``ner_rollback`` with Airflow's own trigger
function and the user's name.

Every route, the static assets included, requires an Airflow login (the JWT of Airflow's auth
manager, as a Bearer header or the ``_token`` cookie of the UI). Reading requires permission to
read DAG runs of ``ner_retrain``; the rollback requires permission to trigger ``ner_rollback``.
Charts are SVG drawn here, so nothing is loaded from a CDN.

This module is loaded by Airflow's plugin scan in every component, so it imports only the standard
library at module level; FastAPI, Airflow's security helpers, boto3 and MLflow are imported when the
app is built or a page is served.
"""

import html
import json
import logging
import math
import mimetypes
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

log = logging.getLogger(__name__)

URL_PREFIX = "/retrain"
RETRAIN_DAG_ID = "ner_retrain"
ROLLBACK_DAG_ID = "ner_rollback"
MAX_RUNS = 60  # runs shown on the overview (newest), each costs two small S3 reads
STATIC_DIR = Path(__file__).resolve().parent / "static"
STATIC_FILES = {
    "retrain.css": "text/css; charset=utf-8",
    "retrain.js": "text/javascript; charset=utf-8",
    "icon.svg": "image/svg+xml",
}
# Proxied S3 content (GX Data Docs, reports) is user-influenced HTML: no script may run on the Airflow
# origin. Styles, fonts and images still load, so server-rendered tables stay readable.
PROXY_CSP = (
    "default-src 'none'; script-src 'none'; connect-src 'none'; form-action 'none'; base-uri 'none'; "
    "style-src 'self' 'unsafe-inline' https:; img-src 'self' data: https:; font-src 'self' data: https:; "
    "frame-ancestors 'self'"
)
PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'self'"
)
TEXT_SUFFIXES = {".md", ".jsonl", ".txt", ".log", ".yaml", ".yml", ".csv"}
PALETTE = [
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
    "#393b79",
    "#ad494a",
]


# --------------------------------------------------------------------------- DAG-run note
def run_note(summary: dict[str, Any] | None) -> str:
    """One line for a ``ner_retrain`` DAG-run note, from the run's ``summary.json`` (None: no summary,
    i.e. the run found no new data and skipped training).

    ``promoted v7: micro F1 0.8120 (+0.0140 vs champion v6)`` /
    ``kept champion v3: candidate v8 micro F1 0.7900 (-0.0080); beats_champion failed`` /
    ``dry run: would promote …`` / ``skipped: no new data``.
    """
    if not summary:
        return "skipped: no new data"
    decision = summary.get("decision") or {}
    evaluation = summary.get("evaluation") or {}
    cand = _num(decision.get("candidate_f1"), _num((evaluation.get("candidate") or {}).get("micro_f1")))
    champ = _num(decision.get("champion_f1"), _num((evaluation.get("champion") or {}).get("micro_f1")))
    against = decision.get("champion_name") or summary.get("champion_name") or "champion"
    version = summary.get("registered_version")
    delta = f" ({cand - champ:+.4f} vs {against})" if cand is not None and champ is not None else ""
    f1 = f"micro F1 {cand:.4f}" if cand is not None else "micro F1 n/a"
    failed = [r.get("rule", "?") for r in decision.get("rules") or [] if not r.get("passed")]
    if decision.get("dry_run"):
        verdict = "would promote" if not failed else "would keep " + against
        return _one_line(f"dry run: {verdict}: candidate {f1}{delta}")
    if decision.get("promote"):
        return _one_line(f"promoted v{version}: {f1}{delta}" if version else f"promoted: {f1}{delta}")
    who = f"candidate v{version}" if version else "candidate"
    why = f"; failed {', '.join(failed)}" if failed else ""
    return _one_line(f"kept {against}: {who} {f1}{delta}{why}")


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _num(value: Any, default: float | None = None) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return default
    return out if math.isfinite(out) else default


# --------------------------------------------------------------------------- S3 keys
class UnsafeKey(ValueError):
    """A proxied key is malformed or climbs out of its prefix (``..``)."""


def check_report_key(key: str, allowed_prefixes: Iterable[str]) -> str:
    """``key`` if it is a plain object key under one of ``allowed_prefixes``.

    Raises `UnsafeKey` for ``..``/``.``/empty segments, a leading slash, backslashes or NUL, and
    `PermissionError` for a well-formed key outside the prefixes. Keys come from the URL: untrusted."""
    if not key or "\x00" in key or "\\" in key or key.startswith("/"):
        raise UnsafeKey(f"unsafe key {key!r}")
    if any(seg in ("", ".", "..") for seg in key.split("/")):
        raise UnsafeKey(f"key {key!r} has an empty, '.' or '..' segment")
    prefixes = tuple(p.rstrip("/") + "/" for p in allowed_prefixes if p.strip("/"))
    if not key.startswith(prefixes):
        raise PermissionError(f"key {key!r} is outside {', '.join(prefixes)}")
    return key


def content_type_for(key: str) -> str:
    suffix = Path(key).suffix.lower()
    if suffix in (".html", ".htm"):
        return "text/html; charset=utf-8"
    if suffix in TEXT_SUFFIXES:
        return "text/plain; charset=utf-8"
    if suffix == ".json":
        return "application/json"
    guessed, _ = mimetypes.guess_type(key)
    return guessed or "application/octet-stream"


# --------------------------------------------------------------------------- data
@dataclass
class RunRecord:
    """What S3 holds about one ``ner_retrain`` run."""

    folder: str  # the run's folder name under runs/ (the safe run id)
    summary: dict[str, Any] | None
    intake: dict[str, Any] | None
    written: datetime | None  # when summary.json (else intake.json) was written

    @property
    def run_id(self) -> str:
        for doc in (self.summary, self.intake):
            if doc and doc.get("run_id"):
                return str(doc["run_id"])
        return self.folder

    @property
    def intake_counts(self) -> dict[str, Any]:
        if self.intake:
            return self.intake
        return (self.summary or {}).get("intake") or {}


_DATE_IN_RUN_ID = re.compile(r"(\d{4}-\d{2}-\d{2})T(\d{2})[_:](\d{2})[_:](\d{2})")


def _folder_sort_key(folder: str) -> tuple[str, str]:
    m = _DATE_IN_RUN_ID.search(folder)
    return (f"{m.group(1)}T{m.group(2)}:{m.group(3)}:{m.group(4)}" if m else "", folder)


def _get_json(store: Any, key: str) -> tuple[dict[str, Any] | None, datetime | None]:
    from botocore.exceptions import ClientError

    try:
        obj = store.client.get_object(Bucket=store.bucket, Key=key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return None, None
        raise
    try:
        doc = json.loads(obj["Body"].read().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        log.warning("s3://%s/%s is not JSON: %s", store.bucket, key, exc)
        return None, obj.get("LastModified")
    return (doc if isinstance(doc, dict) else None), obj.get("LastModified")


def run_folders(store: Any, runs_prefix: str) -> list[str]:
    """The run folders under ``runs_prefix`` (one S3 listing with a delimiter: no per-file walk)."""
    prefix = runs_prefix.rstrip("/") + "/"
    folders = []
    paginator = store.client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=store.bucket, Prefix=prefix, Delimiter="/"):
        for cp in page.get("CommonPrefixes", []):
            name = cp["Prefix"][len(prefix) :].rstrip("/")
            if name:
                folders.append(name)
    return folders


def load_run(store: Any, runs_prefix: str, folder: str) -> RunRecord:
    base = runs_prefix.rstrip("/") + "/" + folder
    summary, s_at = _get_json(store, base + "/summary.json")
    intake, i_at = _get_json(store, base + "/intake.json")
    return RunRecord(folder=folder, summary=summary, intake=intake, written=s_at or i_at)


def load_runs(store: Any, runs_prefix: str, limit: int = MAX_RUNS) -> list[RunRecord]:
    """The newest ``limit`` runs that left a summary or an intake report, oldest first."""
    folders = sorted(run_folders(store, runs_prefix), key=_folder_sort_key)[-limit * 2 :]
    with ThreadPoolExecutor(max_workers=8) as pool:
        runs = list(pool.map(lambda f: load_run(store, runs_prefix, f), folders))
    runs = [r for r in runs if r.summary or r.intake]
    epoch = datetime.min.replace(tzinfo=UTC)
    runs.sort(key=lambda r: (r.written or epoch, _folder_sort_key(r.folder)))
    return runs[-limit:]


def list_keys(store: Any, prefix: str, limit: int = 200) -> list[str]:
    keys = []
    for obj in store.iter_objects(prefix):
        keys.append(obj.key)
        if len(keys) >= limit:
            break
    return keys


def mask_uri(uri: str) -> str:
    """A tracking URI without its password (``postgresql://user:***@host/db``)."""
    return re.sub(r"(//[^/:@]*):[^/@]*@", r"\1:***@", uri or "")


# --------------------------------------------------------------------------- SVG charts
def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(1, n)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    ticks, t = [], first
    while t <= hi + step * 1e-6:
        ticks.append(round(t, 10))
        t += step
    return ticks


def _fmt_tick(v: float) -> str:
    return f"{v:.0f}" if abs(v - round(v)) < 1e-9 and abs(v) >= 1 else f"{v:.3g}"


@dataclass
class Series:
    name: str
    points: list[tuple[float, float | None]]  # (x, y); y None = a gap in the line
    color: str
    width: float = 2.0
    dash: str = ""


def line_chart_svg(
    series: list[Series],
    *,
    title: str,
    y_label: str,
    x_label: str = "",
    y_range: tuple[float, float] | None = None,
    x_ticks: list[tuple[float, str]] | None = None,
    width: int = 820,
    height: int = 320,
    legend: bool = True,
) -> str:
    """A self-contained SVG line chart (points carry a ``<title>`` tooltip)."""
    e = html.escape
    ys = [y for s in series for _, y in s.points if y is not None]
    xs = [x for s in series for x, _ in s.points]
    if not ys or not xs:
        return f'<p class="muted">{e(title)}: no data.</p>'
    left, right, top, bottom = 56, (190 if legend else 20), 28, 44
    pw, ph = width - left - right, height - top - bottom
    y0, y1 = y_range if y_range else (min(0.0, min(ys)), max(ys) * 1.05 or 1.0)
    x0, x1 = min(xs), max(xs)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * pw

    def sy(y: float) -> float:
        return top + ph - (min(max(y, y0), y1) - y0) / (y1 - y0) * ph

    out = [
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-label="{e(title)}">',
        f'<text x="{left}" y="16" class="chart-title">{e(title)}</text>',
    ]
    for t in _nice_ticks(y0, y1):
        if y0 - 1e-9 <= t <= y1 + 1e-9:
            out.append(
                f'<line x1="{left}" x2="{left + pw}" y1="{sy(t):.1f}" y2="{sy(t):.1f}" class="grid"/>'
                f'<text x="{left - 6}" y="{sy(t) + 4:.1f}" text-anchor="end" class="tick">{_fmt_tick(t)}</text>'
            )
    ticks = (
        x_ticks
        if x_ticks is not None
        else [(t, _fmt_tick(t)) for t in _nice_ticks(x0, x1, 8) if x0 <= t <= x1]
    )
    every = max(1, math.ceil(len(ticks) / 12))
    for i, (t, label) in enumerate(ticks):
        if i % every == 0:
            out.append(
                f'<text x="{sx(t):.1f}" y="{top + ph + 16}" text-anchor="middle" class="tick">{e(label)}</text>'
            )
    out.append(
        f'<line x1="{left}" x2="{left + pw}" y1="{top + ph}" y2="{top + ph}" class="axis"/>'
        f'<line x1="{left}" x2="{left}" y1="{top}" y2="{top + ph}" class="axis"/>'
    )
    out.append(
        f'<text x="14" y="{top + ph / 2:.0f}" transform="rotate(-90 14 {top + ph / 2:.0f})" '
        f'text-anchor="middle" class="tick">{e(y_label)}</text>'
    )
    if x_label:
        out.append(
            f'<text x="{left + pw / 2:.0f}" y="{height - 6}" text-anchor="middle" class="tick">{e(x_label)}</text>'
        )
    for s in series:
        segments: list[list[tuple[float, float]]] = [[]]
        for x, y in s.points:
            if y is None:
                segments.append([])
            else:
                segments[-1].append((x, y))
        dash = f' stroke-dasharray="{s.dash}"' if s.dash else ""
        for seg in segments:
            if len(seg) > 1:
                pts = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in seg)
                out.append(
                    f'<polyline fill="none" stroke="{s.color}" stroke-width="{s.width}"{dash} points="{pts}"/>'
                )
        if len(s.points) <= 80:
            for x, y in s.points:
                if y is not None:
                    label = dict(ticks).get(x, _fmt_tick(x))
                    out.append(
                        f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{s.color}">'
                        f"<title>{e(s.name)} @ {e(str(label))}: {y:.4f}</title></circle>"
                    )
    if legend:
        for i, s in enumerate(series):
            ly = top + 6 + i * 18
            dash = f' stroke-dasharray="{s.dash}"' if s.dash else ""
            out.append(
                f'<line x1="{left + pw + 14}" x2="{left + pw + 38}" y1="{ly}" y2="{ly}" stroke="{s.color}" '
                f'stroke-width="{s.width}"{dash}/><text x="{left + pw + 44}" y="{ly + 4}" class="legend">'
                f"{e(s.name)}</text>"
            )
    out.append("</svg>")
    return "".join(out)


def run_label(run: RunRecord) -> str:
    """A short x-axis label for a run: its date when the run id carries one."""
    m = _DATE_IN_RUN_ID.search(run.run_id) or _DATE_IN_RUN_ID.search(run.folder)
    if m:
        return f"{m.group(1)[5:]} {m.group(2)}:{m.group(3)}"
    return run.run_id[:16]


def f1_trend_svg(runs: list[RunRecord]) -> str:
    """Candidate F1 per label across runs (oldest left), with micro F1 and the champion's micro F1."""
    scored = [r for r in runs if r.summary and (r.summary.get("evaluation") or {}).get("candidate")]
    if not scored:
        return '<p class="muted">No evaluated run yet: the F1 trend appears after the first training run.</p>'
    labels = sorted(
        {
            lab
            for r in scored
            for lab in ((r.summary or {})["evaluation"]["candidate"].get("per_label_f1") or {})
        }
    )
    series = []
    for i, lab in enumerate(labels):
        series.append(
            Series(
                lab,
                [
                    (
                        float(x),
                        _num(
                            (((r.summary or {})["evaluation"]["candidate"].get("per_label_f1")) or {}).get(
                                lab
                            )
                        ),
                    )
                    for x, r in enumerate(scored)
                ],
                PALETTE[i % len(PALETTE)],
                1.5,
            )
        )
    series.append(
        Series(
            "micro F1",
            [
                (float(x), _num((r.summary or {})["evaluation"]["candidate"].get("micro_f1")))
                for x, r in enumerate(scored)
            ],
            "#111111",
            3.0,
        )
    )
    series.append(
        Series(
            "champion micro F1",
            [
                (float(x), _num(((r.summary or {})["evaluation"].get("champion") or {}).get("micro_f1")))
                for x, r in enumerate(scored)
            ],
            "#111111",
            1.5,
            "5 4",
        )
    )
    ticks = [(float(x), run_label(r)) for x, r in enumerate(scored)]
    return line_chart_svg(
        series,
        title="Candidate F1 per label, by run (golden set)",
        y_label="F1",
        x_label="run",
        y_range=(0.0, 1.0),
        x_ticks=ticks,
        height=max(320, 60 + 18 * len(series)),
    )


def loss_curve_svg(loss_curve: list[Any] | None, *, width: int = 640, height: int = 260) -> str:
    points = []
    for item in loss_curve or []:
        if isinstance(item, (list, tuple)) and len(item) >= 2:
            step, loss = _num(item[0]), _num(item[1])
            if step is not None and loss is not None:
                points.append((step, loss))
    if not points:
        return '<p class="muted">No training loss was logged for this run.</p>'
    return line_chart_svg(
        [Series("training loss", points, PALETTE[0], 2.0)],
        title="Training loss",
        y_label="loss",
        x_label="step",
        width=width,
        height=height,
        legend=False,
    )


# --------------------------------------------------------------------------- HTML
def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _f(value: Any, digits: int = 4) -> str:
    v = _num(value)
    return "—" if v is None else f"{v:.{digits}f}"


def _delta(a: Any, b: Any) -> str:
    va, vb = _num(a), _num(b)
    if va is None or vb is None:
        return "—"
    d = va - vb
    cls = "up" if d > 1e-12 else ("down" if d < -1e-12 else "flat")
    return f'<span class="{cls}">{d:+.4f}</span>'


def _when(value: Any) -> str:
    if value is None or value == "":
        return "—"
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, (int, float)):
        dt = datetime.fromtimestamp(value / 1000.0, tz=UTC)
    else:
        try:
            dt = datetime.fromisoformat(str(value))
        except ValueError:
            return _e(value)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return f'<time datetime="{_e(dt.isoformat())}">{dt.astimezone(UTC).strftime("%Y-%m-%d %H:%M")} UTC</time>'


class Links:
    """URLs of this app and of the Airflow UI, for the prefix the app is mounted under."""

    def __init__(self, root_path: str, settings: Any) -> None:
        self.root = root_path.rstrip("/")
        self.airflow = self.root[: -len(URL_PREFIX)] if self.root.endswith(URL_PREFIX) else ""
        self.settings = settings

    def app(self, path: str = "/") -> str:
        return self.root + path

    def static(self, name: str) -> str:
        return self.app(f"/static/{name}")

    def s3_key(self, key: str) -> str:
        return self.app("/s3/" + quote(key, safe="/"))

    def s3_uri(self, uri: str | None) -> str | None:
        """A proxied link for ``s3://<our bucket>/<key>``; None for anything else."""
        if not uri or not uri.startswith("s3://"):
            return None
        bucket, _, key = uri[5:].partition("/")
        return self.s3_key(key) if bucket == self.settings.s3.bucket and key else None

    def report(self, run_id: str, dag_id: str = RETRAIN_DAG_ID) -> str:
        return self.app(f"/report/{quote(dag_id, safe='')}/{quote(run_id, safe='')}")

    def airflow_run(self, run_id: str, dag_id: str = RETRAIN_DAG_ID) -> str:
        return f"{self.airflow}/dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}"

    def airflow_dag(self, dag_id: str) -> str:
        return f"{self.airflow}/dags/{quote(dag_id, safe='')}"


def _a(href: str | None, text: str, *, top: bool = False, new_tab: bool = False) -> str:
    """A link; ``top``: an Airflow page (replaces the whole UI), ``new_tab``: a report in a new tab.

    Airflow sandboxes the plugin iframe without allow-top-navigation/allow-popups, so plain
    ``target`` links do nothing there: static/retrain.js follows ``data-nav`` links through the
    parent document (same origin). Opened outside the iframe, the ``target`` works by itself."""
    if not href:
        return _e(text)
    target = (
        ' target="_top" data-nav="top"'
        if top
        else (' target="_blank" rel="noopener" data-nav="tab"' if new_tab else "")
    )
    return f'<a href="{_e(href)}"{target}>{_e(text)}</a>'


def page(title: str, body: str, links: Links) -> str:
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<title>{_e(title)}</title><link rel="stylesheet" href="{_e(links.static("retrain.css"))}">'
        f'</head><body><main>{body}</main><script src="{_e(links.static("retrain.js"))}"></script>'
        "</body></html>"
    )


def _actor_link(actor: str, links: Links) -> str:
    dag_id, _, run_id = (actor or "").partition("/")
    if dag_id in (RETRAIN_DAG_ID, ROLLBACK_DAG_ID) and run_id:
        return _a(links.airflow_run(run_id, dag_id), actor, top=True)
    return _e(actor or "—")


def _decision_cell(run: RunRecord) -> str:
    if not run.summary:
        return '<span class="badge warn">no decision</span> <span class="muted">stopped before promote</span>'
    d = run.summary.get("decision") or {}
    if d.get("dry_run"):
        badge = '<span class="badge">dry run</span>'
    elif d.get("promote"):
        badge = '<span class="badge ok">promoted</span>'
    else:
        badge = '<span class="badge warn">kept</span>'
    return f"{badge} {_e(d.get('reason', ''))}"


def _docs_links(intake: dict[str, Any] | None, links: Links) -> str:
    items = []
    for o in (intake or {}).get("objects") or []:
        if not isinstance(o, dict):
            continue
        href = links.s3_uri(o.get("docs_uri"))
        name = str(o.get("key", "?")).rsplit("/", 1)[-1]
        items.append(
            _a(href, name, new_tab=True) if href else f'{_e(name)} <span class="muted">(no docs)</span>'
        )
    return "<br>".join(items) or "—"


def render_overview(
    *,
    runs: list[RunRecord],
    registry: dict[str, Any] | None,
    registry_error: str,
    links: Links,
    message: str = "",
    error: str = "",
) -> str:
    desc = (registry or {}).get("describe") or {}
    history = (registry or {}).get("history") or []
    versions = desc.get("versions") or []
    by_version = {str(v["version"]): v for v in versions}
    champion = desc.get("champion")
    parts = [
        f'<h1>NER retraining</h1><p class="muted">Model <b>{_e(desc.get("name", "—"))}</b> · registry '
        f"<code>{_e(mask_uri(desc.get('tracking_uri', '')))}</code> · {_a(links.airflow_dag(RETRAIN_DAG_ID), RETRAIN_DAG_ID, top=True)}"
        "</p>"
    ]
    if message:
        parts.append(f'<div class="banner ok">{message}</div>')
    if error:
        parts.append(f'<div class="banner err">{_e(error)}</div>')
    if registry_error:
        parts.append(f'<div class="banner err">MLflow registry unavailable: {_e(registry_error)}</div>')

    # cards
    latest = runs[-1] if runs else None
    champ_card = (
        f'<div class="value" id="champion-version">v{_e(champion["version"])}</div>'
        f'<div>micro F1 <b id="champion-f1">{_f(champion.get("micro_f1"))}</b></div>'
        f'<div class="muted">dataset {_e(champion.get("dataset_version") or "—")}</div>'
        if champion
        else '<div class="value">none</div><div class="muted">no champion yet</div>'
    )
    latest_card = (
        f'<div class="value small">{_e(run_note(latest.summary) if latest.summary else "no decision")}</div>'
        f"<div>{_a(links.report(latest.run_id), latest.run_id)}</div>"
        if latest
        else '<div class="value small">no run yet</div>'
    )
    parts.append(
        f'<section class="cards"><div class="card"><h3>Champion</h3>{champ_card}</div>'
        f'<div class="card"><h3>Latest run</h3>{latest_card}</div>'
        f'<div class="card"><h3>Registered versions</h3><div class="value">{len(versions)}</div>'
        f'<div class="muted">{len(runs)} run report(s) shown</div></div></section>'
    )

    # champion history
    rows = []
    for ev in reversed(history):
        to_v = str(ev.get("to_version", ""))
        info = by_version.get(to_v, {})
        status = ev.get("status", "")
        flag = "" if status in ("", "FINISHED") else f' <span class="badge err">{_e(status.lower())}</span>'
        rows.append(
            f"<tr><td>{_when(ev.get('at'))}</td><td>{_e(ev.get('kind', ''))}{flag}</td>"
            f"<td>{('v' + _e(ev['from_version'])) if ev.get('from_version') else '—'} → <b>v{_e(to_v)}</b></td>"
            f'<td class="num">{_f(info.get("micro_f1"))}</td><td>{_e(ev.get("reason", ""))}</td>'
            f"<td>{_actor_link(ev.get('actor', ''), links)}</td></tr>"
        )
    parts.append(
        "<h2>Champion history</h2>"
        + (
            '<table id="champion-history"><thead><tr><th>when</th><th>change</th><th>version</th><th>micro F1</th>'
            f"<th>why</th><th>by</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
            if rows
            else '<p class="muted">The champion alias has never moved.</p>'
        )
    )

    # trend
    parts.append(f'<h2>F1 per label across runs</h2><div class="chart-box">{f1_trend_svg(runs)}</div>')

    # runs
    rows = []
    for r in reversed(runs):
        ic = r.intake_counts
        ev = (r.summary or {}).get("evaluation") or {}
        cand, champ = (ev.get("candidate") or {}).get("micro_f1"), (ev.get("champion") or {}).get("micro_f1")
        version = (r.summary or {}).get("registered_version")
        qhref = links.s3_uri((r.intake or {}).get("report_uri") or ic.get("report_uri"))
        rows.append(
            f'<tr><td>{_a(links.report(r.run_id), r.run_id)}<div class="muted">{_when(r.written)} · '
            f"{_a(links.airflow_run(r.run_id), 'Airflow run', top=True)}</div></td>"
            f'<td class="num">{_e(ic.get("read", "—"))}</td><td class="num">{_e(ic.get("accepted", "—"))}</td>'
            f'<td class="num">{_e(ic.get("quarantined", "—"))}'
            f"{(' · ' + _a(qhref, 'report', new_tab=True)) if qhref else ''}</td>"
            f"<td>{_docs_links(r.intake, links)}</td>"
            f'<td class="num">{_f(cand)}</td><td class="num">{_f(champ)}</td>'
            f"<td>{('v' + _e(version)) if version else '—'}</td><td>{_decision_cell(r)}</td></tr>"
        )
    parts.append(
        "<h2>Runs</h2>"
        + (
            '<table id="runs"><thead><tr><th>run</th><th>read</th><th>accepted</th><th>quarantined</th>'
            "<th>GX Data Docs</th><th>candidate F1</th><th>champion F1</th><th>version</th><th>decision</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>"
            if rows
            else '<p class="muted">No run has left a report in S3 yet.</p>'
        )
    )

    # versions
    rows = []
    for v in reversed(versions):
        tags = v.get("tags") or {}
        aliases = " ".join(f'<span class="badge ok">{_e(a)}</span>' for a in v.get("aliases") or [])
        run_id = v.get("airflow_run_id") or ""
        rows.append(
            f"<tr><td><b>v{_e(v['version'])}</b> {aliases}</td><td>{_when(v.get('created'))}</td>"
            f'<td class="num">{_f(v.get("micro_f1"))}</td><td>{_e(tags.get("decision", "—"))}</td>'
            f"<td>{_e(tags.get('decision_reason', ''))}</td><td>{_e(v.get('dataset_version') or '—')}</td>"
            f"<td>{_a(links.report(run_id), run_id) if run_id else '—'}</td></tr>"
        )
    if rows:
        parts.append(
            '<h2>Registered versions</h2><table id="versions"><thead><tr><th>version</th><th>registered</th>'
            "<th>micro F1</th><th>decision</th><th>reason</th><th>dataset</th><th>run</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>"
        )

    # rollback
    choices = [
        v for v in versions if v.get("adapter_uri") and (not champion or v["version"] != champion["version"])
    ]
    if versions:
        opts = "".join(
            f'<option value="{_e(v["version"])}">v{_e(v["version"])} — micro F1 {_f(v.get("micro_f1"))}'
            f"</option>"
            for v in reversed(choices)
        )
        prev = desc.get("previous")
        if prev and (not champion or prev["version"] != champion["version"]):
            opts = f'<option value="previous">previous (v{_e(prev["version"])})</option>' + opts
        parts.append(
            f'<h2>Roll back the champion</h2><form id="rollback" method="post" action="{_e(links.app("/rollback"))}" '
            f'data-champion="{_e(champion["version"] if champion else "")}">'
            f'<input type="hidden" name="model" value="{_e(desc.get("name", ""))}">'
            f'<label>Target version <select name="target" required>{opts}</select></label> '
            '<label>Reason <input name="reason" required minlength="3" maxlength="500" size="50" '
            'placeholder="why (kept in the alias history)"></label> '
            '<label><input type="checkbox" name="confirm" value="yes" required> make it the champion</label> '
            f'<button type="submit"{"" if choices else " disabled"}>Trigger {ROLLBACK_DAG_ID}</button>'
            f'<p class="muted">Triggers the {_a(links.airflow_dag(ROLLBACK_DAG_ID), ROLLBACK_DAG_ID, top=True)} DAG '
            "(requires permission to trigger it); the alias moves when its run completes.</p></form>"
        )
    return page("Retraining", "".join(parts), links)


def render_run_report(
    *, run: RunRecord | None, run_id: str, validation_pages: dict[str, list[str]], links: Links
) -> str:
    parts = [
        f'<h1>Retrain report <span class="muted">{_e(run_id)}</span></h1>'
        f"<p>{_a(links.app('/'), '← all runs')} · {_a(links.airflow_run(run_id), 'Airflow run', top=True)}</p>"
    ]
    if run is None:
        parts.append(
            '<div class="banner">No report in S3 for this run: it ingested nothing (skipped: no new data) '
            "or has not reached validation yet.</div>"
        )
        return page(f"Retrain report {run_id}", "".join(parts), links)
    s = run.summary or {}
    parts.append(
        f'<div class="banner {"ok" if (s.get("decision") or {}).get("promote") else ""}" id="run-note">'
        f"{_e(run_note(s) if s else 'no decision: the run stopped before promote (or is still running)')}"
        "</div>"
    )

    # intake
    ic = run.intake_counts
    qhref = links.s3_uri(ic.get("report_uri"))
    parts.append(
        f"<h2>Intake</h2><p>Read <b>{_e(ic.get('read', '—'))}</b> records: accepted "
        f'<b id="accepted">{_e(ic.get("accepted", "—"))}</b>, quarantined <b id="quarantined">'
        f"{_e(ic.get('quarantined', '—'))}</b>"
        f"{' · ' + _a(qhref, 'quarantine report', new_tab=True) if qhref else ''}.</p>"
    )
    rows = []
    for o in (run.intake or {}).get("objects") or []:
        if not isinstance(o, dict):
            continue
        reasons = ", ".join(f"{_e(k)}: {_e(v)}" for k, v in sorted((o.get("reasons") or {}).items())) or "—"
        warnings = "".join(f"<li>{_e(w)}</li>" for w in o.get("warnings") or [])
        docs = (
            [_a(links.s3_uri(o.get("docs_uri")), "index", new_tab=True)]
            if links.s3_uri(o.get("docs_uri"))
            else []
        )
        docs += [
            _a(links.s3_key(k), k.rsplit("/", 1)[-1].removesuffix(".html"), new_tab=True)
            for k in validation_pages.get(str(o.get("docs_uri", "")), [])
        ]
        qlink = links.s3_uri(o.get("quarantine_uri"))
        whole = (
            ' <span class="badge err">whole batch quarantined</span>' if o.get("batch_quarantined") else ""
        )
        rows.append(
            f'<tr><td><code>{_e(o.get("key"))}</code> <span class="muted">{_e(o.get("change", ""))}</span></td>'
            f'<td class="num">{_e(o.get("read"))}</td><td class="num">{_e(o.get("accepted"))}</td>'
            f'<td class="num">{_e(o.get("quarantined"))}{whole}'
            f"{(' · ' + _a(qlink, 'records', new_tab=True)) if qlink and o.get('quarantined') else ''}</td>"
            f"<td>{reasons}{f'<ul class=warnings>{warnings}</ul>' if warnings else ''}</td>"
            f"<td>{' · '.join(docs) or '—'}</td></tr>"
        )
    if rows:
        parts.append(
            '<table id="intake"><thead><tr><th>object</th><th>read</th><th>accepted</th><th>quarantined</th>'
            f"<th>quarantine reasons / warnings</th><th>GX Data Docs</th></tr></thead><tbody>{''.join(rows)}"
            "</tbody></table>"
        )
    if not s:
        return page(f"Retrain report {run_id}", "".join(parts), links)

    # dataset + training
    ds, tr = s.get("dataset") or {}, s.get("train") or {}
    run_key = run.folder
    runs_prefix = links.settings.s3.runs_prefix.rstrip("/")
    parts.append(
        f"<h2>Dataset</h2><p>Version <code>{_e(ds.get('version', '—'))}</code>: train {_e(ds.get('train', '—'))}, "
        f"validation {_e(ds.get('validation', '—'))}, golden {_e(ds.get('golden', '—'))} "
        f"(hash <code>{_e(str(ds.get('golden_hash', ''))[:16])}</code>).</p>"
    )
    parts.append(
        f'<h2>Training</h2><div class="chart-box">{loss_curve_svg(tr.get("loss_curve"))}</div>'
        f"<p>Final loss <b>{_f(tr.get('train_loss'))}</b> · steps {_e(tr.get('steps', '—'))} · "
        f"epochs {_e(tr.get('epochs', '—'))} · runtime {_f(tr.get('runtime_s'), 1)} s · "
        f"{_a(links.s3_key(f'{runs_prefix}/{run_key}/train/training_loss.png'), 'training_loss.png', new_tab=True)}"
        "</p>"
    )

    # evaluation
    ev = s.get("evaluation") or {}
    cand, champ = ev.get("candidate") or {}, ev.get("champion") or {}
    cname = s.get("champion_name") or champ.get("name") or "champion"
    metric_rows = "".join(
        f'<tr><td>{label}</td><td class="num">{_f(champ.get(k))}</td><td class="num">{_f(cand.get(k))}</td>'
        f'<td class="num">{_delta(cand.get(k), champ.get(k))}</td></tr>'
        for k, label in (
            ("micro_f1", "micro F1"),
            ("precision", "precision"),
            ("recall", "recall"),
            ("macro_f1", "macro F1"),
            ("cluener_score", "CLUENER score"),
            ("parse_failure_rate", "parse-failure rate"),
        )
    )
    labels = sorted(set(cand.get("per_label_f1") or {}) | set(champ.get("per_label_f1") or {}))
    label_rows = "".join(
        f'<tr><td>{_e(lab)}</td><td class="num">{_f((champ.get("per_label_f1") or {}).get(lab))}</td>'
        f'<td class="num">{_f((cand.get("per_label_f1") or {}).get(lab))}</td>'
        f'<td class="num">{_delta((cand.get("per_label_f1") or {}).get(lab), (champ.get("per_label_f1") or {}).get(lab))}'
        f"</td><td>{_bars((champ.get('per_label_f1') or {}).get(lab), (cand.get('per_label_f1') or {}).get(lab))}</td></tr>"
        for lab in labels
    )
    head = f"<tr><th></th><th>{_e(cname)}</th><th>candidate</th><th>Δ</th>"
    parts.append(
        f'<h2>Evaluation on the golden set</h2><table id="metrics"><thead>{head}</tr></thead>'
        f"<tbody>{metric_rows}</tbody></table>"
        f'<h3>Per label F1</h3><table id="per-label"><thead>{head}<th></th></tr></thead>'
        f"<tbody>{label_rows}</tbody></table>"
        f"<p>{_a(links.s3_key(f'{runs_prefix}/{run_key}/eval/report.html'), 'full evaluation report', new_tab=True)}</p>"
    )

    # decision
    d = s.get("decision") or {}
    passed, failed = '<span class="badge ok">pass</span>', '<span class="badge err">FAIL</span>'
    rules = "".join(
        f"<tr><td>{_e(r.get('rule'))}</td><td>{passed if r.get('passed') else failed}</td>"
        f"<td>{_e(r.get('detail'))}</td></tr>"
        for r in d.get("rules") or []
        if isinstance(r, dict)
    )
    reg = s.get("registry") or {}
    parts.append(
        f'<h2>Decision</h2><p id="decision">{_decision_cell(run)}</p>'
        f'<table id="rules"><thead><tr><th>rule</th><th>result</th><th>detail</th></tr></thead>'
        f"<tbody>{rules}</tbody></table>"
        f"<p>Registered version: <b>{('v' + _e(s['registered_version'])) if s.get('registered_version') else 'none'}</b>"
        f" · champion after this run: <b>{('v' + _e(reg['champion_version'])) if reg.get('champion_version') else 'none'}</b>"
        f" · model <code>{_e(reg.get('model', ''))}</code></p>"
    )
    return page(f"Retrain report {run_id}", "".join(parts), links)


def _bars(champ: Any, cand: Any) -> str:
    a, b = _num(champ), _num(cand)
    out = '<div class="bars">'
    for v, cls in ((a, "champ"), (b, "cand")):
        w = 0 if v is None else max(0.0, min(1.0, v)) * 100
        out += f'<div class="bar {cls}" style="width:{w:.1f}%"></div>'
    return out + "</div>"


def render_rollback_report(*, run_id: str, events: list[dict[str, Any]], links: Links) -> str:
    parts = [
        f'<h1>Rollback <span class="muted">{_e(run_id)}</span></h1>'
        f"<p>{_a(links.app('/'), '← Retraining')}</p>"
    ]
    mine = [ev for ev in events if ev.get("actor") == f"{ROLLBACK_DAG_ID}/{run_id}"]
    if not mine:
        parts.append(
            '<div class="banner">This run has not moved the champion (yet): no alias change is recorded '
            "with it as the actor.</div>"
        )
    for ev in mine:
        parts.append(
            f'<div class="banner ok" id="run-note">champion v{_e(ev.get("from_version") or "—")} → '
            f"v{_e(ev.get('to_version'))} at {_when(ev.get('at'))}: {_e(ev.get('reason'))}</div>"
        )
    return page(f"Rollback {run_id}", "".join(parts), links)


# --------------------------------------------------------------------------- the app
_STORE_CACHE: dict[tuple[str, str], tuple[float, Any]] = {}
_STORE_LOCK = threading.Lock()
STORE_TTL_S = 300.0


def cached_object_store(settings: Any) -> Any:
    """The bucket through the Airflow connection, reused for a few minutes (one boto3 client)."""
    from retrain_airflow.s3 import object_store

    key = (settings.airflow.aws_conn_id, settings.s3.bucket)
    now = time.monotonic()
    with _STORE_LOCK:
        hit = _STORE_CACHE.get(key)
        if hit and now - hit[0] < STORE_TTL_S:
            return hit[1]
    store = object_store(settings)
    with _STORE_LOCK:
        _STORE_CACHE[key] = (now, store)
    return store


MODEL_NAME = re.compile(r"^[A-Za-z0-9._-]{1,200}$")  # what retrain.registry.model_name produces


def _registry_for(settings: Any, model: str | None = None) -> Any:
    """The registry of conf ``train.base_model``, or of the registered model ``model`` (another base
    model, from the ``?model=`` of a page)."""
    from retrain.registry import Registry

    if model and not MODEL_NAME.match(model):
        raise ValueError(f"model: {model!r} is not a registered model name")

    reg = Registry.from_settings(settings, settings.train.base_model)
    if model and model != reg.name:
        reg = Registry(reg.tracking_uri, model, reg.artifact_location)
    return reg


def _chunks(body: Any, size: int = 65536) -> Iterator[bytes]:
    try:
        yield from body.iter_chunks(size)
    finally:
        body.close()


@dataclass
class AuthDeps:
    """The dependencies that guard the routes (kept so a unit test can tell which one guards what)."""

    user: Callable[..., Any]  # any logged-in user (static assets)
    read: Callable[..., Any]  # may read ner_retrain DAG runs
    read_path_dag: Callable[..., Any]  # may read runs of the DAG in the path (the DAG-run tab)
    trigger_rollback: Callable[..., Any]  # may trigger ner_rollback


def create_app(settings_loader: Callable[[], Any] | None = None) -> Any:
    """The FastAPI app of the Retraining UI (mount it at ``URL_PREFIX``)."""
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
    from airflow.api_fastapi.core_api.security import (
        GetUserDep,
        get_user,
        requires_access_dag,
        requires_authenticated,
    )
    from fastapi import Depends, FastAPI, Form, HTTPException, Request
    from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse

    from retrain.config import load_settings

    load = settings_loader or load_settings
    auth = AuthDeps(
        user=requires_authenticated(),
        read=requires_access_dag("GET", DagAccessEntity.RUN, param_dag_id=RETRAIN_DAG_ID),
        read_path_dag=requires_access_dag("GET", DagAccessEntity.RUN),
        trigger_rollback=requires_access_dag("POST", DagAccessEntity.RUN, param_dag_id=ROLLBACK_DAG_ID),
    )
    # No /docs, /redoc or /openapi.json: every route of this app must be one of ours, behind a login.
    app = FastAPI(title="Retraining UI", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.auth = auth
    app.state.get_user = get_user

    def links(request: Request, settings: Any) -> Links:
        return Links(request.scope.get("root_path", ""), settings)

    def html_response(text: str, status_code: int = 200) -> HTMLResponse:
        return HTMLResponse(
            text,
            status_code=status_code,
            headers={
                "Content-Security-Policy": PAGE_CSP,
                "Cache-Control": "no-store",
                "X-Content-Type-Options": "nosniff",
            },
        )

    def check_model(model: str) -> None:
        if model and not MODEL_NAME.match(model):
            raise HTTPException(400, f"model: {model[:100]!r} is not a registered model name")

    def overview_data(
        settings: Any, model: str | None
    ) -> tuple[list[RunRecord], dict[str, Any] | None, str, str]:
        try:
            runs, s3_error = load_runs(cached_object_store(settings), settings.s3.runs_prefix), ""
        except Exception as exc:  # the page still shows the registry when S3 is down
            log.exception("reading run reports from S3 failed")
            runs, s3_error = [], f"{type(exc).__name__}: {exc}"
        try:
            reg = _registry_for(settings, model)
            registry: dict[str, Any] | None = {"describe": reg.describe(), "history": reg.history()}
            error = ""
        except Exception as exc:  # the page still shows the S3 side when MLflow is down
            log.exception("reading the MLflow registry failed")
            registry, error = None, f"{type(exc).__name__}: {exc}"
        return runs, registry, error, s3_error

    @app.get("/", response_class=HTMLResponse, name="overview", dependencies=[Depends(auth.read)])
    def overview(request: Request, triggered: str = "", paused: int = 0, model: str = "") -> Response:
        check_model(model)
        settings = load()
        lk = links(request, settings)
        runs, registry, reg_error, s3_error = overview_data(settings, model or None)
        message = ""
        if triggered:
            message = (
                f"Triggered {_a(lk.airflow_run(triggered, ROLLBACK_DAG_ID), triggered, top=True)} of "
                f"{ROLLBACK_DAG_ID}; the champion moves when it completes."
            )
            if paused:
                message += f" <b>{ROLLBACK_DAG_ID} is paused</b>: unpause it for the run to start."
        return html_response(
            render_overview(
                runs=runs,
                registry=registry,
                registry_error=reg_error,
                links=lk,
                message=message,
                error=f"S3 unavailable: {s3_error}" if s3_error else "",
            )
        )

    @app.get("/api/overview", name="overview_json", dependencies=[Depends(auth.read)])
    def overview_json(model: str = "") -> Response:
        check_model(model)
        settings = load()
        runs, registry, reg_error, s3_error = overview_data(settings, model or None)
        return JSONResponse(
            {
                "runs": [
                    {
                        "run_id": r.run_id,
                        "folder": r.folder,
                        "written": r.written.isoformat() if r.written else None,
                        "note": run_note(r.summary) if r.summary else None,
                        "intake": r.intake_counts,
                        "summary": r.summary,
                    }
                    for r in runs
                ],
                "registry": registry,
                "registry_error": reg_error,
                "s3_error": s3_error,
            }
        )

    @app.get(
        "/report/{dag_id}/{run_id:path}",
        response_class=HTMLResponse,
        name="run_report",
        dependencies=[Depends(auth.read_path_dag)],
    )
    def run_report(request: Request, dag_id: str, run_id: str) -> Response:
        from retrain.ingest import safe_run_id

        settings = load()
        lk = links(request, settings)
        if dag_id == ROLLBACK_DAG_ID:
            events = _registry_for(settings).history()
            return html_response(render_rollback_report(run_id=run_id, events=events, links=lk))
        if dag_id != RETRAIN_DAG_ID:
            return html_response(
                page(
                    "Retrain report",
                    f'<p class="muted">The retrain report covers '
                    f"{RETRAIN_DAG_ID} runs; {_e(dag_id)} is another DAG.</p>",
                    lk,
                )
            )
        store = cached_object_store(settings)
        run = load_run(store, settings.s3.runs_prefix, safe_run_id(run_id))
        pages: dict[str, list[str]] = {}
        for o in (run.intake or {}).get("objects") or []:
            docs = o.get("docs_uri") if isinstance(o, dict) else None
            if docs and docs.startswith(f"s3://{settings.s3.bucket}/"):
                base = docs[len(f"s3://{settings.s3.bucket}/") :].rsplit("/", 1)[0]
                pages[docs] = [k for k in list_keys(store, base + "/validations/") if k.endswith(".html")]
        return html_response(
            render_run_report(
                run=run if (run.summary or run.intake) else None,
                run_id=run_id,
                validation_pages=pages,
                links=lk,
            )
        )

    @app.get("/s3/{key:path}", name="s3_object", dependencies=[Depends(auth.read)])
    def s3_object(key: str) -> Response:
        from botocore.exceptions import ClientError

        settings = load()
        try:
            check_report_key(
                key, (settings.s3.reports_prefix, settings.s3.quarantine_prefix, settings.s3.runs_prefix)
            )
        except UnsafeKey as exc:
            raise HTTPException(400, str(exc)) from None
        except PermissionError as exc:
            raise HTTPException(403, str(exc)) from None
        store = cached_object_store(settings)
        try:
            obj = store.client.get_object(Bucket=store.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                raise HTTPException(404, f"no object {key}") from None
            raise
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
        return StreamingResponse(_chunks(obj["Body"]), media_type=ctype, headers=headers)

    @app.get("/static/{name}", name="static", dependencies=[Depends(auth.user)])
    def static(name: str) -> Response:
        if name not in STATIC_FILES:
            raise HTTPException(404, "no such asset")
        return Response(
            (STATIC_DIR / name).read_bytes(),
            media_type=STATIC_FILES[name],
            headers={"Cache-Control": "private, max-age=300", "X-Content-Type-Options": "nosniff"},
        )

    @app.post("/rollback", name="rollback", dependencies=[Depends(auth.trigger_rollback)])
    def rollback(
        request: Request,
        user: GetUserDep,
        target: str = Form(""),
        reason: str = Form(""),
        model: str = Form(""),
    ) -> Response:
        try:
            return do_rollback(request, user, target, reason, model)
        except HTTPException as exc:  # a person posted the form: answer with a page, same status
            lk = links(request, load())
            return html_response(
                page(
                    "Rollback refused",
                    f'<h1>Rollback refused</h1><div class="banner err" '
                    f'id="error">{_e(exc.detail)}</div><p>{_a(lk.app("/"), "← Retraining")}</p>',
                    lk,
                ),
                exc.status_code,
            )

    def do_rollback(request: Request, user: Any, target: str, reason: str, model: str) -> Response:
        _same_origin_or_403(request)
        check_model(model)
        settings = load()
        target, reason = target.strip(), " ".join(reason.split())
        if len(reason) < 3 or len(reason) > 500:
            raise HTTPException(400, "reason: 3 to 500 characters, please (it is kept in the alias history)")
        reg = _registry_for(settings, model or None)
        versions = {v["version"]: v for v in reg.versions()}
        champion = reg.champion()
        if target == "previous":
            prev = reg.get_alias("previous")
            if prev is None:
                raise HTTPException(400, f"{reg.name} has no 'previous' version to roll back to")
            resolved = prev["version"]
        elif target in versions:
            resolved = target
        else:
            raise HTTPException(
                400,
                f"target: {target!r} is not a version of {reg.name} "
                f"(have {', '.join(sorted(versions, key=int)) or 'none'})",
            )
        if not versions.get(resolved, {}).get("adapter_uri"):
            raise HTTPException(400, f"v{resolved} has no adapter_uri tag: it cannot become champion")
        if champion and champion["version"] == resolved:
            raise HTTPException(400, f"v{resolved} is already the champion")
        base_model = None
        if reg.name != _registry_for(settings).name:
            base_model = versions[resolved]["tags"].get("base_model") or None
            if base_model is None:
                raise HTTPException(
                    400,
                    f"{reg.name} v{resolved} has no base_model tag: roll back from the "
                    f"{ROLLBACK_DAG_ID} trigger form instead",
                )
        run_id, paused = _trigger_rollback(
            target=target, reason=reason, base_model=base_model, user_name=user.get_name(), resolved=resolved
        )
        url = request.url_for("overview").include_query_params(triggered=run_id, paused=int(paused))
        if model:
            url = url.include_query_params(model=model)
        return RedirectResponse(url.path + "?" + url.query, status_code=303)

    return app


def _same_origin_or_403(request: Any) -> None:
    """Refuse a cross-site form post (the session cookie is SameSite=Lax already; this is the second lock)."""
    from fastapi import HTTPException

    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        raise HTTPException(403, f"cross-site request refused (Sec-Fetch-Site: {site})")
    origin = request.headers.get("origin")
    if origin and origin != "null":
        host = request.headers.get("x-forwarded-host") or request.headers.get("host", "")
        if urlsplit(origin).netloc != host.split(",")[0].strip():
            raise HTTPException(403, f"cross-origin request refused (Origin {origin})")
    elif origin == "null":
        raise HTTPException(403, "request from an opaque origin refused")


def _trigger_rollback(
    *, target: str, reason: str, base_model: str | None, user_name: str, resolved: str
) -> tuple[str, bool]:
    """Trigger ``ner_rollback`` in-process with Airflow's own trigger function (the DAG's params are
    validated against its Param schema there); returns (run id, DAG paused?)."""
    from airflow.api.common.trigger_dag import trigger_dag
    from airflow.exceptions import DagNotFound, DagRunAlreadyExists, ParamValidationError
    from airflow.models.dag import DagModel
    from airflow.utils.types import DagRunTriggeredByType
    from fastapi import HTTPException

    conf = {"target": target, "reason": reason, "base_model": base_model}
    note = _one_line(
        f"rollback to v{resolved} requested by {user_name} on the Retraining page: {reason}", 900
    )
    try:
        dag_run = trigger_dag(
            ROLLBACK_DAG_ID,
            triggered_by=DagRunTriggeredByType.UI,
            triggering_user_name=user_name,
            conf=conf,
            note=note,
        )
    except DagNotFound as exc:
        raise HTTPException(
            409, f"{ROLLBACK_DAG_ID} is not known to Airflow yet (not parsed?): {exc}"
        ) from None
    except (ParamValidationError, ValueError, DagRunAlreadyExists) as exc:
        raise HTTPException(400, f"{ROLLBACK_DAG_ID} refused the trigger: {exc}") from None
    if dag_run is None:
        raise HTTPException(500, f"{ROLLBACK_DAG_ID} was not triggered")
    model = DagModel.get_current(ROLLBACK_DAG_ID)
    log.info(
        "%s triggered %s run %s: target %s (v%s), reason %r",
        user_name,
        ROLLBACK_DAG_ID,
        dag_run.run_id,
        target,
        resolved,
        reason,
    )
    return str(dag_run.run_id), bool(model and model.is_paused)
