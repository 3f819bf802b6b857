"""Hand-written fakes of the ports, and small helpers to read what a user would see on /metrics."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from oa_exporter.core.domain import InstantVector, SeriesKey, SeriesMatrix
from oa_exporter.core.errors import TsdbError

T = TypeVar("T")
DAY = 86400.0
LOOKBACK = 300.0  # Prometheus' default lookback delta: older samples are stale


def series_key(labels: dict[str, str]) -> SeriesKey:
    """The canonical key of a label set, as the Prometheus adapter builds it (sorted JSON)."""
    return json.dumps(labels, sort_keys=True, separators=(",", ":")).encode()


@dataclass
class FakeSeries:
    """One stored series: its labels and samples (NaN = no sample at that time)."""

    labels: dict[str, str]
    times: np.ndarray
    values: np.ndarray

    def at(self, grid: np.ndarray) -> np.ndarray:
        """The newest sample at or before each grid time within the lookback, NaN where there is none."""
        present = ~np.isnan(self.values)
        times, values = self.times[present], self.values[present]
        if not len(times):
            return np.full(len(grid), np.nan)
        index = np.maximum(np.searchsorted(times, grid, side="right") - 1, 0)
        fresh = (times[index] <= grid) & (grid - times[index] <= LOOKBACK)
        return np.where(fresh, values[index], np.nan)


@dataclass
class FakeTsdb:
    """TsdbClient over in-memory series: every expr names a list of series; some exprs can be made to fail."""

    data: dict[str, list[FakeSeries]] = field(default_factory=dict)
    failing: set[str] = field(default_factory=set)
    closed: bool = False

    async def query_range(self, expr: str, start: float, end: float, step: float) -> SeriesMatrix:
        grid = start + step * np.arange(int(round((end - start) / step)) + 1)
        rows = [(s, s.at(grid)) for s in self._series(expr)]
        rows = [(s, v) for s, v in rows if not np.isnan(v).all()]  # like Prometheus: no points, no series
        values = np.array([v for _, v in rows]).reshape(len(rows), len(grid))
        return SeriesMatrix([series_key(s.labels) for s, _ in rows], [dict(s.labels) for s, _ in rows],
                            start, step, values)

    async def query(self, expr: str, at: float) -> InstantVector:
        rows = [(s, s.at(np.array([at]))[0]) for s in self._series(expr)]
        rows = [(s, v) for s, v in rows if not np.isnan(v)]
        return InstantVector([series_key(s.labels) for s, _ in rows], [dict(s.labels) for s, _ in rows],
                             np.array([v for _, v in rows], dtype=np.float64), at)

    async def close(self) -> None:
        self.closed = True

    def _series(self, expr: str) -> list[FakeSeries]:
        if expr in self.failing:
            raise TsdbError(f"fake TSDB: {expr} is unreachable")
        return self.data.get(expr, [])


class InlineDispatcher:
    """JobDispatcher running each job at once on the caller's thread, counted; `fail` makes jobs raise."""

    def __init__(self) -> None:
        self.jobs = 0
        self.closed = 0
        self.fail = False
        self.gate: asyncio.Event | None = None  # when set, jobs wait for it: a fit that is still running

    async def run(self, fn: Callable[..., T], *args: Any, gpu: bool = False) -> T:
        self.jobs += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise MemoryError("fake: the worker ran out of memory")
        return fn(*args)

    async def split(self, series: int, points: int) -> tuple[int, int]:
        """One job, unless a test splits it."""
        return series, 1

    async def close(self) -> None:
        self.closed += 1


class FakeClock:
    """A clock that only moves when the test moves it."""

    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


def seasonal_series(
    metric: str,
    count: int,
    start: float,
    end: float,
    step: float = 60.0,
    noise: float = 1.0,
    seed: int = 1,
) -> list[FakeSeries]:
    """`count` series with a daily sine cycle and Gaussian noise, sampled every `step` from start to end."""
    rng = np.random.default_rng(seed)
    times = np.arange(start, end + step / 2, step)
    phases = np.arange(count)[:, None]
    values = 100 + 10 * phases + 20 * np.sin(2 * np.pi * times / DAY + phases)
    values = values + rng.normal(0, noise, values.shape)
    return [
        FakeSeries({"__name__": metric, "instance": f"host-{i:02d}", "job": "fake"}, times, values[i])
        for i in range(count)
    ]


def spike(series: FakeSeries, at: float, by: float) -> None:
    """Add `by` to the sample at time `at`."""
    series.values[np.searchsorted(series.times, at)] += by


@dataclass(frozen=True)
class Sample:
    """One line of a parsed /metrics page."""

    name: str
    labels: dict[str, str]
    value: float


def samples(page: bytes) -> list[Sample]:
    """Every sample of a text-format page, parsed by prometheus_client's own parser."""
    return [
        Sample(s.name, dict(s.labels), s.value)
        for family in text_string_to_metric_families(page.decode())
        for s in family.samples
    ]


def matching(page: bytes, name: str, **match: str) -> list[Sample]:
    """The samples of metric `name` whose labels include `match`."""
    return [s for s in samples(page) if s.name == name and match.items() <= s.labels.items()]


def values(page: bytes, name: str, by: str = "instance", **match: str) -> dict[str, float]:
    """Values of metric `name` whose labels include `match`, keyed by their `by` label."""
    return {s.labels.get(by, ""): s.value for s in matching(page, name, **match)}


def value(page: bytes, name: str, **match: str) -> float | None:
    """The single value of `name` with these labels, None when the page has no such sample."""
    found = matching(page, name, **match)
    assert len(found) <= 1, f"{name}{match} matches {len(found)} samples"
    return found[0].value if found else None


RESULT_FAMILIES = ("oa_y", "oa_yhat", "oa_yhat_lower", "oa_yhat_upper", "oa_anomaly_score")


def result_names(page: bytes, rule: str) -> set[str]:
    """Names of the result families that carry samples of `rule`."""
    return {s.name for s in samples(page) if s.name in RESULT_FAMILIES and s.labels.get("rule") == rule}
