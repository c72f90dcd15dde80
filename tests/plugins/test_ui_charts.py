"""The UI's line charts (plugins/retrain_airflow/ui/charts.py): scaling, ticks, gaps, tooltips, and the
SVG the template draws from them."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest


def _chart(**kwargs):
    from retrain_airflow.ui.charts import line_chart

    return line_chart(**kwargs)


def _svg(chart) -> str:
    from retrain_airflow.ui.views import environment

    return str(environment().get_template("_chart.html").module.line_chart(chart))


@pytest.mark.parametrize(
    "lo, hi, n, ticks",
    [
        (0.0, 1.0, 5, [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]),
        (0.0, 2.3104 * 1.05, 5, [0.0, 0.5, 1.0, 1.5, 2.0]),
        (5.0, 20.0, 8, [6.0, 8.0, 10.0, 12.0, 14.0, 16.0, 18.0, 20.0]),
        (0.0, 9.0, 4, [0.0, 2.5, 5.0, 7.5]),
        (3.0, 3.0, 5, [3.0, 3.2, 3.4, 3.6, 3.8, 4.0]),  # an empty range widens to one unit
    ],
)
def test_nice_ticks_are_round_and_cover_the_range(lo, hi, n, ticks):
    from retrain_airflow.ui.charts import nice_ticks

    assert nice_ticks(lo, hi, n) == ticks


def test_tick_labels():
    from retrain_airflow.ui.charts import fmt_tick

    assert [fmt_tick(v) for v in (0.0, 0.2, 1.0, 12.0, 2.5, 0.000123, 1234567.0)] == [
        "0",
        "0.2",
        "1",
        "12",
        "2.5",
        "0.000123",
        "1234567",
    ]


def test_scale_maps_the_range_onto_the_plot_and_clamps_y():
    from retrain_airflow.ui.charts import Scale

    s = Scale(x0=0, x1=10, y0=0.0, y1=1.0, left=56, top=28, plot_w=574, plot_h=248)
    assert (s.x(0), s.x(10), s.x(5)) == (56, 630, 343)
    assert (s.y(0.0), s.y(1.0), s.y(0.5)) == (276, 28, 152)  # SVG y grows downwards
    assert s.y(1.7) == s.y(1.0) and s.y(-3) == s.y(0.0), "out-of-range values stay on the plot"


def test_line_chart_layout_gaps_and_tooltips():
    from retrain_airflow.ui.charts import Series

    chart = _chart(
        series=[
            Series("a", [(0.0, 0.1), (1.0, 0.4), (2.0, None), (3.0, 0.9), (4.0, 1.0)], "#000"),
            Series("b", [(0.0, 0.5), (1.0, None), (2.0, 0.5)], "#111", 1.5, "5 4"),
        ],
        title="t",
        y_label="F1",
        y_range=(0.0, 1.0),
        x_ticks=[(float(i), f"run {i}") for i in range(5)],
        width=820,
        height=320,
    )
    assert not chart.empty
    assert (chart.plot_w, chart.plot_h) == (820 - 56 - 190, 320 - 28 - 44)  # room for the legend
    a, b = chart.series
    assert len(a.lines) == 2, "a gap splits the line"
    assert a.lines[0] == "56.0,251.2 199.5,176.8"
    assert b.lines == [], "points isolated by gaps are drawn as dots only"
    assert [d.text for d in b.dots] == ["b @ run 0: 0.5000", "b @ run 2: 0.5000"]
    assert [d.text for d in a.dots][-1] == "a @ run 4: 1.0000"
    assert [g.text for g in chart.grid] == ["0", "0.2", "0.4", "0.6", "0.8", "1"]
    assert [m.text for m in chart.legend] == ["a", "b"] and chart.legend[1].dash == "5 4"


def test_line_chart_defaults_a_single_x_too_many_ticks_and_no_data():
    from retrain_airflow.ui.charts import MAX_X_TICKS, Series

    one = _chart(series=[Series("s", [(7.0, 2.0)], "#000")], title="t", y_label="y", legend=False)
    assert one.series[0].dots[0].x == 56 + (820 - 56 - 20) / 2, "a lone x is centred (range x±1)"
    assert one.grid[-1].text == "2" and one.grid[0].text == "0", "y from 0 to the maximum + 5%"
    many = _chart(
        series=[Series("s", [(float(i), 0.5) for i in range(30)], "#000")],
        title="t",
        y_label="y",
        x_ticks=[(float(i), str(i)) for i in range(30)],
    )
    assert len(many.x_ticks) <= MAX_X_TICKS and [t.text for t in many.x_ticks[:2]] == ["0", "3"]
    assert len(many.series[0].dots) == 30, "every point keeps its tooltip even when its tick is hidden"
    empty = _chart(series=[Series("s", [(0.0, None)], "#000")], title="Nothing <here>", y_label="y")
    assert empty.empty
    assert _svg(empty) == '<p class="muted">Nothing &lt;here&gt;: no data.</p>'


def _run(folder: str, per_label: dict | None, micro: float | None, champion: float | None):
    from retrain_airflow.ui.page_data import RunRecord

    summary = None
    if per_label is not None:
        summary = {
            "run_id": folder,
            "evaluation": {
                "candidate": {"per_label_f1": per_label, "micro_f1": micro},
                "champion": {"micro_f1": champion},
            },
        }
    return RunRecord(folder, summary, None, datetime(2026, 1, 1, tzinfo=UTC))


def test_f1_trend_draws_a_line_per_label_plus_micro_and_champion():
    from retrain_airflow.ui.charts import f1_trend

    assert (
        f1_trend([]) is None and f1_trend([_run("scheduled__2026-11-01T02:00:00", None, None, None)]) is None
    )
    runs = [
        _run("scheduled__2026-11-27T02:00:00+00:00", {"name": 0.5, "book": 0.25}, 0.4, 0.0),
        _run("no-date-in-this-run-id-at-all", None, None, None),  # skipped: not evaluated
        _run("manual__2026-11-28T10:00:00+00:00", {"name": 0.75, "game": 1.0}, 0.6, 0.4),
    ]
    chart = f1_trend(runs)
    assert [s.name for s in chart.series] == ["book", "game", "name", "micro F1", "champion micro F1"]
    assert [t.text for t in chart.x_ticks] == ["11-27 02:00", "11-28 10:00"]
    book, game = chart.series[0], chart.series[1]
    assert book.lines == [] and [d.text for d in book.dots] == ["book @ 11-27 02:00: 0.2500"]
    assert [d.text for d in game.dots] == ["game @ 11-28 10:00: 1.0000"]
    assert chart.series[-1].dash == "5 4" and chart.series[-2].width == 3.0
    svg = _svg(chart)
    assert svg.startswith('<svg class="chart"') and svg.count("<polyline") == 3  # name, micro, champion
    assert "<title>champion micro F1 @ 11-28 10:00: 0.4000</title>" in svg


def test_f1_trend_joins_only_runs_on_the_same_exam_and_marks_each_exam():
    from retrain_airflow.ui.charts import f1_trend

    def on(exam: str | None, *args):
        run = _run(*args)
        if exam:
            run.summary["decision"] = {"exam": exam}
        return run

    runs = [
        on("aaaaaaaaaaaaaaaa/43", "scheduled__2026-11-27T02:00:00+00:00", {"name": 0.5}, 0.4, 0.0),
        on("aaaaaaaaaaaaaaaa/43", "scheduled__2026-11-28T02:00:00+00:00", {"name": 0.6}, 0.5, 0.4),
        on("bbbbbbbbbbbbbbbb/95", "scheduled__2026-11-29T02:00:00+00:00", {"name": 0.7}, 0.6, 0.45),
        on("bbbbbbbbbbbbbbbb/95", "scheduled__2026-11-30T02:00:00+00:00", {"name": 0.8}, 0.7, 0.6),
    ]
    chart = f1_trend(runs)
    name, micro = chart.series[0], chart.series[1]
    # two segments per line (nights 1-2 on exam a, nights 3-4 on exam b), never one across the change
    assert len(name.lines) == 2 and len(micro.lines) == 2
    assert [len(seg.split()) for seg in name.lines] == [2, 2]
    assert len(name.dots) == 4  # every score is still shown
    assert [m.text for m in chart.markers] == ["exam aaaaaaaa/43", "exam bbbbbbbb/95"]
    assert chart.markers[1].x == chart.x_ticks[2].x  # the marker sits on the first run of the new exam
    svg = _svg(chart)
    assert svg.count('class="marker"') == 2 and "exam bbbbbbbb/95" in svg
    # a fixed benchmark is its own line, joined across the golden-set change (its file did not change)
    for run, f1 in zip(runs, (0.3, 0.35, 0.4, 0.45), strict=True):
        bench = {"name": "dev", "exam": "dddddddddddddddd/500", "candidate": {"micro_f1": f1}}
        run.summary["benchmarks"] = [bench]
    bench_line = f1_trend(runs).series[-1]
    assert bench_line.name == "benchmark dev" and len(bench_line.lines) == 1 and len(bench_line.dots) == 4
    # the summary's dataset names the exam when the decision does not (runs from before the gate)
    old = _run("scheduled__2026-12-01T02:00:00+00:00", {"name": 0.8}, 0.7, 0.6)
    old.summary["dataset"] = {"golden_hash": "bbbbbbbbbbbbbbbb", "golden": 95}
    assert [m.text for m in f1_trend([*runs, old]).markers] == ["exam aaaaaaaa/43", "exam bbbbbbbb/95"]


def test_loss_curve_keeps_the_wellformed_points():
    from retrain_airflow.ui.charts import loss_curve

    assert loss_curve(None) is None and loss_curve([["x", 1.0], [1]]) is None
    chart = loss_curve([[5, 2.0], [10, "1.5"], ["bad", 1.0], [15, float("nan")], [20, 0.5]])
    assert [d.text for d in chart.series[0].dots] == [
        "training loss @ 5: 2.0000",
        "training loss @ 10: 1.5000",
        "training loss @ 20: 0.5000",
    ]
    assert chart.legend == [] and (chart.width, chart.height) == (640, 260)
    svg = _svg(chart)
    points = re.search(r'<polyline [^>]*points="([^"]+)"', svg).group(1).split()
    assert len(points) == 3 and 'aria-label="Training loss"' in svg


def test_series_names_are_escaped_in_the_svg():
    from retrain_airflow.ui.charts import Series

    chart = _chart(
        series=[Series("<script>alert(1)</script>", [(0.0, 0.1), (1.0, 0.2)], "#000")],
        title='a "title"',
        y_label="<y>",
        x_ticks=[(0.0, "<b>0</b>"), (1.0, "1")],
    )
    svg = _svg(chart)
    assert "<script>" not in svg and "<b>0</b>" not in svg
    assert "&lt;script&gt;alert(1)&lt;/script&gt; @ &lt;b&gt;0&lt;/b&gt;: 0.1000" in svg
    assert 'aria-label="a &#34;title&#34;"' in svg and "&lt;y&gt;</text>" in svg
