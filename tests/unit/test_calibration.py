"""Per-series calibration (core/calibration.py): a series that pages more often than its level allows gets a
wider band until it does not; one that does not keeps the model's band; the score contract holds for the
widened band. Replayed through the daemon's own Trainer, Inferencer and hourly refits, and on the state alone."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np

from oa_exporter.core.calibration import STEP, Calibration
from tests import synthetic
from tests.unit.test_default_model import DAY, RULE, TRAINED, metrics, replay
from tests.unit.test_default_model import STEP as GRID

WEEK = 7 * DAY
KEYS = [json.dumps({"i": str(i)}).encode() for i in range(3)]


def excursions(score: np.ndarray) -> int:
    paging = score > 1
    return int(np.count_nonzero(paging[:, 1:] & ~paging[:, :-1]) + np.count_nonzero(paging[:, 0]))


def test_a_series_paging_far_more_often_than_its_level_allows_gets_a_wider_band():
    generated = synthetic.generate(synthetic.FAMILIES["random_walk"], series=3, days=21)
    rule = synthetic.default_rule()
    plain = synthetic.replay(generated, replace(rule, calibrate=0.0))
    calibrated = synthetic.replay(generated, replace(rule, calibrate=WEEK))
    first = generated.first
    weeks = (generated.values.shape[1] - first) / synthetic.PER_DAY / 7 * 3
    before, after = excursions(plain[:, first:]) / weeks, excursions(calibrated[:, first:]) / weeks
    assert before > 4 and after < before / 2  # measured: 8.8 and 2.3 excursions per series-week (5 series)


def test_series_that_keep_to_their_level_keep_the_model_band():
    times, values, _ = metrics(10, TRAINED + 3, seed=21)
    plain = replay(times, values)
    calibrated = replay(times, values, replace(RULE, calibrate=WEEK))
    quiet = ~(plain.score > 1).any(axis=1)
    assert quiet.sum() >= 3
    np.testing.assert_array_equal(plain.upper[quiet], calibrated.upper[quiet])  # never widened
    np.testing.assert_array_equal(plain.lower[quiet], calibrated.lower[quiet])
    widened = (calibrated.upper - calibrated.yhat)[~quiet] / (plain.upper - plain.yhat)[~quiet]
    assert np.nanmax(widened) <= (1 + STEP) ** excursions(plain.score) + 1e-9


def test_the_exported_band_is_where_the_score_crosses_one():
    generated = synthetic.generate(synthetic.FAMILIES["heavy_tailed"], series=2, days=10)
    history = generated.values
    times = generated.times
    rule = replace(synthetic.default_rule(), calibrate=WEEK, repeat_window=0.0)  # repeats divide scores down
    first = int(3 * DAY / GRID)
    result = replay_at(times, history, first, rule)
    above = result.y >= result.yhat
    expected = np.where(above, (result.y - result.yhat) / (result.upper - result.yhat),
                        (result.yhat - result.y) / (result.yhat - result.lower))
    np.testing.assert_allclose(result.score, expected, rtol=1e-9)


def test_each_excursion_widens_once_and_the_factor_narrows_back_at_the_allowed_rate():
    calibration = Calibration()
    yhat, lower, upper = np.zeros(3), -np.ones(3), np.ones(3)
    for t, score in enumerate([[2.0, 0.1, 0.1], [3.0, 0.1, 0.1], [0.1, 2.0, 0.1], [2.0, 0.1, 0.1]]):
        low, high = calibration.widen(KEYS, t * GRID, WEEK, yhat, lower, upper)
        calibration.count(KEYS, np.array(score) / high)
    # series 0: two excursions (the first lasted two samples), series 1: one, series 2: none
    np.testing.assert_allclose(calibration.factor, [(1 + STEP) ** 2, 1 + STEP, 1.0], rtol=1e-3)
    _, high = calibration.widen(KEYS, 3 * GRID + WEEK, WEEK, yhat, lower, upper)  # a week without an excursion
    np.testing.assert_allclose(high, [1 + STEP, 1.0, 1.0], rtol=1e-3)  # (and the 3 steps before)
    assert math.isclose(calibration.widen(KEYS, 1e12, WEEK, yhat, lower, upper)[1][0], 1.0)


def test_the_state_follows_series_that_come_and_go():
    calibration = Calibration()
    band = np.zeros(1), -np.ones(1), np.ones(1)
    for i in range(1200):  # a new series each cycle, each paging once: the old ones are dropped
        key = [json.dumps({"i": str(i)}).encode()]
        calibration.widen(key, float(i), WEEK, *band)
        calibration.count(key, np.array([2.0]))
    assert len(calibration.rows_of) <= 1003 and np.all(calibration.factor == 1 + STEP)


def replay_at(times: np.ndarray, values: np.ndarray, first: int, rule):  # noqa: ANN001, ANN201 - Rule, Replay
    import asyncio

    from oa_exporter.bootstrap import backtester
    from oa_exporter.core.domain import SeriesMatrix
    from oa_exporter.core.services.backtester import Samples

    keys = KEYS[: len(values)]
    labels = [{"i": str(i)} for i in range(len(values))]
    history = SeriesMatrix(keys, labels, float(times[0]), GRID, values)
    return asyncio.run(backtester(history).replay(rule, Samples(keys, labels, times[first:], values[:, first:])))
