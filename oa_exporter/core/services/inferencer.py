"""Inferencer: forecast bands ahead of time, then score each cycle's samples against them, vectorised."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from ..calibration import Calibration
from ..domain import Bands, InstantVector, Model, Rule, RuleScores, SeriesKey, SeriesState
from ..errors import CardinalityError, OAError
from ..jobs import BandsJob
from ..ports import JobQueue, ModelEngine, Telemetry, TsdbClient
from ..scoring import Repeats, Settling, anomaly_score

log = logging.getLogger(__name__)


@dataclass
class RowIndex:
    """Maps the series of an instant query onto model rows; reused while the series set does not change."""

    rows_of: dict[SeriesKey, int]
    _keys: list[SeriesKey] = field(default_factory=list)
    _rows: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))

    def rows(self, keys: list[SeriesKey]) -> np.ndarray:
        """Model row of each key, -1 for series the model does not know."""
        if keys != self._keys:  # one C-level comparison; the lookup below runs only when series change
            self._rows = np.fromiter((self.rows_of.get(k, -1) for k in keys), np.int64, len(keys))
            self._keys = keys
        return self._rows


@dataclass
class Forecasts:
    """A rule's current model with its precomputed bands."""

    model: Model
    bands: Bands
    index: RowIndex

    @classmethod
    def of(cls, model: Model, bands: Bands) -> Forecasts:
        return cls(model, bands, RowIndex({k: i for i, k in enumerate(model.keys)}))


class Inferencer:
    """Precomputes bands for the horizon and scores every series of a rule with one numpy pass."""

    def __init__(self, tsdb: TsdbClient, engines: Mapping[str, ModelEngine], telemetry: Telemetry,
                 queue: JobQueue | None = None, offload: Callable[[Rule], bool] = lambda rule: False):
        self.tsdb = tsdb
        self.engines = engines
        self.telemetry = telemetry
        self.queue = queue  # where band refreshes of the rules `offload` picks go (the inference queue)
        self.offload = offload
        self.shard = 0  # this replica's shard index: whose names its models have in the store (band jobs say it)

    async def bands(self, rule: Rule, model: Model, now: float) -> Bands:
        """Bands from the grid point at or before `now` to one horizon (and a cycle) ahead."""
        start = math.floor(now / rule.step) * rule.step
        steps = int(math.ceil(rule.horizon / rule.step)) + 1
        if self.queue is not None and model.artifact and self.offload(rule):
            try:
                return await self.queue.bands(BandsJob(rule, model.artifact, start, steps, self.shard))
            except OAError as e:  # the model is loaded here too: forecast locally rather than score nothing
                log.warning("rule %s: the inference queue failed, forecasting here: %s", rule.name, e)
        engine = self.engines[rule.model.engine]
        return await asyncio.to_thread(engine.predict, model, start, steps, rule.level)

    def needs_refresh(self, rule: Rule, bands: Bands, now: float) -> bool:
        """True once less than half a horizon of bands is left: refresh well before they run out."""
        return bands.end - now < rule.horizon / 2

    async def sample(self, rule: Rule, now: float) -> InstantVector:
        """The rule's instant query at `now`, guarded by max_series."""
        started, ok = time.perf_counter(), False
        try:
            vector = await self.tsdb.query(rule.expr, now)
            ok = True
        finally:
            self.telemetry.query_done(rule.name, "instant", time.perf_counter() - started, ok)
        if len(vector.keys) > rule.max_series:
            raise CardinalityError(f"expr returns {len(vector.keys)} series, above max_series {rule.max_series}")
        return vector

    def score(self, rule: Rule, vector: InstantVector, forecasts: Forecasts | None,
              repeats: Repeats | None = None, calibration: Calibration | None = None,
              settling: Settling | None = None) -> RuleScores:
        """Score every sample: series without a model (not ready) or failed get NaN forecasts; with the rule's
        state between cycles, its `calibrate` widens the band of each series that paged more often than the
        budget allows (core/calibration.py), its `settle_after` divides a lasting excursion by its peak and its
        `repeat_window` divides repeats down (core/scoring.py)."""
        n = len(vector.keys)
        yhat, lower, upper = (np.full(n, np.nan) for _ in range(3))
        states = {SeriesState.READY.value: 0, SeriesState.FAILED.value: 0, SeriesState.NOT_READY.value: n}
        if forecasts is not None:
            rows = forecasts.index.rows(vector.keys)
            column = forecasts.bands.column(vector.timestamp)
            if 0 <= column < forecasts.bands.yhat.shape[1]:
                known = rows >= 0
                usable = known.copy()
                usable[known] = forecasts.model.fitted.ok[rows[known]]
                picked = rows[usable]
                yhat[usable] = forecasts.bands.yhat[picked, column]
                lower[usable] = forecasts.bands.lower[picked, column]
                upper[usable] = forecasts.bands.upper[picked, column]
                ready = int(np.count_nonzero(usable))
                failed = int(np.count_nonzero(known)) - ready
                states = {"ready": ready, "failed": failed, "not-ready": n - ready - failed}
        if calibration is not None and rule.calibrate:
            lower, upper = calibration.widen(vector.keys, vector.timestamp, rule.calibrate, yhat, lower, upper)
        score = anomaly_score(vector.values, yhat, lower, upper, rule.direction)
        below = vector.values < yhat
        if settling is not None and rule.settle_after > 0:
            score = settling.settle(vector.keys, vector.timestamp, score, below, rule.settle_after)
        if repeats is not None and rule.repeat_window > 0:
            score = repeats.damp(vector.keys, vector.timestamp, score, below, rule.repeat_window)
        if calibration is not None and rule.calibrate:
            calibration.count(vector.keys, score)
        self.telemetry.series_states(rule.name, states)
        inside = int(np.count_nonzero((vector.values >= lower) & (vector.values <= upper)))  # NaN: never inside
        self.telemetry.band_coverage(rule.name, inside, int(np.count_nonzero(~np.isnan(score))), vector.timestamp)
        return RuleScores(rule, vector.keys, vector.labels, vector.timestamp, vector.values, yhat, lower, upper, score,
                          states)
