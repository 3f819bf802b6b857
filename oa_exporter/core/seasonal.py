"""SeasonalProfile: the default model, fitted and forecast for all series of a rule at once with numpy.

Per series, on the rule's grid:

    yhat(t)  = level + sum over seasons of profile_s[bucket_s(t)]
    band(t)  = yhat(t) + q(level%) * scale[bucket_day(t)]

- Each season (default 1d then 1w) is a robust profile: the median, per phase bucket, of what the shorter
  seasons left over. Buckets are coarser than the step (at most `buckets` per season), so one week of
  one-minute data gives ~35 samples per bucket. A season is used when the window spans two of it, and
  only for the series whose own history spans two of it (the first season also from one whole cycle with
  four samples per bucket): a series that appeared yesterday gets no profile made of one sample per
  bucket, nor a weekly one from a few days, which would only fit its noise.
- `level` is the median of the deseasonalised series over the last `level_window` before the fit.
- Residuals are taken against a trailing mean of the same length: what the forecast faces right after a
  fit, or with `residual_lag` the trailing mean as it stood that long before, what a forecast that old
  faces (about half of `train.every`). They are divided by a per-bucket spread `scale` (noise is often
  louder at busy hours; `scale_buckets` buckets over the first season, 1 = one spread all day), and
  their empirical quantiles give the band at any level.
- Far tails (`tail`, a level in %): beyond the central `tail` % interval, quantiles are extrapolated with
  an exponential tail instead of read off the few most extreme residuals. With p0 = (1 - tail/100) / 2
  and p1 = 10·p0, the quantile at a tail probability p < p0 is

      q(p) = q(p0) + (q(p0) - q(p1)) · log10(p0 / p)

  (each further decade of rarity adds what the last decade added): a 99.99 % band is then as stable as
  the 99 % one it grows from, rather than the window's largest residual.
- A cap at the window's own range (`range_margin`, a factor >= 1; None: no cap): on each side the band
  is never wider than the largest residual the window saw there, times `range_margin`. An exponential
  tail extrapolated from a heavy 90-99 % step (a few dips or bursts in the window) can lie far beyond
  anything the series ever did; with the cap, a sample pages when it is beyond the extrapolated band
  *or* further from the forecast than anything in the window: new behaviour pages even where the tail
  model says it is merely rare. Quantiles read off the window never exceed its range, so the cap only
  ever narrows extrapolated levels.
- An excursion is not the reference (`robust_reference`): residuals are taken a second time with the
  samples beyond the exponential tail's 1e-4 quantile of the first pass (a spike, an outage) left out of
  the trailing mean they are taken against, while the mean has other samples. Otherwise a 30-minute outage
  drags that mean down for `level_window`, the samples after it read as a burst, and the band stays wide
  for the whole training window. A change that fills a whole `level_window` is the plain mean again: the
  new normal, within `level_window` + `residual_lag`.
- A young series (`range_history`): one that has seen a fraction f < 1 of `range_history`'s samples is
  banded as if f times rarer, along its own exponential tail: the band and the range cap move out by the
  tail's step per decade times log10(1/f). The largest of n residuals is exceeded with probability
  1/(n+1); a day's range is a third as rare a bound as three days'.
- The series' resolution (`resolution`): the band is widened on each side by the smallest step between
  consecutive distinct values in the window. A counter of a few events that reads 0 where 1 was forecast,
  or a gauge quantised to whole units, cannot be known to deviate by less than one step; for a continuous
  series the step is far below its noise and changes nothing.
- A cycle whose amplitude changes (`amplitude_window`): the profiles are medians over the whole window,
  so a daily swing that grows with traffic outgrows them and pages at every peak. With it, each series'
  profiles are scaled by the amplitude of its last cycles of the first season within `amplitude_window`:
  per cycle the least-squares slope of the series on its profile (clipped to [0.5, 2]), moved from 1 only
  as far as the profile explains that cycle's variance (R²: noise, or a day without its cycle, teaches
  nothing), and the median over the cycles, so that one odd day does not set it.
- A young series' honest band (`cross_fit`): a profile fitted on a few cycles fits those cycles' noise, so
  residuals taken against it are smaller than the errors its forecast will make, and a young series' band
  too narrow. For a series with less history than `cross_fit`, residuals are taken against profiles fitted
  without the cycle they fall in: the first season's cycles fall into CROSS_FOLDS folds (cycle number
  modulo CROSS_FOLDS), and each fold's samples are deseasonalised by the profiles fitted on the other folds.
  The forecast keeps the profiles of every cycle; only the band learns from the cross-fitted residuals.
- Two ideas of normal (`local_window`): per series, the seasonal baseline or a drift-following one (no
  seasons, the level over the last `local_window`), whichever forecast the held-back end of the window
  (`holdout`, at most a third of it) better, the seasonal one fitted on the rest: a series without a
  reliable cycle gets no profile made of its wandering.
Every step is one numpy operation over the (series × time) matrix: no Python loop over series.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from . import arrays
from .seasonal_settings import settings

PROBABILITIES = np.array(
    [0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.16, 0.25, 0.5,
     0.75, 0.84, 0.9, 0.95, 0.975, 0.99, 0.995, 0.9975, 0.999, 0.9995, 0.9999]
)


@dataclass(frozen=True)
class Season:
    """One additive seasonal profile: `profile[:, b]` for phase bucket b of a `period`-long cycle."""

    period: float
    buckets: int
    profile: np.ndarray

    def bucket_of(self, timestamps: np.ndarray) -> np.ndarray:
        phase = np.mod(timestamps, self.period) / self.period
        return np.minimum((phase * self.buckets).astype(np.int64), self.buckets - 1)


@dataclass(frozen=True)
class SeasonalProfile:
    """What SeasonalProfile learned for a batch of series (see module docstring)."""

    seasons: tuple[Season, ...]
    level: np.ndarray
    scale_period: float
    scale: np.ndarray
    quantiles: np.ndarray  # (len(PROBABILITIES), series): quantiles of the scaled residuals
    ok: np.ndarray
    tail: float | None = None  # central level (%) beyond which quantiles are extrapolated; None: never
    extremes: np.ndarray | None = None  # (2, series): smallest and largest scaled residual; None: no range cap
    range_margin: float = 1.0  # the band is capped at the window's range times this
    samples: np.ndarray | None = None  # residuals seen per series, over those of `range_history`; None: no widening
    local: np.ndarray | None = None  # per series: True where the drift-following baseline was chosen
    resolution: np.ndarray | None = None  # per series: the smallest step between its values; None: not added

    def predict(self, timestamps: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """yhat, lower, upper of shape (series, len(timestamps)) with a `level` % central interval."""
        yhat = np.repeat(self.level[:, None], len(timestamps), axis=1)
        for season in self.seasons:
            yhat += season.profile[:, season.bucket_of(timestamps)]
        scale = self.scale[:, _Buckets(self.scale_period, self.scale.shape[1]).of(timestamps)]
        q_lo, q_hi = self.interval(level)
        lower, upper = yhat + q_lo[:, None] * scale, yhat + q_hi[:, None] * scale
        if self.resolution is not None:  # a count of 0 where 1 was forecast is no news (see module docstring)
            lower, upper = lower - self.resolution[:, None], upper + self.resolution[:, None]
        return yhat, lower, upper

    def interval(self, level: float) -> tuple[np.ndarray, np.ndarray]:
        """Residual quantiles of the central `level` % interval, per series; lower <= 0 <= upper."""
        tail = (1 - level / 100) / 2
        start = (1 - self.tail / 100) / 2 if self.tail is not None else 0.0
        young_lo, young_hi = self._young()
        if tail < start:  # exponential tail from the decade [10·p0, p0] (see module docstring)
            decades = np.log10(start / tail)
            near_lo, far_lo = _interpolate_rows(self.quantiles, 10 * start), _interpolate_rows(self.quantiles, start)
            near_hi = _interpolate_rows(self.quantiles, 1 - 10 * start)
            far_hi = _interpolate_rows(self.quantiles, 1 - start)
            q_lo = far_lo + (far_lo - near_lo) * decades - young_lo
            q_hi = far_hi + (far_hi - near_hi) * decades + young_hi
        else:
            q_lo = _interpolate_rows(self.quantiles, tail)
            q_hi = _interpolate_rows(self.quantiles, 1 - tail)
        if self.extremes is not None:  # never beyond the window's own range (see module docstring)
            q_lo = np.maximum(q_lo, self.range_margin * self.extremes[0] - young_lo)
            q_hi = np.minimum(q_hi, self.range_margin * self.extremes[1] + young_hi)
        return np.minimum(q_lo, 0.0), np.maximum(q_hi, 0.0)

    def _young(self) -> tuple[np.ndarray, np.ndarray]:
        """How much further out a young series' band lies on each side: a series that has seen a fraction f
        of `range_history`'s residuals is banded f times rarer, along its exponential tail (the tail's step
        per decade times log10(1/f)), both the extrapolated band and the range cap: the largest of n residuals
        is exceeded with probability 1/(n+1), so a day's range is a third as rare a bound as three days'."""
        if self.samples is None:  # no `range_history`: the range itself
            return np.zeros(len(self.level)), np.zeros(len(self.level))
        start = (1 - self.tail / 100) / 2 if self.tail is not None else 0.005
        decades = np.maximum(-np.log10(np.maximum(self.samples, 1e-9)), 0.0)
        step_lo = _interpolate_rows(self.quantiles, 10 * start) - _interpolate_rows(self.quantiles, start)
        step_hi = _interpolate_rows(self.quantiles, 1 - start) - _interpolate_rows(self.quantiles, 1 - 10 * start)
        return np.maximum(step_lo, 0.0) * decades, np.maximum(step_hi, 0.0) * decades


@dataclass(frozen=True)
class _Buckets:
    period: float
    count: int

    def of(self, timestamps: np.ndarray) -> np.ndarray:
        phase = np.mod(timestamps, self.period) / self.period
        return np.minimum((phase * self.count).astype(np.int64), self.count - 1)


AMPLITUDE_RANGE = (0.5, 2.0)  # how far `amplitude_window` may scale a profile: a cycle halved or doubled
CROSS_FOLDS = 4  # `cross_fit`: each residual's profile rests on 3/4 of the cycles, near the forecast's own
FIT_CELLS = 1 << 22  # (series × time) cells fitted at once: each temporary of a block stays near 32 MB


BlockMapper = Callable[[Callable[[np.ndarray], "SeasonalProfile"], list[np.ndarray]], list["SeasonalProfile"]]


def fit(values: np.ndarray, start: float, step: float, params: Mapping[str, Any],
        mapper: BlockMapper | None = None) -> SeasonalProfile:
    """Fit every row of `values` (series × time on the grid start + k*step, NaN for gaps).

    Rows are fitted in blocks of about FIT_CELLS cells. Every step is row-wise, so the result is the same as
    one pass over all rows, while the fit's temporaries (a few copies of a block) stay small next to
    `values`: 50,000 series of 14 days at 5 minutes are 1.5 GB, and several copies of that are not needed.
    `mapper(fit_block, blocks)` may fit the blocks elsewhere (on a cluster); the default fits them here.
    """
    rows = max(FIT_CELLS // max(values.shape[1], 1), 1)
    if values.shape[0] <= rows and mapper is None:
        return _fit_rows(values, start, step, params)
    blocks = [values[i : i + rows] for i in range(0, values.shape[0], rows)]
    fit_block = functools.partial(_fit_rows, start=start, step=step, params=params)
    return concatenate(list((mapper or _map)(fit_block, blocks)))


def _map(fn: Callable[[np.ndarray], SeasonalProfile], blocks: list[np.ndarray]) -> list[SeasonalProfile]:
    return [fn(block) for block in blocks]


def concatenate(blocks: list[SeasonalProfile]) -> SeasonalProfile:
    """One SeasonalProfile of the series of `blocks`, in order (fitted on the same grid with the same params)."""
    seasons = tuple(replace(season, profile=np.concatenate([b.seasons[k].profile for b in blocks]))
                    for k, season in enumerate(blocks[0].seasons))
    return replace(blocks[0], seasons=seasons, level=np.concatenate([b.level for b in blocks]),
                   scale=np.concatenate([b.scale for b in blocks]), ok=np.concatenate([b.ok for b in blocks]),
                   quantiles=np.concatenate([b.quantiles for b in blocks], axis=1),
                   extremes=None if blocks[0].extremes is None
                   else np.concatenate([b.extremes for b in blocks], axis=1),
                   samples=None if blocks[0].samples is None else np.concatenate([b.samples for b in blocks]),
                   resolution=None if blocks[0].resolution is None
                   else np.concatenate([b.resolution for b in blocks]),
                   local=None if blocks[0].local is None else np.concatenate([b.local for b in blocks]))


def _fit_rows(values: np.ndarray, start: float, step: float, params: Mapping[str, Any]) -> SeasonalProfile:
    """fit() over one block of rows."""
    cfg = settings(params)
    timestamps = start + step * np.arange(values.shape[1])
    observed = _observed_span(values, step)
    seasons, rest = _fit_seasons(values, timestamps, step, cfg, observed)
    if cfg["amplitude_window"] and seasons:  # scaled profiles: what is left over differs
        seasons = _rescaled(seasons, values, timestamps, step, cfg["amplitude_window"])
        rest = _deseasonalised(values, timestamps, seasons)
    local = None
    if cfg["local_window"] is not None:  # flat profiles where local: what is left over differs
        local = _drifting(values, timestamps, step, cfg)
        seasons = [replace(s, profile=np.where(local[:, None], 0.0, s.profile)) for s in seasons]
        rest = _deseasonalised(values, timestamps, seasons)
    windows = [max(int(round(cfg["level_window"] / step)), 3)]
    if local is not None:
        windows.append(max(int(round(cfg["local_window"] / step)), 1))
    lag = int(round(cfg["residual_lag"] / step))
    level, residual = _residuals(rest, windows, local, lag, cfg["robust_reference"])
    young = np.flatnonzero(observed < cfg["cross_fit"]) if cfg["cross_fit"] and seasons else []
    if len(young):  # residuals against profiles that did not see them (see module docstring)
        crossed = _cross_fitted(values[young], timestamps, step, cfg, seasons[0].period)
        if local is not None:  # the drift-following baseline has no profile to cross-fit
            crossed = np.where(local[young, None], rest[young], crossed)
        residual[young] = _residuals(crossed, windows, None if local is None else local[young], lag,
                                     cfg["robust_reference"])[1]
    span = step * values.shape[1]
    scale_period = seasons[0].period if seasons else span
    scale_count = min(cfg["scale_buckets"] or seasons[0].buckets, seasons[0].buckets) if seasons else 1
    if scale_count == 1:  # one spread all day: its ratio to the overall spread is 1 (see _bucket_scale)
        scale, scaled = np.ones((values.shape[0], 1)), residual
    else:
        buckets = _Buckets(scale_period, scale_count).of(timestamps)
        scale = _bucket_scale(residual, buckets, scale_count)
        scaled = residual / scale[:, buckets]
    quantiles = arrays.nanquantile_rows(scaled, PROBABILITIES)
    count = np.sum(~np.isnan(scaled), axis=1)
    ok = (count >= 2) & ~np.isnan(level)
    extremes = arrays.nanrange(scaled) if cfg["range_margin"] is not None else None
    seen = None if cfg["range_history"] is None else count / (cfg["range_history"] / step)
    return SeasonalProfile(tuple(seasons), level, scale_period, scale, quantiles, ok, cfg["tail"], extremes,
                           cfg["range_margin"] or 1.0, seen, local,
                           _resolution(values) if cfg["resolution"] else None)


def _resolution(values: np.ndarray) -> np.ndarray:
    """Per series, the smallest step between consecutive distinct values (0 for a constant series)."""
    with np.errstate(invalid="ignore"):
        steps = np.abs(np.diff(values, axis=1))
        smallest = np.min(np.where(steps > 0, steps, np.inf), axis=1, initial=np.inf)  # one sample: no step
    return np.where(np.isfinite(smallest), smallest, 0.0)


def _fit_seasons(values: np.ndarray, timestamps: np.ndarray, step: float, cfg: Mapping[str, Any],
                 observed: np.ndarray | None = None) -> tuple[list[Season], np.ndarray]:
    """The seasonal profiles of every row, each fitted on what the shorter seasons left over, and what all of
    them left over (values minus each profile in turn: _deseasonalised's arithmetic, so a fit need not
    subtract them again). `observed`: each row's _observed_span, where the caller has it."""
    span = step * values.shape[1]
    observed = _observed_span(values, step) if observed is None else observed
    samples = np.count_nonzero(~np.isnan(values), axis=1)
    rest = values.astype(np.float64, copy=True)
    seasons: list[Season] = []
    for period in cfg["seasons"]:
        count = int(min(cfg["buckets"], round(period / step)))
        if span >= 2 * period and count >= 4:
            one_cycle = not seasons and samples >= 4 * count  # the first season, from one well-sampled cycle
            used = (observed >= 2 * period) | (one_cycle & (observed >= period))
            if not used.any():  # no row has the history for it: flat, without computing its medians
                seasons.append(Season(period, count, np.zeros((values.shape[0], count))))
                continue
            season = _fit_season(rest, timestamps, period, count, used)
            rest -= season.profile[:, season.bucket_of(timestamps)]
            seasons.append(season)
    return seasons, rest


def _deseasonalised(values: np.ndarray, timestamps: np.ndarray, seasons: Sequence[Season]) -> np.ndarray:
    """Values minus every season's profile, subtracted in order."""
    rest = values.astype(np.float64, copy=True)
    for season in seasons:
        rest -= season.profile[:, season.bucket_of(timestamps)]
    return rest


def _residuals(rest: np.ndarray, windows: list[int], local: np.ndarray | None, lag: int,
               robust: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per series, the level and the residuals of its baseline; with `robust`, taken a second time with the
    first pass's excursions out of the reference (a spike is not spread over the next hours)."""
    references = [_Reference.of(rest, window) for window in windows]
    level, residual = _level_and_residual(rest, references, local, lag, None)
    if robust:
        residual = _level_and_residual(rest, references, local, lag, _excursions(residual))[1]
    return level, residual


def _cross_fitted(values: np.ndarray, timestamps: np.ndarray, step: float, cfg: Mapping[str, Any],
                  period: float) -> np.ndarray:
    """The values less profiles fitted without them: each fold of the first season's cycles (cycle number
    modulo CROSS_FOLDS) deseasonalised by the seasons fitted on the other folds (see module docstring)."""
    fold = np.floor(timestamps / period) % CROSS_FOLDS
    rest = values.astype(np.float64, copy=True)
    for held in range(CROSS_FOLDS):
        columns = fold == held
        if not columns.any():
            continue
        others = _fit_seasons(np.where(columns, np.nan, values), timestamps, step, cfg)[0]
        for season in others:
            rest[:, columns] -= season.profile[:, season.bucket_of(timestamps[columns])]
    return rest


def _level_and_residual(rest: np.ndarray, references: list[_Reference], local: np.ndarray | None, lag: int,
                        excluded: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Per series, the level and the residuals of its baseline: the seasonal one's reference (references[0]),
    or the drift-following one's (references[1]) where `local`."""
    level, residual = references[0].level, references[0].residual(rest, lag, excluded)
    if local is not None:
        local_level, local_residual = references[1].level, references[1].residual(rest, lag, excluded)
        level = np.where(local, local_level, level)
        residual = np.where(local[:, None], local_residual, residual)
    return level, residual


@dataclass(frozen=True)
class _Reference:
    """What residuals are taken against, over `window` points: the level (the median of the last `window`
    points, of all of them for a series with none there) and the plain trailing mean. Neither depends on
    the excluded samples, so a second pass with excursions left out (`robust_reference`) reuses both."""

    window: int
    level: np.ndarray
    mean: np.ndarray

    @classmethod
    def of(cls, rest: np.ndarray, window: int) -> _Reference:
        level = arrays.nanmedian(rest[:, -window:])
        missing = np.flatnonzero(np.isnan(level))
        if len(missing):  # rows are independent: the whole window's median only where the last points are gaps
            level[missing] = arrays.nanmedian(rest[missing])
        return cls(window, level, arrays.trailing_mean(rest, window))

    def residual(self, rest: np.ndarray, lag: int, excluded: np.ndarray | None) -> np.ndarray:
        """Residuals against the trailing mean as it stood `lag` points before: what a forecast that old
        meets. The `excluded` samples (an excursion) are left out of the trailing mean while it has others;
        once a whole window is excluded, a lasting change is the new normal and the mean is the plain one
        again."""
        mean = self.mean
        if excluded is not None:
            robust = arrays.trailing_mean(rest, self.window, fallback=mean, excluded=excluded)
            mean = np.where(np.isnan(robust), mean, robust)
        return arrays.minus_lagged(rest, mean, lag)


def _residual(rest: np.ndarray, window: int, lag: int) -> np.ndarray:
    """Residuals against the plain trailing mean of `window` points as it stood `lag` points before."""
    return arrays.minus_lagged(rest, arrays.trailing_mean(rest, window), lag)


def _excursions(residual: np.ndarray) -> np.ndarray:
    """Samples beyond the exponential tail's 1e-4 quantile on their side, from the 90-99 % decade: rarer
    than one in ten thousand, an excursion rather than noise."""
    q05, q005, q95, q995 = arrays.nanquantile_rows(residual, np.array([0.05, 0.005, 0.95, 0.995]))
    decades = np.log10(0.005 / 1e-4)
    low, high = q005 + (q005 - q05) * decades, q995 + (q995 - q95) * decades
    with np.errstate(invalid="ignore"):
        return (residual < low[:, None]) | (residual > high[:, None])


def _drifting(values: np.ndarray, timestamps: np.ndarray, step: float, cfg: Mapping[str, Any]) -> np.ndarray:
    """Per series, whether the drift-following baseline (no seasons, the level of the last `local_window`)
    forecast the held-back end of the window better than the seasonal one fitted on the rest of it
    (mean absolute error of a forecast `residual_lag` old, as the residuals are taken)."""
    held = min(int(round(cfg["holdout"] / step)), values.shape[1] // 3)
    if held < 1:
        return np.zeros(values.shape[0], bool)
    lag = int(round(cfg["residual_lag"] / step))
    seasons = _fit_seasons(values[:, :-held], timestamps[:-held], step, cfg)[0]
    rest = _deseasonalised(values, timestamps, seasons)
    window = max(int(round(cfg["level_window"] / step)), 3)
    short = max(int(round(cfg["local_window"] / step)), 1)
    seasonal_error = np.abs(_residual(rest, window, lag)[:, -held:])
    local_error = np.abs(_residual(values.astype(np.float64), short, lag)[:, -held:])
    with np.errstate(invalid="ignore"):
        return arrays.nanmean(local_error) < arrays.nanmean(seasonal_error)


def _fit_season(rest: np.ndarray, timestamps: np.ndarray, period: float, count: int, used: np.ndarray) -> Season:
    """The season's profile, flat (zero) for the series not `used` (too little history of their own)."""
    buckets = _Buckets(period, count).of(timestamps)
    profile = arrays.group_nanmedian(rest, buckets, count)
    center = arrays.nanmedian(profile)
    profile = np.where(np.isnan(profile), 0.0, profile - np.where(np.isnan(center), 0.0, center)[:, None])
    return Season(period, count, np.where(used[:, None], profile, 0.0))


def _observed_span(values: np.ndarray, step: float) -> np.ndarray:
    """Per series, seconds from its first sample to the end of the window (a young series in a long window
    has seen less than the window: a season needs two of its periods in the series' own history)."""
    present = ~np.isnan(values)
    first = np.argmax(present, axis=1)
    return np.where(present.any(axis=1), (values.shape[1] - first) * step, 0.0)


def _bucket_scale(residual: np.ndarray, buckets: np.ndarray, count: int) -> np.ndarray:
    """Per series and bucket, the median absolute residual of the bucket over the series' overall one,
    smoothed over neighbouring buckets, clipped to [0.25, 4]. With one bucket that is the overall median over
    itself: 1, and 1 where it is 0/0 or NaN too (_fit_rows takes it so, without the medians)."""
    spread = np.abs(residual)
    overall = arrays.nanmedian(spread)
    per_bucket = arrays.group_nanmedian(spread, buckets, count)
    if count >= 3:  # smooth over neighbouring buckets: a bucket holds few samples
        neighbours = np.stack([np.roll(per_bucket, 1, axis=1), per_bucket, np.roll(per_bucket, -1, axis=1)])
        counts = np.sum(~np.isnan(neighbours), axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            per_bucket = np.nansum(neighbours, axis=0) / counts
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = per_bucket / overall[:, None]
    ratio = np.where(np.isfinite(ratio), ratio, 1.0)
    return np.clip(ratio, 0.25, 4.0)


def _interpolate_rows(quantiles: np.ndarray, probability: float) -> np.ndarray:
    """Quantile at `probability` for every series, interpolated on the stored grid."""
    i = int(np.clip(np.searchsorted(PROBABILITIES, probability), 1, len(PROBABILITIES) - 1))
    p0, p1 = PROBABILITIES[i - 1], PROBABILITIES[i]
    w = np.clip((probability - p0) / (p1 - p0), 0.0, 1.0)
    return quantiles[i - 1] * (1 - w) + quantiles[i] * w


def _rescaled(seasons: list[Season], values: np.ndarray, timestamps: np.ndarray, step: float,
              window: float) -> list[Season]:
    """The profiles scaled per series by the amplitude its last cycles of the first season show (see module
    docstring): per whole cycle within `window`, the least-squares slope of the series on its profile, moved
    from 1 only as far as the profile explains the cycle's variance (R²); the median over the cycles."""
    period = int(round(seasons[0].period / step))
    cycles = min(int(window // seasons[0].period), values.shape[1] // period)
    if cycles < 1:
        return seasons
    columns = slice(values.shape[1] - cycles * period, None)
    shape = sum(season.profile[:, season.bucket_of(timestamps[columns])] for season in seasons)
    x = values[:, columns].reshape(len(values), cycles, period)
    p = np.where(np.isnan(x), np.nan, shape.reshape(x.shape))
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a cycle without samples is NaN, left out of the median
        x = x - np.nanmean(x, axis=2, keepdims=True)
        p = p - np.nanmean(p, axis=2, keepdims=True)
        xp, pp, xx = np.nanmean(x * p, axis=2), np.nanmean(p * p, axis=2), np.nanmean(x * x, axis=2)
        slope, explained = xp / pp, xp * xp / (pp * xx)
        per_cycle = 1 + (np.clip(slope, *AMPLITUDE_RANGE) - 1) * explained
        scale = np.nanmedian(per_cycle, axis=1)
    scale = np.where(np.isfinite(scale), scale, 1.0)  # no cycle with a profile to fit: as fitted
    return [replace(s, profile=s.profile * scale[:, None]) for s in seasons]
