"""timestamp,value files as a backtest reads them: timestamps, gaps, and the step grid with lookback."""

from __future__ import annotations

import numpy as np
import pytest

from oa_exporter.adapters.tsdb.csv_files import CsvError, parse_time, read_csv


def test_timestamps_are_unix_seconds_or_iso_8601_in_utc():
    assert parse_time("1700000000") == 1_700_000_000.0
    assert parse_time("2023-11-14 22:13:20") == 1_700_000_000.0
    assert parse_time("2023-11-14T23:13:20+01:00") == 1_700_000_000.0
    with pytest.raises(ValueError, match="neither"):
        parse_time("yesterday")


def test_rows_are_sorted_gaps_are_nan_and_the_grid_sees_the_newest_fresh_sample(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("value,timestamp,label\n3,1000900,0\n1,1000000,0\n,1000300,0\n2,1000470,1\n")
    series = read_csv(path)
    assert series.stamps == ["1000000", "1000300", "1000470", "1000900"]
    np.testing.assert_array_equal(series.values, [1, np.nan, 2, 3])
    grid = series.history(300.0)
    assert grid.start == 999_900.0  # the multiple of the step at or before the first sample
    # 999900: nothing yet; 1000200: the sample of 1000000 (200 s old); 1000500: 1000470; 1000800: 1000470
    # (330 s old: stale after Prometheus's 5-minute lookback); 1000900 is past the last grid point
    np.testing.assert_array_equal(grid.values[0], [np.nan, 1, 2, np.nan])


def test_a_file_without_the_two_columns_is_refused(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("time,v\n1,2\n")
    with pytest.raises(CsvError, match="timestamp"):
        read_csv(path)
