"""SeasonalProfile, fitted on many synthetic series at once and judged on points it has not seen."""

from __future__ import annotations

import numpy as np
import pytest

from oa_exporter.core import seasonal
from oa_exporter.core.presets import PRESETS

DAY, WEEK, STEP = 86400.0, 604800.0, 60.0
START = 1_699_920_000.0  # a midnight (UTC)


def daily(n: int, days: float, rng: np.random.Generator, start: float = START):
    """A grid of `days`, and a process: `n` series with a daily cycle of random phase, size, level, noise."""
    phase = rng.uniform(0, 2 * np.pi, (n, 1))
    amplitude = rng.uniform(5, 30, (n, 1))
    base = rng.uniform(50, 500, (n, 1))
    noise = rng.uniform(0.5, 3, (n, 1))

    def at(times: np.ndarray) -> np.ndarray:
        clean = base + amplitude * np.sin(2 * np.pi * times / DAY + phase)
        return clean + noise * rng.normal(size=(n, len(times)))

    return start + STEP * np.arange(int(days * DAY / STEP)), at


def test_the_99_percent_band_covers_about_99_percent_of_future_points():
    rng = np.random.default_rng(42)
    times, process = daily(50, 4, rng)
    model = seasonal.fit(process(times), times[0], STEP, {})
    future = times[-1] + STEP * np.arange(1, 6 * 60 + 1)  # the next six hours
    yhat, lower, upper = model.predict(future, 99.0)
    actual = process(future)
    coverage = np.mean((actual >= lower) & (actual <= upper))
    assert model.ok.all()
    assert 0.95 <= coverage <= 0.999
    narrow_yhat, narrow_lower, narrow_upper = model.predict(future, 80.0)
    assert np.mean((actual >= narrow_lower) & (actual <= narrow_upper)) < coverage  # a level is a level
    np.testing.assert_allclose(narrow_yhat, yhat)


def test_the_band_always_holds_the_forecast():
    rng = np.random.default_rng(1)
    times, process = daily(20, 3, rng)
    values = process(times)
    values[3] = values[3] ** 2  # skewed noise
    values[4, ::7] = np.nan
    model = seasonal.fit(values, times[0], STEP, {})
    yhat, lower, upper = model.predict(times[-1] + STEP * np.arange(500), 95)
    assert np.all(lower <= yhat) and np.all(yhat <= upper)
    assert np.all(lower < upper)


def test_a_constant_series_gets_a_zero_width_band_on_the_constant():
    values = np.full((2, 3 * 1440), 42.0)
    values[1] = 7.0
    model = seasonal.fit(values, START, STEP, {})
    yhat, lower, upper = model.predict(START + 3 * DAY + STEP * np.arange(60), 99.0)
    assert model.ok.all()
    np.testing.assert_array_equal(yhat[0], 42.0)
    np.testing.assert_array_equal(yhat[1], 7.0)
    np.testing.assert_array_equal(lower, yhat)
    np.testing.assert_array_equal(upper, yhat)


def test_gaps_are_tolerated_and_a_series_without_data_is_not_ok():
    rng = np.random.default_rng(3)
    times, process = daily(3, 3, rng)
    values = process(times)
    values[0, 1000:1600] = np.nan  # ten hours missing
    values[0, -30:] = np.nan  # and the last half hour
    values[1] = np.nan
    model = seasonal.fit(values, times[0], STEP, {})
    assert model.ok.tolist() == [True, False, True]
    yhat, lower, upper = model.predict(times[-1] + STEP * np.arange(1, 61), 99.0)
    assert np.isfinite(yhat[[0, 2]]).all() and np.isfinite(lower[[0, 2]]).all()
    clean = process(times[-1] + STEP * np.arange(1, 61))
    assert np.mean(np.abs(yhat[0] - clean[0])) < 10  # still tracks its cycle after the gaps


def test_a_batch_without_series_fits_to_nothing():
    model = seasonal.fit(np.empty((0, 1440)), START, STEP, {})
    assert model.ok.shape == (0,)
    assert model.predict(START + STEP * np.arange(5), 99.0)[0].shape == (0, 5)


def periods(model: seasonal.SeasonalProfile) -> list[float]:
    return [s.period for s in model.seasons]


def test_the_weekly_season_needs_two_weeks_of_data():
    rng = np.random.default_rng(5)
    ten_days, process = daily(2, 10, rng)
    assert periods(seasonal.fit(process(ten_days), ten_days[0], STEP, {})) == [DAY]
    fifteen_days, process = daily(2, 15, rng)
    assert periods(seasonal.fit(process(fifteen_days), fifteen_days[0], STEP, {})) == [DAY, WEEK]


def test_a_young_series_in_a_long_window_already_follows_its_daily_cycle():
    """The trainer queries the whole window: a day-old series is mostly NaN, yet scored after min_history."""
    rng = np.random.default_rng(6)
    window, process = daily(50, 14, rng)
    values = process(window)
    values[:, :-1440] = np.nan
    model = seasonal.fit(values, window[0], STEP, {})
    future = window[-1] + STEP * np.arange(1, 61)
    _, lower, upper = model.predict(future, 99.0)
    actual = process(future)
    assert model.ok.all()
    assert np.mean((actual >= lower) & (actual <= upper)) >= 0.95


def test_custom_seasons_and_buckets():
    rng = np.random.default_rng(8)
    times, process = daily(2, 2, rng)
    model = seasonal.fit(process(times), times[0], STEP, {"seasons": ["12h"], "buckets": 48})
    assert periods(model) == [12 * 3600] and model.seasons[0].buckets == 48


@pytest.mark.parametrize(
    ("params", "message"),
    [({"buckets": 1}, "buckets"), ({"seasons": "1d"}, "seasons"), ({"nope": 1}, "nope"),
     ({"level_window": "0s"}, "level_window: duration '0s' must be positive"),
     ({"holdout": "a week"}, "holdout: invalid duration"), ({"holdout": None}, "holdout: invalid duration"),
     ({"seasons": ["1d", "1q"]}, "seasons: invalid duration '1q'"),
     ({"residual_lag": "half an hour"}, "residual_lag: invalid duration"),
     ({"local_window": "3"}, "local_window: invalid duration"), ({"range_history": 3}, "range_history: invalid")],
)
def test_bad_params_are_value_errors(params, message):
    with pytest.raises(ValueError, match=message):
        seasonal.settings(params)


def test_one_scale_bucket_is_a_scale_of_one_which_the_fit_takes_without_computing_it():
    residual = np.array([[1.0, -2.0, 3.0, np.nan], [0.0, 0.0, 0.0, 0.0], [np.nan] * 4, [np.inf, 1.0, 2.0, 3.0]])
    with np.errstate(invalid="ignore"):
        assert (seasonal._bucket_scale(residual, np.zeros(4, np.int64), 1) == 1.0).all()  # 0/0 and NaN too
    rng = np.random.default_rng(5)
    times, process = daily(4, 3, rng)
    model = seasonal.fit(process(times), times[0], STEP, {"scale_buckets": 1})
    np.testing.assert_array_equal(model.scale, np.ones((4, 1)))


def test_amplitude_window_follows_a_grown_cycle_and_learns_nothing_from_noise_or_one_odd_day():
    step, days = 300.0, 14
    times = START + step * np.arange(int(days * DAY / step))
    cycle = np.sin(2 * np.pi * times / DAY)
    rng = np.random.default_rng(9)
    grown = np.where(times >= times[-1] - 4 * DAY, 15.0, 10.0) * cycle  # the swing 1.5 times larger for 4 days
    odd_day = np.where(times >= times[-1] - DAY, 0.0, 10.0) * cycle  # the cycle missing on the last day
    values = 100 + np.stack([grown, np.zeros_like(cycle), odd_day]) + rng.normal(0, 1, (3, len(times)))

    def swing(params: dict) -> np.ndarray:
        profile = seasonal.fit(values, times[0], step, {"seasons": ["1d"], **params}).seasons[0].profile
        return profile.max(axis=1) - profile.min(axis=1)

    ratio = swing({"amplitude_window": "3d"}) / swing({})
    assert 1.3 <= ratio[0] <= 1.6  # the profile is a median of 14 days, 10 of them at the old swing ...
    assert abs(ratio[1] - 1) < 0.05 and abs(ratio[2] - 1) < 0.1  # ... noise has no cycle to scale, one day is one
    with pytest.raises(ValueError, match="amplitude_window: invalid duration"):
        seasonal.settings({"amplitude_window": "soon"})


@pytest.mark.parametrize("days", [2, 4])
def test_cross_fit_gives_a_young_series_the_band_its_forecast_needs(days):
    rng, step = np.random.default_rng(3), 300.0
    times = START + step * np.arange(int((days + 1) * DAY / step))
    values = 100 + 20 * np.sin(2 * np.pi * times / DAY) + rng.normal(0, 1, (100, len(times)))
    trained = int(days * DAY / step)
    params = {"seasons": ["1d"], "buckets": 96, "level_window": "3h", "residual_lag": "30m"}

    def coverage(extra: dict) -> float:  # of the next day, by a 99 % band fitted on the days before
        model = seasonal.fit(values[:, :trained], times[0], step, {**params, **extra})
        _, lower, upper = model.predict(times[trained:], 99.0)
        actual = values[:, trained:]
        return float(np.mean((actual >= lower) & (actual <= upper)))

    # measured: 0.974 -> 0.996 after 2 days (each day's residuals against a profile of the other day alone),
    # 0.984 -> 0.987 after 4: a profile of a few days fits their noise, and its own residuals say too little
    assert coverage({}) < coverage({"cross_fit": "14d"}) <= 0.998


def test_cross_fit_leaves_a_series_older_than_it_as_fitted():
    rng, step = np.random.default_rng(4), 300.0
    times = START + step * np.arange(int(15 * DAY / step))
    values = 100 + 20 * np.sin(2 * np.pi * times / DAY) + rng.normal(0, 1, (3, len(times)))
    values[2, : -int(5 * DAY / step)] = np.nan  # five days old: cross-fitted
    plain = seasonal.fit(values, times[0], step, {})
    crossed = seasonal.fit(values, times[0], step, {"cross_fit": "14d"})
    assert np.array_equal(plain.quantiles[:, :2], crossed.quantiles[:, :2])
    assert not np.array_equal(plain.quantiles[:, 2], crossed.quantiles[:, 2])
    assert np.array_equal(plain.seasons[0].profile, crossed.seasons[0].profile)  # the forecast is unchanged


def test_a_season_no_series_has_the_history_for_is_flat_alike_alone_or_beside_older_series():
    rng, step = np.random.default_rng(5), 300.0
    times = START + step * np.arange(int(21 * DAY / step))
    values = 100 + 20 * np.sin(2 * np.pi * times / DAY) + rng.normal(0, 1, (4, len(times)))
    values[2:, : -int(10 * DAY / step)] = np.nan  # ten days old: no weekly profile of their own
    params = PRESETS["default"].model.params
    together, alone = seasonal.fit(values, times[0], step, params), seasonal.fit(values[2:], times[0], step, params)
    assert [s.period for s in alone.seasons] == [s.period for s in together.seasons] == [DAY, WEEK]
    assert not alone.seasons[1].profile.any() and together.seasons[1].profile[:2].any()
    assert np.array_equal(alone.quantiles, together.quantiles[:, 2:])
    assert np.array_equal(alone.seasons[0].profile, together.seasons[0].profile[2:])
