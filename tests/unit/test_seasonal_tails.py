"""SeasonalProfile's `tail` (extrapolated far quantiles), `range_margin` (a cap at the window's own range),
`scale_buckets` (one noise level or many) and `residual_lag` (bands sized for forecasts that have aged since
the fit)."""

from __future__ import annotations

import numpy as np
import pytest

from oa_exporter.core import seasonal
from oa_exporter.core.scoring import anomaly_score

DAY, STEP = 86400.0, 300.0
START = 1_699_920_000.0  # a midnight (UTC)


def noisy(n: int = 4, days: int = 14, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    times = START + STEP * np.arange(int(days * DAY / STEP))
    values = 100 + 20 * np.sin(2 * np.pi * times / DAY) + rng.normal(0, 2, (n, len(times)))
    return times, values


def half_width(model: seasonal.SeasonalProfile, at: np.ndarray, level: float) -> np.ndarray:
    yhat, _, upper = model.predict(at, level)
    return (upper - yhat).mean(axis=1)


def test_far_levels_extrapolate_one_decade_at_a_time_from_the_tail_level():
    times, values = noisy()
    model = seasonal.fit(values, times[0], STEP, {"tail": 99})
    at = times[-1] + STEP * np.arange(1, 13)
    w99, w999, w9999 = (half_width(model, at, level) for level in (99, 99.9, 99.99))
    w90 = half_width(model, at, 90)
    assert np.all(w90 < w99) and np.all(w99 < w999) and np.all(w999 < w9999)
    np.testing.assert_allclose(w9999 - w999, w999 - w99, rtol=1e-9)  # each decade adds the same
    plain = seasonal.fit(values, times[0], STEP, {})
    np.testing.assert_allclose(half_width(plain, at, 99), w99)  # up to the tail level nothing changes
    np.testing.assert_allclose(half_width(plain, at, 90), w90)


def test_a_range_margin_caps_the_extrapolated_band_at_the_windows_own_range_on_each_side():
    rng = np.random.default_rng(3)
    times = START + STEP * np.arange(int(14 * DAY / STEP))
    values = 100 + 20 * np.sin(2 * np.pi * times / DAY) + rng.uniform(-3, 3, (4, len(times)))  # light tails
    values[:, 2000] += 30  # one spike: above, the window has seen far more than the tail extrapolates
    at = times[-1] + STEP * np.arange(1, 13)
    params = {"scale_buckets": 1, "tail": 99}
    free = seasonal.fit(values, times[0], STEP, params)
    capped = seasonal.fit(values, times[0], STEP, {**params, "range_margin": 1.05})
    yhat, lower, upper = capped.predict(at, 99.99)
    _, free_lower, free_upper = free.predict(at, 99.99)
    np.testing.assert_allclose(upper, free_upper)  # the spike's side: the cap is far out, nothing changes
    deepest = capped.extremes[0][:, None]  # below, uniform noise never came near the exponential tail
    np.testing.assert_allclose(yhat - lower, np.broadcast_to(-1.05 * deepest, yhat.shape))
    assert np.all(lower > free_lower)
    dip = yhat + 1.06 * deepest  # a little further down than anything in the window
    assert np.all(anomaly_score(dip, yhat, lower, upper) > 1)
    assert np.all(anomaly_score(dip, yhat, free_lower, free_upper) < 1)  # merely "rare" to the tail model
    np.testing.assert_allclose(half_width(capped, at, 99), half_width(free, at, 99))  # read quantiles: as before


def test_one_scale_bucket_gives_one_noise_level_all_day():
    times, values = noisy()
    loud = (times % DAY) < DAY / 2
    values[:, loud] += np.random.default_rng(1).normal(0, 10, (len(values), int(loud.sum())))
    at = times[-1] + STEP * np.arange(1, 289)
    per_bucket = seasonal.fit(values, times[0], STEP, {})
    single = seasonal.fit(values, times[0], STEP, {"scale_buckets": 1})
    width = lambda m: m.predict(at, 99)[2] - m.predict(at, 99)[0]  # noqa: E731
    loud_at = (at % DAY) < DAY / 2
    assert width(per_bucket)[:, loud_at].mean() > 2 * width(per_bucket)[:, ~loud_at].mean()
    np.testing.assert_allclose(width(single)[:, loud_at].mean(axis=1), width(single)[:, ~loud_at].mean(axis=1))


def test_a_residual_lag_sizes_the_band_for_a_forecast_that_has_aged():
    rng = np.random.default_rng(2)
    times = START + STEP * np.arange(int(14 * DAY / STEP))
    walk = 100 + np.cumsum(rng.normal(0, 1, (3, len(times))), axis=1)  # drifts: an old forecast is further off
    at = times[-1] + STEP * np.arange(1, 13)
    fresh = seasonal.fit(walk, times[0], STEP, {"seasons": []})
    aged = seasonal.fit(walk, times[0], STEP, {"seasons": [], "residual_lag": "1h"})
    assert np.all(half_width(aged, at, 99) > 1.25 * half_width(fresh, at, 99))
    np.testing.assert_allclose(aged.level, fresh.level)  # the forecast itself is the same


@pytest.mark.parametrize("params, message", [
    ({"tail": 100}, "tail"), ({"tail": "99"}, "tail"), ({"scale_buckets": 0}, "scale_buckets"),
    ({"scale_buckets": True}, "scale_buckets"), ({"residual_lag": "soon"}, "duration"),
    ({"range_margin": 0.9}, "range_margin"), ({"range_margin": True}, "range_margin"),
])
def test_bad_values_are_refused_by_name(params, message):
    with pytest.raises(ValueError, match=message):
        seasonal.settings(params)
