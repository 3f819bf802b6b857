"""The straightforward versions of oa_exporter.core.arrays, kept as they were first written: one sort per
median or quantile, index arrays for windows and groups. tests/unit/test_arrays.py checks that the faster
functions give the same outputs; bench/arrays.py measures them against these in the same run."""

from __future__ import annotations

import numpy as np

# unchanged since they were first written: the same functions
from oa_exporter.core.arrays import lagged, nanmean, nanquantile_last, nanrange

__all__ = ["group_nanmedian", "lagged", "minus_lagged", "nanmean", "nanmedian", "nanquantile_last", "nanquantile_rows",
           "nanrange", "trailing_mean"]


def minus_lagged(values: np.ndarray, subtracted: np.ndarray, lag: int) -> np.ndarray:
    """values minus `subtracted` shifted `lag` columns later."""
    return values - lagged(subtracted, lag)


def nanquantile_rows(values: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """Quantiles of each row, ignoring NaN: (len(probabilities), rows), by one sort."""
    return np.moveaxis(nanquantile_last(values, probabilities), -1, 0)


def nanmedian(values: np.ndarray) -> np.ndarray:
    """NaN-ignoring median over the last axis (NaN where all are NaN), by one sort."""
    return nanquantile_last(values, np.array([0.5]))[..., 0]


def group_nanmedian(values: np.ndarray, groups: np.ndarray, count: int) -> np.ndarray:
    """Median of each row over the columns of each group: (series, count); NaN where a group is empty."""
    order = np.argsort(groups, kind="stable")
    sizes = np.bincount(groups, minlength=count)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    rank = np.arange(len(order)) - starts[groups[order]]
    index = np.full((count, max(int(sizes.max()), 1)), values.shape[1])  # pad points at a NaN column
    index[groups[order], rank] = order
    padded = np.concatenate([values, np.full((values.shape[0], 1), np.nan)], axis=1)
    return nanmedian(padded[:, index])


def trailing_mean(values: np.ndarray, window: int, fallback: np.ndarray | None = None,
                  excluded: np.ndarray | None = None) -> np.ndarray:
    """Mean of the `window` points before each point (NaN-aware, the `excluded` ones made NaN first); where
    there is none, `fallback` (default: the point's own value: the first point)."""
    kept = values if excluded is None else np.where(excluded, np.nan, values)
    present = ~np.isnan(kept)
    sums = np.concatenate([np.zeros((values.shape[0], 1)), np.cumsum(np.where(present, kept, 0), axis=1)], 1)
    counts = np.concatenate([np.zeros((values.shape[0], 1)), np.cumsum(present, axis=1)], axis=1)
    end = np.arange(values.shape[1])
    begin = np.maximum(end - window, 0)
    total = sums[:, end] - sums[:, begin]
    number = counts[:, end] - counts[:, begin]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total / number
    return np.where(number > 0, mean, values if fallback is None else fallback)


