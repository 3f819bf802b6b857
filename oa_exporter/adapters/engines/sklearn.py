"""scikit-learn engine: a regressor on lag features, or an outlier detector, mapped onto the bands contract.

`model.name` is a scikit-learn class; `params` are its constructor parameters plus the engine's own below.
One estimator serves all series of a rule (a global model): each series is standardised by its own mean and
standard deviation first, so `update` serves series that appeared after the fit.

**A regressor** (Ridge, HistGradientBoostingRegressor, KNeighborsRegressor, ...) learns the next value from
`lags` (default [1, 2, 3, 1h, 1d]; step counts or durations) and, with `calendar` (default true), the sin/cos
phase of the day and the week. It forecasts recursively, step by step for all series in one call. Its band
is split conformal: the estimator is fitted on all but the last `calibration` (default 0.25) of the window;
from `origins` (default 20) points of that held-out tail it forecasts `interval_h` (default 12) steps, and the
quantiles of those errors, per step ahead and pooled over the rule's series (each in its own scale), give the
band at any level. Steps beyond `interval_h` keep the last step's width.

**An outlier detector** (IsolationForest, OneClassSVM, EllipticEnvelope, LocalOutlierFactor with
novelty: true) has no forecast, so it judges deviations from a baseline: the SeasonalProfile forecast.
Each point becomes the features [z, calendar phase], z = (y - baseline) / (the series' residual spread). The
detector is fitted on the older part of the window; its decision scores on the held-out tail set the threshold
τ(level) that `level` % of held-out points reach. For each future time t the engine scores a grid of `grid`
(default 64) candidate z values with t's calendar features; the band is the range of candidates the detector
calls normal (score >= τ), `yhat` the candidate it finds most normal:

    yhat(t) = baseline(t) + spread · argmax_z score(z, t)
    [lower, upper](t) = baseline(t) + spread · [min, max]{ z : score(z, t) >= τ(level) }

so anomaly_score > 1 exactly where the detector would call the sample an outlier at that level.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...core import seasonal
from ...core.domain import Bands, Capabilities, Fitted, Model, ModelSpec, SeriesMatrix
from . import _batch

DEFAULT_MODEL = "Ridge"
DEFAULTS: dict[str, Any] = {"lags": [1, 2, 3, "1h", "1d"], "calendar": True, "calibration": 0.25, "origins": 20,
                            "interval_h": 12, "grid": 64, "max_rows": 200_000, "seed": 0}
DAY, WEEK = 86400.0, 604800.0


class SklearnEngine:
    """Fits rules whose model.engine is `sklearn`."""

    name = "sklearn"
    default_model = DEFAULT_MODEL

    @functools.cached_property
    def versions(self) -> dict[str, str]:
        """What a pickled estimator depends on."""
        return _batch.versions("scikit-learn", "scipy")

    def validate(self, spec: ModelSpec) -> None:
        own, estimator = _split(spec.params)
        _batch.check_lags(own["lags"], "sklearn lags")
        for key in ("origins", "interval_h", "grid", "max_rows"):
            if isinstance(own[key], bool) or not isinstance(own[key], int) or own[key] < 2:
                raise ValueError(f"sklearn {key} must be an integer >= 2")
        if not isinstance(own["calibration"], float | int) or not 0 < own["calibration"] < 1:
            raise ValueError("sklearn calibration must be a fraction of the window between 0 and 1")
        _batch.bind(_estimator_class(spec.name)[0], estimator, f"sklearn {spec.name}")

    def capabilities(self, spec: ModelSpec) -> Capabilities:
        """One estimator on standardised series: global, CPU, new series served without a refit."""
        return Capabilities(global_model=True, update=True)

    def fit(self, history: SeriesMatrix, spec: ModelSpec, level: float) -> Fitted:
        own, params = _split(spec.params)
        cls, kind = _estimator_class(spec.name)
        points = history.values.shape[1]
        lags = sorted({_batch.steps_of(lag, history.step, "sklearn lag") for lag in own["lags"]})
        lags = [lag for lag in lags if lag <= points // 4] or [1]
        cfg = {**own, "lags": lags, "kind": kind, "step": history.step}
        holdout = max(int(points * own["calibration"]), own["interval_h"] + own["origins"])
        min_points = holdout + (2 * max(lags) if kind == "regressor" else 2 * own["interval_h"])

        def train(frame: _batch.Frame) -> Any:
            estimator = cls(**_batch.seeded(cls, params, own["seed"]))
            matrix = _matrix(frame, points)
            times = history.timestamps
            if kind == "regressor":
                return _fit_regressor(estimator, matrix, times, holdout, cfg)
            baseline = _baseline(history, frame.rows, times, points - holdout)  # out of sample on the holdout
            return _fit_outlier(estimator, matrix, baseline, times, holdout, cfg)

        return _batch.fit(history, min_points, train, level, {**cfg, "min_points": min_points})

    def join(self, parts: Sequence[Fitted]) -> Fitted:
        raise NotImplementedError("sklearn fits are not separable by rows: a global model")

    def update(self, model: Model, history: SeriesMatrix) -> Fitted:
        payload = _batch.payload_of(model.fitted)
        fresh = _batch.update(model.fitted, history, payload.params["min_points"], 1)
        state = _batch.payload_of(fresh)
        if state.state is None or not state.rows.size:
            return fresh
        frame, _ = _batch.long_frame(history, payload.params["min_points"])
        matrix = _matrix(frame, history.values.shape[1])
        if isinstance(state.state, _Regression):
            renewed: Any = state.state.conditioned(matrix)
        else:
            renewed = state.state.conditioned(matrix, _baseline(history, frame.rows, history.timestamps, None))
        return Fitted(_batch.Payload(state.fallback, state.rows, renewed, None, state.end, state.level, state.params),
                      fresh.ok, fresh.errors)

    def predict(self, model: Model, start: float, steps: int, level: float) -> Bands:
        return _batch.predict(model.fitted, start, model.step, steps, level, _forecast)

    def dumps(self, fitted: Fitted) -> bytes:
        return _batch.dumps(fitted)

    def loads(self, data: bytes) -> Fitted:
        return _batch.loads(data, self.name, lambda state: isinstance(state, _Regression | _Outlier))


def _split(params: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The engine's own settings (with defaults) and the estimator's constructor parameters."""
    own = {key: params.get(key, default) for key, default in DEFAULTS.items()}
    return own, {k: v for k, v in params.items() if k not in DEFAULTS}


def _estimator_class(name: str) -> tuple[type, str]:
    try:
        return _batch.sklearn_class(name, "regressor"), "regressor"
    except ValueError:
        pass
    try:
        return _batch.sklearn_class(name, "outlier"), "outlier"
    except ValueError:
        raise ValueError(f"scikit-learn has no regressor or outlier detector {name!r} "
                         "(e.g. Ridge, HistGradientBoostingRegressor, IsolationForest)") from None


def _matrix(frame: _batch.Frame, points: int) -> np.ndarray:
    """The frame's series back on the grid (covered rows × points), NaN before each series' first sample."""
    matrix = np.full((len(frame.rows), points), np.nan)
    for k, values in enumerate(frame.values()):
        matrix[k, points - len(values) :] = values
    return matrix


def _standardise(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = np.nanmean(matrix, axis=1)
    std = np.nanstd(matrix, axis=1)
    return mean, np.maximum(std, 1e-9 * np.maximum(np.abs(mean), 1.0))


def _calendar(times: np.ndarray, on: bool) -> list[np.ndarray]:
    if not on:
        return []
    day, week = 2 * np.pi * times / DAY, 2 * np.pi * times / WEEK
    return [np.sin(day), np.cos(day), np.sin(week), np.cos(week)]


def _quantiles(errors: np.ndarray) -> np.ndarray:
    """Quantiles on SeasonalProfile's probability grid over axis 0, NaN ignored: (len(PROBABILITIES), ...)."""
    return np.nanquantile(errors, seasonal.PROBABILITIES, axis=0)


def _at(quantiles: np.ndarray, probability: float) -> np.ndarray:
    """Interpolate a quantile grid (first axis) at `probability`."""
    grid = seasonal.PROBABILITIES
    i = int(np.clip(np.searchsorted(grid, probability), 1, len(grid) - 1))
    w = float(np.clip((probability - grid[i - 1]) / (grid[i] - grid[i - 1]), 0.0, 1.0))
    return quantiles[i - 1] * (1 - w) + quantiles[i] * w


@dataclass
class _Regression:
    """A regressor on standardised lags: per covered series its mean, spread and last max(lags) values."""

    estimator: Any
    lags: list[int]
    calendar: bool
    step: float
    errors: np.ndarray  # (len(PROBABILITIES), interval_h): quantiles of calibration errors per step ahead
    mean: np.ndarray
    std: np.ndarray
    recent: np.ndarray  # (series, max(lags)), standardised

    def conditioned(self, matrix: np.ndarray) -> _Regression:
        """The same estimator continuing from other (newer, or new) series."""
        mean, std = _standardise(matrix)
        recent = ((matrix - mean[:, None]) / std[:, None])[:, -max(self.lags) :]
        return _Regression(self.estimator, self.lags, self.calendar, self.step, self.errors, mean, std, recent)

    def forecast(self, buffer: np.ndarray, first: np.ndarray, h: int) -> np.ndarray:
        """Recursive forecast of h steps for every row of `buffer` (standardised history), first step at `first`."""
        width = buffer.shape[1]
        path = np.concatenate([buffer, np.empty((len(buffer), h))], axis=1)
        for s in range(h):  # one estimator call per step, for all rows at once
            features = [path[:, width + s - lag] for lag in self.lags] + _calendar(first + s * self.step, self.calendar)
            path[:, width + s] = self.estimator.predict(np.column_stack(features))
        return path[:, width:]


def _fit_regressor(estimator: Any, matrix: np.ndarray, times: np.ndarray, holdout: int,
                   cfg: dict[str, Any]) -> _Regression:
    lags, width = cfg["lags"], max(cfg["lags"])
    mean, std = _standardise(matrix)
    z = (matrix - mean[:, None]) / std[:, None]
    train_end = z.shape[1] - holdout
    columns = np.arange(width, train_end)
    features = np.stack([z[:, columns - lag] for lag in lags] + [np.broadcast_to(c, (len(z), len(columns)))
                        for c in _calendar(times[columns], cfg["calendar"])], axis=-1).reshape(-1, len(lags) + (
                        4 if cfg["calendar"] else 0))
    target = z[:, columns].reshape(-1)
    usable = np.flatnonzero(~np.isnan(target) & ~np.isnan(features).any(axis=1))
    if len(usable) > cfg["max_rows"]:
        usable = np.sort(np.random.default_rng(cfg["seed"]).choice(usable, cfg["max_rows"], replace=False))
    estimator.fit(features[usable], target[usable])
    model = _Regression(estimator, lags, cfg["calendar"], cfg["step"], np.empty(0), mean, std, z[:, -width:])
    h = cfg["interval_h"]
    origins = np.linspace(train_end, z.shape[1] - h, cfg["origins"]).astype(np.int64)
    buffers = np.concatenate([z[:, o - width : o] for o in origins])  # (origins × series, width)
    truth = np.concatenate([z[:, o : o + h] for o in origins])
    predicted = model.forecast(np.nan_to_num(buffers), np.repeat(times[origins], len(z)), h)
    errors = np.where(np.isnan(buffers).any(axis=1)[:, None], np.nan, truth - predicted)
    model.errors = _quantiles(errors)
    return model


@dataclass
class _Outlier:
    """A detector of abnormal deviations from the baseline: candidate grid, threshold quantiles, spreads."""

    estimator: Any
    calendar: bool
    grid: np.ndarray  # candidate z values
    thresholds: np.ndarray  # (len(PROBABILITIES),): quantiles of held-out decision scores
    spread: np.ndarray  # per covered series

    def conditioned(self, matrix: np.ndarray, baseline: np.ndarray) -> _Outlier:
        spread = _spread(matrix - baseline)
        return _Outlier(self.estimator, self.calendar, self.grid, self.thresholds, spread)

    def band(self, times: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Most normal z, and the range of normal z, at each time: three arrays of len(times)."""
        g = len(self.grid)
        features = np.column_stack([np.tile(self.grid, len(times))] +
                                   [np.repeat(c, g) for c in _calendar(times, self.calendar)])
        scores = self.estimator.decision_function(features).reshape(len(times), g)
        normal = scores >= _at(self.thresholds, 1 - level / 100)
        best = self.grid[np.argmax(scores, axis=1)]
        lower = np.where(normal.any(axis=1), np.min(np.where(normal, self.grid, np.inf), axis=1), best)
        upper = np.where(normal.any(axis=1), np.max(np.where(normal, self.grid, -np.inf), axis=1), best)
        return best, np.minimum(lower, best), np.maximum(upper, best)


def _spread(residual: np.ndarray) -> np.ndarray:
    spread = np.nanstd(residual, axis=1)
    return np.where(np.isfinite(spread) & (spread > 0), spread, 1e-9)


def _baseline(history: SeriesMatrix, rows: np.ndarray, times: np.ndarray, end: int | None) -> np.ndarray:
    """SeasonalProfile's forecast at `times`, fitted on the window up to column `end`."""
    profile = seasonal.fit(history.values[rows, :end], history.start, history.step, {})
    return profile.predict(times, 50.0)[0]


def _fit_outlier(estimator: Any, matrix: np.ndarray, baseline: np.ndarray, times: np.ndarray, holdout: int,
                 cfg: dict[str, Any]) -> _Outlier:
    residual = matrix - baseline
    spread = _spread(residual)
    z = residual / spread[:, None]
    calendar = np.broadcast_to(np.stack(_calendar(times, cfg["calendar"]), axis=-1) if cfg["calendar"]
                               else np.empty((len(times), 0)), (len(z), len(times), 4 if cfg["calendar"] else 0))
    features = np.concatenate([z[:, :, None], calendar], axis=-1)
    train_end = z.shape[1] - holdout
    rng = np.random.default_rng(cfg["seed"])
    train = _rows(features[:, :train_end], cfg["max_rows"], rng)
    held = _rows(features[:, train_end:], cfg["max_rows"], rng)
    estimator.fit(train)
    thresholds = np.quantile(estimator.decision_function(held), seasonal.PROBABILITIES)
    low, high = np.quantile(train[:, 0], [0.0005, 0.9995])
    margin = (high - low) * 0.5
    grid = np.linspace(low - margin, high + margin, cfg["grid"])
    return _Outlier(estimator, cfg["calendar"], grid, thresholds, spread)


def _rows(features: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
    flat = features.reshape(-1, features.shape[-1])
    flat = flat[~np.isnan(flat).any(axis=1)]
    return flat[np.sort(rng.choice(len(flat), limit, replace=False))] if len(flat) > limit else flat


def _forecast(payload: _batch.Payload, h: int, level: float) -> _batch.Forecast:
    state, step = payload.state, payload.params["step"]
    times = payload.end + step * np.arange(1, h + 1)
    if isinstance(state, _Regression):
        z = state.forecast(np.nan_to_num(state.recent), np.full(len(state.recent), times[0]), h)
        q_lo, q_hi = _batch.quantile_levels(level)
        errors = np.concatenate([state.errors, np.repeat(state.errors[:, -1:], max(h - state.errors.shape[1], 0),
                                                         axis=1)], axis=1)[:, :h]
        low, high = np.minimum(_at(errors, q_lo), 0.0), np.maximum(_at(errors, q_hi), 0.0)
        scale, mean = state.std[:, None], state.mean[:, None]
        return mean + scale * z, mean + scale * (z + low), mean + scale * (z + high)
    best, lower, upper = state.band(times, level)
    baseline = payload.fallback.predict(times, 50.0)[0][payload.rows]
    spread = state.spread[:, None]
    return baseline + spread * best, baseline + spread * lower, baseline + spread * upper
