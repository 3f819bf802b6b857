"""The StatsForecast engine: library models by name, the vectorised default, fallback per series."""

from __future__ import annotations

import numpy as np
import pytest

from oa_exporter.adapters.engines.statsforecast import StatsForecastEngine
from oa_exporter.core.domain import Model, ModelSpec, SeriesMatrix

STEP = 300.0


def history(rows: np.ndarray) -> SeriesMatrix:
    keys = [f'{{"i":"{i}"}}'.encode() for i in range(len(rows))]
    return SeriesMatrix(keys, [{"i": str(i)} for i in range(len(rows))], 0.0, STEP, rows)


def model_of(engine: StatsForecastEngine, matrix: SeriesMatrix, spec: ModelSpec) -> Model:
    fitted = engine.fit(matrix, spec, 95.0)
    end = matrix.timestamps[-1]
    return Model("r", "f", engine.name, matrix.keys, matrix.labels, end, 0.0, end, STEP, fitted)


@pytest.fixture
def daily() -> np.ndarray:
    rng = np.random.default_rng(3)
    t = STEP * np.arange(3 * 288)
    return np.stack([50 + 10 * np.sin(2 * np.pi * t / 86400) + rng.normal(0, 1, len(t)) for _ in range(4)])


@pytest.mark.parametrize("spec", [
    ModelSpec("statsforecast", "SeasonalProfile"),
    ModelSpec("statsforecast", "AutoETS", {"model": "ZZN"}),
    ModelSpec("statsforecast", "SeasonalNaive", {"season_length": 288}),
])
def test_models_forecast_ordered_bands_near_the_truth(spec, daily):
    engine = StatsForecastEngine()
    engine.validate(spec)
    matrix = history(daily)
    model = model_of(engine, matrix, spec)
    start = matrix.timestamps[-1] + 3 * STEP  # bands may start a few steps after the training window
    bands = engine.predict(model, start, 12, 95.0)
    assert bands.yhat.shape == (4, 12)
    assert np.all(bands.lower <= bands.yhat) and np.all(bands.yhat <= bands.upper)
    truth = 50 + 10 * np.sin(2 * np.pi * (start + STEP * np.arange(12)) / 86400)
    assert np.abs(bands.yhat - truth).mean() < 6.0  # AutoETS without season is the loosest


def test_a_series_the_library_cannot_fit_falls_back_and_is_counted(daily):
    rows = daily.copy()
    rows[2, :-2] = np.nan  # two samples: statsforecast refuses, the fallback still answers
    engine = StatsForecastEngine()
    model = model_of(engine, history(rows), ModelSpec("statsforecast", "AutoETS", {"model": "ZZN"}))
    assert list(model.fitted.errors) == [2]
    bands = engine.predict(model, model.window_end + STEP, 6, 95.0)
    assert np.isfinite(bands.yhat[[0, 1, 3]]).all()


def test_round_trip_through_bytes(daily):
    engine = StatsForecastEngine()
    spec = ModelSpec("statsforecast", "SeasonalProfile")
    model = model_of(engine, history(daily), spec)
    again = Model(**{**model.__dict__, "fitted": engine.loads(engine.dumps(model.fitted))})
    a = engine.predict(model, model.window_end + STEP, 6, 99.0)
    b = engine.predict(again, model.window_end + STEP, 6, 99.0)
    assert np.array_equal(a.yhat, b.yhat) and np.array_equal(a.upper, b.upper)


@pytest.mark.parametrize(("spec", "message"), [
    (ModelSpec("statsforecast", "NoSuchModel"), "no model 'NoSuchModel'"),
    (ModelSpec("statsforecast", "AutoETS", {"bogus": 1}), "bad params for statsforecast AutoETS"),
    (ModelSpec("statsforecast", "SeasonalProfile", {"seasons": "1d"}), "list of durations"),
    (ModelSpec("statsforecast", "SeasonalProfile", {"nope": 1}), "no parameter"),
])
def test_bad_model_names_and_params_are_refused_up_front(spec, message):
    with pytest.raises(ValueError, match=message):
        StatsForecastEngine().validate(spec)


def test_loads_refuses_foreign_payloads():
    import pickle

    with pytest.raises(ValueError):
        StatsForecastEngine().loads(pickle.dumps({"not": "a model"}))
