"""Great Expectations validation of one parsed intake batch.

`validate_batch` puts the batch's records into two dataframes (sentences, spans), runs the
suites of ``conf/gx/ner_records_suite.yaml`` on them with a real (ephemeral) GX context, maps
every failing row back to its record through ``unexpected_index_list``, applies the anomaly
policies of the ``validation`` section, then judges the batch as a whole (minimum rows, share
of bad rows, label drift against history) with a third suite. It builds GX Data Docs into
``docs_dir``, self-contained (`retrain.datadocs`). A failing expectation never raises: it yields
rejections, warnings, or a quarantined batch, and every input record ends as exactly one accepted
Record or one Rejection.
"""

from __future__ import annotations

import copy
import dataclasses
import html
import json
import logging
import math
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from retrain.config import ConfigError, Settings
from retrain.records import Record, Rejection

log = logging.getLogger(__name__)

BATCH_QUARANTINED = "batch_quarantined"
DOCS_PARTIAL = "GX Data Docs show"  # how the batch warning about Data Docs of some chunks only begins


@dataclass
class BatchValidation:
    """What validation decided for one batch.

    ``accepted`` + ``rejected`` hold every input record exactly once. ``expectations`` has one
    entry per expectation run (name, success, unexpected_count, plus suite, severity, policy).
    ``label_counts`` are the accepted spans per label (the next batch's history), ``drift`` the
    total-variation distance to ``history_label_counts`` (None when not judged), ``anomalies``
    the counts of the real-data anomalies in the units of SOURCES.md, ``max_text_chars`` the
    sentence length limit applied and ``max_text_chars_how`` where it came from.
    """

    accepted: list[Record]
    rejected: list[Rejection]
    warnings: list[str]
    expectations: list[dict[str, Any]]
    docs_index: Path | None
    batch_quarantined: bool
    reason: str
    label_counts: dict[str, int] = field(default_factory=dict)
    drift: float | None = None
    anomalies: dict[str, int] = field(default_factory=dict)
    max_text_chars: int = 0
    max_text_chars_how: str = ""


# ---------------------------------------------------------------------------------------------
# Text length limit


def estimate_tokens(text: str) -> int:
    """A deliberately high token estimate for Qwen-family tokenizers: 1 per CJK character
    (U+2E80 and up: ideographs and full-width punctuation), 1 per 3 other characters."""
    cjk = sum(1 for ch in text if ord(ch) >= 0x2E80)
    return cjk + math.ceil((len(text) - cjk) / 3)


def max_text_chars(settings: Settings) -> tuple[int, str]:
    """(longest accepted sentence in characters, how it was obtained).

    ``validation.max_text_chars`` when set; else derived from the ``cutoff_len`` of the profile
    ``validation.length_profile`` (``settings.llamafactory_config(...)``; None = ``train.profile``),
    so that instruction + sentence + answer fit without LLaMA-Factory truncating them::

        (cutoff_len - estimate_tokens(instruction [+ system prompt]) - template_reserve_tokens)
            // (1 + output_tokens_per_char)
    """
    v = settings.validation
    if v.max_text_chars is not None:
        return v.max_text_chars, "validation.max_text_chars"
    profile = v.length_profile or settings.train.profile
    lf = settings.llamafactory_config(profile)
    cutoff = int(lf.get("cutoff_len") or 1024)
    instruction = settings.prompt.render_instruction() + (settings.dataset.system_prompt or "")
    instr_tokens = estimate_tokens(instruction)
    budget = cutoff - instr_tokens - v.template_reserve_tokens
    limit = math.floor(budget / (1 + v.output_tokens_per_char))
    how = (
        f"derived from profile {profile}: (cutoff_len {cutoff} - instruction ~{instr_tokens} tokens "
        "- template reserve "
        f"{v.template_reserve_tokens}) / (1 + {v.output_tokens_per_char} answer tokens per char) = {limit}"
    )
    if limit < 1:
        raise ConfigError(
            f"validation.max_text_chars: {how}; the profile's cutoff_len leaves no room for a sentence: "
            "set validation.max_text_chars explicitly"
        )
    return limit, how


# ---------------------------------------------------------------------------------------------
# Frames


SENTENCE_COLUMNS = ["record_idx", "text", "text_len"]
SPAN_COLUMNS = [
    "record_idx",
    "entity_idx",
    "start",
    "end",
    "label",
    "entity_text",
    "span_text",
    "text_len",
    "overlapping",
    "label_conflict",
    "unlabeled_repeats",
    "half_open_title",
]


def _count_unlabeled(text: str, needle: str, spans: list[tuple[int, int]]) -> int:
    """Occurrences of ``needle`` in ``text`` (non-overlapping scan) that touch no annotated span."""
    n, pos = 0, text.find(needle)
    while pos >= 0 and needle:
        end = pos + len(needle)
        if not any(pos < e and s < end for s, e in spans):
            n += 1
        pos = text.find(needle, end)
    return n


def _span_rows(idx: int, record: Record) -> list[dict[str, Any]]:
    text = record.text if isinstance(record.text, str) else None
    n = len(text) if text is not None else None
    ents = list(record.entities)
    valid = sorted(
        {
            (e.start, e.end)
            for e in ents
            if text is not None
            and isinstance(e.start, int)
            and isinstance(e.end, int)
            and 0 <= e.start < e.end <= len(text)
        }
    )
    valid_set = set(valid)
    labels_by_text: dict[str, set[Any]] = defaultdict(set)
    for e in ents:
        if isinstance(e.text, str):
            labels_by_text[e.text].add(e.label)
    first_of_text: dict[Any, int] = {}
    rows = []
    for j, e in enumerate(ents):
        ok = isinstance(e.start, int) and isinstance(e.end, int) and (e.start, e.end) in valid_set
        span_text = text[e.start : e.end] if ok and text is not None else None
        overlapping = ok and any(
            isinstance(o.start, int)
            and isinstance(o.end, int)
            and (o.start, o.end) in valid_set
            and (o.start, o.end, o.label) != (e.start, e.end, e.label)
            and o.start < e.end
            and e.start < o.end
            for k, o in enumerate(ents)
            if k != j
        )
        repeats = 0
        if isinstance(e.text, str) and e.text not in first_of_text:
            first_of_text[e.text] = j
            if text is not None:
                repeats = _count_unlabeled(text, e.text, valid)
        ent_text = e.text if isinstance(e.text, str) else None
        rows.append(
            {
                "record_idx": idx,
                "entity_idx": j,
                "start": e.start,
                "end": e.end,
                "label": e.label,
                "entity_text": ent_text,
                "span_text": span_text,
                "text_len": n,
                "overlapping": bool(overlapping),
                "label_conflict": ent_text is not None and len(labels_by_text[ent_text]) > 1,
                "unlabeled_repeats": repeats,
                "half_open_title": ent_text is not None and ent_text.count("《") != ent_text.count("》"),
            }
        )
    return rows


def build_frames(records: list[Record]) -> tuple[Any, Any]:
    """(sentences, spans) dataframes; the row index of ``sentences`` is the record's position."""
    import pandas as pd

    sentences = pd.DataFrame(
        [
            {
                "record_idx": i,
                "text": r.text if isinstance(r.text, str) else None,
                "text_len": len(r.text) if isinstance(r.text, str) else None,
            }
            for i, r in enumerate(records)
        ],
        columns=SENTENCE_COLUMNS,
    )
    spans = pd.DataFrame(
        [row for i, r in enumerate(records) for row in _span_rows(i, r)], columns=SPAN_COLUMNS
    )
    return sentences, spans


def anomaly_counts(spans: Any) -> dict[str, int]:
    """The real-data anomalies in SOURCES.md's units."""
    if spans.empty:
        return {
            "overlapping_spans": 0,
            "same_text_two_labels": 0,
            "unlabeled_repeat": 0,
            "half_open_title_mark": 0,
            "duplicate_span": 0,
        }
    dup = spans.duplicated(subset=["record_idx", "start", "end", "label"], keep="first")
    return {
        "overlapping_spans": int(spans.loc[spans["overlapping"], "record_idx"].nunique()),  # sentences
        "same_text_two_labels": int(
            spans.loc[spans["label_conflict"], ["record_idx", "entity_text"]].drop_duplicates().shape[0]
        ),  # (sentence, string) pairs
        "unlabeled_repeat": int(spans["unlabeled_repeats"].sum()),  # unlabeled occurrences
        "half_open_title_mark": int(spans["half_open_title"].sum()),  # entities
        "duplicate_span": int(dup.sum()),  # repeated spans beyond the first
    }


# ---------------------------------------------------------------------------------------------
# Suite


def load_suites(settings: Settings) -> list[dict[str, Any]]:
    """The suites of ``validation.suite`` (relative to conf/), checked for the frames they need."""
    path = Path(settings.conf_dir) / settings.validation.suite
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read the GX suite file: {exc}") from exc
    suites = data.get("suites") if isinstance(data, dict) else None
    if not isinstance(suites, list) or not suites:
        raise ConfigError(f"{path}: expected a 'suites' list")
    frames = {"sentences", "spans", "batch"}
    for s in suites:
        frame = (s.get("meta") or {}).get("frame")
        if frame not in frames:
            raise ConfigError(f"{path}: suite {s.get('name')!r}: meta.frame must be one of {sorted(frames)}")
        for e in s.get("expectations", []):
            policy = (e.get("meta") or {}).get("policy")
            if policy is not None and policy not in type(settings.validation).model_fields:
                raise ConfigError(
                    f"{path}: {e.get('type')}: meta.policy {policy!r} is not a key of the validation section"
                )
    return suites


def _gx_context(docs_dir: Path | None) -> Any:
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    sites = {}
    if docs_dir is not None:
        # A site of our own; the default ephemeral context's `local_site` would go to a temp dir.
        sites["retrain_site"] = {
            "class_name": "SiteBuilder",
            "show_how_to_buttons": False,
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        }
    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
        data_docs_sites=sites,
    )
    return gx.get_context(project_config=config)


def _safe_name(name: str) -> str:
    """A batch name usable as a GX name and a single path component of the Data Docs (no dots)."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name)[:100] or "batch"


def _add_definition(ctx: Any, suite_dict: dict[str, Any], batch_name: str) -> Any:
    """A validation definition for one suite: a dataframe asset named after the frame, in a pandas
    data source named after the batch. Made once per batch and run once per chunk."""
    import great_expectations as gx

    frame = suite_dict["meta"]["frame"]
    name = _safe_name(batch_name)
    try:
        source = ctx.data_sources.get(name)
    except (KeyError, ValueError, LookupError):
        source = ctx.data_sources.add_pandas(name)
    asset = source.add_dataframe_asset(frame)
    batch_def = asset.add_batch_definition_whole_dataframe("whole")
    suite = ctx.suites.add(gx.ExpectationSuite(**copy.deepcopy(suite_dict)))
    return ctx.validation_definitions.add(
        gx.ValidationDefinition(name=f"{suite.name}", data=batch_def, suite=suite)
    )


def _run_definition(vd: Any, df: Any, params: dict[str, Any], run_name: str) -> Any:
    """Run a validation definition on ``df`` with COMPLETE results, so failing rows come back by index."""
    from great_expectations.core.run_identifier import RunIdentifier

    return vd.run(
        batch_parameters={"dataframe": df},
        expectation_parameters=params,
        result_format={"result_format": "COMPLETE"},
        run_id=RunIdentifier(run_name=_safe_name(run_name)),
    )


def _columns(kwargs: dict[str, Any]) -> list[str]:
    if "column_list" in kwargs:
        return list(kwargs["column_list"])
    cols = [kwargs[k] for k in ("column", "column_A", "column_B") if k in kwargs]
    return cols


def _show(value: Any) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "null"
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float):
        return f"{value:.6g}"
    text = repr(value)
    return text if len(text) <= 80 else text[:80] + "…"


def _exception(er: Any) -> str | None:
    """The message of an expectation that raised, or None. GX 1.x gives either one
    ``{"raised_exception", "exception_message"}`` dict or one such dict per metric."""
    info = er.exception_info or {}
    candidates = [info] + [v for v in info.values() if isinstance(v, dict)]
    for c in candidates:
        if c.get("raised_exception"):
            return str(c.get("exception_message") or "an exception")
    return None


def _severity(cfg: Any) -> str:
    sev = getattr(cfg, "severity", "critical")
    return str(getattr(sev, "value", sev)).lower()


# ---------------------------------------------------------------------------------------------
# The batch, validated in chunks


@dataclass
class _WarnTally:
    """One warn-policy expectation, or one kind of summarised parser warning, summed over a batch's chunks."""

    spans: int = 0
    records: int = 0
    examples: list[str] = field(default_factory=list)
    first: str = ""  # the first warning itself (summarised record warnings)


class BatchValidator:
    """Validate one batch (one source object) in bounded chunks of records.

    `add` runs the row-level suites (sentences, spans) on one chunk and returns that chunk's
    accepted records and rejections at once, so a caller can write them out and let them go;
    only counts survive between chunks (rows, rejections, label counts, anomaly counts, one
    entry per expectation, warning tallies). `finish` then judges the batch as a whole with the
    batch suite on those totals (minimum rows, share of bad rows over every chunk, label drift)
    and builds the Data Docs. When `finish` quarantines the batch, the caller turns every record
    it accepted into a `batch_rejection`. One chunk holding every record is `validate_batch`.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        batch_name: str,
        docs_dir: Path | None,
        history_label_counts: dict[str, int] | None = None,
        docs_max_chunks: int = 10,
    ) -> None:
        v = settings.validation
        self.docs_max_chunks, self.docs_chunks = docs_max_chunks, 0
        self.settings, self.batch_name, self.history = settings, batch_name, history_label_counts
        self.limit, self.limit_how = max_text_chars(settings)
        self.suites = load_suites(settings)
        self.docs_dir = Path(docs_dir).absolute() if docs_dir is not None else None  # GX wants absolute
        if self.docs_dir is not None:
            self.docs_dir.mkdir(parents=True, exist_ok=True)
        self.ctx = _gx_context(self.docs_dir)
        self.params: dict[str, Any] = {
            "labels": list(settings.prompt.labels),
            "max_text_chars": self.limit,
            "min_rows": v.min_rows,
            "max_bad_fraction": v.max_bad_fraction,
            "drift_warn": v.drift_warn,
            "drift_fail": v.drift_fail,
        }
        self.expectations: dict[tuple[str, int], dict[str, Any]] = {}  # (suite, position): merged
        self.errors: list[str] = []
        self.tallies: dict[str, _WarnTally] = {}
        self.anomalies: Counter[str] = Counter()
        self.label_counts: Counter[str] = Counter()
        self.rows_total = self.rows_rejected = self.rows_accepted = self.rows_duplicate = self.chunks = 0
        self.record_warnings: dict[str, _WarnTally] = {}  # SUMMARISED_WARNINGS kind -> over every chunk
        self._definitions: dict[str, Any] = {}

    def _run(self, suite_dict: dict[str, Any], df: Any) -> Any:
        name = suite_dict["name"]
        if name not in self._definitions:
            self._definitions[name] = _add_definition(self.ctx, suite_dict, self.batch_name)
        run = self.batch_name if self.chunks <= 1 else f"{self.batch_name}-chunk{self.chunks:05d}"
        return _run_definition(self._definitions[name], df, self.params, run)

    def _entry(self, key: tuple[str, int], entry: dict[str, Any]) -> None:
        """Record one expectation's outcome; the same expectation in a later chunk is merged."""
        seen = self.expectations.get(key)
        if seen is None:
            self.expectations[key] = entry
        else:
            seen["success"] = seen["success"] and entry["success"]
            seen["unexpected_count"] += entry["unexpected_count"]

    def add(
        self, records: list[Record], parse_rejected: int = 0, parse_duplicates: int = 0
    ) -> tuple[list[Record], list[Rejection]]:
        """Row-level validation of one chunk: (accepted, rejected), every record exactly once.

        ``parse_rejected``: how many input records of this chunk the parser already quarantined as
        bad; they count as bad rows of the batch (they are not returned again).
        ``parse_duplicates``: how many exact duplicates (``duplicate_record``) of this chunk the
        parser dropped: counted in the batch frame's ``rows_duplicate``, and bad rows only when
        ``validation.duplicates_are_bad_rows``; `count_parse_rejections` splits a rejection list so."""
        self.chunks += 1
        sentences, spans = build_frames(records)
        self.anomalies.update(anomaly_counts(spans))
        frames = {"sentences": sentences, "spans": spans}
        marks = _RowMarks()
        backend = self.ctx.validation_results_store.store_backend
        before = set(backend.list_keys())
        for suite_dict in (s for s in self.suites if s["meta"]["frame"] in frames):
            df = frames[suite_dict["meta"]["frame"]]
            result = self._run(suite_dict, df)
            for pos, er in enumerate(result.results):
                self._judge_rows(er, (suite_dict["name"], pos), suite_dict, df, records, marks)
        # The results store (what the Data Docs render) keeps the first chunk and those that rejected
        # records, at most docs_max_chunks: its memory and the docs' build time stay bounded.
        if self.chunks == 1 or (marks.problems and self.docs_chunks < self.docs_max_chunks):
            self.docs_chunks += 1
        else:
            for key in set(backend.list_keys()) - before:
                backend.remove_key(key)
        accepted, rejected = marks.split(records)
        self.label_counts.update(e.label for r in accepted for e in r.entities)
        _tally_record_warnings(accepted, self.record_warnings)
        dup_bad = parse_duplicates if self.settings.validation.duplicates_are_bad_rows else 0
        self.rows_total += len(records) + parse_rejected + dup_bad
        self.rows_rejected += len(rejected) + parse_rejected + dup_bad
        self.rows_accepted += len(accepted)
        self.rows_duplicate += parse_duplicates
        return accepted, rejected

    def _judge_rows(
        self,
        er: Any,
        key: tuple[str, int],
        suite_dict: dict[str, Any],
        df: Any,
        records: list[Record],
        marks: _RowMarks,
    ) -> None:
        """Mark the rows one expectation result blames (reject, warn or drop a repeated span)."""
        cfg = er.expectation_config
        meta = cfg.meta or {}
        policy_key = meta.get("policy")
        action = getattr(self.settings.validation, policy_key) if policy_key else "reject"
        res = er.result or {}
        entry = {
            "name": f"{suite_dict['name']}:{cfg.type}({','.join(_columns(cfg.kwargs))})",
            "success": bool(er.success),
            "unexpected_count": int(res.get("unexpected_count") or 0),
            "severity": _severity(cfg),
            "policy": policy_key,
            "action": action,
        }
        self._entry(key, entry)
        raised = _exception(er)
        if raised:
            self.errors.append(f"{entry['name']} raised: {raised}")
            return
        if er.success:
            return
        rows = res.get("unexpected_index_list") or []
        if not rows:  # failed, but no rows to blame: never let that pass silently
            self.errors.append(f"{entry['name']} failed without an unexpected_index_list")
            return
        frame = suite_dict["meta"]["frame"]
        cols = _columns(cfg.kwargs)
        explain = meta.get("explain", cfg.type)
        reason = f"gx:{cfg.type}"
        seen_keys: set[tuple[Any, ...]] = set()
        affected: set[int] = set()
        for row_idx in sorted(rows):
            row = df.loc[row_idx]
            rec = int(row["record_idx"])
            values = ", ".join(f"{c}={_show(row[c])}" for c in cols)
            if frame == "spans":
                ent = int(row["entity_idx"])
                values = (
                    f"span [{_show(row['start'])}, {_show(row['end'])}) {_show(row['label'])} "
                    f"{_show(row['entity_text'])}: {values}"
                )
                shown = [c for c in cols if c != "record_idx"]
                fld = f"entities[{ent}].{shown[0]}" if len(shown) == 1 else f"entities[{ent}]"
                if cfg.type == "expect_compound_columns_to_be_unique":
                    key = tuple(row[c] for c in cols)
                    if key not in seen_keys:  # the first of a duplicate group is kept
                        seen_keys.add(key)
                        continue
                    if action != "reject":
                        marks.drop_entities[rec].add(ent)
            else:
                fld = cols[0]
            detail = f"{values}: {explain}"
            affected.add(rec)
            if action == "reject":
                marks.problems[rec].append((reason, fld, detail))
            elif action == "warn":
                marks.warnings[rec].append(f"{policy_key}: {fld}: {detail}")
        if affected and action == "warn" and policy_key:
            tally = self.tallies.setdefault(policy_key, _WarnTally())
            tally.spans += len(rows)
            tally.records += len(affected)
            for i in sorted(affected):
                if len(tally.examples) < 3:
                    tally.examples.append(f"{records[i].source_key}:{records[i].line}")

    def finish(self) -> BatchValidation:
        """Judge the batch on the totals of every chunk and build the Data Docs.

        The returned `BatchValidation` holds no records (``accepted``/``rejected`` are empty): they
        went back chunk by chunk from `add`."""
        v = self.settings.validation
        warnings = [
            f"{policy} (warn): {t.spans} spans in {t.records} records, e.g. {', '.join(t.examples)}"
            + ("" if t.records <= 3 else f", … ({t.records} records)")
            for policy, t in self.tallies.items()
        ]
        label_counts = dict(self.label_counts)
        drift, drift_note = _drift(label_counts, self.history, v.drift_min_spans)
        if drift_note:
            warnings.append(drift_note)
        warnings.extend(_record_warning_summary(self.record_warnings))
        if self.docs_dir is not None and self.docs_chunks < self.chunks:
            warnings.append(
                f"{DOCS_PARTIAL} {self.docs_chunks} of {self.chunks} chunks (the first and those that "
                f"rejected records, at most {self.docs_max_chunks}); the expectation counts cover every "
                "chunk and every rejection is in the quarantine file"
            )
        failures = self._batch_suite(drift, warnings)
        failures.extend(f"expectation error: {e}" for e in self.errors)
        docs_index = _build_docs(self.ctx, self.docs_dir, warnings) if self.docs_dir is not None else None
        return BatchValidation(
            accepted=[],
            rejected=[],
            warnings=warnings,
            expectations=list(self.expectations.values()),
            docs_index=docs_index,
            batch_quarantined=bool(failures),
            reason="; ".join(failures),
            label_counts=label_counts,
            drift=drift,
            anomalies=dict(self.anomalies),
            max_text_chars=self.limit,
            max_text_chars_how=self.limit_how,
        )

    def _batch_suite(self, drift: float | None, warnings: list[str]) -> list[str]:
        """Run the batch-level suite on the totals; the critical failures (warnings appended)."""
        import pandas as pd

        total, bad = self.rows_total, self.rows_rejected
        batch_df = pd.DataFrame(
            [
                {
                    "rows_total": total,
                    "rows_rejected": bad,
                    "rows_accepted": self.rows_accepted,
                    "rows_duplicate": self.rows_duplicate,
                    "bad_fraction": bad / total if total else 0.0,
                    "label_drift_tv": drift if drift is not None else float("nan"),
                }
            ]
        )
        failures: list[str] = []
        for suite_dict in (s for s in self.suites if s["meta"]["frame"] == "batch"):
            result = self._run(suite_dict, batch_df)
            for pos, er in enumerate(result.results):
                cfg = er.expectation_config
                cols = _columns(cfg.kwargs)
                entry = {
                    "name": f"{suite_dict['name']}:{cfg.type}({','.join(cols)})",
                    "success": bool(er.success),
                    "unexpected_count": int((er.result or {}).get("unexpected_count") or 0),
                    "severity": _severity(cfg),
                    "policy": None,
                    "action": "batch",
                }
                self._entry((suite_dict["name"], pos), entry)
                raised = _exception(er)
                if raised:
                    self.errors.append(f"{entry['name']} raised: {raised}")
                    continue
                if er.success:
                    continue
                lo, hi = cfg.kwargs.get("min_value"), cfg.kwargs.get("max_value")
                bound = f"> {hi}" if lo is None else f"< {lo}" if hi is None else f"outside [{lo}, {hi}]"
                explain = (cfg.meta or {}).get("explain", cfg.type)
                msg = f"{cols[0]}={_show(batch_df.loc[0, cols[0]])} {bound}: {explain}"
                (failures if entry["severity"] == "critical" else warnings).append(msg)
        return failures

    def batch_rejection(self, record: Record, reason: str) -> Rejection:
        """The Rejection of a record accepted by `add` when `finish` quarantined the whole batch."""
        return batch_rejection(record, self.batch_name, reason)


def batch_rejection(record: Record, batch_name: str, reason: str) -> Rejection:
    """A record of a quarantined batch: reason `batch_quarantined`, the batch's failures as detail."""
    return Rejection(
        record.source_key, record.line, BATCH_QUARANTINED, f"batch {batch_name}: {reason}", raw=_raw(record)
    )


@dataclass
class _RowMarks:
    """What one chunk's row-level results said about its records (by position in the chunk)."""

    problems: dict[int, list[tuple[str, str, str]]] = field(default_factory=lambda: defaultdict(list))
    warnings: dict[int, list[str]] = field(default_factory=lambda: defaultdict(list))
    drop_entities: dict[int, set[int]] = field(default_factory=lambda: defaultdict(set))

    def split(self, records: list[Record]) -> tuple[list[Record], list[Rejection]]:
        accepted: list[Record] = []
        rejected: list[Rejection] = []
        for i, record in enumerate(records):
            if i in self.problems:
                (reason, fld, detail), *rest = self.problems[i]
                if rest:
                    detail += "; also: " + "; ".join(f"{f}: {r}: {d}" for r, f, d in rest[:5])
                    if len(rest) > 5:
                        detail += f"; and {len(rest) - 5} more"
                rejected.append(
                    Rejection(record.source_key, record.line, reason, detail, field=fld, raw=_raw(record))
                )
                continue
            if i in self.warnings or i in self.drop_entities:
                drop = self.drop_entities.get(i, set())
                record = dataclasses.replace(
                    record,
                    entities=[e for j, e in enumerate(record.entities) if j not in drop],
                    warnings=list(record.warnings) + self.warnings.get(i, []),
                )
            accepted.append(record)
        return accepted, rejected


def validate_batch(
    records: list[Record],
    settings: Settings,
    *,
    batch_name: str,
    docs_dir: Path | None,
    history_label_counts: dict[str, int] | None = None,
    parse_rejected: int = 0,
    parse_duplicates: int = 0,
) -> BatchValidation:
    """Validate one batch held in memory with Great Expectations (one `BatchValidator` chunk).

    ``parse_rejected`` is how many of the batch's input records the parser already quarantined
    as bad: they count as bad rows for ``validation.max_bad_fraction`` (they are not returned
    again). ``parse_duplicates`` is how many exact duplicates (``duplicate_record``) the parser
    dropped: reported in the batch frame, and bad rows only when
    ``validation.duplicates_are_bad_rows``; `count_parse_rejections` splits a rejection list so.
    ``docs_dir``: where GX Data Docs are built (None: none are built). ``history_label_counts``:
    span counts per label of the data accepted so far, for the drift check (None: not judged).
    """
    validator = BatchValidator(
        settings, batch_name=batch_name, docs_dir=docs_dir, history_label_counts=history_label_counts
    )
    accepted, rejected = validator.add(
        records, parse_rejected=parse_rejected, parse_duplicates=parse_duplicates
    )
    verdict = validator.finish()
    if verdict.batch_quarantined:
        rejected.extend(validator.batch_rejection(r, verdict.reason) for r in accepted)
        accepted = []
    return dataclasses.replace(verdict, accepted=accepted, rejected=rejected)


DUPLICATE_RECORD = "duplicate_record"


def count_parse_rejections(rejections: list[Rejection]) -> tuple[int, int]:
    """(bad rows, exact duplicates) among the parser's rejections of one batch (or chunk): the
    ``parse_rejected`` and ``parse_duplicates`` arguments of `validate_batch` and `BatchValidator.add`."""
    dups = sum(1 for r in rejections if r.reason == DUPLICATE_RECORD)
    return len(rejections) - dups, dups


SUMMARISED_WARNINGS = ("invisible_characters",)


def _tally_record_warnings(records: list[Record], tallies: dict[str, _WarnTally]) -> None:
    """Count, per kind of parser warning in `SUMMARISED_WARNINGS`, the records that carry one (the
    first three as examples, with the first such warning), across a batch's chunks."""
    for r in records:
        for kind in sorted({w.split(" ", 1)[0] for w in r.warnings if w.startswith(SUMMARISED_WARNINGS)}):
            tally = tallies.setdefault(kind, _WarnTally())
            tally.records += 1
            if not tally.examples:
                tally.first = next(w for w in r.warnings if w.startswith(kind))
            if len(tally.examples) < 3:
                tally.examples.append(f"{r.source_key}:{r.line}")


def _record_warning_summary(tallies: dict[str, _WarnTally]) -> list[str]:
    """One batch warning per kind of parser warning in `SUMMARISED_WARNINGS` (records carry the
    detail), so the report shows it without listing every record."""
    out = []
    for kind, t in sorted(tallies.items()):
        more = "" if t.records <= 3 else f", … ({t.records} records)"
        out.append(f"{kind}: {t.records} records, e.g. {', '.join(t.examples)}{more}: {t.first}")
    return out


def _raw(record: Record) -> str:
    text = json.dumps(
        {"text": record.text, "entities": [[e.start, e.end, e.label, e.text] for e in record.entities]},
        ensure_ascii=False,
        default=str,
    )
    return text if len(text) <= 200 else text[:200] + "…"


def _drift(
    counts: dict[str, int], history: dict[str, int] | None, min_spans: int
) -> tuple[float | None, str]:
    """Total-variation distance between the label shares of ``counts`` and ``history``."""
    if history is None:
        return None, ""
    n, h = sum(counts.values()), sum(max(0, c) for c in history.values())
    if h == 0:
        return None, "label drift not judged: the history holds no spans"
    if n < min_spans:
        return None, f"label drift not judged: {n} spans < validation.drift_min_spans {min_spans}"
    labels = set(counts) | set(history)
    tv = 0.5 * sum(abs(counts.get(lab, 0) / n - max(0, history.get(lab, 0)) / h) for lab in labels)
    return round(tv, 6), ""


def _escape_html(value: Any) -> Any:
    """``value`` with every string in it HTML-escaped, through dicts (values only), lists and tuples."""
    if isinstance(value, str):
        return html.escape(value)
    if isinstance(value, dict):
        return {k: _escape_html(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_escape_html(v) for v in value)
    return value


def _escape_stored_results(ctx: Any) -> None:
    """HTML-escape, in the context's validation results store, everything GX renders from the data.

    GX 1.x writes a result's unexpected values (the unexpected-value table, built from
    ``partial_unexpected_list``/``_counts``, ``unexpected_list``, ``unexpected_index_list``), its
    observed value and an exception's traceback into the Data Docs HTML as they are: annotator text
    such as ``<script>`` or ``<img onerror=…>`` would be live markup in the pages. So every string
    of each result's ``result`` and ``exception_info`` is escaped before the docs are built; the page
    then shows the value as text. The few places GX escapes itself (an exception message) show it
    escaped twice, which is the safe way to be wrong. Only the stored copies change: the results
    ``validate_batch`` judged by are the ones ``ValidationDefinition.run`` returned.
    """
    store = ctx.validation_results_store
    for key in store.list_keys():
        suite_result = store.get(key)
        for evr in suite_result.results:
            evr.result = _escape_html(evr.result or {})
            evr.exception_info = _escape_html(evr.exception_info or {})
        store.set(key, suite_result)


def _build_docs(ctx: Any, docs_dir: Path, warnings: list[str]) -> Path | None:
    """Build the GX Data Docs of the batch into ``docs_dir`` (data values escaped), self-contained
    (`retrain.datadocs`: no script, no CDN); their index page, or None (with a warning) when they
    could not be built."""
    from retrain.datadocs import make_self_contained

    try:
        _escape_stored_results(ctx)  # never build the docs from the unescaped results
        ctx.build_data_docs(site_names=["retrain_site"])
        return make_self_contained(docs_dir, _docs_entries(ctx, docs_dir))
    except Exception as exc:  # docs are a report; a failure to render them must not lose the batch
        log.warning("GX Data Docs failed: %s", exc)
        warnings.append(f"GX Data Docs were not built: {exc}")
        return None


def _docs_entries(ctx: Any, docs_dir: Path) -> list[Any]:
    """The index entries of the validation results in the context's store (the site builder writes
    each result's page at ``validations/<key parts>.html``)."""
    from retrain.datadocs import ValidationEntry

    store = ctx.validation_results_store
    entries = []
    for key in store.list_keys():
        result = store.get(key)
        stats = dict(result.statistics or {})
        page = "validations/" + "/".join(str(part) for part in key.to_tuple()) + ".html"
        if not (docs_dir / page).is_file():
            raise FileNotFoundError(f"GX built no page {page} for the result of {result.suite_name}")
        entries.append(
            ValidationEntry(
                suite=result.suite_name,
                success=bool(result.success),
                evaluated=int(stats.get("evaluated_expectations", 0)),
                successful=int(stats.get("successful_expectations", 0)),
                unsuccessful=int(stats.get("unsuccessful_expectations", 0)),
                run_time=str((result.meta.get("run_id") or {}).get("run_time", "")),
                page=page,
            )
        )
    return entries


# ---------------------------------------------------------------------------------------------
# Report


def quarantine_report(
    rejections: list[Rejection], *, examples: int = 3, title: str = "Quarantine report"
) -> str:
    """A Markdown report: counts per reason (with what each means) and the first examples of
    each as ``file:line field: detail`` with the raw input."""
    from retrain.formats import REASONS

    def meaning(reason: str) -> str:
        if reason.startswith("gx:"):
            return f"Great Expectations {reason[3:]} failed"
        if reason == BATCH_QUARANTINED:
            return "the whole batch was quarantined (batch-level check)"
        return REASONS.get(reason, "")

    def clean(text: str) -> str:
        return text.replace("`", "'").replace("\n", " ")

    by_reason: dict[str, list[Rejection]] = defaultdict(list)
    for r in rejections:
        by_reason[r.reason].append(r)
    keys = {r.source_key for r in rejections}
    out = [f"# {title}", ""]
    if not rejections:
        return "\n".join(out + ["Nothing was quarantined.", ""])
    objects = "1 object" if len(keys) == 1 else f"{len(keys)} objects"
    out += [
        f"{len(rejections)} rejected records from {objects}.",
        "",
        "| reason | count | meaning |",
        "|---|---:|---|",
    ]
    order = sorted(by_reason, key=lambda k: (-len(by_reason[k]), k))
    out += [f"| `{k}` | {len(by_reason[k])} | {meaning(k)} |" for k in order]
    for k in order:
        items = by_reason[k]
        out += ["", f"## `{k}` ({len(items)})", ""]
        for r in items[:examples]:
            fld = f" field `{clean(r.field)}`" if r.field else ""
            out.append(f"- `{clean(r.source_key)}:{r.line}`{fld}: {clean(r.detail)}")
            if r.raw:
                out.append(f"  raw: `{clean(r.raw)}`")
        if len(items) > examples:
            out.append(f"- … and {len(items) - examples} more")
    return "\n".join(out) + "\n"
