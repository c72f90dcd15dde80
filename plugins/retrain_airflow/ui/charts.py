"""The SVG line charts of the pages (the F1 trend across runs, a run's training loss), as data.

`line_chart` scales the series to the plot area and returns a `LineChart`: grid lines, ticks, polylines
and points in SVG coordinates. ``templates/_chart.html`` draws it (autoescaped like every template), so
nothing is loaded from a CDN and no markup is built by hand.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from retrain_airflow.run_notes import as_number
from retrain_airflow.ui.page_data import RunRecord, exam_label, run_label

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
MAX_X_TICKS = 12  # more labels than this would overlap: every n-th is shown
MAX_DOTS = 80  # a series with more points is drawn as a line only (no hover points)


@dataclass
class Series:
    """One line: (x, y) points, y None for a gap."""

    name: str
    points: list[tuple[float, float | None]]
    color: str
    width: float = 2.0
    dash: str = ""


@dataclass
class Scale:
    """Data coordinates -> SVG coordinates of the plot area (y grows downwards; y is clamped)."""

    x0: float
    x1: float
    y0: float
    y1: float
    left: float
    top: float
    plot_w: float
    plot_h: float

    def x(self, v: float) -> float:
        return self.left + (v - self.x0) / (self.x1 - self.x0) * self.plot_w

    def y(self, v: float) -> float:
        return (
            self.top
            + self.plot_h
            - (min(max(v, self.y0), self.y1) - self.y0) / (self.y1 - self.y0) * self.plot_h
        )


@dataclass
class Mark:
    """A positioned element of the chart: a tick label, a point, a legend entry."""

    x: float
    y: float
    text: str = ""
    color: str = ""
    width: float = 0.0
    dash: str = ""


@dataclass
class DrawnSeries:
    """A series in SVG coordinates: its unbroken segments as polyline points, and its hover points."""

    name: str
    color: str
    width: float
    dash: str
    lines: list[str] = field(default_factory=list)  # "x,y x,y …" per segment between gaps
    dots: list[Mark] = field(default_factory=list)  # text: the tooltip


@dataclass
class LineChart:
    """A line chart laid out for ``templates/_chart.html``; ``empty`` when there is nothing to draw."""

    title: str
    y_label: str
    x_label: str
    width: int
    height: int
    left: int = 56
    top: int = 28
    plot_w: int = 0
    plot_h: int = 0
    grid: list[Mark] = field(default_factory=list)  # y: the line's position, text: its label
    x_ticks: list[Mark] = field(default_factory=list)
    series: list[DrawnSeries] = field(default_factory=list)
    legend: list[Mark] = field(default_factory=list)
    markers: list[Mark] = field(default_factory=list)  # vertical lines: x, text = what starts there
    empty: bool = True  # no series has a point: the template says "no data" instead


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values (steps of 1, 2, 2.5 or 5 times a power of ten) covering [lo, hi]."""
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


def fmt_tick(v: float) -> str:
    """A tick label: whole numbers without decimals, others with 3 significant digits."""
    return f"{v:.0f}" if abs(v - round(v)) < 1e-9 and abs(v) >= 1 else f"{v:.3g}"


def line_chart(
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
    markers: list[tuple[float, str]] | None = None,
) -> LineChart:
    """Lay out ``series`` (y axis from ``y_range``, else 0 to the maximum + 5%; x ticks from
    ``x_ticks``, else round numbers; ``markers``: labelled vertical lines at x); every point carries
    a tooltip."""
    chart = LineChart(title=title, y_label=y_label, x_label=x_label, width=width, height=height)
    ys = [y for s in series for _, y in s.points if y is not None]
    xs = [x for s in series for x, _ in s.points]
    if not ys or not xs:
        return chart
    chart.empty = False
    right, bottom = (190 if legend else 20), 44
    chart.plot_w, chart.plot_h = width - chart.left - right, height - chart.top - bottom
    y0, y1 = y_range if y_range else (min(0.0, min(ys)), max(ys) * 1.05 or 1.0)
    x0, x1 = min(xs), max(xs)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    scale = Scale(x0, x1, y0, y1, chart.left, chart.top, chart.plot_w, chart.plot_h)
    chart.grid = [Mark(0, scale.y(t), fmt_tick(t)) for t in nice_ticks(y0, y1) if y0 - 1e-9 <= t <= y1 + 1e-9]
    ticks = (
        x_ticks if x_ticks is not None else [(t, fmt_tick(t)) for t in nice_ticks(x0, x1, 8) if x0 <= t <= x1]
    )
    every = max(1, math.ceil(len(ticks) / MAX_X_TICKS))
    chart.x_ticks = [Mark(scale.x(t), 0, label) for i, (t, label) in enumerate(ticks) if i % every == 0]
    tick_labels = dict(ticks)
    chart.series = [_draw(s, scale, tick_labels) for s in series]
    chart.markers = [Mark(scale.x(x), 0, text) for x, text in markers or []]
    if legend:
        chart.legend = [
            Mark(0, chart.top + 6 + i * 18, s.name, s.color, s.width, s.dash) for i, s in enumerate(series)
        ]
    return chart


def _draw(s: Series, scale: Scale, tick_labels: dict[float, str]) -> DrawnSeries:
    """The series' line split at its gaps (a lone point between gaps draws no line, only its dot), and
    its points with a tooltip each (none past `MAX_DOTS` points)."""
    drawn = DrawnSeries(s.name, s.color, s.width, s.dash)
    segments: list[list[tuple[float, float]]] = [[]]
    for x, y in s.points:
        if y is None:
            segments.append([])
        else:
            segments[-1].append((x, y))
    drawn.lines = [
        " ".join(f"{scale.x(x):.1f},{scale.y(y):.1f}" for x, y in seg) for seg in segments if len(seg) > 1
    ]
    if len(s.points) <= MAX_DOTS:
        drawn.dots = [
            Mark(scale.x(x), scale.y(y), f"{s.name} @ {tick_labels.get(x, fmt_tick(x))}: {y:.4f}", s.color)
            for x, y in s.points
            if y is not None
        ]
    return drawn


def f1_trend(runs: list[RunRecord]) -> LineChart | None:
    """Candidate F1 per label across runs (oldest left), with micro F1 and the champion's micro F1;
    None before the first evaluated run.

    Scores are comparable only on the same exam (golden-set version, `RunRecord.exam`): the lines join
    consecutive runs on the same exam only, and a labelled vertical marker shows where each exam starts.
    Each fixed benchmark file (summary ``benchmarks``) is one more line, "benchmark <name>", the
    candidate's micro F1 on it; it breaks only where the benchmark file itself changed.
    """
    evaluations = [
        (r, (r.summary or {})["evaluation"])
        for r in runs
        if r.summary and (r.summary.get("evaluation") or {}).get("candidate")
    ]
    if not evaluations:
        return None
    exams = [r.exam for r, _ in evaluations]
    starts = [x for x in range(len(exams)) if x == 0 or exams[x] != exams[x - 1]]
    per_label = [ev["candidate"].get("per_label_f1") or {} for _, ev in evaluations]
    labels = sorted({lab for scores in per_label for lab in scores})
    series = [
        Series(
            lab,
            [(float(x), as_number(scores.get(lab))) for x, scores in enumerate(per_label)],
            PALETTE[i % len(PALETTE)],
            1.5,
        )
        for i, lab in enumerate(labels)
    ]
    series.append(_micro_series("micro F1", [ev["candidate"] for _, ev in evaluations], 3.0))
    series.append(
        _micro_series("champion micro F1", [ev.get("champion") for _, ev in evaluations], 1.5, "5 4")
    )
    for s in series:
        s.points = _break_at(s.points, starts[1:])
    series.extend(_benchmark_series(evaluations, len(series)))
    return line_chart(
        series,
        title="Candidate F1 per label, by run (lines join runs on the same exam only)",
        y_label="F1",
        x_label="run",
        y_range=(0.0, 1.0),
        x_ticks=[(float(x), run_label(r)) for x, (r, _) in enumerate(evaluations)],
        height=max(320, 60 + 18 * len(series)),
        markers=[(float(x), f"exam {exam_label(exams[x]) or 'unknown'}") for x in starts],
    )


def _benchmark_series(evaluations: list[tuple[RunRecord, dict[str, Any]]], offset: int) -> list[Series]:
    """One line per fixed benchmark: the candidate's micro F1 on it, by run."""
    by_name: dict[str, list[tuple[int, float | None, str]]] = {}
    for x, (run, _) in enumerate(evaluations):
        for bench in (run.summary or {}).get("benchmarks") or []:
            if isinstance(bench, dict) and bench.get("name"):
                f1 = as_number((bench.get("candidate") or {}).get("micro_f1"))
                by_name.setdefault(str(bench["name"]), []).append((x, f1, str(bench.get("exam", ""))))
    out = []
    for i, (name, rows) in enumerate(sorted(by_name.items())):
        points: list[tuple[float, float | None]] = []
        for j, (x, f1, exam) in enumerate(rows):
            if j and (exam != rows[j - 1][2] or x != rows[j - 1][0] + 1):
                points.append((x - 0.5, None))  # a changed file or a run without it: no line across
            points.append((float(x), f1))
        out.append(Series(f"benchmark {name}", points, PALETTE[(offset + i) % len(PALETTE)], 2.5, "8 3"))
    return out


def _break_at(points: list[tuple[float, float | None]], xs: list[int]) -> list[tuple[float, float | None]]:
    """``points`` with a gap just before each x in ``xs`` (so no line crosses into a new exam)."""
    out: list[tuple[float, float | None]] = []
    for x, y in points:
        if x in xs:
            out.append((x - 0.5, None))
        out.append((x, y))
    return out


def _micro_series(name: str, metrics: list[Any], width: float, dash: str = "") -> Series:
    points = [(float(x), as_number((m or {}).get("micro_f1"))) for x, m in enumerate(metrics)]
    return Series(name, points, "#111111", width, dash)


def loss_curve(curve: list[Any] | None, *, width: int = 640, height: int = 260) -> LineChart | None:
    """The training loss by step from a summary's ``train.loss_curve`` ([step, loss] pairs; malformed
    pairs are left out); None when no loss was logged."""
    points: list[tuple[float, float | None]] = []
    for item in curve or []:
        if isinstance(item, (list, tuple)) and len(item) >= 2:
            step, loss = as_number(item[0]), as_number(item[1])
            if step is not None and loss is not None:
                points.append((step, loss))
    if not points:
        return None
    return line_chart(
        [Series("training loss", points, PALETTE[0], 2.0)],
        title="Training loss",
        y_label="loss",
        x_label="step",
        width=width,
        height=height,
        legend=False,
    )
