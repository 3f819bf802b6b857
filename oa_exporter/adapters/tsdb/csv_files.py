"""`timestamp,value` files as series a backtest can replay.

A file holds one series. Timestamps are unix seconds or ISO 8601 dates and times (UTC unless they name an
offset); the header names the columns (`timestamp` and `value`; other columns are ignored). An empty or
non-numeric value is a gap.

The Trainer reads history on the rule's step grid, as it would from Prometheus: the value of a grid point
is the newest sample at or before it, if that sample is younger than the lookback (Prometheus's 5 minutes,
or one step when the step is longer). Each row is then scored at its own timestamp, as an instant query
at that time would have seen it.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from ...core.domain import SeriesMatrix
from ...core.errors import OAError

LOOKBACK = 300.0  # Prometheus's default lookback delta


class CsvError(OAError):
    """A CSV file cannot be read as `timestamp,value` rows."""


@dataclass(frozen=True)
class CsvSeries:
    """One file's rows, in time order: timestamps as written, as unix seconds, and values (NaN: gap)."""

    name: str
    stamps: list[str]
    times: np.ndarray
    values: np.ndarray

    @property
    def labels(self) -> dict[str, str]:
        return {"file": self.name}

    @property
    def key(self) -> bytes:
        return json.dumps(self.labels, sort_keys=True, separators=(",", ":")).encode()

    def history(self, step: float) -> SeriesMatrix:
        """The file on the grid of multiples of `step` that spans it, with lookback semantics."""
        present = ~np.isnan(self.values)
        times, values = self.times[present], self.values[present]
        if not len(times):
            return SeriesMatrix([self.key], [self.labels], 0.0, step, np.full((1, 1), np.nan))
        start = math.floor(times[0] / step) * step
        grid = start + step * np.arange(int(math.floor((times[-1] - start) / step)) + 1)
        newest = np.searchsorted(times, grid, side="right") - 1
        age = grid - times[np.maximum(newest, 0)]
        fresh = (newest >= 0) & (age < max(LOOKBACK, step))
        row = np.where(fresh, values[np.maximum(newest, 0)], np.nan)
        return SeriesMatrix([self.key], [self.labels], start, step, row[None, :])


def read_csv(path: str | Path, name: str | None = None) -> CsvSeries:
    """Read one file; rows are put in time order (a stable sort: equal timestamps keep file order)."""
    path = Path(path)
    try:
        with path.open(newline="") as f:
            reader = csv.reader(f)
            header = [h.strip().lower() for h in next(reader, [])]
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise CsvError(f"{path}: {e}") from e
    if "timestamp" not in header or "value" not in header:
        raise CsvError(f"{path}: the header must name the columns 'timestamp' and 'value' (found {header})")
    t, v = header.index("timestamp"), header.index("value")
    rows = [r for r in rows if len(r) > max(t, v)]
    stamps = [r[t].strip() for r in rows]
    try:
        times = np.array([parse_time(s) for s in stamps], dtype=np.float64)
    except ValueError as e:
        raise CsvError(f"{path}: {e}") from e
    values = np.array([_number(r[v]) for r in rows], dtype=np.float64)
    order = np.argsort(times, kind="stable")
    return CsvSeries(name or path.stem, [stamps[i] for i in order], times[order], values[order])


def parse_time(text: str) -> float:
    """Unix seconds, or an ISO 8601 date/time (naive = UTC); ValueError otherwise."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as e:
        raise ValueError(f"{text!r} is neither unix seconds nor an ISO 8601 timestamp") from e
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan
