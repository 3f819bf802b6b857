"""A TSDB that holds the past in memory: what a backtest's Trainer queries instead of the live server.

It answers range queries on the grid it holds (multiples of its step, as the Trainer asks for them),
like Prometheus: a series without a sample in the range is not returned. The answer starts at the first
step where any series has a sample (the steps before hold nothing to learn from): a 56-day train.window
over a week of history is a week of columns to fit, not eight. Instant queries answer the grid point at or
before the time asked.
"""

from __future__ import annotations

import math

import numpy as np

from ...core.domain import InstantVector, SeriesMatrix
from ...core.errors import QueryError


class ReplayTsdb:
    """TsdbClient over one SeriesMatrix; every expr names the same series (a backtest replays one rule)."""

    def __init__(self, history: SeriesMatrix):
        self.history = history
        present = ~np.isnan(history.values).all(axis=0)
        self._first = int(np.argmax(present)) if present.any() else history.values.shape[1]

    async def query_range(self, expr: str, start: float, end: float, step: float) -> SeriesMatrix:
        held = self.history
        if not math.isclose(step, held.step):
            raise QueryError(f"the replayed history has a step of {held.step}s, not {step}s")
        points = int(round((end - start) / step)) + 1
        first = int(round((start - held.start) / step))
        skip = min(max(self._first - first, 0), points - 1)  # leading steps where no series has a sample
        first, points, start = first + skip, points - skip, start + skip * step
        lo, hi = max(first, 0), min(first + points, held.values.shape[1])
        if lo == first and hi == first + points:
            values = held.values[:, lo:hi]  # inside the held grid: a view, no copy
        else:
            values = np.full((len(held.keys), points), np.nan)
            if hi > lo:
                values[:, lo - first : hi - first] = held.values[:, lo:hi]
        rows = np.flatnonzero(~np.isnan(values).all(axis=1))
        if len(rows) == len(held.keys):
            return SeriesMatrix(list(held.keys), list(held.labels), start, step, values)
        return SeriesMatrix([held.keys[i] for i in rows], [held.labels[i] for i in rows], start, step, values[rows])

    async def query(self, expr: str, at: float) -> InstantVector:
        held = self.history
        column = int(math.floor((at - held.start) / held.step + 1e-9))
        if not 0 <= column < held.values.shape[1]:
            return InstantVector([], [], np.zeros(0), at)
        values = held.values[:, column]
        rows = np.flatnonzero(~np.isnan(values))
        return InstantVector([held.keys[i] for i in rows], [held.labels[i] for i in rows], values[rows], at)

    async def close(self) -> None:
        pass
