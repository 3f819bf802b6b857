"""Nixtla StatsForecast engine: any statsforecast model by name, plus our vectorised SeasonalProfile.

SeasonalProfile (the default) fits all series of a rule at once with numpy. Any other name is a class of
`statsforecast.models` built with the rule's params and fitted per series; a series whose fit fails falls
back to SeasonalProfile (counted in Fitted.errors), so one bad series never fails the rule.

SeasonalProfile fits row by row, so it is separable: on a Dask cluster the trainer sends it as jobs of row
blocks and `join` puts the blocks' models end to end (the same model as one pass). On a Dask worker (the dask
dispatcher), a rule of another model with `distributed_from` series or more is spread over the cluster through
Fugue (see _dask.py). Distributed StatsForecast forecasts but keeps no fitted models, so the model kept is the
forecast itself: DISTRIBUTED_AHEAD seconds of bands from the window's end, at the rule's level; past them the
series falls back to SeasonalProfile until the next refit (train.every, a day by default).
"""

from __future__ import annotations

import functools
import inspect
import math
import pickle
from collections.abc import Sequence
from importlib import metadata
from typing import Any

import numpy as np

from ... import __version__
from ...core import seasonal
from ...core.domain import Bands, Capabilities, Fitted, Model, ModelSpec, SeriesMatrix
from . import _dask

DEFAULT_MODEL = "SeasonalProfile"
DISTRIBUTED_SERIES = 5000  # on a Dask worker, rules of this many series or more are fitted across the cluster
DISTRIBUTED_AHEAD = 86400.0 + 7200.0  # seconds of bands a distributed forecast keeps: a day's refit and a margin


class StatsForecastEngine:
    """Fits rules whose model.engine is `statsforecast` (also spelled `nixtla`)."""

    name = "statsforecast"
    default_model = DEFAULT_MODEL
    distributed_from = DISTRIBUTED_SERIES

    @functools.cached_property
    def versions(self) -> dict[str, str]:
        """What a pickled model depends on: our classes (oa-exporter), statsforecast's, numpy's arrays."""
        return {"oa-exporter": __version__, **{name: _installed(name) for name in ("statsforecast", "numpy")}}

    def validate(self, spec: ModelSpec) -> None:
        if spec.name == DEFAULT_MODEL:
            seasonal.settings(spec.params)
            return
        model_class = _model_class(spec.name)
        try:
            inspect.signature(model_class).bind(**spec.params)
        except TypeError as e:
            raise ValueError(f"bad params for statsforecast {spec.name}: {e}") from e

    def fit(self, history: SeriesMatrix, spec: ModelSpec, level: float) -> Fitted:
        if spec.name == DEFAULT_MODEL:  # on a cluster, the trainer sends it in row blocks (separable)
            profile = seasonal.fit(history.values, history.start, history.step, spec.params)
            return Fitted(_Payload(profile, [], 0), profile.ok)
        with _dask.cluster_client(len(history.keys), self.distributed_from) as cluster:
            if cluster is not None:
                return _forecast_on_cluster(cluster, history, spec, level)
            return _fit_per_series(history, spec)

    def predict(self, model: Model, start: float, steps: int, level: float) -> Bands:
        payload: _Payload = model.fitted.payload
        timestamps = start + model.step * np.arange(steps)
        yhat, lower, upper = payload.fallback.predict(timestamps, level)
        offset = max(int(round((start - model.window_end) / model.step)) - 1, 0)
        if payload.models:
            _overwrite_with_models(payload.models, offset, steps, level, (yhat, lower, upper))
        ahead = getattr(payload, "forecast", None)
        if ahead is not None:
            _overwrite_with_forecast(ahead, offset, (yhat, lower, upper))
        return Bands(start, model.step, yhat, lower, upper)

    def dumps(self, fitted: Fitted) -> bytes:
        return pickle.dumps(fitted, protocol=pickle.HIGHEST_PROTOCOL)

    def loads(self, data: bytes) -> Fitted:
        try:
            fitted = pickle.loads(data)
        except Exception as e:  # noqa: BLE001 - truncated, foreign or from another version: unreadable alike
            raise ValueError(f"artifact payload is unreadable: {type(e).__name__}: {e}") from e
        if not isinstance(fitted, Fitted) or not isinstance(fitted.payload, _Payload):
            raise ValueError("artifact payload is not a statsforecast engine model")
        return fitted

    def capabilities(self, spec: ModelSpec) -> Capabilities:
        """Local models, fitted per series (SeasonalProfile: per rule, row by row, so separable), CPU only,
        refit to learn."""
        return Capabilities(separable=spec.name == DEFAULT_MODEL)

    def join(self, parts: Sequence[Fitted]) -> Fitted:
        """The fits of consecutive row blocks as one: fallbacks, models and kept forecasts put end to end."""
        payloads: list[_Payload] = [part.payload for part in parts]
        offsets = np.cumsum([0] + [len(part.ok) for part in parts])
        forecasts = [p.forecast for p in payloads if p.forecast is not None]
        payload = _Payload(seasonal.concatenate([p.fallback for p in payloads]),
                           [m for p in payloads for m in p.models], payloads[0].end_index,
                           np.concatenate(forecasts, axis=1) if forecasts else None)
        errors = {int(offset) + row: error for part, offset in zip(parts, offsets, strict=False)
                  for row, error in part.errors.items()}
        return Fitted(payload, np.concatenate([part.ok for part in parts]), errors)

    def update(self, model: Model, history: SeriesMatrix) -> Fitted:
        raise NotImplementedError("statsforecast models learn new observations only by a refit")


class _Payload:
    """Learned state: one statsforecast model per series (None where it failed) and the fallback."""

    def __init__(self, fallback: seasonal.SeasonalProfile, models: list[Any], end_index: int,
                 forecast: np.ndarray | None = None):
        self.fallback = fallback
        self.models = models
        self.end_index = end_index
        self.forecast = forecast  # distributed fits: (3, series, steps) bands from the window's end, else None


def _installed(distribution: str) -> str:
    """Installed version of a package, read from its metadata (no import)."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "absent"


def _model_class(name: str) -> type:
    from statsforecast import models  # heavy import: only for rules that use it

    model_class = getattr(models, name, None)
    if not inspect.isclass(model_class) or name.startswith("_"):
        raise ValueError(f"statsforecast has no model {name!r} (the default is {DEFAULT_MODEL}; others are e.g. "
                         "AutoETS, AutoARIMA, MSTL, AutoTheta)")
    return model_class


def _fit_per_series(history: SeriesMatrix, spec: ModelSpec) -> Fitted:
    fallback = seasonal.fit(history.values, history.start, history.step, {})
    template = _model_class(spec.name)(**spec.params)
    models: list[Any] = []
    errors: dict[int, str] = {}
    for i, row in enumerate(history.values):  # statsforecast itself fits one series at a time
        try:
            models.append(template.new().fit(y=_fill_gaps(row)))
        except Exception as e:  # any library failure on one series: fall back, keep the others
            models.append(None)
            errors[i] = f"{type(e).__name__}: {e}"
    return Fitted(_Payload(fallback, models, history.values.shape[1]), fallback.ok, errors)


def _forecast_on_cluster(client: Any, history: SeriesMatrix, spec: ModelSpec, level: float) -> Fitted:
    fallback = seasonal.fit(history.values, history.start, history.step, {}, _dask.block_mapper(client))
    steps = int(math.ceil(DISTRIBUTED_AHEAD / history.step))
    model = _model_class(spec.name)(**spec.params)
    forecast, errors = _dask.forecast_on_cluster(client, history, model, level, steps, _fill_gaps)
    for row in np.flatnonzero(np.isnan(forecast[0, :, 0])):
        errors.setdefault(int(row), "no forecast from the distributed fit")
    return Fitted(_Payload(fallback, [], history.values.shape[1], forecast), fallback.ok, errors)


def _overwrite_with_forecast(forecast: np.ndarray, offset: int, bands: tuple[np.ndarray, ...]) -> None:
    """Where the kept forecast covers the requested steps, it replaces the fallback's bands."""
    kept = forecast[:, :, offset : offset + bands[0].shape[1]]
    covered = kept.shape[2]
    if covered <= 0:
        return
    usable = ~np.isnan(kept[0])
    for k, target in enumerate(bands):
        window = target[:, :covered]
        window[usable] = kept[k][usable]


def _fill_gaps(row: np.ndarray) -> np.ndarray:
    """Drop leading NaN and interpolate the other gaps; ValueError if too little is left."""
    present = np.flatnonzero(~np.isnan(row))
    if len(present) < 3:
        raise ValueError("fewer than 3 samples")
    inner = row[present[0] :]  # keep the end aligned with the grid: trailing gaps carry the last value
    index = np.arange(len(inner))
    valid = ~np.isnan(inner)
    return np.interp(index, index[valid], inner[valid])


def _overwrite_with_models(
    models: list[Any], offset: int, steps: int, level: float, bands: tuple[np.ndarray, ...]
) -> None:
    key = int(level) if float(level).is_integer() else level
    for i, model in enumerate(models):
        if model is None:
            continue
        try:
            forecast = model.predict(h=offset + steps, level=[key])
        except Exception:  # noqa: BLE001 - this series keeps the fallback's bands
            continue
        for target, column in zip(bands, ("mean", f"lo-{key}", f"hi-{key}"), strict=True):
            target[i] = forecast[column][offset : offset + steps]
