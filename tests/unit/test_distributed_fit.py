"""The engines' distributed path, off the cluster: row blocks mapped elsewhere or sent as jobs of their own, and a
kept forecast's horizon."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from oa_exporter.adapters.engines import _dask
from oa_exporter.adapters.engines.statsforecast import StatsForecastEngine, _Payload
from oa_exporter.bootstrap import engine_registry
from oa_exporter.core import seasonal
from oa_exporter.core.domain import Fitted, Model, ModelSpec, SeriesMatrix
from oa_exporter.core.services.trainer import fit_rule
from tests.unit.fakes import InlineDispatcher

STEP, START = 300.0, 1_700_000_100.0


def values(series: int = 30, points: int = 864) -> np.ndarray:
    rng = np.random.default_rng(1)
    t = START + STEP * np.arange(points)
    return 50 + 10 * np.sin(2 * np.pi * t / 86400)[None, :] + rng.normal(0, 1, (series, points))


def test_row_blocks_fitted_by_a_mapper_give_the_model_of_one_pass(monkeypatch):
    data = values()
    whole = seasonal.fit(data, START, STEP, {})
    monkeypatch.setattr(seasonal, "FIT_CELLS", 864 * 7)  # blocks of 7 rows: 5 blocks
    seen: list[int] = []

    def mapper(fit_block, blocks):
        seen.extend(len(b) for b in blocks)
        return [fit_block(b) for b in reversed(blocks)][::-1]  # any order of work, results in block order

    blocked = seasonal.fit(data, START, STEP, {}, mapper)
    assert seen == [7, 7, 7, 7, 2]
    t = START + STEP * np.arange(864, 900)
    for a, b in zip(whole.predict(t, 99.0), blocked.predict(t, 99.0), strict=True):
        np.testing.assert_array_equal(a, b)


class Splitting(InlineDispatcher):
    """Like a cluster: a separable fit in jobs of `rows` series, `at_once` of them at a time; records each job."""

    def __init__(self, rows: int, at_once: int):
        super().__init__()
        self.rows, self.at_once = rows, at_once
        self.sizes: list[int] = []
        self.running = self.most = 0

    async def split(self, series: int, points: int) -> tuple[int, int]:
        return self.rows, self.at_once

    async def run(self, fn, *args, gpu=False):
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            await asyncio.sleep(0.01)  # the others start meanwhile, as on a cluster
            self.sizes.append(len(args[0].keys) if args and isinstance(args[0], SeriesMatrix) else 0)
            return await super().run(fn, *args, gpu=gpu)
        finally:
            self.running -= 1


def matrix(series: int) -> SeriesMatrix:
    keys = [f"s{i}".encode() for i in range(series)]
    return SeriesMatrix(keys, [{"s": str(i)} for i in range(series)], START, STEP, values(series))


def bands_of(fitted: Fitted, data: SeriesMatrix, engine: str = "statsforecast"):
    end = float(data.timestamps[-1])
    model = Model("r", "f", engine, data.keys, data.labels, end, data.start, end, STEP, fitted)
    return engine_registry()[engine].predict(model, end + STEP, 36, 99.0)


async def test_a_separable_fit_sent_in_row_blocks_is_the_fit_of_one_job():
    engine, data, spec = StatsForecastEngine(), matrix(30), ModelSpec("statsforecast", "SeasonalProfile")
    dispatcher = Splitting(rows=7, at_once=2)
    spread = await fit_rule(dispatcher, engine, data, spec, 99.0)
    assert sorted(dispatcher.sizes) == [2, 7, 7, 7, 7] and dispatcher.most == 2  # 5 jobs, never more than 2 at once
    whole = engine.fit(data, spec, 99.0)
    np.testing.assert_array_equal(spread.ok, whole.ok)
    ours, theirs = bands_of(spread, data), bands_of(whole, data)
    for name in ("yhat", "lower", "upper"):
        np.testing.assert_array_equal(getattr(ours, name), getattr(theirs, name))
    stored = engine.loads(engine.dumps(spread))
    np.testing.assert_array_equal(bands_of(stored, data).upper, theirs.upper)


async def test_a_model_that_is_not_separable_goes_in_one_job():
    pytest.importorskip("sklearn")
    dispatcher = Splitting(rows=7, at_once=2)
    await fit_rule(dispatcher, engine_registry()["sklearn"], matrix(30), ModelSpec("sklearn", "Ridge"), 99.0)
    assert dispatcher.sizes == [30]


async def test_a_failed_block_fails_the_fit_with_its_own_error():
    dispatcher = Splitting(rows=7, at_once=2)
    dispatcher.fail = True
    with pytest.raises(MemoryError):
        await fit_rule(dispatcher, StatsForecastEngine(), matrix(30), ModelSpec("statsforecast", "SeasonalProfile"),
                       99.0)


def test_joined_blocks_keep_each_series_error_at_its_own_row():
    engine, data = StatsForecastEngine(), values(series=5)
    parts = []
    for rows, errors in ((slice(0, 2), {1: "first block, second row"}), (slice(2, 5), {0: "third row"})):
        profile = seasonal.fit(data[rows], START, STEP, {})
        parts.append(Fitted(_Payload(profile, [], 0), profile.ok, errors))
    joined = engine.join(parts)
    assert joined.errors == {1: "first block, second row", 2: "third row"}
    assert len(joined.ok) == 5 and joined.payload.forecast is None


def test_off_a_dask_worker_a_large_rule_is_fitted_here():
    with _dask.cluster_client(10**6, 1) as client:
        assert client is None


def test_a_kept_forecast_serves_its_horizon_and_the_fallback_the_rest():
    data = values(series=3)
    fallback = seasonal.fit(data, START, STEP, {})
    end = START + STEP * (data.shape[1] - 1)
    kept = np.full((3, 3, 10), 7.0, np.float32)
    kept[:, 2, :] = np.nan  # a series the distributed fit could not forecast
    fitted = Fitted(_Payload(fallback, [], data.shape[1], kept), fallback.ok)
    model = Model("r", "f", "statsforecast", [b"a", b"b", b"c"], [{}, {}, {}], end, START, end, STEP, fitted)
    bands = StatsForecastEngine().predict(model, end + 6 * STEP, 8, 99.0)  # steps 6..13 after the window
    yhat, _, _ = fallback.predict(end + STEP * np.arange(6, 14), 99.0)
    np.testing.assert_array_equal(bands.yhat[:2, :5], 7.0)  # steps 6..10: the kept forecast
    np.testing.assert_array_equal(bands.yhat[:2, 5:], yhat[:2, 5:])  # past them: the fallback
    np.testing.assert_array_equal(bands.yhat[2], yhat[2])


@pytest.mark.parametrize("estimator", [{"name": "Ridge", "alpha": 3.0}, {"name": "LinearRegression"},
                                       {"name": "Ridge", "fit_intercept": False}], ids=["ridge", "ols", "no-intercept"])
def test_a_linear_regressor_solved_from_partition_moments_is_the_fit_on_the_whole_frame(estimator):
    pytest.importorskip("sklearn")
    import pandas as pd
    from sklearn import linear_model

    rng = np.random.default_rng(4)
    x = pd.DataFrame(rng.normal(0, 1, (1000, 5)) + [1e4, 0, -50, 3, 0], columns=list("abcde"))  # large offsets
    y = pd.Series(x.to_numpy() @ [0.5, -2, 0.1, 3, 0] + 7 + rng.normal(0, 0.1, 1000))
    params = {k: v for k, v in estimator.items() if k != "name"}
    cls = getattr(linear_model, estimator["name"])
    cuts = [0, 1, 300, 300, 710, 1000]  # uneven partitions, an empty one among them
    parts = [_dask.partition_moments(x.iloc[a:b], y.iloc[a:b]) for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
    ours = _dask.solve_linear(cls(**params), list(x.columns), *_dask.combine_moments(parts))
    theirs = cls(**params).fit(x, y)
    np.testing.assert_allclose(ours.coef_, theirs.coef_, rtol=1e-7)
    np.testing.assert_allclose(ours.intercept_, theirs.intercept_, rtol=1e-7, atol=1e-9)
    new = pd.DataFrame(rng.normal(0, 1, (20, 5)), columns=list("abcde"))
    np.testing.assert_allclose(ours.predict(new), theirs.predict(new), rtol=1e-7)
