"""One series' replay drawn as a self-contained SVG: y, the forecast band, the forecast and the flagged points.

No plotting library: a long series is reduced to one min/max pair per pixel column (the envelope a
line plot at that width would show), so a month of one-minute samples draws as a few kilobytes.
"""

from __future__ import annotations

import html
from datetime import UTC, datetime

import numpy as np

WIDTH, HEIGHT, MARGIN = 1100, 260, 48
MAX_MARKERS = 2000


def svg(title: str, times: np.ndarray, y: np.ndarray, yhat: np.ndarray, lower: np.ndarray, upper: np.ndarray,
        flagged: np.ndarray) -> str:
    """An SVG figure of one series; `flagged` marks the samples that scored above 1."""
    values = np.concatenate([a[np.isfinite(a)] for a in (y, lower, upper)])
    if len(times) < 2 or not len(values):
        return f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="40"><text x="4" y="24">' \
               f'{html.escape(title)}: nothing to draw</text></svg>'
    low, high = float(values.min()), float(values.max())
    if high <= low:
        low, high = low - 1, high + 1
    scale = _Scale(float(times[0]), float(times[-1]), float(low), float(high))
    columns = scale.column(times)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'font-family="sans-serif" font-size="11">',
        f'<text x="{MARGIN}" y="14" font-weight="bold">{html.escape(title)}</text>',
        _frame(scale),
        _band(scale, columns, lower, upper),
        _envelope(scale, columns, yhat, "#2b7bba", 1.0, "4 2"),
        _envelope(scale, columns, y, "#222", 1.0, ""),
        _markers(scale, times, y, flagged),
        "</svg>",
    ]
    return "\n".join(p for p in parts if p)


class _Scale:
    def __init__(self, t0: float, t1: float, low: float, high: float):
        self.t0, self.t1, self.low, self.high = t0, max(t1, t0 + 1), low, high

    def column(self, times: np.ndarray) -> np.ndarray:
        inner = WIDTH - 2 * MARGIN
        return np.clip(((times - self.t0) / (self.t1 - self.t0) * (inner - 1)).astype(np.int64), 0, inner - 1)

    def x(self, column: np.ndarray) -> np.ndarray:
        return MARGIN + column

    def y(self, value: np.ndarray) -> np.ndarray:
        top, bottom = 22, HEIGHT - 22
        return bottom - (np.asarray(value) - self.low) / (self.high - self.low) * (bottom - top)


def _per_column(columns: np.ndarray, values: np.ndarray, reduce: np.ufunc, fill: float) -> np.ndarray:
    out = np.full(WIDTH - 2 * MARGIN, fill)
    finite = np.isfinite(values)
    reduce.at(out, columns[finite], values[finite])
    return out


def _band(scale: _Scale, columns: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> str:
    lo = _per_column(columns, lower, np.minimum, np.inf)
    hi = _per_column(columns, upper, np.maximum, -np.inf)
    shown = np.isfinite(lo) & np.isfinite(hi)
    paths = []
    for run in _runs(shown):
        xs = scale.x(run)
        top = " ".join(f"{x},{y:.1f}" for x, y in zip(xs, scale.y(hi[run])))
        bottom = " ".join(f"{x},{y:.1f}" for x, y in zip(xs[::-1], scale.y(lo[run][::-1])))
        paths.append(f'<polygon points="{top} {bottom}" fill="#9ecae1" fill-opacity="0.55" stroke="none"/>')
    return "\n".join(paths)


def _envelope(scale: _Scale, columns: np.ndarray, values: np.ndarray, colour: str, width: float, dash: str) -> str:
    lo = _per_column(columns, values, np.minimum, np.inf)
    hi = _per_column(columns, values, np.maximum, -np.inf)
    shown = np.isfinite(lo)
    lines = []
    style = f'fill="none" stroke="{colour}" stroke-width="{width}"' + (f' stroke-dasharray="{dash}"' if dash else "")
    for run in _runs(shown):
        points = []
        for column in run:
            x = scale.x(column)
            points.append(f"{x},{scale.y(lo[column]):.1f} {x},{scale.y(hi[column]):.1f}")
        lines.append(f'<polyline points="{" ".join(points)}" {style}/>')
    return "\n".join(lines)


def _markers(scale: _Scale, times: np.ndarray, y: np.ndarray, flagged: np.ndarray) -> str:
    rows = np.flatnonzero(flagged & np.isfinite(y))[:MAX_MARKERS]
    xs, ys = scale.x(scale.column(times[rows])), scale.y(y[rows])
    return "\n".join(f'<circle cx="{x}" cy="{v:.1f}" r="2.5" fill="#d62728"/>' for x, v in zip(xs, ys))


def _frame(scale: _Scale) -> str:
    bottom, top = HEIGHT - 22, 22
    left, right = MARGIN, WIDTH - MARGIN
    ticks = []
    for value in np.linspace(scale.low, scale.high, 5):
        y = scale.y(value)
        ticks.append(f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end">{value:.4g}</text>')
    for fraction in (0.0, 0.5, 1.0):
        t = scale.t0 + fraction * (scale.t1 - scale.t0)
        x = left + fraction * (right - left)
        stamp = datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M")
        anchor = "start" if fraction == 0 else "end" if fraction == 1 else "middle"
        ticks.append(f'<text x="{x:.1f}" y="{HEIGHT - 6}" text-anchor="{anchor}">{stamp}</text>')
    box = f'<rect x="{left}" y="{top}" width="{right - left}" height="{bottom - top}" fill="none" stroke="#ccc"/>'
    return box + "\n" + "\n".join(ticks)


def _runs(mask: np.ndarray) -> list[np.ndarray]:
    """Consecutive runs of True, as arrays of indices."""
    index = np.flatnonzero(mask)
    if not len(index):
        return []
    breaks = np.flatnonzero(np.diff(index) > 1) + 1
    return np.split(index, breaks)
