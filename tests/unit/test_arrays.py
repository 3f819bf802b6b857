"""The numpy helpers of the model give the straightforward versions' outputs (tests/arrays_reference.py)."""

from __future__ import annotations

import numpy as np
import pytest

from oa_exporter.core import arrays
from oa_exporter.core.seasonal import PROBABILITIES
from tests import arrays_reference as reference


def matrix(rows: int, columns: int, gaps: float, seed: int) -> np.ndarray:
    """Noise with ties, infinities, signed zeros and NaN gaps (whole rows of them too, leading ones)."""
    rng = np.random.default_rng(seed)
    values = np.round(rng.normal(0, 3, (rows, columns)), 1)  # ties
    values[rng.random(values.shape) < gaps] = np.nan
    if rows > 2 and columns > 3:
        values[0] = np.nan
        values[1, : columns // 2] = np.nan
        values[2, :3] = [np.inf, -np.inf, -0.0]
    return values


SHAPES = [(1, 1), (3, 2), (5, 7), (6, 97), (4, 1440), (0, 5)]
GAPS = [0.0, 0.1, 0.7]


def same(a: np.ndarray, b: np.ndarray) -> None:
    assert a.shape == b.shape
    np.testing.assert_array_equal(a, b)  # NaN where NaN; -0.0 equals 0.0


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("gaps", GAPS)
def test_medians_are_the_sorted_ones(shape, gaps):
    values = matrix(*shape, gaps, seed=shape[1])
    same(arrays.nanmedian(values), reference.nanmedian(values))
    if shape[1] >= 4:
        cube = values[:, : shape[1] // 4 * 4].reshape(shape[0], 4, shape[1] // 4)
        same(arrays.nanmedian(cube), reference.nanmedian(cube))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("gaps", GAPS)
@pytest.mark.parametrize("probabilities", [[0.5], [0.05, 0.005, 0.95, 0.995], [0.0, 0.3, 1.0], PROBABILITIES])
def test_quantiles_are_the_sorted_ones(shape, gaps, probabilities):
    values = matrix(*shape, gaps, seed=len(probabilities))
    same(arrays.nanquantile_rows(values, np.array(probabilities)),
         reference.nanquantile_rows(values, np.array(probabilities)))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("gaps", GAPS)
@pytest.mark.parametrize("count", [1, 4, 96])
def test_group_medians_are_the_sorted_ones(shape, gaps, count):
    values = matrix(*shape, gaps, seed=count)
    minutes = 1_700_000_000 / 60 + np.arange(shape[1])
    for groups in (np.minimum((np.mod(minutes, 1440) / 1440 * count).astype(np.int64), count - 1),  # a day's buckets
                   np.arange(shape[1]) % count,  # whole cycles when the width divides
                   np.random.default_rng(1).integers(0, count, shape[1])):  # empty groups, unequal sizes
        same(arrays.group_nanmedian(values, groups, count), reference.group_nanmedian(values, groups, count))


@pytest.mark.parametrize("shape", [*SHAPES, (2, 0)])
@pytest.mark.parametrize("gaps", GAPS)
@pytest.mark.parametrize("window", [0, 1, 3, 180, 5000])
def test_trailing_means_are_the_indexed_ones(shape, gaps, window):
    values = matrix(*shape, gaps, seed=window)
    fallback = np.full(shape, 7.0)
    same(arrays.trailing_mean(values, window), reference.trailing_mean(values, window))
    same(arrays.trailing_mean(values, window, fallback), reference.trailing_mean(values, window, fallback))
    excluded = np.random.default_rng(window).random(shape) < 0.05
    same(arrays.trailing_mean(values, window, fallback, excluded),
         reference.trailing_mean(values, window, fallback, excluded))
    same(arrays.trailing_mean(values, window, excluded=excluded),
         reference.trailing_mean(values, window, excluded=excluded))


@pytest.mark.parametrize("shape", [*SHAPES, (2, 0)])
@pytest.mark.parametrize("lag", [0, 1, 30, 5000])
def test_a_lagged_difference_is_the_difference_of_the_lagged_copy(shape, lag):
    values, subtracted = matrix(*shape, 0.1, seed=lag), matrix(*shape, 0.1, seed=lag + 1)
    same(arrays.minus_lagged(values, subtracted, lag), reference.minus_lagged(values, subtracted, lag))


@pytest.mark.parametrize("shape", [(3, 10_000), (2, 400)])
def test_many_quantiles_of_long_rows_are_the_sorted_ones(shape):
    """Rows long enough that the band's quantiles come from a partition at the middle ranks and sorted ends
    (gaps, ties, infinities and NaN in the largest values included)."""
    values = matrix(*shape, 0.0, seed=shape[1])
    values[:, -40:] = np.nan  # a lag's worth of NaN at the end of every row
    same(arrays.nanquantile_rows(values, PROBABILITIES), reference.nanquantile_rows(values, PROBABILITIES))


def test_a_median_of_even_counts_interpolates_and_an_infinity_gives_what_the_sort_gives():
    values = np.array([[1.0, 2.0, np.nan, 4.0, 10.0], [np.inf, 1.0, np.nan, np.nan, np.nan],
                       [np.inf, np.nan, np.nan, np.nan, np.nan], [np.nan] * 5, [3.0, -np.inf, np.inf, 0.0, 1.0]])
    np.testing.assert_array_equal(arrays.nanmedian(values), [3.0, np.inf, np.nan, np.nan, 1.0])
    same(arrays.nanmedian(values), reference.nanmedian(values))
