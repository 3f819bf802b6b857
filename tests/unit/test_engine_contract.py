"""The ModelEngine contract, run against every engine and model family.

Every family: bands of the right shape, lower <= yhat <= upper, a `level` band that covers about `level` % of
held-out data, the same forecasts after a save/load round trip and after a second fit with the same seed, and
a series (or a whole library fit) that fails falls back to SeasonalProfile, counted in Fitted.errors.
A family whose library is not installed is skipped; CI installs them all.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field, replace

import numpy as np
import pytest

from oa_exporter.bootstrap import engine_registry
from oa_exporter.core import seasonal
from oa_exporter.core.domain import Model, ModelSpec, SeriesMatrix
from oa_exporter.core.ports import ModelEngine

STEP = 300.0
DAY = 86400.0
TRAIN = 864  # three days of 5-minute samples
H = 12  # one hour ahead
LEVEL = 90.0  # 90 %, not 99 %: 24 series x 12 held-out points measure its coverage to about +-2 % (1 sd)
SERIES = 24
TINY_NHITS = {"h": H, "input_size": 48, "max_steps": 60, "mlp_units": [[32, 32], [32, 32], [32, 32]],
              "windows_batch_size": 256, "learning_rate": 3e-3}


@dataclass(frozen=True)
class Family:
    """One engine/model family of the suite; `tolerance`: allowed |coverage - level| on held-out data."""

    id: str
    spec: ModelSpec
    library: str  # the import the family needs (skipped without it)
    tolerance: float = 0.08
    library_fit: str = ""  # the adapter function that calls the library's fit (made to fail in one test)
    params: dict = field(default_factory=dict)


FAMILIES = [
    # SeasonalProfile calibrates on in-sample residuals: on three days its 90 % band covers about 76 % (85 % on
    # 14 days; measured over 5 seeds). Stated here as it is, not hidden: the tolerance pins that level.
    Family("statsforecast-SeasonalProfile", ModelSpec("statsforecast", "SeasonalProfile"), "statsforecast",
           tolerance=0.2),
    Family("statsforecast-AutoETS", ModelSpec("statsforecast", "AutoETS", {"model": "ZZN"}), "statsforecast",
           tolerance=0.10),
    Family("mlforecast-Ridge", ModelSpec("mlforecast", "Ridge", {"n_windows": 10}), "mlforecast",
           library_fit="oa_exporter.adapters.engines.mlforecast._train"),
    Family("neuralforecast-NHITS", ModelSpec("neuralforecast", "NHITS", TINY_NHITS), "neuralforecast",
           tolerance=0.10, library_fit="oa_exporter.adapters.engines.neuralforecast._train"),
    Family("darts-LinearRegressionModel-conformal", ModelSpec("darts", "LinearRegressionModel"), "darts",
           library_fit="oa_exporter.adapters.engines.darts._train_global"),
    Family("darts-ExponentialSmoothing-probabilistic",
           ModelSpec("darts", "ExponentialSmoothing", {"seasonal": None, "num_samples": 100}), "darts",
           tolerance=0.10),
    Family("sklearn-Ridge", ModelSpec("sklearn", "Ridge"), "sklearn",
           library_fit="oa_exporter.adapters.engines.sklearn._fit_regressor"),
    Family("sklearn-IsolationForest", ModelSpec("sklearn", "IsolationForest"), "sklearn",
           library_fit="oa_exporter.adapters.engines.sklearn._fit_outlier"),
]
GLOBAL = [f for f in FAMILIES if f.spec.engine in ("mlforecast", "neuralforecast", "sklearn")] + [FAMILIES[4]]


def synthetic(series: int, points: int, seed: int = 11) -> np.ndarray:
    """Daily cycles of different levels, amplitudes and phases with unit Gaussian noise."""
    rng = np.random.default_rng(seed)
    t = STEP * np.arange(points)
    level = rng.uniform(20, 200, (series, 1))
    amplitude = rng.uniform(2, 15, (series, 1))
    phase = rng.uniform(0, 2 * np.pi, (series, 1))
    return level + amplitude * np.sin(2 * np.pi * t / DAY + phase) + rng.normal(0, 1, (series, points))


def history(values: np.ndarray, first: int = 0) -> SeriesMatrix:
    keys = [f'{{"i":"{i}"}}'.encode() for i in range(first, first + len(values))]
    return SeriesMatrix(keys, [{"i": str(i)} for i in range(first, first + len(values))], 0.0, STEP, values)


def fit(engine: ModelEngine, matrix: SeriesMatrix, spec: ModelSpec) -> Model:
    fitted = engine.fit(matrix, spec, LEVEL)
    end = float(matrix.timestamps[-1])
    return Model("r", "f", engine.name, matrix.keys, matrix.labels, end, 0.0, end, STEP, fitted)


def forecast(engine: ModelEngine, model: Model, steps: int = H, ahead: int = 1):
    return engine.predict(model, model.window_end + ahead * STEP, steps, LEVEL)


def _engine(family: Family) -> ModelEngine:
    if importlib.util.find_spec(family.library) is None:
        pytest.skip(f"{family.library} is not installed (pip install 'oa-exporter[all]')")
    engine = engine_registry()[family.spec.engine]
    engine.validate(family.spec)
    return engine


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    return synthetic(SERIES, TRAIN + H)


@pytest.fixture(scope="module", params=FAMILIES, ids=[f.id for f in FAMILIES])
def fitted(request, data):
    family: Family = request.param
    engine = _engine(family)
    return family, engine, fit(engine, history(data[:, :TRAIN]), family.spec)


def test_bands_have_the_contract_shape_and_order(fitted):
    family, engine, model = fitted
    assert model.fitted.ok.shape == (SERIES,) and model.fitted.ok.all() and not model.fitted.errors
    for ahead in (1, 5):  # bands may start some steps after the window: the daemon refreshes them later
        bands = forecast(engine, model, ahead=ahead)
        assert bands.start == model.window_end + ahead * STEP and bands.step == STEP
        for array in (bands.yhat, bands.lower, bands.upper):
            assert array.shape == (SERIES, H) and np.isfinite(array).all()
        assert (bands.lower <= bands.yhat).all() and (bands.yhat <= bands.upper).all()


def test_the_level_band_covers_held_out_data(fitted, data):
    family, engine, model = fitted
    bands = forecast(engine, model)
    truth = data[:, TRAIN:]
    coverage = float(np.mean((truth >= bands.lower) & (truth <= bands.upper)))
    assert abs(coverage - LEVEL / 100) <= family.tolerance, f"{family.id}: coverage {coverage:.3f}"
    assert np.abs(bands.yhat - truth).mean() < 2.5  # unit noise: a forecast this far off learned nothing


def test_a_saved_and_loaded_model_forecasts_the_same(fitted):
    family, engine, model = fitted
    again = replace(model, fitted=engine.loads(engine.dumps(model.fitted)))
    a, b = forecast(engine, model), forecast(engine, again)
    for x, y in ((a.yhat, b.yhat), (a.lower, b.lower), (a.upper, b.upper)):
        np.testing.assert_allclose(x, y, rtol=1e-9, atol=1e-9)


def test_the_same_seed_fits_the_same_model(fitted, data):
    family, engine, model = fitted
    twin = fit(engine, history(data[:, :TRAIN]), family.spec)
    a, b = forecast(engine, model), forecast(engine, twin)
    for x, y in ((a.yhat, b.yhat), (a.lower, b.lower), (a.upper, b.upper)):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6)


def test_loads_refuses_other_payloads(fitted):
    import pickle

    family, engine, model = fitted
    with pytest.raises(ValueError):
        engine.loads(pickle.dumps({"not": "a model"}))
    with pytest.raises(ValueError):
        engine.loads(b"\x00garbage")


@pytest.mark.parametrize("family", FAMILIES, ids=[f.id for f in FAMILIES])
def test_a_series_the_library_cannot_take_falls_back_and_is_counted(family):
    engine = _engine(family)
    values = synthetic(6, TRAIN, seed=5)
    values[2, :-2] = np.nan  # two samples: no library takes it, SeasonalProfile answers for it if it can
    model = fit(engine, history(values), family.spec)
    if family.spec.name == "SeasonalProfile":  # it is the fallback: nothing falls back from it
        assert not model.fitted.errors
    else:
        assert list(model.fitted.errors) == [2]
    bands = forecast(engine, model)
    assert np.isfinite(bands.yhat[[0, 1, 3, 4, 5]]).all()
    assert model.fitted.ok[[0, 1, 3, 4, 5]].all()


@pytest.mark.parametrize("family", [f for f in FAMILIES if f.library_fit], ids=[f.id for f in FAMILIES
                                                                               if f.library_fit])
def test_a_failing_library_fit_falls_back_to_seasonal_profile_for_every_series(family, monkeypatch):
    engine = _engine(family)

    def broken(*args, **kwargs):
        raise RuntimeError("the library blew up")

    monkeypatch.setattr(family.library_fit, broken)
    values = synthetic(6, TRAIN, seed=5)
    model = fit(engine, history(values), family.spec)
    assert sorted(model.fitted.errors) == list(range(6))
    assert all("the library blew up" in error for error in model.fitted.errors.values())
    bands = forecast(engine, model)
    expected = seasonal.fit(values, 0.0, STEP, {}).predict(bands.start + STEP * np.arange(H), LEVEL)
    np.testing.assert_allclose(bands.yhat, expected[0])


def test_a_forecast_the_library_refuses_falls_back_to_seasonal_profile_for_its_series():
    """Darts' conformal model cannot calibrate a day ahead on a series of the minimum length it fits on: the
    rule's bands come from SeasonalProfile this time instead of failing (found replaying NAB, horizon 1d)."""
    family = FAMILIES[4]
    engine = _engine(family)
    shortest = _batch_min_points(family)
    values = synthetic(3, shortest + 10, seed=8)
    model = fit(engine, history(values), family.spec)
    assert model.fitted.ok.all() and not model.fitted.errors
    with pytest.raises(ValueError, match="calibration"):  # what the library says when asked directly
        _darts_forecast(model, 289)
    bands = forecast(engine, model, steps=289)
    expected = seasonal.fit(values, 0.0, STEP, {}).predict(bands.start + STEP * np.arange(289), LEVEL)
    for got, want in zip((bands.yhat, bands.lower, bands.upper), expected, strict=True):
        np.testing.assert_allclose(got, want)
    near = forecast(engine, model)  # a horizon it can calibrate still gets the library's bands
    assert not np.allclose(near.yhat, seasonal.fit(values, 0.0, STEP, {}).predict(
        near.start + STEP * np.arange(H), LEVEL)[0])


def _batch_min_points(family: Family) -> int:
    from oa_exporter.adapters.engines import darts as adapter

    cfg = {**adapter._settings(family.spec), "step": STEP}
    return adapter._min_points(adapter._build(cfg), cfg)


def _darts_forecast(model: Model, h: int):
    from oa_exporter.adapters.engines import _batch
    from oa_exporter.adapters.engines import darts as adapter

    return adapter._forecast(_batch.payload_of(model.fitted), h, LEVEL)


@pytest.mark.parametrize("family", GLOBAL, ids=[f.id for f in GLOBAL])
def test_a_global_model_forecasts_series_that_appeared_after_training_without_a_refit(family):
    engine = _engine(family)
    assert engine.capabilities(family.spec).global_model and engine.capabilities(family.spec).update
    values = synthetic(10, TRAIN + H, seed=21)
    model = fit(engine, history(values[:6, :TRAIN]), family.spec)
    newer = history(values[:, :TRAIN])  # four series the model has never seen
    weights = _weights(model)
    updated = replace(model, keys=newer.keys, labels=newer.labels, fitted=engine.update(model, newer))
    assert _weights(updated) is weights  # the same trained model, conditioned on new history, not refitted
    assert updated.fitted.ok.all() and not updated.fitted.errors
    bands = forecast(engine, updated)
    assert bands.yhat.shape == (10, H)
    assert np.abs(bands.yhat[6:] - values[6:, TRAIN:]).mean() < 2.5


def _weights(model: Model):
    state = model.fitted.payload.state
    return getattr(state, "estimator", state)  # the sklearn engine wraps its estimator with per-series scales


def test_capabilities_are_declared():
    engines = engine_registry()
    assert engines["nixtla"] is engines["statsforecast"]
    assert not engines["statsforecast"].capabilities(ModelSpec("statsforecast", "SeasonalProfile")).update
    assert engines["neuralforecast"].capabilities(ModelSpec("neuralforecast", "NHITS")).gpu
    assert not engines["mlforecast"].capabilities(ModelSpec("mlforecast", "Ridge")).gpu
    with pytest.raises(NotImplementedError):
        engines["statsforecast"].update(None, None)  # type: ignore[arg-type]


BAD_SPECS = [
    (ModelSpec("mlforecast", "NoSuchRegressor"), "no regressor 'NoSuchRegressor'", "sklearn"),
    (ModelSpec("mlforecast", "Ridge", {"alpah": 1.0}), "bad params for mlforecast Ridge", "sklearn"),
    (ModelSpec("mlforecast", "Ridge", {"lags": "1h"}), "non-empty list", "sklearn"),
    (ModelSpec("neuralforecast", "NoSuchNet"), "no model 'NoSuchNet'", "neuralforecast"),
    (ModelSpec("neuralforecast", "NHITS", {"max_stpes": 5}), "no parameter", "neuralforecast"),
    (ModelSpec("neuralforecast", "NHITS", {"loss": "MAE"}), "set by the engine", "neuralforecast"),
    (ModelSpec("darts", "NoSuchModel"), "no forecasting model 'NoSuchModel'", "darts"),
    (ModelSpec("darts", "LinearRegressionModel", {"lagz": 3}), "bad params for darts", "darts"),
    (ModelSpec("darts", "NaiveSeasonal"), "neither probabilistic", "darts"),
    (ModelSpec("sklearn", "KMeans"), "no regressor or outlier detector 'KMeans'", "sklearn"),
    (ModelSpec("sklearn", "IsolationForest", {"n_trees": 5}), "bad params for sklearn IsolationForest", "sklearn"),
    (ModelSpec("sklearn", "Ridge", {"calibration": 2}), "calibration", "sklearn"),
]


@pytest.mark.parametrize(("spec", "message", "library"), BAD_SPECS, ids=[f"{s.engine}-{m}" for s, m, _ in BAD_SPECS])
def test_bad_model_names_and_params_are_refused_before_any_fit(spec, message, library):
    if importlib.util.find_spec(library) is None:
        pytest.skip(f"{library} is not installed")
    with pytest.raises(ValueError, match=message):
        engine_registry()[spec.engine].validate(spec)
