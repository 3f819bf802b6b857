"""Darts engine: any forecasting model of `darts.models` by name, its constructor parameters in `params`.

Intervals, by what the model can do:

- a probabilistic model (ExponentialSmoothing, AutoARIMA, a regression model with a `likelihood`, ...):
  `num_samples` (default 200) sample paths, whose quantiles give the band;
- a deterministic global model (LinearRegressionModel, RandomForestModel, NBEATSModel, ...): split conformal
  prediction with Darts' ConformalNaiveModel, calibrated on each series' last `cal_length` (default 200) points;
- a deterministic local model (NaiveSeasonal, Theta, ...) has neither, and is refused by `check`.

Global models are fitted once on all series of the rule (and `update` forecasts new series from their history);
local models once per series. `random_state` defaults to 0 so fits and samples are reproducible.
The default model is LinearRegressionModel with `lags: 24` and conformal intervals.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Sequence
from typing import Any

import numpy as np

from ...core.domain import Bands, Capabilities, Fitted, Model, ModelSpec, SeriesMatrix
from . import _batch

DEFAULT_MODEL = "LinearRegressionModel"
DEFAULT_PARAMS: dict[str, Any] = {"lags": 24}
OWN: dict[str, Any] = {"num_samples": 200, "cal_length": 200}
SEED = 0
CONFORMAL_ROOM = 64  # steps ahead a series of the minimum length can still be calibrated for


class DartsEngine:
    """Fits rules whose model.engine is `darts`."""

    name = "darts"
    default_model = DEFAULT_MODEL

    @functools.cached_property
    def versions(self) -> dict[str, str]:
        """What a pickled model depends on."""
        return _batch.versions("darts", "scikit-learn", "statsmodels")

    def validate(self, spec: ModelSpec) -> None:
        cfg = _settings(spec)
        for key in OWN:
            if isinstance(cfg[key], bool) or not isinstance(cfg[key], int) or cfg[key] < 1:
                raise ValueError(f"darts {key} must be a positive integer")
        try:
            model = _build(cfg)
        except (TypeError, ValueError) as e:
            raise ValueError(f"bad params for darts {spec.name}: {e}") from e
        if not model.supports_probabilistic_prediction and not _is_global(model):
            raise ValueError(f"darts {spec.name} gives neither probabilistic forecasts nor, as a local model, "
                             "conformal intervals: pick a probabilistic or a global model")

    def capabilities(self, spec: ModelSpec) -> Capabilities:
        """Global models forecast new series from their history without a refit; local ones learn by refits."""
        model = _build(_settings(spec))
        global_model = _is_global(model)
        torch_model = any(c.__name__ == "TorchForecastingModel" for c in type(model).__mro__)
        return Capabilities(global_model=global_model, gpu=torch_model, update=global_model)

    def fit(self, history: SeriesMatrix, spec: ModelSpec, level: float) -> Fitted:
        cfg = {**_settings(spec), "step": history.step}
        template = _build(cfg)
        cfg["global"] = _is_global(template)
        cfg["min_points"] = _min_points(template, cfg)
        if cfg["global"]:
            return _batch.fit(history, cfg["min_points"], lambda frame: _train_global(frame, cfg), level, cfg,
                              context_points=history.values.shape[1])
        return _fit_local(history, cfg, level)

    def join(self, parts: Sequence[Fitted]) -> Fitted:
        raise NotImplementedError("darts fits are not separable by rows: one fit of the rule's series")

    def update(self, model: Model, history: SeriesMatrix) -> Fitted:
        cfg = _batch.payload_of(model.fitted).params
        if not cfg["global"]:
            raise NotImplementedError(f"darts {cfg['name']} is a local model: it learns new observations by a refit")
        return _batch.update(model.fitted, history, cfg["min_points"], history.values.shape[1])

    def predict(self, model: Model, start: float, steps: int, level: float) -> Bands:
        return _batch.predict(model.fitted, start, model.step, steps, level, _forecast)

    def dumps(self, fitted: Fitted) -> bytes:
        return _batch.dumps(fitted)

    def loads(self, data: bytes) -> Fitted:
        return _batch.loads(data, self.name, lambda state: isinstance(state, list | tuple) or hasattr(state, "predict"))


def _settings(spec: ModelSpec) -> dict[str, Any]:
    params = dict(spec.params)
    if spec.name == DEFAULT_MODEL:
        params = {**DEFAULT_PARAMS, **params}
    own = {key: params.pop(key, default) for key, default in OWN.items()}
    return {**own, "name": spec.name, "params": params}


def _model_class(name: str) -> type:
    from darts import models  # ~1 s (and torch for the neural models): only for rules that use this engine

    model_class = getattr(models, name, None)
    if not isinstance(model_class, type) or name.startswith("_") or not hasattr(model_class, "fit"):
        raise ValueError(f"darts has no forecasting model {name!r} (e.g. LinearRegressionModel, "
                         "ExponentialSmoothing, AutoARIMA, NBEATSModel)")
    return model_class


def _build(cfg: dict[str, Any]) -> Any:
    model_class = _model_class(cfg["name"])
    params = cfg["params"]
    if "random_state" in inspect.signature(model_class).parameters and params.get("random_state") is None:
        params = {**params, "random_state": SEED}
    return model_class(**params)


def _is_global(model: Any) -> bool:
    from darts.models.forecasting.forecasting_model import GlobalForecastingModel

    return isinstance(model, GlobalForecastingModel)


def _min_points(model: Any, cfg: dict[str, Any]) -> int:
    """History a series needs: what the model trains on, plus, for conformal intervals, the calibration window
    and room for its forecasts (calibrating an n-step band takes cal_length + n - 1 backtests)."""
    needed = int(model.min_train_series_length)
    if not model.supports_probabilistic_prediction:
        needed += cfg["cal_length"] + needed + CONFORMAL_ROOM
    return max(needed, 3)


def _series(frame: _batch.Frame, step: float) -> list[Any]:
    from darts import TimeSeries

    times = frame.data["ds"].to_numpy()
    offsets = np.concatenate([[0], np.cumsum(frame.lengths)])
    return [TimeSeries.from_times_and_values(_index(times[a:b]), y.astype(np.float64), freq=_batch.freq(step))
            for a, b, y in zip(offsets[:-1], offsets[1:], frame.values(), strict=True)]


def _index(times: np.ndarray) -> Any:
    import pandas as pd

    return pd.DatetimeIndex(times)


def _train_global(frame: _batch.Frame, cfg: dict[str, Any]) -> Any:
    model = _build(cfg)
    model.fit(_series(frame, cfg["step"]))
    return model


def _fit_local(history: SeriesMatrix, cfg: dict[str, Any], level: float) -> Fitted:
    """One model per series: a series the library cannot fit falls back alone (counted), the others keep theirs."""
    failed: list[int] = []

    def train(frame: _batch.Frame) -> list[Any]:
        models = []
        for row, series in zip(frame.rows, _series(frame, cfg["step"]), strict=True):
            try:
                models.append(_build(cfg).fit(series))
            except Exception as e:  # this series falls back; the error is counted below
                models.append(None)
                failed.append(int(row))
                errors[int(row)] = f"{type(e).__name__}: {e}"
        return models

    errors: dict[int, str] = {}
    fitted = _batch.fit(history, cfg["min_points"], train, level, cfg)
    if not failed:
        return fitted
    payload = _batch.payload_of(fitted)
    keep = ~np.isin(payload.rows, failed)
    models = [m for m, k in zip(payload.state, keep, strict=True) if k]
    payload = _batch.Payload(payload.fallback, payload.rows[keep], models, None, payload.end, level, cfg)
    ok = payload.fallback.ok.copy()
    ok[payload.rows] = True
    return Fitted(payload, ok, dict(sorted({**fitted.errors, **errors}.items())))


def _forecast(payload: _batch.Payload, h: int, level: float) -> _batch.Forecast:
    cfg, (q_lo, q_hi) = payload.params, _batch.quantile_levels(level)
    if cfg["global"]:
        assert payload.context is not None
        series = _series(payload.context, cfg["step"])
        model = payload.state
        if model.supports_probabilistic_prediction:
            forecasts = model.predict(h, series=series, num_samples=cfg["num_samples"], random_state=SEED)
        else:
            from darts.models import ConformalNaiveModel

            conformal = ConformalNaiveModel(model, quantiles=[q_lo, 0.5, q_hi], cal_length=cfg["cal_length"],
                                            random_state=SEED)
            forecasts = conformal.predict(h, series=series, predict_likelihood_parameters=True)
            bands = np.stack([f.values() for f in forecasts])  # (series, h, [q_lo, median, q_hi])
            return bands[:, :, 1], bands[:, :, 0], bands[:, :, 2]
    else:
        forecasts = [m.predict(h, num_samples=cfg["num_samples"], random_state=SEED) for m in payload.state]
    samples = np.stack([f.all_values(copy=False)[:, 0, :] for f in forecasts])  # (series, h, samples)
    lower, median, upper = np.quantile(samples, [q_lo, 0.5, q_hi], axis=2)
    return median, lower, upper
