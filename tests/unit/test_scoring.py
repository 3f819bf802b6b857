"""The anomaly score on values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from oa_exporter.core.domain import Direction
from oa_exporter.core.scoring import Repeats, Settling, anomaly_score


def score(y: float, yhat: float = 10.0, lower: float = 6.0, upper: float = 12.0,
          direction: Direction = Direction.BOTH) -> float:
    """Score of one sample; the default band is asymmetric: 4 below the forecast, 2 above."""
    result = anomaly_score(np.array([y]), np.array([yhat]), np.array([lower]), np.array([upper]), direction)
    return float(result[0])


def test_at_the_forecast_the_score_is_zero():
    assert score(10.0) == 0.0


def test_on_the_upper_edge_the_score_is_one():
    assert score(12.0) == 1.0


def test_beyond_the_upper_edge_the_score_is_the_distance_in_upper_widths():
    assert score(15.0) == pytest.approx(2.5)  # (15 - 10) / (12 - 10)


def test_below_the_forecast_the_lower_width_is_the_unit():
    assert score(8.0) == pytest.approx(0.5)  # (10 - 8) / (10 - 6)
    assert score(6.0) == pytest.approx(1.0)
    assert score(0.0) == pytest.approx(2.5)  # (10 - 0) / (10 - 6)


@pytest.mark.parametrize(
    ("direction", "y", "expected"),
    [
        (Direction.ABOVE, 15.0, 2.5),
        (Direction.ABOVE, 0.0, 0.0),
        (Direction.BELOW, 15.0, 0.0),
        (Direction.BELOW, 0.0, 2.5),
        (Direction.BOTH, 15.0, 2.5),
        (Direction.BOTH, 0.0, 2.5),
    ],
)
def test_direction_zeroes_the_side_that_may_not_alarm(direction, y, expected):
    assert score(y, direction=direction) == pytest.approx(expected)


def test_a_zero_width_band_scores_zero_on_the_forecast_and_huge_but_finite_off_it():
    assert score(42.0, 42.0, 42.0, 42.0) == 0.0
    off = score(43.0, 42.0, 42.0, 42.0)
    assert math.isfinite(off)
    assert off == pytest.approx(1 / (1e-9 * 42))  # floored at 1e-9 * |yhat|
    assert score(0.5, 0.0, 0.0, 0.0) == pytest.approx(0.5 / 1e-9)  # floored at 1e-9 * 1 near zero


@pytest.mark.parametrize("direction", list(Direction))
def test_a_missing_sample_or_forecast_scores_nan(direction):
    assert math.isnan(score(math.nan, direction=direction))
    assert math.isnan(score(10.0, yhat=math.nan, lower=math.nan, upper=math.nan, direction=direction))


def test_scores_a_whole_rule_at_once():
    y = np.array([10.0, 12.0, 15.0, 8.0, np.nan])
    result = anomaly_score(y, np.full(5, 10.0), np.full(5, 6.0), np.full(5, 12.0))
    np.testing.assert_allclose(result, [0.0, 1.0, 2.5, 0.5, np.nan])


def test_a_repeat_within_the_window_is_divided_by_the_largest_score_before_it_on_its_side():
    repeats, hour = Repeats(), 3600.0
    keys = [b"a", b"b"]

    def cycle(at: float, score: list[float], below: list[bool]) -> list[float]:
        damped = repeats.damp(keys, at * hour, np.array(score), np.array(below), window=6 * hour)
        return damped.round(3).tolist()

    assert cycle(0, [3.0, 0.5], [False, False]) == [3.0, 0.5]  # nothing before: as scored
    assert cycle(1, [0.6, 0.5], [False, False]) == [0.2, 0.5]  # a's spike of 3 divides what follows on its side
    assert cycle(2, [2.4, 2.0], [False, True]) == [0.8, 2.0]  # a smaller repeat does not page; b's first does
    assert cycle(3, [4.5, 1.5], [False, True]) == [1.5, 1.5]  # a larger one does; b's excursion goes on
    assert cycle(4, [4.0, math.nan], [False, False])[0] == 1.333  # the excursion keeps the divisor it began with
    assert cycle(9.5, [2.0, 1.5], [True, True]) == [2.0, 1.5]  # a below its forecast: another side; b: 6 h on
    assert cycle(10, [0.5, 0.1], [False, False]) == [0.5, 0.1]  # a's 4.5 of hour 3 is forgotten


def test_repeats_follow_series_that_come_and_go():
    repeats, hour = Repeats(), 3600.0
    repeats.damp([b"a", b"b"], 0.0, np.array([3.0, 5.0]), np.array([False, False]), 6 * hour)
    damped = repeats.damp([b"c", b"b"], hour, np.array([2.0, 0.5]), np.array([False, False]), 6 * hour)
    assert damped.tolist() == [2.0, 0.1]  # c is new; b remembers its 5


def test_a_lasting_excursion_pages_for_settle_after_then_only_at_its_new_extremes():
    settling, hour = Settling(), 3600.0
    keys = [b"a", b"b"]

    def cycle(at: float, score: list[float], below: tuple[bool, bool] = (False, False)) -> list[float]:
        settled = settling.settle(keys, at * hour, np.array(score), np.array(below), after=hour)
        return settled.round(3).tolist()

    assert cycle(0, [3.0, 0.5]) == [3.0, 0.5]  # a's excursion begins
    assert cycle(0.5, [4.0, 2.0]) == [4.0, 2.0]  # within its first hour: as scored; b's begins
    assert cycle(1, [3.0, math.nan])[0] == 0.75  # an hour on: divided by the largest score of the excursion, 4
    assert cycle(1.25, [6.0, 2.0]) == [1.5, 2.0]  # a new extreme pages; b's missing sample did not end its own
    assert cycle(1.5, [5.0, 3.0]) == [0.833, 1.5]  # below a's peak of 6 it does not; b: an hour on, peak 2
    assert cycle(2, [0.5, 2.0], below=(False, True)) == [0.5, 2.0]  # a's ends; b on the other side: a new one
    assert cycle(2.25, [3.0, 2.5], below=(False, True)) == [3.0, 2.5]  # new excursions are scored as they are
