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
Every step is one numpy operation over the (series × time) matrix: no Python loop over series.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .durations import parse_duration

PROBABILITIES = np.array(
    [0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.16, 0.25, 0.5,
     0.75, 0.84, 0.9, 0.95, 0.975, 0.99, 0.995, 0.9975, 0.999, 0.9995, 0.9999]
)
DEFAULTS: dict[str, Any] = {
    "seasons": ["1d", "1w"], "buckets": 288, "level_window": "3h", "scale_buckets": None, "tail": None,
    "residual_lag": "0s", "range_margin": None,
}


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

    def predict(self, timestamps: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """yhat, lower, upper of shape (series, len(timestamps)) with a `level` % central interval."""
        yhat = np.repeat(self.level[:, None], len(timestamps), axis=1)
        for season in self.seasons:
            yhat += season.profile[:, season.bucket_of(timestamps)]
        scale = self.scale[:, _Buckets(self.scale_period, self.scale.shape[1]).of(timestamps)]
        q_lo, q_hi = self.interval(level)
        return yhat, yhat + q_lo[:, None] * scale, yhat + q_hi[:, None] * scale

    def interval(self, level: float) -> tuple[np.ndarray, np.ndarray]:
        """Residual quantiles of the central `level` % interval, per series; lower <= 0 <= upper."""
        tail = (1 - level / 100) / 2
        start = (1 - self.tail / 100) / 2 if self.tail is not None else 0.0
        if tail < start:  # exponential tail from the decade [10·p0, p0] (see module docstring)
            decades = np.log10(start / tail)
            near_lo, far_lo = _interpolate_rows(self.quantiles, 10 * start), _interpolate_rows(self.quantiles, start)
            near_hi = _interpolate_rows(self.quantiles, 1 - 10 * start)
            far_hi = _interpolate_rows(self.quantiles, 1 - start)
            q_lo, q_hi = far_lo + (far_lo - near_lo) * decades, far_hi + (far_hi - near_hi) * decades
        else:
            q_lo = _interpolate_rows(self.quantiles, tail)
            q_hi = _interpolate_rows(self.quantiles, 1 - tail)
        if self.extremes is not None:  # never beyond the window's own range (see module docstring)
            q_lo = np.maximum(q_lo, self.range_margin * self.extremes[0])
            q_hi = np.minimum(q_hi, self.range_margin * self.extremes[1])
        return np.minimum(q_lo, 0.0), np.maximum(q_hi, 0.0)


@dataclass(frozen=True)
class _Buckets:
    period: float
    count: int

    def of(self, timestamps: np.ndarray) -> np.ndarray:
        phase = np.mod(timestamps, self.period) / self.period
        return np.minimum((phase * self.count).astype(np.int64), self.count - 1)


def settings(params: Mapping[str, Any]) -> dict[str, Any]:
    """Validated parameters with defaults; ValueError names the bad one."""
    unknown = set(params) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"SeasonalProfile has no parameter(s) {sorted(unknown)}; it takes {sorted(DEFAULTS)}")
    merged = {**DEFAULTS, **params}
    seasons = merged["seasons"]
    if not isinstance(seasons, Sequence) or isinstance(seasons, str):
        raise ValueError("SeasonalProfile seasons must be a list of durations such as [1d, 1w]")
    buckets = merged["buckets"]
    if isinstance(buckets, bool) or not isinstance(buckets, int) or buckets < 2:
        raise ValueError("SeasonalProfile buckets must be an integer >= 2")
    scale_buckets = merged["scale_buckets"]
    if scale_buckets is not None and (isinstance(scale_buckets, bool) or not isinstance(scale_buckets, int)
                                      or scale_buckets < 1):
        raise ValueError("SeasonalProfile scale_buckets must be an integer >= 1 (1: one noise level all day)")
    tail = merged["tail"]
    if tail is not None and (isinstance(tail, bool) or not isinstance(tail, int | float) or not 90 <= tail < 100):
        raise ValueError("SeasonalProfile tail must be a level in % from 90 to below 100, e.g. 99")
    margin = merged["range_margin"]
    if margin is not None and (isinstance(margin, bool) or not isinstance(margin, int | float)
                               or not 1 <= margin <= 10):
        raise ValueError("SeasonalProfile range_margin must be a factor from 1 to 10 (1.05: 5 % beyond the range)")
    return {
        "seasons": sorted(parse_duration(s) for s in seasons),
        "buckets": buckets,
        "level_window": parse_duration(merged["level_window"]),
        "scale_buckets": scale_buckets,
        "tail": float(tail) if tail is not None else None,
        "range_margin": float(margin) if margin is not None else None,
        "residual_lag": 0.0 if merged["residual_lag"] in ("0s", 0) else parse_duration(merged["residual_lag"]),
    }


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
    return _concatenate(list((mapper or _map)(fit_block, blocks)))


def _map(fn: Callable[[np.ndarray], SeasonalProfile], blocks: list[np.ndarray]) -> list[SeasonalProfile]:
    return [fn(block) for block in blocks]


def _concatenate(blocks: list[SeasonalProfile]) -> SeasonalProfile:
    """One SeasonalProfile of the series of `blocks`, in order (fitted on the same grid with the same params)."""
    seasons = tuple(replace(season, profile=np.concatenate([b.seasons[k].profile for b in blocks]))
                    for k, season in enumerate(blocks[0].seasons))
    return replace(blocks[0], seasons=seasons, level=np.concatenate([b.level for b in blocks]),
                   scale=np.concatenate([b.scale for b in blocks]), ok=np.concatenate([b.ok for b in blocks]),
                   quantiles=np.concatenate([b.quantiles for b in blocks], axis=1),
                   extremes=None if blocks[0].extremes is None
                   else np.concatenate([b.extremes for b in blocks], axis=1))


def _fit_rows(values: np.ndarray, start: float, step: float, params: Mapping[str, Any]) -> SeasonalProfile:
    """fit() over one block of rows."""
    cfg = settings(params)
    timestamps = start + step * np.arange(values.shape[1])
    span = step * values.shape[1]
    observed, samples = _observed_span(values, step), np.count_nonzero(~np.isnan(values), axis=1)
    rest = values.astype(np.float64, copy=True)
    seasons: list[Season] = []
    for period in cfg["seasons"]:
        count = int(min(cfg["buckets"], round(period / step)))
        if span >= 2 * period and count >= 4:
            one_cycle = not seasons and samples >= 4 * count  # the first season, from one well-sampled cycle
            used = (observed >= 2 * period) | (one_cycle & (observed >= period))
            season = _fit_season(rest, timestamps, period, count, used)
            rest -= season.profile[:, season.bucket_of(timestamps)]
            seasons.append(season)
    window = max(int(round(cfg["level_window"] / step)), 3)
    level = _nanmedian(rest[:, -window:])
    level = np.where(np.isnan(level), _nanmedian(rest), level)
    residual = rest - _lagged(_trailing_mean(rest, window), int(round(cfg["residual_lag"] / step)))
    scale_period = seasons[0].period if seasons else span
    scale_count = min(cfg["scale_buckets"] or seasons[0].buckets, seasons[0].buckets) if seasons else 1
    scale = _bucket_scale(residual, _Buckets(scale_period, scale_count).of(timestamps), scale_count)
    scaled = residual / scale[:, _Buckets(scale_period, scale_count).of(timestamps)]
    quantiles = _nanquantile_rows(scaled, PROBABILITIES)
    ok = (np.sum(~np.isnan(scaled), axis=1) >= 2) & ~np.isnan(level)
    extremes = _nanrange(scaled) if cfg["range_margin"] is not None else None
    return SeasonalProfile(tuple(seasons), level, scale_period, scale, quantiles, ok, cfg["tail"], extremes,
                           cfg["range_margin"] or 1.0)


def _fit_season(rest: np.ndarray, timestamps: np.ndarray, period: float, count: int, used: np.ndarray) -> Season:
    """The season's profile, flat (zero) for the series not `used` (too little history of their own)."""
    buckets = _Buckets(period, count).of(timestamps)
    profile = _group_nanmedian(rest, buckets, count)
    center = _nanmedian(profile)
    profile = np.where(np.isnan(profile), 0.0, profile - np.where(np.isnan(center), 0.0, center)[:, None])
    return Season(period, count, np.where(used[:, None], profile, 0.0))


def _observed_span(values: np.ndarray, step: float) -> np.ndarray:
    """Per series, seconds from its first sample to the end of the window (a young series in a long window
    has seen less than the window: a season needs two of its periods in the series' own history)."""
    present = ~np.isnan(values)
    first = np.argmax(present, axis=1)
    return np.where(present.any(axis=1), (values.shape[1] - first) * step, 0.0)


def _bucket_scale(residual: np.ndarray, buckets: np.ndarray, count: int) -> np.ndarray:
    spread = np.abs(residual)
    overall = _nanmedian(spread)
    per_bucket = _group_nanmedian(spread, buckets, count)
    if count >= 3:  # smooth over neighbouring buckets: a bucket holds few samples
        neighbours = np.stack([np.roll(per_bucket, 1, axis=1), per_bucket, np.roll(per_bucket, -1, axis=1)])
        counts = np.sum(~np.isnan(neighbours), axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            per_bucket = np.nansum(neighbours, axis=0) / counts
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = per_bucket / overall[:, None]
    ratio = np.where(np.isfinite(ratio), ratio, 1.0)
    return np.clip(ratio, 0.25, 4.0)


def _group_nanmedian(values: np.ndarray, groups: np.ndarray, count: int) -> np.ndarray:
    """Median of each row over the columns of each group: (series, count); NaN where a group is empty."""
    order = np.argsort(groups, kind="stable")
    sizes = np.bincount(groups, minlength=count)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    rank = np.arange(len(order)) - starts[groups[order]]
    index = np.full((count, max(int(sizes.max()), 1)), values.shape[1])  # pad points at a NaN column
    index[groups[order], rank] = order
    padded = np.concatenate([values, np.full((values.shape[0], 1), np.nan)], axis=1)
    return _nanmedian(padded[:, index])


def _nanmedian(values: np.ndarray) -> np.ndarray:
    """NaN-ignoring median over the last axis (NaN where all are NaN), by one sort."""
    return _nanquantile_last(values, np.array([0.5]))[..., 0]


def _nanrange(values: np.ndarray) -> np.ndarray:
    """Smallest and largest value of each row, ignoring NaN: shape (2, rows); NaN for a row without values."""
    present = ~np.isnan(values)
    lowest = np.min(np.where(present, values, np.inf), axis=1)
    highest = np.max(np.where(present, values, -np.inf), axis=1)
    return np.where(present.any(axis=1), np.stack([lowest, highest]), np.nan)


def _nanquantile_rows(values: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    return np.moveaxis(_nanquantile_last(values, probabilities), -1, 0)


def _nanquantile_last(values: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """Linear-interpolated quantiles over the last axis, ignoring NaN: shape (..., len(probabilities))."""
    ordered = np.sort(values, axis=-1)  # NaN sorts last
    valid = np.sum(~np.isnan(ordered), axis=-1, keepdims=True)
    position = probabilities * np.maximum(valid - 1, 0)
    below = np.floor(position).astype(np.int64)
    above = np.minimum(below + 1, np.maximum(valid - 1, 0))
    low = np.take_along_axis(ordered, below, axis=-1)
    high = np.take_along_axis(ordered, above, axis=-1)
    result = low + (high - low) * (position - below)
    return np.where(valid > 0, result, np.nan)


def _trailing_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Mean of the `window` points before each point (NaN-aware); the first point gets its own value."""
    present = ~np.isnan(values)
    sums = np.concatenate([np.zeros((values.shape[0], 1)), np.cumsum(np.where(present, values, 0), axis=1)], 1)
    counts = np.concatenate([np.zeros((values.shape[0], 1)), np.cumsum(present, axis=1)], axis=1)
    end = np.arange(values.shape[1])
    begin = np.maximum(end - window, 0)
    total = sums[:, end] - sums[:, begin]
    number = counts[:, end] - counts[:, begin]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total / number
    return np.where(number > 0, mean, values)


def _lagged(values: np.ndarray, lag: int) -> np.ndarray:
    """Each row shifted `lag` columns later (NaN where nothing came before)."""
    if lag <= 0:
        return values
    shifted = np.full_like(values, np.nan)
    shifted[:, lag:] = values[:, :-lag]
    return shifted


def _interpolate_rows(quantiles: np.ndarray, probability: float) -> np.ndarray:
    """Quantile at `probability` for every series, interpolated on the stored grid."""
    i = int(np.clip(np.searchsorted(PROBABILITIES, probability), 1, len(PROBABILITIES) - 1))
    p0, p1 = PROBABILITIES[i - 1], PROBABILITIES[i]
    w = np.clip((probability - p0) / (p1 - p0), 0.0, 1.0)
    return quantiles[i - 1] * (1 - w) + quantiles[i] * w
