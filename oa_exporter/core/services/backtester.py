"""Backtester: replay a rule over past samples with the daemon's own Trainer, Inferencer and refit schedule.

Each cycle (a time at which the daemon would have scored) does what the runner does, in its order:
refresh the bands when less than half a horizon is left, score the cycle's samples against the bands in
force (Inferencer.score, one numpy pass over the series), then start the fit the schedule calls for
(RuleSlot.fit_due: train.every, backoff after failures, at most hourly while series wait for a model).
The daemon adopts a model only once its fit finishes, after the cycle that started it was scored; here a
fit finishes at once and its model scores from the next cycle on. So the score at time t only ever uses
samples from before t: the history the TSDB holds after t is never read before t is scored.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..domain import InstantVector, Rule, SeriesKey
from ..durations import iso_time
from ..errors import OAError
from .fits_ahead import FitsAhead
from .inferencer import Forecasts, Inferencer
from .runner import RuleSlot
from .trainer import Trainer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Samples:
    """What the rule's instant query returned at each cycle: values[i, j] is series i at times[j] (NaN: none)."""

    keys: list[SeriesKey]
    labels: Sequence[Mapping[str, str]]
    times: np.ndarray
    values: np.ndarray

    def at(self, cycle: int) -> tuple[np.ndarray, InstantVector]:
        """The rows present at one cycle, and the instant vector the daemon would have read."""
        column = self.values[:, cycle]
        present = ~np.isnan(column)
        if present.all():
            return np.arange(len(self.keys)), InstantVector(self.keys, self.labels, column, float(self.times[cycle]))
        rows = np.flatnonzero(present)
        picked = rows.tolist()
        vector = InstantVector([self.keys[i] for i in picked], [self.labels[i] for i in picked], column[rows],
                               float(self.times[cycle]))
        return rows, vector


@dataclass(frozen=True)
class Replay:
    """A rule replayed: per series (rows) and cycle (columns) its sample, forecast, band and score.

    NaN where the series had no sample, or no model yet (not ready): such points are not scored.
    """

    rule: Rule
    keys: list[SeriesKey]
    labels: Sequence[Mapping[str, str]]
    times: np.ndarray
    y: np.ndarray
    yhat: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    score: np.ndarray
    fits: int = 0
    fit_errors: list[str] = field(default_factory=list)  # failed fits and failed band refreshes

    def summary(self) -> list[SeriesSummary]:
        """Per series: points, points scored, warm-up, anomalies (score > 1) and the band's empirical coverage."""
        present, scored = ~np.isnan(self.y), ~np.isnan(self.score)
        inside = scored & (self.y >= self.lower) & (self.y <= self.upper)
        points = np.count_nonzero(present, axis=1)
        counted = np.count_nonzero(scored, axis=1)
        anomalies = np.count_nonzero(scored & (self.score > 1.0), axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            coverage = np.count_nonzero(inside, axis=1) / counted
        # warm-up: the samples before the first scored one; its span from the series' first sample
        times = np.append(self.times.astype(float), np.nan)  # index len(times): "never"
        cycles = scored.shape[1]
        first = np.where(scored.any(axis=1), scored.argmax(axis=1), cycles)
        warmup = np.count_nonzero(present & (np.arange(cycles)[None, :] < first[:, None]), axis=1)
        started = np.where(present.any(axis=1), present.argmax(axis=1), cycles)
        return [SeriesSummary(dict(self.labels[i]), int(points[i]), int(counted[i]), int(anomalies[i]),
                              float(coverage[i]), int(warmup[i]), float(times[started[i]]), float(times[first[i]]))
                for i in range(len(self.keys))]


@dataclass(frozen=True)
class SeriesSummary:
    """One series of a replay in numbers; coverage is NaN when nothing was scored.

    warmup: the points with a sample before the first scored one (all of them when none was scored): the
    series had less than min_history of its own history, or no model fitted on it yet.
    """

    labels: Mapping[str, str]
    points: int
    scored: int
    anomalies: int
    coverage: float
    warmup: int = 0
    first_time: float = float("nan")  # the series' first sample in the replay
    first_scored: float = float("nan")  # the first scored cycle; NaN when none was

    @property
    def warmup_seconds(self) -> float:
        """From the series' first sample to its first score (NaN when nothing was scored)."""
        return self.first_scored - self.first_time


class Backtester:
    """Replays rules through a Trainer and an Inferencer wired to a TSDB that holds the past.

    `ahead`: refits started before the replay reaches them (see FitsAhead), for a Trainer whose dispatcher
    runs fits side by side; 0 fits each one when it is due.
    """

    def __init__(self, trainer: Trainer, inferencer: Inferencer, ahead: int = 0):
        self.trainer = trainer
        self.inferencer = inferencer
        self.ahead = ahead

    async def replay(self, rule: Rule, samples: Samples, interval: float | None = None) -> Replay:
        """Score every cycle of `samples` in time order; `interval` is the cadence the fit schedule assumes
        (the rule's step by default)."""
        shape = samples.values.shape
        yhat, lower, upper, score = (np.full(shape, np.nan) for _ in range(4))
        slot, fits, errors = RuleSlot(rule), 0, list[str]()
        cadence = interval or rule.step
        ahead = FitsAhead(self.trainer, rule, samples.times, self.ahead)
        try:
            for cycle, now in enumerate(samples.times.tolist()):
                if await self._refresh(slot, now, errors):
                    rows, vector = samples.at(cycle)
                    scores = self.inferencer.score(rule, vector, slot.forecasts, slot.repeats, slot.calibration,
                                                   slot.settling)
                    for target, source in ((yhat, scores.yhat), (lower, scores.lower), (upper, scores.upper),
                                           (score, scores.score)):
                        target[rows, cycle] = source
                    slot.unmodelled = int(scores.ready.size - np.count_nonzero(scores.ready))
                    slot.excursions.observe(scores)
                if slot.fit_due(now, cadence):
                    error = await self._fit(slot, now, ahead)
                    ahead.plan(now, slot.next_fit(cadence))
                    fits += error is None
                    if error is not None:
                        errors.append(error)
        finally:
            await ahead.close()
        return Replay(rule, samples.keys, samples.labels, samples.times, samples.values, yhat, lower, upper, score,
                      fits, errors)

    async def close(self) -> None:
        """Stop the Trainer's dispatcher (its threads, if it has any)."""
        await self.trainer.dispatcher.close()

    async def _refresh(self, slot: RuleSlot, now: float, errors: list[str]) -> bool:
        """Bands renewed when due; False when that failed: as in the runner, the cycle is not scored (NaN)."""
        forecasts = slot.forecasts
        if forecasts is None or not self.inferencer.needs_refresh(slot.rule, forecasts.bands, now):
            return True
        try:
            bands = await self.inferencer.bands(slot.rule, forecasts.model, now)
        except OAError as e:
            log.warning("rule %s: bands at %s failed: %s", slot.rule.name, iso_time(now), e)
            errors.append(f"{now}: {type(e).__name__}: {e}")
            return False
        slot.forecasts = Forecasts(forecasts.model, bands, forecasts.index)
        return True

    async def _fit(self, slot: RuleSlot, now: float, ahead: FitsAhead) -> str | None:
        """Fit as the runner does (or take the fit started ahead for this time: the same); a failure is kept
        (and retried on the runner's backoff), never raised."""
        slot.last_fit_attempt = now
        try:
            fitting = ahead.take(now) or self.trainer.fit(slot.rule, now, slot.excursions.ongoing())
            model = await self.trainer.adopt(slot.rule, fitting)
            slot.forecasts = Forecasts.of(model, await self.inferencer.bands(slot.rule, model, now))
        except Exception as e:  # as the runner: one failed fit never ends the replay
            slot.failures += 1
            log.warning("rule %s: fit at %s failed: %s", slot.rule.name, iso_time(now), e)
            return f"{now}: {type(e).__name__}: {e}"
        slot.failures = 0
        return None
