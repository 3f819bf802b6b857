"""Excursions in progress, and holding them back from a fit.

A fit that starts while a series is outside its band would learn the excursion as normal: a model that
forecasts from the latest samples (lags, a level of the last hours) then forecasts the excursion itself, and
the series stops paging while the incident goes on. So the daemon follows, from the scores it computes
anyway, when each series' run of samples outside its band began (Excursions, one numpy pass per cycle),
and a fit sees the samples of an excursion younger than the rule's `new_normal_after` as missing
(held_back): every engine then fits, and forecasts from, what the series did before the excursion (engines
carry the last value over trailing gaps, SeasonalProfile takes its level from the samples it has). An
excursion that lasts longer is the new normal: from then on it is fitted like any other sample.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from .domain import Rule, RuleScores, SeriesKey, SeriesMatrix

NEW_NORMAL_AFTER = Rule.new_normal_after  # the default bound, every rule's unless it sets its own


@dataclass(frozen=True)
class Ongoing:
    """One series' excursion in progress: samples after `after` (its last sample inside the band) are part
    of it, and it was first seen outside at `since`."""

    after: float
    since: float


class Excursions:
    """Per series, the excursion outside its band in progress (NaN: none), updated from each cycle's scores."""

    def __init__(self) -> None:
        self.rows_of: dict[SeriesKey, int] = {}
        self.keys: list[SeriesKey] = []
        self.last = np.empty(0)  # time of the series' latest sample seen (-inf: never)
        self.after = np.empty(0)  # of the excursion in progress: the sample seen before it began
        self.since = np.empty(0)  # ... and its first sample seen outside the band; NaN: none in progress
        self._seen: list[SeriesKey] = []
        self._rows = np.empty(0, np.int64)

    def observe(self, scores: RuleScores) -> None:
        """Take one cycle's results: a sample outside its band starts or continues an excursion, one inside ends
        it; a series without a forecast keeps its state."""
        rows = self._rows_of(scores.keys)
        with np.errstate(invalid="ignore"):
            outside = (scores.y > scores.upper) | (scores.y < scores.lower)
            inside = (scores.y >= scores.lower) & (scores.y <= scores.upper)
        starting = rows[outside & np.isnan(self.since[rows])]
        before = self.last[starting]  # never seen before: the excursion is this sample on
        self.after[starting] = np.where(np.isfinite(before), before, scores.timestamp - 1e-6)
        self.since[starting] = scores.timestamp
        self.since[rows[inside]] = np.nan
        self.last[rows[~np.isnan(scores.y)]] = scores.timestamp

    def ongoing(self) -> dict[SeriesKey, Ongoing]:
        """Every excursion in progress, by series."""
        return {self.keys[row]: Ongoing(float(self.after[row]), float(self.since[row]))
                for row in np.flatnonzero(~np.isnan(self.since)).tolist()}

    def _rows_of(self, keys: list[SeriesKey]) -> np.ndarray:
        if keys == self._seen:  # one C-level comparison while the series set does not change
            return self._rows
        if len(self.rows_of) > 2 * len(keys) + 1000:  # series come and go: keep only the present ones
            self._keep(keys)
        for key in keys:
            if key not in self.rows_of:
                self.rows_of[key] = len(self.keys)
                self.keys.append(key)
        grown = len(self.keys) - len(self.since)
        self.last = np.pad(self.last, (0, grown), constant_values=-np.inf)
        self.after = np.pad(self.after, (0, grown))
        self.since = np.pad(self.since, (0, grown), constant_values=np.nan)
        self._seen, self._rows = keys, np.fromiter((self.rows_of[k] for k in keys), np.int64, len(keys))
        return self._rows

    def _keep(self, keys: list[SeriesKey]) -> None:
        present = [k for k in keys if k in self.rows_of]
        kept = np.fromiter((self.rows_of[k] for k in present), np.int64, len(present))
        self.rows_of = {key: row for row, key in enumerate(present)}
        self.keys, self.last, self.after, self.since = present, self.last[kept], self.after[kept], self.since[kept]


@contextmanager
def held_back(history: SeriesMatrix, ongoing: Mapping[SeriesKey, Ongoing], now: float,
              bound: float) -> Iterator[int]:
    """Within the block, the samples of every excursion younger than `bound` (seconds, at `now`) are missing
    from `history`; yields how many series had samples held back. The matrix is changed in place (no copy of
    a rule's whole history: it may be a view of what a TSDB adapter holds) and restored on leaving, so
    whatever reads it inside the block (the fit) must copy what it keeps. A bound of 0 holds nothing back."""
    saved: list[tuple[int, np.ndarray, np.ndarray]] = []
    if bound > 0 and ongoing:
        times = history.timestamps
        for row, key in enumerate(history.keys):  # once per fit, not per cycle
            excursion = ongoing.get(key)
            if excursion is not None and now - excursion.since < bound:
                columns = np.flatnonzero(times > excursion.after)
                saved.append((row, columns, history.values[row, columns].copy()))
                history.values[row, columns] = np.nan
    try:
        yield len(saved)
    finally:
        for row, columns, values in saved:
            history.values[row, columns] = values
