"""The pages' HTML: Jinja2 templates (``templates/``) with autoescaping on, and what they are given.

Everything a template prints is escaped (run ids, annotators' file names, gate reasons, registry tags
are all untrusted text); markup comes only from the templates and their macros. The functions here
shape page data (`page_data`) into the rows the templates draw; they format nothing as HTML.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any, NamedTuple

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from retrain.redact import mask_uri
from retrain_airflow.run_notes import as_number, run_note
from retrain_airflow.ui import charts
from retrain_airflow.ui.links import RETRAIN_DAG_ID, ROLLBACK_DAG_ID, Links
from retrain_airflow.ui.page_data import Overview, RunRecord, exam_label

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
METRICS = (
    ("micro_f1", "micro F1 (strict)"),
    ("lenient_micro_f1", "micro F1 (lenient: salvaged entities count)"),
    ("precision", "precision"),
    ("recall", "recall"),
    ("macro_f1", "macro F1"),
    ("cluener_score", "CLUENER score"),
    ("parse_failure_rate", "parse-failure rate"),
)


class Moment(NamedTuple):
    iso: str  # as written (time zone UTC when none was given)
    text: str  # "YYYY-MM-DD HH:MM UTC"


def figure(value: Any, digits: int = 4) -> str:
    """A metric with ``digits`` decimals, "—" when missing or not a number."""
    v = as_number(value)
    return "—" if v is None else f"{v:.{digits}f}"


def signed(value: Any, digits: int = 4) -> str:
    """A difference with its sign (``+0.0123``), "—" when missing or not a number."""
    v = as_number(value)
    return "—" if v is None else f"{v:+.{digits}f}"


def percent(value: Any) -> str:
    """A share as a whole percentage (``95%``), "—" when missing."""
    v = as_number(value)
    return "—" if v is None else f"{v:.0%}"


def delta(a: Any, b: Any) -> tuple[str, str] | None:
    """(CSS class up/down/flat, signed difference a - b), None when either is missing."""
    va, vb = as_number(a), as_number(b)
    if va is None or vb is None:
        return None
    d = va - vb
    return ("up" if d > 1e-12 else ("down" if d < -1e-12 else "flat")), f"{d:+.4f}"


def bar_width(value: Any) -> str:
    """A 0..1 score as a bar width in percent (clamped; 0 when missing)."""
    v = as_number(value)
    return f"{0 if v is None else max(0.0, min(1.0, v)) * 100:.1f}"


def moment(value: Any) -> Moment | str:
    """A timestamp (datetime, epoch milliseconds or ISO text) in UTC; "—" when missing, the text as
    given when it is not a timestamp."""
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
            return str(value)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return Moment(dt.isoformat(), dt.astimezone(UTC).strftime("%Y-%m-%d %H:%M") + " UTC")


def _blank_none(value: Any) -> Any:
    return "" if value is None else value


@cache
def environment() -> Environment:
    """The templates' environment: autoescape on for every template, undefined names are errors."""
    env = Environment(
        loader=FileSystemLoader(TEMPLATES_DIR),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        finalize=_blank_none,
    )
    env.filters["figure"] = figure
    env.filters["signed"] = signed
    env.filters["percent"] = percent
    env.globals.update(
        RETRAIN_DAG_ID=RETRAIN_DAG_ID,
        ROLLBACK_DAG_ID=ROLLBACK_DAG_ID,
        delta=delta,
        exam_label=exam_label,
        bar_width=bar_width,
        moment=moment,
        run_note=run_note,
    )
    return env


def render(template: str, links: Links, **context: Any) -> str:
    """Render ``templates/<template>`` with ``links`` and ``context``."""
    return environment().get_template(template).render(links=links, **context)


# --------------------------------------------------------------------------- the Retraining page
def render_overview(overview: Overview, links: Links, *, triggered: str = "", paused: bool = False) -> str:
    """The Retraining page: champion, its history, the F1 trend, the runs, the versions, the rollback
    form. ``triggered``: the ``ner_rollback`` run the form just started (``paused``: its DAG is paused)."""
    desc = (overview.registry or {}).get("describe") or {}
    versions = desc.get("versions") or []
    champion = desc.get("champion")
    choices = [
        v for v in versions if v.get("adapter_uri") and (not champion or v["version"] != champion["version"])
    ]
    previous = desc.get("previous")
    if previous and champion and previous["version"] == champion["version"]:
        previous = None
    return render(
        "overview.html",
        links,
        overview=overview,
        desc=desc,
        tracking_uri=mask_uri(desc.get("tracking_uri", "")),
        champion=champion,
        versions=versions,
        history=_history_rows(overview, versions),
        trend=charts.f1_trend(overview.runs),
        runs=[_run_row(r, links) for r in reversed(overview.runs)],
        rollback_choices=list(reversed(choices)),
        rollback_previous=previous,
        triggered=triggered,
        paused=paused,
    )


def _history_rows(overview: Overview, versions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The alias history, newest first, with each target version's micro F1 and the actor's DAG run."""
    by_version = {str(v["version"]): v for v in versions}
    rows = []
    for ev in reversed((overview.registry or {}).get("history") or []):
        to_v = str(ev.get("to_version", ""))
        status = ev.get("status", "")
        actor = ev.get("actor", "") or ""
        dag_id, _, run_id = actor.partition("/")
        rows.append(
            {
                "event": ev,
                "to_version": to_v,
                "micro_f1": by_version.get(to_v, {}).get("micro_f1"),
                "flag": "" if status in ("", "FINISHED") else str(status).lower(),
                "actor": actor,
                "actor_run": (run_id, dag_id)
                if dag_id in (RETRAIN_DAG_ID, ROLLBACK_DAG_ID) and run_id
                else None,
            }
        )
    return rows


def _run_row(run: RunRecord, links: Links) -> dict[str, Any]:
    """One row of the runs table: counts, links to its reports, F1 of both sides, the decision."""
    counts = run.intake_counts
    evaluation = (run.summary or {}).get("evaluation") or {}
    return {
        "run": run,
        "counts": counts,
        "quarantine_href": links.s3_uri((run.intake or {}).get("report_uri") or counts.get("report_uri")),
        "docs": _docs_links(run.intake, links),
        "candidate_f1": (evaluation.get("candidate") or {}).get("micro_f1"),
        "champion_f1": (evaluation.get("champion") or {}).get("micro_f1"),
        "version": (run.summary or {}).get("registered_version"),
        "exam": exam_label(run.exam),
    }


def _docs_links(intake: dict[str, Any] | None, links: Links) -> list[tuple[str | None, str]]:
    """(proxied GX Data Docs link or None, the batch's file name) per ingested object."""
    out = []
    for o in (intake or {}).get("objects") or []:
        if isinstance(o, dict):
            out.append((links.s3_uri(o.get("docs_uri")), str(o.get("key", "?")).rsplit("/", 1)[-1]))
    return out


# --------------------------------------------------------------------------- reports
def render_run_report(
    *, run: RunRecord | None, run_id: str, validation_pages: dict[str, list[str]], links: Links
) -> str:
    """The "Retrain report" tab of a ``ner_retrain`` run (``run`` None: it left no report)."""
    summary = (run.summary if run else None) or {}
    evaluation = summary.get("evaluation") or {}
    cand, champ = evaluation.get("candidate") or {}, evaluation.get("champion") or {}
    cand_labels, champ_labels = cand.get("per_label_f1") or {}, champ.get("per_label_f1") or {}
    return render(
        "run_report.html",
        links,
        run=run,
        run_id=run_id,
        summary=summary,
        objects=[_intake_row(o, validation_pages, links) for o in _objects(run)],
        loss=charts.loss_curve((summary.get("train") or {}).get("loss_curve")),
        candidate=cand,
        champion=champ,
        champion_name=summary.get("champion_name") or champ.get("name") or "champion",
        metrics=METRICS,
        labels=[
            (lab, champ_labels.get(lab), cand_labels.get(lab))
            for lab in sorted(set(cand_labels) | set(champ_labels))
        ],
        rules=[r for r in (summary.get("decision") or {}).get("rules") or [] if isinstance(r, dict)],
        significance=_significance(summary.get("decision")),
        exam=exam_label(run.exam if run else ""),
        readings=[
            (
                reading,
                (champ.get("parse_readings") or {}).get(reading),
                (cand.get("parse_readings") or {}).get(reading),
            )
            for reading in ("valid", "repaired", "salvaged", "unparseable")
        ],
    )


def _significance(decision: Any) -> dict[str, Any] | None:
    """The decision's bootstrap (difference, interval, settings, labels), None when it has none."""
    if not isinstance(decision, dict) or not isinstance(decision.get("significance"), dict):
        return None
    sig = decision["significance"]
    labels = [x for x in sig.get("labels") or [] if isinstance(x, dict)]
    return {**sig, "labels": labels}


def _objects(run: RunRecord | None) -> list[dict[str, Any]]:
    return [o for o in ((run.intake if run else None) or {}).get("objects") or [] if isinstance(o, dict)]


def _intake_row(o: dict[str, Any], validation_pages: dict[str, list[str]], links: Links) -> dict[str, Any]:
    """One ingested object: its counts, quarantine reasons, and links to its records and GX pages."""
    index = links.s3_uri(o.get("docs_uri"))
    docs = [(index, "index")] if index else []
    docs += [
        (links.s3_key(k), k.rsplit("/", 1)[-1].removesuffix(".html"))
        for k in validation_pages.get(str(o.get("docs_uri", "")), [])
    ]
    return {
        "object": o,
        "reasons": sorted((o.get("reasons") or {}).items()),
        "records_href": links.s3_uri(o.get("quarantine_uri")) if o.get("quarantined") else None,
        "docs": docs,
    }


def render_rollback_report(*, run_id: str, events: list[dict[str, Any]], links: Links) -> str:
    """The "Retrain report" tab of a ``ner_rollback`` run: the alias change it made, if any yet."""
    mine = [ev for ev in events if ev.get("actor") == f"{ROLLBACK_DAG_ID}/{run_id}"]
    return render("rollback_report.html", links, run_id=run_id, events=mine)


def render_other_dag(*, dag_id: str, links: Links) -> str:
    """The "Retrain report" tab of a DAG this UI does not report on."""
    return render("other_dag.html", links, dag_id=dag_id)


def render_rollback_refused(*, detail: Any, links: Links) -> str:
    """The answer to a rollback form the server refused (the reason, and a way back)."""
    return render("rollback_refused.html", links, detail=detail)
