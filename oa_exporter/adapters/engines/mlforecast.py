"""Nixtla MLForecast engine: one scikit-learn regressor for all series of a rule, on lag and calendar features.

`model.name` is a scikit-learn regressor class (Ridge, HistGradientBoostingRegressor, RandomForestRegressor, ...);
`params` are its constructor parameters plus the engine's own:

- `lags` (default [1, 2, 3, 1h, 1d]): step counts or durations; a lag longer than a third of the window is
  dropped, so a short window still fits.
- `calendar` (default true): sin/cos of the phase of the day and of the week as date features.
- `n_windows` (default 20), `interval_h` (default 12): conformal prediction intervals, from the errors of
  `n_windows` backtests of `interval_h` steps (MLForecast's PredictionIntervals; each window is one more fit).
  The engine applies split conformal's finite-sample correction (the ceil((n + 1)·level)-th of n errors), which
  MLForecast leaves out; from level 100·n/(n + 1) % on (95.2 % for 20 windows) the band is the largest
  calibration error, so a 99 % band wants about 100 windows. Steps beyond `interval_h` keep the width of the
  last calibrated step.

Series are standardised one by one (LocalStandardScaler), so one regressor serves series of any scale. It is
a global model: `update` forecasts new series from their history, with intervals recalibrated on it.

On a Dask worker (the dask dispatcher), a rule of `distributed_from` series or more whose regressor is Ridge or
LinearRegression is fitted by DistributedMLForecast on a Dask frame of its series (see _dask.py): the features of
each partition on the worker that holds it, the regressor solved from the partitions' moments, the calibration
windows as DistributedMLForecast's cross-validation. The model kept is the local MLForecast it converts to, the
same as a fit in one process. Other regressors fit in the one worker process.
LightGBM is not wired in: HistGradientBoostingRegressor is scikit-learn's own histogram gradient boosting, and
one more compiled dependency buys little here.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from ...core.domain import Bands, Capabilities, Fitted, Model, ModelSpec, SeriesMatrix
from . import _batch, _dask

DEFAULT_MODEL = "Ridge"
DISTRIBUTED_SERIES = 5000  # on a Dask worker, rules of this many series or more are fitted across the cluster
DEFAULTS: dict[str, Any] = {"lags": [1, 2, 3, "1h", "1d"], "calendar": True, "n_windows": 20, "interval_h": 12,
                            "seed": 0}
DAY, WEEK = 86400.0, 604800.0


class MLForecastEngine:
    """Fits rules whose model.engine is `mlforecast`."""

    name = "mlforecast"
    default_model = DEFAULT_MODEL
    distributed_from = DISTRIBUTED_SERIES

    @functools.cached_property
    def versions(self) -> dict[str, str]:
        """What a pickled model depends on."""
        return _batch.versions("mlforecast", "scikit-learn")

    def validate(self, spec: ModelSpec) -> None:
        own, estimator = _split(spec.params)
        _batch.check_lags(own["lags"], "mlforecast lags")
        for key in ("n_windows", "interval_h"):
            if isinstance(own[key], bool) or not isinstance(own[key], int) or own[key] < 1:
                raise ValueError(f"mlforecast {key} must be a positive integer")
        _batch.bind(_batch.sklearn_class(spec.name, "regressor"), estimator, f"mlforecast {spec.name}")

    def capabilities(self, spec: ModelSpec) -> Capabilities:
        """One regressor across series: global, CPU, and new series are forecast from their history."""
        return Capabilities(global_model=True, update=True)

    def fit(self, history: SeriesMatrix, spec: ModelSpec, level: float) -> Fitted:
        own, estimator = _split(spec.params)
        lags = _lags(own["lags"], history.step, history.values.shape[1])
        cfg = {**own, "lags": lags, "name": spec.name, "estimator": estimator, "step": history.step}
        large = len(history.keys) if _dask.solvable_on_moments(spec.name, estimator) else 0
        with _dask.cluster_client(large, self.distributed_from) as cluster:
            if cluster is not None:
                return _batch.fit(history, _min_points(cfg), lambda frame: _train_on(cluster, frame, cfg), level, cfg)
            return _batch.fit(history, _min_points(cfg), lambda frame: _train(frame, cfg), level, cfg)

    def join(self, parts: Sequence[Fitted]) -> Fitted:
        raise NotImplementedError("mlforecast fits are not separable by rows: a global model")

    def update(self, model: Model, history: SeriesMatrix) -> Fitted:
        cfg = _batch.payload_of(model.fitted).params
        return _batch.update(model.fitted, history, _min_points(cfg), _min_points(cfg))

    def predict(self, model: Model, start: float, steps: int, level: float) -> Bands:
        return _batch.predict(model.fitted, start, model.step, steps, level, _forecast)

    def dumps(self, fitted: Fitted) -> bytes:
        return _batch.dumps(fitted)

    def loads(self, data: bytes) -> Fitted:
        return _batch.loads(data, self.name, lambda state: type(state).__name__ == "MLForecast")


def _split(params: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The engine's own settings (with defaults) and the regressor's constructor parameters."""
    own = {key: params.get(key, default) for key, default in DEFAULTS.items()}
    return own, {k: v for k, v in params.items() if k not in DEFAULTS}


def _lags(lags: list[Any], step: float, points: int) -> list[int]:
    """Lags in steps, without those longer than a third of the window (at least lag 1 stays)."""
    steps = sorted({_batch.steps_of(lag, step, "mlforecast lag") for lag in lags})
    return [lag for lag in steps if lag <= points // 3] or [1]


def _min_points(cfg: dict[str, Any]) -> int:
    """History a series needs: the longest lag, the calibration windows, and as much again to learn from."""
    return 2 * max(cfg["lags"]) + cfg["n_windows"] * cfg["interval_h"] + 10


def _regressor(cfg: dict[str, Any]) -> Any:
    regressor = _batch.sklearn_class(cfg["name"], "regressor")
    return regressor(**_batch.seeded(regressor, cfg["estimator"], cfg["seed"]))


def _pipeline(cfg: dict[str, Any]) -> dict[str, Any]:
    """The features of MLForecast and DistributedMLForecast alike."""
    from mlforecast.target_transforms import LocalStandardScaler

    return {"freq": _batch.freq(cfg["step"]), "lags": cfg["lags"],
            "date_features": [day_sin, day_cos, week_sin, week_cos] if cfg["calendar"] else None,
            "target_transforms": [LocalStandardScaler()]}


def _train(frame: _batch.Frame, cfg: dict[str, Any]) -> Any:
    from mlforecast import MLForecast
    from mlforecast.utils import PredictionIntervals

    forecaster = MLForecast(models={"model": _regressor(cfg)}, **_pipeline(cfg))
    intervals = PredictionIntervals(n_windows=cfg["n_windows"], h=cfg["interval_h"])
    return forecaster.fit(frame.data, prediction_intervals=intervals)


def _train_on(cluster: Any, frame: _batch.Frame, cfg: dict[str, Any]) -> Any:
    """_train's model, fitted by DistributedMLForecast across the Dask cluster."""
    return _dask.mlforecast_on_cluster(cluster, frame.data, _pipeline(cfg), _regressor(cfg), cfg["n_windows"],
                                       cfg["interval_h"])


def _forecast(payload: _batch.Payload, h: int, level: float) -> _batch.Forecast:
    """Mean for h steps; conformal bounds for the calibrated steps, the last width carried beyond them."""
    forecaster, key = payload.state, _batch.level_key(_corrected(level, payload.params["n_windows"]))
    new_df = payload.context.data if payload.context is not None else None
    series, calibrated = len(payload.rows), min(h, payload.params["interval_h"])
    banded = forecaster.predict(calibrated, new_df=new_df, level=[key])
    mean_c, lo_c, hi_c = _batch.wide(banded, ("model", f"model-lo-{key}", f"model-hi-{key}"), series, calibrated)
    if h == calibrated:
        return mean_c, lo_c, hi_c
    (mean,) = _batch.wide(forecaster.predict(h, new_df=new_df), ("model",), series, h)
    below = np.concatenate([mean_c - lo_c, np.repeat((mean_c - lo_c)[:, -1:], h - calibrated, axis=1)], axis=1)
    above = np.concatenate([hi_c - mean_c, np.repeat((hi_c - mean_c)[:, -1:], h - calibrated, axis=1)], axis=1)
    return mean, mean - below, mean + above


def _corrected(level: float, windows: int) -> float:
    """Split conformal's finite-sample level: the ceil((n + 1) · level)-th of n calibration errors, which MLForecast
    does not apply itself (with 20 windows its 90 % band covered 80 % of held-out data, corrected 90 %)."""
    return min(100.0 * math.ceil((windows + 1) * level / 100 - 1e-9) / windows, 100.0)


def _seconds(dates: Any) -> np.ndarray:
    return pd.DatetimeIndex(dates).asi8 / 1e9


def day_sin(dates: Any) -> np.ndarray:
    """Calendar feature: sine of the phase of the (UTC) day."""
    return np.sin(2 * np.pi * _seconds(dates) / DAY)


def day_cos(dates: Any) -> np.ndarray:
    """Calendar feature: cosine of the phase of the (UTC) day."""
    return np.cos(2 * np.pi * _seconds(dates) / DAY)


def week_sin(dates: Any) -> np.ndarray:
    """Calendar feature: sine of the phase of the week."""
    return np.sin(2 * np.pi * _seconds(dates) / WEEK)


def week_cos(dates: Any) -> np.ndarray:
    """Calendar feature: cosine of the phase of the week."""
    return np.cos(2 * np.pi * _seconds(dates) / WEEK)
