"""A backtest as one self-contained HTML page: per rule its table and warm-up note, and every series' chart.

The charts are drawn in the browser by uPlot (vendored in vendor/, inlined with the data), each when it
scrolls into view: the values with the forecast band, and the score with the threshold 1 on a panel of its
own, the warm-up shaded, a legend and a title naming the rule and the series. The page needs no server and
no network: it can be mailed or attached to a ticket as it is.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from importlib import resources

import numpy as np

from ...core.durations import format_duration
from .plot_data import PlotSeries, stamp
from .summary import RuleRun, heading, table_rows, warmup_note

STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table.summary{border-collapse:collapse;margin:.5em 0}
table.summary td,table.summary th{padding:2px 10px;text-align:right;border-bottom:1px solid #eee}
table.summary td:first-child,table.summary th:first-child{text-align:left}
p.warmup-note{background:#f4f4f4;padding:.5em .8em;max-width:70em}
figure.series{margin:1.5em 0}
.key-warmup{display:inline-block;width:1.2em;height:.8em;background:rgba(0,0,0,.09);vertical-align:middle}
.u-title{font-size:14px;text-align:left}
.u-legend .u-series.oa-warmup-key th::after{content:''}
"""


def chart_data(title: str, plot: PlotSeries, level: float, unit: str | None, min_history: float = 0.0) -> str:
    """One series' chart as the JSON the page's script draws (rounded to 6 significant digits, null: none)."""
    scores = plot.score[np.isfinite(plot.score)]
    return json.dumps({
        "title": title, "unit": unit or "", "level": f"{round(level, 6):g}",
        "t": [int(t) if float(t).is_integer() else round(float(t), 3) for t in plot.times.tolist()],
        "y": _numbers(plot.y), "yhat": _numbers(plot.yhat), "lower": _numbers(plot.lower),
        "upper": _numbers(plot.upper), "score": _numbers(plot.score), "flagged": _numbers(plot.flagged),
        "score_max": float(scores.max()) if len(scores) else None,
        "warmup": list(plot.warmup) if plot.warmup else None,
        "warmup_reason": f"min_history {format_duration(min_history)}" if min_history else "",
    }, separators=(",", ":"), allow_nan=False)


def render(runs: Sequence[RuleRun], charts: Sequence[Sequence[str]], span: tuple[float, float] | None) -> str:
    """The page: `charts[i][j]` is chart_data of series j of runs[i]."""
    series = sum(len(r.series) for r in runs)
    anomalies = sum(s.anomalies for r in runs for s in r.summaries)
    when = f" from {stamp(span[0])} to {stamp(span[1])} UTC" if span else ""
    names = ", ".join(r.rule.name for r in runs)
    parts = ["<!doctype html><html lang='en'><head><meta charset='utf-8'>",
             f"<title>oa-exporter backtest: {html.escape(names)}</title>",
             f"<style>{_vendor('uPlot.min.css')}{STYLE}</style></head><body>",
             "<h1>oa-exporter backtest</h1>",
             f"<p class='run'>{len(runs)} rule{'s' * (len(runs) != 1)}, {series:,} series{when}: "
             f"{anomalies:,} anomalies (score &gt; 1).</p>"]
    if len(runs) > 1:
        parts.append("<nav><ul>" + "".join(f"<li><a href='#rule-{i}'>{html.escape(r.rule.name)}</a></li>"
                                           for i, r in enumerate(runs)) + "</ul></nav>")
    data: list[str] = []
    for i, run in enumerate(runs):
        parts.append(_section(i, run, len(data)))
        data.extend(charts[i])
    payload = "[" + ",".join(data) + "]"
    parts += [f"<script type='application/json' id='oa-data'>{_script_safe(payload)}</script>",
              f"<script>{_vendor('uPlot.iife.min.js')}</script>",
              f"<script>{resources.files(__package__).joinpath('report.js').read_text()}</script>",
              "</body></html>"]
    return "\n".join(parts)


def _section(index: int, run: RuleRun, first_chart: int) -> str:
    rows = table_rows(run)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>" for cells in rows[1:])
    figures = "".join(
        f"<figure class='series' id='series-{first_chart + j}' aria-label='{html.escape(run.rule.name)} / "
        f"{html.escape(name)}'><div class='chart' data-index='{first_chart + j}'><div class='values'></div>"
        f"<div class='scores'></div></div></figure>" for j, (name, _) in enumerate(run.series))
    return (f"<section class='rule' id='rule-{index}'><h2>{html.escape(heading(run))}</h2>"
            f"<p class='expr'><code>{html.escape(run.rule.expr)}</code></p>"
            f"<table class='summary'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
            f"<p class='warmup-note'>{html.escape(warmup_note(run))}</p>{figures}</section>")


def _numbers(values: np.ndarray) -> list[float | None]:
    return [float(f"{v:.6g}") if math.isfinite(v) else None for v in values.tolist()]


def _vendor(name: str) -> str:
    return resources.files(__package__).joinpath("vendor", name).read_text(encoding="utf-8")


def _script_safe(text: str) -> str:
    """JSON inside a <script> element: no '</' can close it early."""
    return text.replace("</", "<\\/")
