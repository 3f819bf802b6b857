"""One series' replay as a self-contained SVG: values with the forecast band, and the score on its own panel.

Top panel: y, the forecast, the band at the rule's level and the samples that scored above 1; bottom panel:
the anomaly score with the threshold 1. The warm-up (samples before the first score) is shaded on both, and
a legend names every mark. Drawn from plot_data's envelope, so a month of one-minute samples is a few tens of
kilobytes; no plotting library is needed for a picture this plain, and it renders the same everywhere.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

import numpy as np

from ...core.durations import format_duration
from .plot_data import PlotSeries, stamp, time_ticks, value_ticks
from .units import si

WIDTH, LEFT, RIGHT = 1100, 80, 20
VALUES = (62, 300)  # top and bottom of the values panel
SCORES = (322, 422)  # and of the score panel
HEIGHT = 460
SCORE_TOP = 10.0  # the score axis ends here; larger scores are drawn on its edge
COLOURS = {"y": "#222", "yhat": "#2b7bba", "band": "#9ecae1", "flagged": "#d62728", "warmup": "#e5e5e5",
           "threshold": "#d62728", "score": "#6a3d9a"}


def svg(title: str, plot: PlotSeries, level: float, unit: str | None, min_history: float = 0.0) -> str:
    """An SVG figure of one series; `title` names the rule and the series, `min_history` explains the warm-up."""
    values = np.concatenate([a[np.isfinite(a)] for a in (plot.y, plot.lower, plot.upper)])
    if len(plot.times) < 2 or not len(values):
        return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="40" font-family="sans-serif">'
                f'<text x="4" y="24">{html.escape(title)}: nothing to draw</text></svg>')
    t0, t1 = float(plot.times[0]), float(plot.times[-1])
    low, high = float(values.min()), float(values.max())
    pad = (high - low) * 0.05 or max(abs(high), 1.0) * 0.05
    top = _Panel(t0, t1, low - pad, high + pad, *VALUES)
    scores = plot.score[np.isfinite(plot.score)]
    bottom = _Panel(t0, t1, 0.0, float(np.clip(scores.max() if len(scores) else 2.0, 2.0, SCORE_TOP)) * 1.05,
                    *SCORES)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'font-family="sans-serif" font-size="11">',
        f'<title>{html.escape(title)}</title>',
        '<rect width="100%" height="100%" fill="#fff"/>',
        f'<text x="{LEFT}" y="18" font-size="14" font-weight="bold">{html.escape(title)}</text>',
        _legend(level),
        _warmup(plot, top, min_history), _warmup(plot, bottom, min_history),
        _axes(top, unit, "value" + (f" ({unit})" if unit else "")), _axes(bottom, None, "anomaly score"),
        _area(top, plot.times, plot.lower, plot.upper, COLOURS["band"]),
        _line(top, plot.times, plot.yhat, COLOURS["yhat"], "4 2", "forecast"),
        _line(top, plot.times, plot.y, COLOURS["y"], "", "y"),
        _dots(top, plot.times, plot.flagged),
        _threshold(bottom),
        _line(bottom, plot.times, np.minimum(plot.score, bottom.high), COLOURS["score"], "", "score"),
        _dots(bottom, plot.times, np.where(np.isfinite(plot.flagged), np.minimum(plot.score, bottom.high), np.nan)),
        _time_axis(top, bottom),
        "</svg>",
    ]
    return "\n".join(p for p in parts if p)


class _Panel:
    def __init__(self, t0: float, t1: float, low: float, high: float, top: int, bottom: int):
        self.t0, self.t1, self.low, self.high = t0, max(t1, t0 + 1), low, high
        self.top, self.bottom = top, bottom

    def x(self, times: np.ndarray | float) -> np.ndarray:
        return LEFT + (np.asarray(times) - self.t0) / (self.t1 - self.t0) * (WIDTH - LEFT - RIGHT)

    def y(self, values: np.ndarray | float) -> np.ndarray:
        share = (np.asarray(values) - self.low) / (self.high - self.low)
        return self.bottom - share * (self.bottom - self.top)


def _legend(level: float) -> str:
    entries = [("line", COLOURS["y"], "", "y (the series)"), ("line", COLOURS["yhat"], "4 2", "forecast (yhat)"),
               ("box", COLOURS["band"], "", f"band ({round(level, 6):g} %)"),
               ("dot", COLOURS["flagged"], "", "anomaly (score > 1)"),
               ("line", COLOURS["score"], "", "anomaly score"), ("line", COLOURS["threshold"], "6 3", "threshold 1"),
               ("box", COLOURS["warmup"], "", "warm-up (not scored)")]
    parts, x = ['<g class="legend">'], LEFT
    for kind, colour, dash, label in entries:
        if kind == "line":
            extra = f' stroke-dasharray="{dash}"' if dash else ""
            parts.append(f'<line x1="{x}" y1="36" x2="{x + 18}" y2="36" stroke="{colour}" stroke-width="2"{extra}/>')
        elif kind == "box":
            parts.append(f'<rect x="{x}" y="31" width="18" height="10" fill="{colour}"/>')
        else:
            parts.append(f'<circle cx="{x + 9}" cy="36" r="3" fill="{colour}"/>')
        parts.append(f'<text x="{x + 23}" y="40">{html.escape(label)}</text>')
        x += 28 + 6 * len(label)
    parts.append("</g>")
    return "\n".join(parts)


def _warmup(plot: PlotSeries, panel: _Panel, min_history: float) -> str:
    if plot.warmup is None:
        return ""
    x0, x1 = (float(v) for v in panel.x(np.array(plot.warmup)))
    why = f"warm-up: min_history {format_duration(min_history)}" if min_history and x1 - x0 > 140 else "warm-up"
    label = f'<text x="{x0 + 4:.1f}" y="{panel.top + 12}" fill="#777">{why}</text>' if panel.top == VALUES[0] else ""
    return (f'<rect class="warmup" x="{x0:.1f}" y="{panel.top}" width="{max(x1 - x0, 1):.1f}" '
            f'height="{panel.bottom - panel.top}" fill="{COLOURS["warmup"]}"/>' + label)


def _axes(panel: _Panel, unit: str | None, label: str) -> str:
    parts = [f'<rect x="{LEFT}" y="{panel.top}" width="{WIDTH - LEFT - RIGHT}" height="{panel.bottom - panel.top}" '
             f'fill="none" stroke="#bbb"/>']
    if panel.top == VALUES[0]:
        ticks = value_ticks(panel.low, panel.high)
    else:  # the score: its top, and 0 unless it would overlap the threshold's label
        ticks = [panel.high / 1.05] + ([0.0] if panel.y(0.0) - panel.y(1.0) >= 12 else [])
    for value in ticks:
        y = float(panel.y(value))
        parts.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{WIDTH - RIGHT}" y2="{y:.1f}" stroke="#eee"/>')
        parts.append(f'<text x="{LEFT - 5}" y="{y + 4:.1f}" text-anchor="end">{html.escape(si(value, unit))}</text>')
    middle = (panel.top + panel.bottom) / 2
    parts.append(f'<text x="14" y="{middle:.0f}" transform="rotate(-90 14 {middle:.0f})" text-anchor="middle">'
                 f'{html.escape(label)}</text>')
    return "\n".join(parts)


def _time_axis(top: _Panel, bottom: _Panel) -> str:
    parts = []
    for t, label in time_ticks(top.t0, top.t1):
        x = float(top.x(t))
        for panel in (top, bottom):
            parts.append(f'<line x1="{x:.1f}" y1="{panel.top}" x2="{x:.1f}" y2="{panel.bottom}" stroke="#eee"/>')
        parts.append(f'<text x="{x:.1f}" y="{bottom.bottom + 16}" text-anchor="middle">{label}</text>')
    parts.append(f'<text x="{WIDTH - RIGHT}" y="{bottom.bottom + 32}" text-anchor="end" fill="#777">'
                 f'{stamp(top.t0)} to {stamp(top.t1)} UTC</text>')
    return "\n".join(parts)


def _area(panel: _Panel, times: np.ndarray, lower: np.ndarray, upper: np.ndarray, colour: str) -> str:
    shown = np.isfinite(lower) & np.isfinite(upper)
    polygons = []
    for run in _runs(shown):
        xs = panel.x(times[run])
        edge = " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(xs, panel.y(upper[run])))
        back = " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(xs[::-1], panel.y(lower[run][::-1])))
        polygons.append(f'<polygon class="band" points="{edge} {back}" fill="{colour}" fill-opacity="0.6"/>')
    return "\n".join(polygons)


def _line(panel: _Panel, times: np.ndarray, values: np.ndarray, colour: str, dash: str, name: str) -> str:
    extra = f' stroke-dasharray="{dash}"' if dash else ""
    lines = []
    for run in _runs(np.isfinite(values)):
        points = " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(panel.x(times[run]), panel.y(values[run])))
        lines.append(f'<polyline class="{name}" points="{points}" fill="none" stroke="{colour}" stroke-width="1.2"'
                     f'{extra}/>')
    return "\n".join(lines)


def _dots(panel: _Panel, times: np.ndarray, values: np.ndarray) -> str:
    rows = np.flatnonzero(np.isfinite(values))
    xs, ys = panel.x(times[rows]), panel.y(values[rows])
    return "\n".join(f'<circle class="anomaly" cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{COLOURS["flagged"]}"/>'
                     for x, y in zip(xs, ys))


def _threshold(panel: _Panel) -> str:
    y = float(panel.y(1.0))
    return (f'<line class="threshold" x1="{LEFT}" y1="{y:.1f}" x2="{WIDTH - RIGHT}" y2="{y:.1f}" '
            f'stroke="{COLOURS["threshold"]}" stroke-dasharray="6 3"/>'
            f'<text x="{LEFT - 5}" y="{y + 4:.1f}" text-anchor="end" fill="{COLOURS["threshold"]}">1</text>')


def _runs(mask: np.ndarray) -> Sequence[np.ndarray]:
    """Consecutive runs of True, as arrays of indices."""
    index = np.flatnonzero(mask)
    if not len(index):
        return []
    return np.split(index, np.flatnonzero(np.diff(index) > 1) + 1)
