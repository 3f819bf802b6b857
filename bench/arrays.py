"""The model's numpy helpers (oa_exporter.core.arrays) against their straightforward versions, in one run.

    nice -n 10 python bench/arrays.py [--series 100] [--days 7] [--repeats 7]

On a (series x 1-minute steps) matrix shaped like one refit of a preview (a daily cycle and noise; once
without gaps, once with 1 % of the samples missing), each helper as SeasonalProfile calls it: the median of a
row, the median of each 15-minute bucket of the day, the 3-hour trailing mean, the 23 band quantiles, the 4
quantiles that find excursions (robust_reference). Each pair runs alternately, `--repeats` times; a row gives
the best time of each and the ratio (reference / ours: above 1 is faster), and checks that both gave the same
array. One JSON line at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from oa_exporter.core import arrays  # noqa: E402
from oa_exporter.core.seasonal import PROBABILITIES  # noqa: E402
from tests import arrays_reference as reference  # noqa: E402


def matrix(series: int, days: float, gaps: float) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    times = 1_700_006_400.0 + 60.0 * np.arange(int(days * 1440))
    values = 100 + 20 * np.sin(2 * np.pi * times / 86400 + np.arange(series)[:, None]) + rng.normal(0, 1.5, (
        series, len(times)))
    values[rng.random(values.shape) < gaps] = np.nan
    buckets = np.minimum((np.mod(times, 86400) / 86400 * 96).astype(np.int64), 95)
    return values, buckets


def best(fn: Callable[[], np.ndarray], other: Callable[[], np.ndarray], repeats: int) -> tuple[float, float]:
    ours, theirs = [], []
    for _ in range(repeats):  # alternately: load on a shared machine falls on both alike
        for runs, f in ((ours, fn), (theirs, other)):
            started = time.perf_counter()
            f()
            runs.append(time.perf_counter() - started)
    return min(ours), min(theirs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--series", type=int, default=100)
    parser.add_argument("--days", type=float, default=7.0)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    results = {}
    for gaps in (0.0, 0.01):
        values, buckets = matrix(args.series, args.days, gaps)
        cases = {
            "nanmedian": lambda f, v=values: f.nanmedian(v),
            "group_nanmedian": lambda f, v=values, b=buckets: f.group_nanmedian(v, b, 96),
            "trailing_mean": lambda f, v=values: f.trailing_mean(v, 180),
            "nanquantile_rows": lambda f, v=values: f.nanquantile_rows(v, PROBABILITIES),
            "nanquantile_rows_4": lambda f, v=values: f.nanquantile_rows(v, np.array([0.05, 0.005, 0.95, 0.995])),
        }
        for name, case in cases.items():
            np.testing.assert_array_equal(case(arrays), case(reference))
            ours, theirs = best(lambda c=case: c(arrays), lambda c=case: c(reference), args.repeats)
            key = f"{name}{'_gaps' if gaps else ''}"
            results[key] = round(theirs / ours, 2)
            print(f"{key:24s} ours {ours * 1000:8.2f} ms  straightforward {theirs * 1000:8.2f} ms  "
                  f"ratio {theirs / ours:5.2f}  (same output)")
    print(json.dumps({"series": args.series, "days": args.days, **results}))


if __name__ == "__main__":
    main()
