"""The evaluation report: JSON for machines, a PNG chart and one self-contained HTML page for people.

`write_report` takes the report dict built by `retrain.evaluate.run_evaluation` (see its docstring
for the layout) and writes ``report.json``, ``per_label_f1.png`` (per-label F1, candidate vs
champion, matplotlib with the Agg backend) and ``report.html`` (the PNG embedded as base64, the
headline figures, per-label table and every unparseable raw output). Nothing is fetched from the
network when the page is opened.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

REPORT_JSON = "report.json"
CHART_PNG = "per_label_f1.png"
REPORT_HTML = "report.html"


def write_report(report: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write report.json, per_label_f1.png and report.html into ``out_dir``; return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / REPORT_JSON, "png": out / CHART_PNG, "html": out / REPORT_HTML}
    paths["json"].write_text(
        json.dumps(report, ensure_ascii=False, indent=2, sort_keys=True), encoding="utf-8"
    )
    plot_per_label_f1(report["candidate"], report["champion"], paths["png"])
    paths["html"].write_text(render_html(report, paths["png"].read_bytes()), encoding="utf-8")
    return paths


def plot_per_label_f1(candidate: dict[str, Any], champion: dict[str, Any], path: str | Path) -> None:
    """Grouped bar chart of per-label F1 (undefined F1 drawn as 0 and marked 'n/a')."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(candidate["per_label"])
    cand = [candidate["per_label"][lab]["f1"] for lab in labels]
    champ = [champion["per_label"].get(lab, {}).get("f1") for lab in labels]
    xs = range(len(labels))
    width = 0.38
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(labels) + 2), 4.2), dpi=100)
    bars_c = ax.bar(
        [x - width / 2 for x in xs],
        [v or 0.0 for v in cand],
        width,
        label=f"{candidate.get('name', 'candidate')}",
        color="#3b75af",
    )
    bars_h = ax.bar(
        [x + width / 2 for x in xs],
        [v or 0.0 for v in champ],
        width,
        label=f"{champion.get('name', 'champion')}",
        color="#c4c4c4",
        edgecolor="#777777",
    )
    for bars, values in ((bars_c, cand), (bars_h, champ)):
        for bar, value in zip(bars, values, strict=True):
            text = "n/a" if value is None else f"{value:.2f}"
            ax.annotate(
                text,
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=7,
                xytext=(0, 1),
                textcoords="offset points",
            )
    ax.set_xticks(list(xs))
    ax.set_xticklabels(labels, rotation=30, ha="right")
    ax.set_ylim(0, 1.22)
    ax.set_ylabel("F1")
    ax.set_title("Per-label F1 on the golden set")
    ax.legend(loc="upper right", fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return html.escape(str(value))


_SUMMARY_ROWS = (
    ("micro_f1", "micro F1 (strict)"),
    ("lenient_f1", "micro F1 (lenient: salvaged entities count)"),
    ("micro_p", "micro precision"),
    ("micro_r", "micro recall"),
    ("macro_f1", "macro F1"),
    ("cluener_score", "CLUENER score"),
    ("parse_failure_rate", "parse-failure rate (salvaged + unparseable)"),
    ("valid", "outputs valid JSON"),
    ("repaired", "outputs repaired (fence, text around, trailing comma)"),
    ("salvaged", "outputs salvaged from invalid JSON"),
    ("unparseable", "outputs unparseable"),
    ("latency_s", "generation time (s)"),
    ("tokens_per_s", "tokens/s"),
)


def _figure(m: dict[str, Any], key: str) -> Any:
    """One summary figure of a side's metrics, by its row key."""
    if key == "micro_f1":
        return m["micro"]["f1"]
    if key == "lenient_f1":
        return (m.get("lenient_micro") or {}).get("f1")
    if key == "micro_p":
        return m["micro"]["precision"]
    if key == "micro_r":
        return m["micro"]["recall"]
    if key in ("valid", "repaired", "salvaged", "unparseable"):
        return (m.get("parse_readings") or {}).get(key)
    return m.get(key)


def _summary_rows(cand: dict[str, Any], champ: dict[str, Any]) -> list[str]:
    return [
        f"<tr><th>{title}</th><td>{_fmt(_figure(cand, key))}</td><td>{_fmt(_figure(champ, key))}</td></tr>"
        for key, title in _SUMMARY_ROWS
    ]


def render_html(report: dict[str, Any], png: bytes) -> str:
    """One HTML page with everything inline (no external CSS, JS or images)."""
    cand, champ = report["candidate"], report["champion"]
    esc = html.escape
    rows = _summary_rows(cand, champ)
    label_rows = []
    for lab, m in cand["per_label"].items():
        h = champ["per_label"].get(lab, {})
        label_rows.append(
            f"<tr><th>{esc(lab)}</th><td>{m['support']}</td><td>{_fmt(m['precision'])}</td>"
            f"<td>{_fmt(m['recall'])}</td><td>{_fmt(m['f1'])}</td><td>{_fmt(h.get('f1'))}</td></tr>"
        )

    def failures(m: dict[str, Any]) -> str:
        items = m.get("parse_failures", [])
        if not items:
            return "<p>none</p>"
        lis = "".join(
            f"<li><div class='in'>{esc(str(f.get('input', '')))}</div>"
            f"<pre>{esc(str(f.get('raw', '')))}</pre>"
            f"<div class='err'>{esc(str(f.get('error', '')))}</div></li>"
            for f in items
        )
        return f"<ol>{lis}</ol>"

    dec = report.get("decoding", {})
    decoding = ", ".join(f"{esc(str(k))}={esc(str(v))}" for k, v in sorted(dec.items()))
    img = base64.b64encode(png).decode("ascii")
    cached = " (cached)" if champ.get("cached") else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Evaluation {esc(str(report.get("run_id", "")))}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; max-width: 70rem; }}
table {{ border-collapse: collapse; margin: .5rem 0 1rem; }}
th, td {{ border: 1px solid #ccc; padding: .25rem .6rem; text-align: right; }}
th {{ text-align: left; background: #f5f5f5; }}
pre {{ background: #f7f7f7; padding: .4rem; white-space: pre-wrap; word-break: break-all; margin: .2rem 0; }}
.in {{ font-weight: 600; }} .err {{ color: #a33; font-size: .85em; }} .meta {{ color: #555; }}
</style></head><body>
<h1>Evaluation report</h1>
<p class="meta">run {esc(str(report.get("run_id", "")))}
 · exam (golden set version) {esc(str(report.get("golden_hash", "")))}/{report.get("n", 0)}
 · {report.get("n", 0)} sentences · decoding: {decoding}</p>
<table><tr><th></th><th>{esc(str(cand.get("name", "candidate")))}</th>
<th>{esc(str(champ.get("name", "champion")))}{cached}</th></tr>
{"".join(rows)}</table>
<img alt="per-label F1, candidate vs champion" src="data:image/png;base64,{img}">
<h2>Per label (candidate; last column champion F1)</h2>
<table><tr><th>label</th><th>support</th><th>precision</th><th>recall</th><th>F1</th><th>champion F1</th></tr>
{"".join(label_rows)}</table>
<h2>Unparseable outputs: {esc(str(cand.get("name", "candidate")))}
 ({len(cand.get("parse_failures", []))})</h2>
{failures(cand)}
<h2>Unparseable outputs: {esc(str(champ.get("name", "champion")))}
 ({len(champ.get("parse_failures", []))})</h2>
{failures(champ)}
</body></html>
"""
