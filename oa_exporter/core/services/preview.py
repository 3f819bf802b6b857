"""Preview: what a rule not yet saved would have shown and paged over a past range of the live TSDB.

The history is read from the TSDB as `oa-exporter backtest` reads it (the rule's step grid from start to end,
and the train.window before start), then replayed by the backtest code path (Backtester: the daemon's own
Trainer, Inferencer and refit schedule) in a worker process: the event loop only waits. A preview is bounded
so that one cannot starve the daemon: series, points read, wall time, and one preview at a time.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import numpy as np

from ..domain import Rule, SeriesMatrix
from ..errors import DispatchError, OAError, PreviewError
from ..ports import TsdbClient
from .backtester import Replay, Samples

ReplayRunner = Callable[[Rule, SeriesMatrix, Samples, float], Awaitable[Replay]]  # last: seconds allowed


@dataclass(frozen=True)
class PreviewLimits:
    """How much one preview may take."""

    max_series: int = 1000  # series the expr may return
    max_points: int = 20_000_000  # series x steps read (the range and the train.window before it)
    timeout: float = 60.0  # seconds for the whole preview: query and replay
    concurrent: int = 1  # previews at once; more are refused (429), not queued


@dataclass(frozen=True)
class Excursion:
    """A run of consecutive scored points above 1 on one series: what would have paged."""

    series: int  # row in the preview's series
    start: float
    end: float  # the last point above 1
    points: int
    peak_score: float
    peak_at: float


@dataclass(frozen=True)
class Preview:
    """A replayed rule and what would have paged; `seconds` is how long it took."""

    replay: Replay
    excursions: list[Excursion]
    seconds: float


class Previewer:
    """Replays unsaved rules over the live TSDB's past, within PreviewLimits."""

    def __init__(self, tsdb: TsdbClient, run_replay: ReplayRunner, limits: PreviewLimits | None = None,
                 clock: Callable[[], float] = time.time):
        self.tsdb = tsdb
        self.run_replay = run_replay
        self.limits = limits or PreviewLimits()
        self.clock = clock
        self._running = 0

    async def preview(self, rule: Rule, start: float, end: float,
                      labels: Mapping[str, str] | None = None) -> Preview:
        """Replay `rule` over [start, end]; only the series carrying all of `labels` when given."""
        if self._running >= self.limits.concurrent:
            raise PreviewError("another preview is running: try again when it is done", status=429)
        self._running += 1
        started = time.perf_counter()
        try:
            replay = await asyncio.wait_for(self._replay(rule, start, end, labels or {}), self.limits.timeout)
        except TimeoutError as e:
            raise PreviewError(f"the preview ran past its {self.limits.timeout:g} s limit: narrow the range or "
                               "the series", status=504) from e
        finally:
            self._running -= 1
        return Preview(replay, excursions(replay), time.perf_counter() - started)

    async def _replay(self, rule: Rule, start: float, end: float, labels: Mapping[str, str]) -> Replay:
        first, last = math.ceil(start / rule.step) * rule.step, math.floor(end / rule.step) * rule.step
        if last < first:
            raise PreviewError(f"no {rule.step:g} s step between start and end")
        if end > self.clock() + rule.step:
            raise PreviewError("end is in the future")
        history_start = first - rule.train_window + rule.step
        columns = int(round((last - history_start) / rule.step)) + 1
        if columns > self.limits.max_points:
            raise PreviewError(f"the range and train.window span {columns} steps, above the preview limit of "
                               f"{self.limits.max_points} points")
        history = _matching(await self.tsdb.query_range(rule.expr, history_start, last, rule.step), labels)
        self._check_size(history)
        history = _from_first_sample(history, int(round((first - history.start) / rule.step)))
        scored = slice(int(round((first - history.start) / rule.step)), None)
        samples = Samples(history.keys, history.labels, history.timestamps[scored], history.values[:, scored])
        try:
            return await self.run_replay(rule, history, samples, self.limits.timeout)
        except DispatchError as e:  # the worker process was killed at the time limit, or died
            raise PreviewError(f"the preview did not finish: {e}", status=504) from e
        except OAError:
            raise
        except Exception as e:  # an engine bug is the preview's failure, not the daemon's
            raise PreviewError(f"the preview failed: {type(e).__name__}: {e}", status=500) from e

    def _check_size(self, history: SeriesMatrix) -> None:
        series, points = len(history.keys), history.values.size
        if series > self.limits.max_series:
            raise PreviewError(f"expr returns {series} series, above the preview limit of {self.limits.max_series}: "
                               "narrow the expr or select series by label")
        if points > self.limits.max_points:
            raise PreviewError(f"{series} series over the range and train.window are {points} points, above the "
                               f"preview limit of {self.limits.max_points}: shorten the range or select series")


def _from_first_sample(history: SeriesMatrix, most: int) -> SeriesMatrix:
    """The history without its leading columns where no series has a sample (at most `most` of them, the
    columns before the range): the worker gets a week of columns, not a 56-day train.window of mostly empty
    ones. The replay's answers are the same: its TSDB answers from the first sample on either way."""
    present = ~np.isnan(history.values).all(axis=0)
    empty = min(int(np.argmax(present)) if present.any() else most, most)
    if empty == 0:
        return history
    return SeriesMatrix(history.keys, history.labels, history.start + empty * history.step, history.step,
                        history.values[:, empty:])


def _matching(history: SeriesMatrix, labels: Mapping[str, str]) -> SeriesMatrix:
    if not labels:
        return history
    rows = [i for i, have in enumerate(history.labels) if all(have.get(k) == v for k, v in labels.items())]
    return history.select(np.asarray(rows, dtype=np.int64))


def excursions(replay: Replay) -> list[Excursion]:
    """Every run of consecutive points scoring above 1, series by series, in time order."""
    above = np.nan_to_num(replay.score, nan=0.0) > 1.0
    if not above.any():
        return []
    padded = np.pad(above, ((0, 0), (1, 1))).astype(np.int8)
    edges = np.diff(padded, axis=1)
    rows, starts = np.nonzero(edges == 1)
    _, ends = np.nonzero(edges == -1)  # row-major order: the k-th end closes the k-th start
    found = []
    for row, begin, stop in zip(rows.tolist(), starts.tolist(), ends.tolist(), strict=True):
        peak = begin + int(np.argmax(replay.score[row, begin:stop]))
        found.append(Excursion(row, float(replay.times[begin]), float(replay.times[stop - 1]), stop - begin,
                               float(replay.score[row, peak]), float(replay.times[peak])))
    return sorted(found, key=lambda e: (e.start, e.series))
