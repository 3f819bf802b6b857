"""Row-wise numpy helpers for (series × time) matrices: NaN-aware medians, quantiles, ranges, grouped
medians, trailing means and lags. Every function works on all rows at once.

They are the model's inner loops (a preview refits a rule's whole window every hour it replays), so each
does the least work that gives the straightforward version's result bit for bit (tests/arrays_reference.py
keeps those; tests/unit/test_arrays.py compares, bench/arrays.py times both): a median selects two order
statistics instead of sorting the row, windows and groups are column slices and reshapes, not index arrays.
"""

from __future__ import annotations

import numpy as np


def nanmedian(values: np.ndarray) -> np.ndarray:
    """NaN-ignoring median over the last axis (NaN where all are NaN).

    The two middle order statistics, low and high, of each row's v values by one selection (np.partition
    at the upper one; the lower is the largest value before it), then low + (high - low) * fraction, the
    same arithmetic as nanquantile_last at 0.5. A selection needs one rank for all the rows it works on, so
    rows are taken together by their count of values: one group when no row has gaps.
    """
    width = values.shape[-1]
    if width == 0:
        return np.full(values.shape[:-1], np.nan)
    rows = values.reshape(-1, width)
    result = np.full(rows.shape[0], np.nan)
    for count, picked in _by_count(rows):
        if picked is None:
            return _middle(rows, count).reshape(values.shape[:-1])
        result[picked] = _middle(rows[picked], count)
    return result.reshape(values.shape[:-1])


def _by_count(rows: np.ndarray) -> list[tuple[int, np.ndarray | None]]:
    """The rows of a matrix grouped by their count of values (not NaN), groups of none left out: (count,
    indices), or one (count, None) when every row holds as many."""
    valid = np.count_nonzero(~np.isnan(rows), axis=1)
    counts = np.unique(valid[valid > 0]).tolist()
    if len(counts) == 1 and valid.min() == counts[0]:  # no gaps, or as many in every row: all rows at once
        return [(counts[0], None)]
    return [(count, np.flatnonzero(valid == count)) for count in counts]


def _middle(rows: np.ndarray, count: int) -> np.ndarray:
    """The median of rows that each hold `count` values (NaN after them once sorted)."""
    position = 0.5 * (count - 1)
    below = int(np.floor(position))
    above = min(below + 1, count - 1)
    if above == 0:  # one value
        low = high = np.nanmin(rows, axis=1)
    else:
        selected = np.partition(rows, above, axis=1)
        high = selected[:, above]
        low = np.max(selected[:, :above], axis=1)
    return low + (high - low) * (position - below)


def nanmean(values: np.ndarray) -> np.ndarray:
    present = ~np.isnan(values)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sum(np.where(present, values, 0.0), axis=1) / np.sum(present, axis=1)


def nanrange(values: np.ndarray) -> np.ndarray:
    """Smallest and largest value of each row, ignoring NaN: shape (2, rows); NaN for a row without values."""
    present = ~np.isnan(values)
    lowest = np.min(np.where(present, values, np.inf), axis=1)
    highest = np.max(np.where(present, values, -np.inf), axis=1)
    return np.where(present.any(axis=1), np.stack([lowest, highest]), np.nan)


SELECTED_AT_MOST = 16  # order statistics one np.partition picks faster than a sort finds them (10,000 values)
SORTED_ENDS = 0.05  # with more: the ranks within this fraction of either end are read off those ends, sorted
COUNTS_AT_MOST = 4  # more counts of values among the rows: one sort of all rows beats a selection per count


def nanquantile_rows(values: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """Linear-interpolated quantiles of each row of a matrix, ignoring NaN: shape (len(probabilities), rows).

    As nanquantile_last computes them, from the two order statistics around each probability, found by a
    selection instead of a sort (rows grouped by their count of values as in nanmedian): for a few (at most
    SELECTED_AT_MOST order statistics) one np.partition at just those, about half a sort's time for four
    probabilities. A partition at many ranks costs about a sort, and the band's 23 probabilities crowd the
    tails (ranks 0, 1, 4, 5, 9, 10 ... of 10,000): there the partition is at the ranks of the middle only,
    and the few values beyond them at either end (SORTED_ENDS of the row) are sorted, a tenth of the row.
    """
    if values.shape[1] == 0:
        return np.moveaxis(nanquantile_last(values, probabilities), -1, 0)
    groups = _by_count(values)
    if 2 * len(probabilities) > SELECTED_AT_MOST and len(groups) > COUNTS_AT_MOST:
        return np.moveaxis(nanquantile_last(values, probabilities), -1, 0)
    result = np.full((len(probabilities), values.shape[0]), np.nan)
    for count, picked in groups:
        if picked is None:
            return _order_statistics(values, count, probabilities)
        result[:, picked] = _order_statistics(values[picked], count, probabilities)
    return result


def _order_statistics(rows: np.ndarray, count: int, probabilities: np.ndarray) -> np.ndarray:
    """The quantiles of rows that each hold `count` values (NaN after them once sorted): (probabilities, rows),
    with nanquantile_last's arithmetic."""
    position = probabilities * (count - 1)
    below = np.floor(position).astype(np.int64)
    above = np.minimum(below + 1, count - 1)
    selected = _selected(rows, np.unique(np.concatenate([below, above])), count)
    low, high = selected[:, below].T, selected[:, above].T
    return low + (high - low) * (position - below)[:, None]


def _selected(rows: np.ndarray, ranks: np.ndarray, count: int) -> np.ndarray:
    """A copy of `rows` with the value of each rank (of `count` values, sorted ascending) in its place."""
    if len(ranks) <= SELECTED_AT_MOST:
        return np.partition(rows, ranks, axis=1)
    edge = int(SORTED_ENDS * count)
    middle = ranks[(ranks >= edge) & (ranks < count - 1 - edge)]
    if len(middle) == 0:
        return np.sort(rows, axis=1)
    selected = np.partition(rows, middle, axis=1)  # before middle[0]: the smallest values; after the last: the
    first, last = int(middle[0]), int(middle[-1])  # largest, and the NaN among them (a sort puts them last)
    if ranks[0] < first:
        selected[:, :first].sort(axis=1)
    if ranks[-1] > last:
        selected[:, last + 1 :].sort(axis=1)
    return selected


def nanquantile_last(values: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """Linear-interpolated quantiles over the last axis, ignoring NaN: shape (..., len(probabilities))."""
    ordered = np.sort(values, axis=-1)  # NaN sorts last
    valid = np.sum(~np.isnan(ordered), axis=-1, keepdims=True)
    position = probabilities * np.maximum(valid - 1, 0)
    below = np.floor(position).astype(np.int64)
    above = np.minimum(below + 1, np.maximum(valid - 1, 0))
    low = np.take_along_axis(ordered, below, axis=-1)
    high = np.take_along_axis(ordered, above, axis=-1)
    result = low + (high - low) * (position - below)
    return np.where(valid > 0, result, np.nan)


def group_nanmedian(values: np.ndarray, groups: np.ndarray, count: int) -> np.ndarray:
    """Median of each row over the columns of each group: (series, count); NaN where a group is empty.

    The columns are gathered group after group into (series, count, size), padded with NaN where a group
    has fewer than the largest; where all groups are the same size (a window of whole cycles, or a single
    group) that is one reshape of the gathered columns, without padding.
    """
    order = np.argsort(groups, kind="stable")
    sizes = np.bincount(groups, minlength=count)
    width = max(int(sizes.max()), 1)
    if count == 1 and values.shape[1] > 0:  # one group: the row itself, in its own order
        return nanmedian(values)[:, None]
    if (sizes == width).all():  # np.take, not values[:, order]: rows that stay contiguous for the selection
        return nanmedian(np.take(values, order, axis=1).reshape(values.shape[0], count, width))
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    rank = np.arange(len(order)) - starts[groups[order]]
    index = np.full((count, width), -1)
    index[groups[order], rank] = order
    padding = np.nonzero(index < 0)
    grouped = np.take(values, np.maximum(index, 0), axis=1) if values.shape[1] else \
        np.empty((values.shape[0], count, width))
    grouped[:, padding[0], padding[1]] = np.nan  # a smaller group is padded with gaps
    return nanmedian(grouped)


def trailing_mean(values: np.ndarray, window: int, fallback: np.ndarray | None = None,
                  excluded: np.ndarray | None = None) -> np.ndarray:
    """Mean of the `window` points before each point (NaN-aware, and without the `excluded` ones: as if they
    were NaN); where there is none, `fallback` (default: the point's own value: the first point)."""
    present = ~np.isnan(values)
    if excluded is not None:
        present &= ~excluded
    if present.all():  # no gaps: as many points before each as the window holds, or as there are
        total = _trailing_sum(values, window)
        number: np.ndarray = np.minimum(np.arange(values.shape[1]), max(window, 0))
    else:
        total = _trailing_sum(np.where(present, values, 0.0), window)
        number = _trailing_sum(present, window, np.int32)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.divide(total, number, out=total)
    np.copyto(mean, values if fallback is None else fallback, where=number == 0)
    return mean


def _trailing_sum(values: np.ndarray, window: int, dtype: type = np.float64) -> np.ndarray:
    """Sum of the `window` columns before each column (0 for the first), from the running sum R (in `dtype`,
    float64 by default): column j is R[j-1] - R[j-1-window], the second term only once there is one. Column
    slices, no index arrays."""
    running: np.ndarray = np.cumsum(values, axis=1, dtype=dtype)
    total: np.ndarray = np.empty(values.shape, dtype)
    columns, lead = values.shape[1], max(window, 0) + 1
    total[:, :1] = 0
    total[:, 1:lead] = running[:, : min(lead, columns) - 1]
    if lead < columns:
        np.subtract(running[:, lead - 1 : -1], running[:, : columns - lead], out=total[:, lead:])
    return total


def minus_lagged(values: np.ndarray, subtracted: np.ndarray, lag: int) -> np.ndarray:
    """values - lagged(subtracted, lag), without the shifted copy: NaN in the first `lag` columns."""
    if lag <= 0:
        return values - subtracted
    difference = np.empty(np.broadcast_shapes(values.shape, subtracted.shape))
    difference[:, :lag] = np.nan
    np.subtract(values[:, lag:], subtracted[:, : max(subtracted.shape[1] - lag, 0)], out=difference[:, lag:])
    return difference


def lagged(values: np.ndarray, lag: int) -> np.ndarray:
    """Each row shifted `lag` columns later (NaN where nothing came before)."""
    if lag <= 0:
        return values
    shifted = np.full_like(values, np.nan)
    shifted[:, lag:] = values[:, :-lag]
    return shifted
