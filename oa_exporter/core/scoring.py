"""The anomaly-score contract, vectorised over every series of a rule.

    s = (y - yhat) / (yhat_upper - yhat)   when y >= yhat
    s = (yhat - y) / (yhat - yhat_lower)   when y <  yhat

0 at the forecast, 1 on the band's edge, > 1 outside it. `direction` zeroes the side that may not alarm.
A band side of zero width (a constant series) is floored at MIN_WIDTH_RELATIVE * max(|yhat|, 1), so the
score stays finite: 0 when y equals the forecast, very large when it does not.
A series without a forecast (not ready) or without a sample scores NaN, and NaN is never exported.

With a rule's `repeat_window` (the default preset: 6h), a repeat does not page again (Repeats):

    s' = s / max(1, p)

p being the largest score the series had on the same side of its forecast within the window before the
excursion in progress began (an excursion: consecutive samples scoring above 1 on one side; outside one,
before this sample). A spike no larger than one of the last hours on its side scores <= 1, a larger one still pages,
and a lasting shift keeps the divisor it started with: it pages throughout when it is larger than what
its side saw in the window before it.

With a rule's `settle_after` (the default preset: 1h), a lasting change becomes the new normal unless it
keeps growing (Settling, applied before Repeats): once an excursion has gone on for `settle_after`,

    s' = s / max(1, m)

m being the largest score of the excursion before this sample. A shift that stays, or a drift that slows,
stops paging after its first `settle_after`; a drift that keeps moving away from the forecast keeps paging,
each new extreme of the excursion once. An excursion here is the same as above: consecutive samples scoring
above 1 on one side; a sample without a score (NaN) neither continues nor ends one.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from .domain import Direction, SeriesKey

MIN_WIDTH_RELATIVE = 1e-9


def anomaly_score(
    y: np.ndarray,
    yhat: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    direction: Direction = Direction.BOTH,
) -> np.ndarray:
    """Score every sample against its band (see module docstring)."""
    above = y >= yhat
    width = np.where(above, upper - yhat, yhat - lower)
    floor = MIN_WIDTH_RELATIVE * np.maximum(np.abs(yhat), 1.0)
    with np.errstate(invalid="ignore"):
        score = np.abs(y - yhat) / np.maximum(width, floor)
    if direction is Direction.ABOVE:
        score = np.where(above | np.isnan(score), score, 0.0)
    elif direction is Direction.BELOW:
        score = np.where(~above | np.isnan(score), score, 0.0)
    return score


def paging_side(score: np.ndarray, below: np.ndarray) -> np.ndarray:
    """Per sample, 1 + its side of the forecast (0 above, 1 below) where it scores above 1, else 0 (NaN: 0)."""
    return np.where(score > 1.0, below.astype(np.int8) + 1, 0).astype(np.int8)


class SeriesRows:
    """Per-series state between cycles, in arrays whose last axis has one row per series, found by key.

    A subclass names its arrays in COLUMNS (name: leading shape and fill value; the fill's type is the
    array's). Rows are added for new series; once the gone ones outnumber the present ones, only the present
    ones are kept. The rows of an unchanged series list are reused: no Python loop per series per cycle.
    """

    COLUMNS: ClassVar[dict[str, tuple[tuple[int, ...], Any]]] = {}

    def __init__(self) -> None:
        self.rows_of: dict[SeriesKey, int] = {}
        self._keys: list[SeriesKey] = []
        self._rows = np.empty(0, np.int64)
        for name, (lead, fill) in self.COLUMNS.items():
            setattr(self, name, np.full((*lead, 0), fill))

    def rows(self, keys: list[SeriesKey]) -> np.ndarray:
        """The state row of each key; rows are added for new series (and the state of gone ones dropped)."""
        if keys == self._keys:
            return self._rows
        if len(self.rows_of) > 2 * len(keys) + 1000:  # series come and go: keep only the present ones
            self._keep(keys)
        for key in keys:
            self.rows_of.setdefault(key, len(self.rows_of))
        for name, (lead, fill) in self.COLUMNS.items():
            array = getattr(self, name)
            grown = len(self.rows_of) - array.shape[-1]
            setattr(self, name, np.pad(array, [(0, 0)] * len(lead) + [(0, grown)], constant_values=fill))
        self._keys, self._rows = keys, np.fromiter((self.rows_of[k] for k in keys), np.int64, len(keys))
        return self._rows

    def _keep(self, keys: list[SeriesKey]) -> None:
        present = [k for k in keys if k in self.rows_of]
        kept = np.fromiter((self.rows_of[k] for k in present), np.int64, len(present))
        self.rows_of = dict(zip(present, range(len(present)), strict=True))
        for name in self.COLUMNS:
            setattr(self, name, getattr(self, name)[..., kept])


class Repeats(SeriesRows):
    """Per series, what the repeat rule remembers between cycles (see module docstring), in arrays by row."""

    COLUMNS: ClassVar[dict[str, tuple[tuple[int, ...], Any]]] = {
        "peak": ((2,), 0.0),  # largest score above / below the forecast ...
        "since": ((2,), 0.0),  # ... and when it was reached
        "divisor": ((), 1.0),  # of the excursion in progress
        "paging": ((), np.int8(0)),  # 1 + the side of the last sample when it scored above 1, else 0
    }
    peak: np.ndarray
    since: np.ndarray
    divisor: np.ndarray
    paging: np.ndarray

    def damp(self, keys: list[SeriesKey], timestamp: float, score: np.ndarray, below: np.ndarray,
             window: float) -> np.ndarray:
        """The scores of one cycle with repeats within `window` seconds divided down."""
        rows, side = self.rows(keys), below.astype(np.int64)
        recent = np.where(timestamp - self.since[side, rows] < window, self.peak[side, rows], 0.0)
        paging = paging_side(score, below)
        onset = (paging == 0) | (paging != self.paging[rows])
        self.divisor[rows] = np.where(onset, np.maximum(recent, 1.0), self.divisor[rows])
        self.paging[rows] = paging
        higher = score >= recent
        self.peak[side[higher], rows[higher]] = score[higher]
        self.since[side[higher], rows[higher]] = timestamp
        return score / self.divisor[rows]


class Settling(SeriesRows):
    """Per series, the excursion in progress that `settle_after` follows (see module docstring), by row."""

    COLUMNS: ClassVar[dict[str, tuple[tuple[int, ...], Any]]] = {
        "onset": ((), np.nan),  # when the excursion in progress began; NaN: none
        "side": ((), np.int8(0)),  # 1 + its side of the forecast; 0: none
        "peak": ((), 0.0),  # its largest score so far
    }
    onset: np.ndarray
    side: np.ndarray
    peak: np.ndarray

    def settle(self, keys: list[SeriesKey], timestamp: float, score: np.ndarray, below: np.ndarray,
               after: float) -> np.ndarray:
        """The scores of one cycle, those of excursions older than `after` seconds divided by their peak."""
        rows = self.rows(keys)
        scored = ~np.isnan(score)
        side = paging_side(score, below)
        going_on = (side > 0) & (side == self.side[rows])
        onset = np.where(going_on, self.onset[rows], np.where(side > 0, timestamp, np.nan))
        peak = np.where(going_on, self.peak[rows], 0.0)
        with np.errstate(invalid="ignore"):
            settled = timestamp - onset >= after  # NaN onset: no excursion, nothing settles
        self.onset[rows] = np.where(scored, onset, self.onset[rows])
        self.side[rows] = np.where(scored, side, self.side[rows])
        self.peak[rows] = np.where(scored, np.maximum(peak, score), self.peak[rows])  # read only while going on
        return np.where(settled, score / np.maximum(peak, 1.0), score)
