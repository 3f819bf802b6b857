"""What a backtest plot draws, reduced to a screen's width, and the ticks of its axes.

A long series is reduced to its extremes: per pixel-wide bucket the samples with the smallest and the largest
value (the envelope a line at that width would show), the band's outer edges, the largest score and the most
anomalous sample, so a month of one-minute samples draws as a few thousand points and no spike is lost.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

BUCKETS = 1000
TIME_STEPS = (60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400, 2 * 86400, 7 * 86400, 14 * 86400,
              28 * 86400, 91 * 86400, 365 * 86400)


@dataclass(frozen=True)
class PlotSeries:
    """One series ready to draw; `flagged` is y where the score went above 1 (NaN elsewhere)."""

    times: np.ndarray
    y: np.ndarray
    yhat: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    score: np.ndarray
    flagged: np.ndarray
    warmup: tuple[float, float] | None  # from the first sample to the first score (to the end: never scored)


def reduce(times: np.ndarray, y: np.ndarray, yhat: np.ndarray, lower: np.ndarray, upper: np.ndarray,
           score: np.ndarray, buckets: int = BUCKETS) -> PlotSeries:
    """The series' envelope over at most `buckets` buckets (two points each), and its warm-up span."""
    times = times.astype(float)
    warmup = _warmup(times, y, score)
    n = len(times)
    if n <= 2 * buckets:
        flagged = np.where(score > 1.0, y, np.nan)
        return PlotSeries(times, y, yhat, lower, upper, score, flagged, warmup)
    bucket = np.arange(n) * buckets // n
    starts = np.searchsorted(bucket, np.arange(buckets))
    lowest, highest, worst = (_arg_extreme(bucket, starts, v) for v in (y, -y, -np.nan_to_num(score, nan=-np.inf)))
    picks = np.unique(np.concatenate([lowest, highest]))
    owner = bucket[picks]
    with np.errstate(invalid="ignore"):
        band_low = np.fmin.reduceat(lower, starts)[owner]
        band_high = np.fmax.reduceat(upper, starts)[owner]
        top_score = np.fmax.reduceat(score, starts)
    first_of_bucket = np.r_[True, owner[1:] != owner[:-1]]
    flagged = np.where(first_of_bucket & (top_score[owner] > 1.0), y[worst[owner]], np.nan)
    return PlotSeries(times[picks], y[picks], yhat[picks], band_low, band_high, top_score[owner], flagged, warmup)


def _arg_extreme(bucket: np.ndarray, starts: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Per bucket the index of its smallest value (NaN last)."""
    order = np.lexsort((np.where(np.isnan(values), np.inf, values), bucket))
    return order[starts]


def _warmup(times: np.ndarray, y: np.ndarray, score: np.ndarray) -> tuple[float, float] | None:
    present = np.flatnonzero(~np.isnan(y))
    if not len(present):
        return None
    scored = np.flatnonzero(~np.isnan(score))
    start = float(times[present[0]])
    end = float(times[scored[0]]) if len(scored) else float(times[-1])
    return (start, end) if end > start or not len(scored) else None


def value_ticks(low: float, high: float, count: int = 6) -> list[float]:
    """Round values (1, 2 or 5 times a power of ten apart) spanning [low, high]."""
    span = high - low if high > low else max(abs(high), 1.0)
    raw = span / max(count - 1, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(low / step) * step
    return [round(first + i * step, 12) for i in range(int((high - first) / step + 1e-9) + 1)]


def time_ticks(t0: float, t1: float, count: int = 8) -> list[tuple[float, str]]:
    """Ticks at a round step (minutes to a year) between t0 and t1, in UTC: the date at midnight (and on the
    first tick), the time of day between."""
    step = next((s for s in TIME_STEPS if (t1 - t0) / s <= count), TIME_STEPS[-1])
    first = math.ceil(t0 / step) * step
    ticks = [float(first + i * step) for i in range(int((t1 - first) // step) + 1)]
    return [(t, stamp(t, "%b %d" if i == 0 or t % 86400 == 0 else "%H:%M")) for i, t in enumerate(ticks)]


def stamp(t: float, fmt: str = "%Y-%m-%d %H:%M") -> str:
    """A UTC time as text."""
    return datetime.fromtimestamp(t, UTC).strftime(fmt)
