"""TSDB load of training: samples read per hour at steady state against samples that arrived, one rule.

    nice -n 10 python bench/tsdb_load.py --series 10000 100000 --window 56d --hours 6

One rule with `preset: default` (train.window 56 d, train.every 1 h) over 5-minute data, refitted hourly for
--hours hours after a first fit, its range reads counted at the reader (series × points returned) in front
of an in-memory TSDB that generates the samples. Two ways side by side in the same run: the history store
(--history.dir: a refit reads what is new plus the overlap) and full-window refits (no history store). Also
printed: the first fit's read time both ways (the store writes the window once), the store's disk use, and
the peak memory a steady-state refit's read allocates (tracemalloc). The store's write of a read begins once
the fit that follows it is over (the fit does not wait); it is timed on its own. The last line is one JSON
object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from oa_exporter.adapters.stores.history_local import LocalHistoryStore  # noqa: E402
from oa_exporter.core.domain import InstantVector, Rule, SeriesMatrix  # noqa: E402
from oa_exporter.core.durations import parse_duration  # noqa: E402
from oa_exporter.core.presets import PRESETS  # noqa: E402
from oa_exporter.core.services.history import HistoryReader  # noqa: E402

STEP = 300.0
DAY = 86400.0
T0 = 1_800_000_000.0  # a multiple of the step


class GeneratedTsdb:
    """Every series of every expr exists over all time: value(i, t) is a daily cycle plus fixed noise."""

    def __init__(self, series: int):
        self.keys = [b'{"__name__":"bench","instance":"host-%d"}' % i for i in range(series)]
        self.labels = [{"__name__": "bench", "instance": f"host-{i}"} for i in range(series)]
        self.phase = np.arange(series, dtype=np.float64)[:, None]
        self.samples = 0

    async def query_range(self, expr: str, start: float, end: float, step: float) -> SeriesMatrix:
        times = start + step * np.arange(int(round((end - start) / step)) + 1)
        values = 100 + 20 * np.sin(2 * np.pi * times / DAY + self.phase)
        values += np.sin(self.phase * 12.9898 + times / step * 78.233) % 1.0  # deterministic "noise"
        self.samples += values.size
        return SeriesMatrix(self.keys, self.labels, start, step, values)

    async def query(self, expr: str, at: float) -> InstantVector:
        raise NotImplementedError

    async def close(self) -> None:
        pass


def rule(window: float) -> Rule:
    preset = PRESETS["default"]
    return Rule("bench", "bench", "bench", STEP, preset.model, train_window=window, train_every=preset.train_every,
                level=preset.level, min_history=preset.min_history)


def window_of(bench_rule: Rule, now: float) -> tuple[float, float]:
    end = np.floor(now / STEP) * STEP
    return end - bench_rule.train_window + STEP, end


async def measure(series: int, window: float, hours: int, kept: bool) -> dict[str, float]:
    tsdb, bench_rule, clock = GeneratedTsdb(series), rule(window), [T0]
    with tempfile.TemporaryDirectory(prefix="oa-history-") as directory:
        reader = HistoryReader(tsdb, LocalHistoryStore(directory, 2**40), 120.0, lambda: clock[0])

        async def read(now: float) -> SeriesMatrix:
            start, end = window_of(bench_rule, now)
            if kept:
                return await reader.read(bench_rule, start, end)
            return await tsdb.query_range(bench_rule.expr, start, end, STEP)

        started = time.perf_counter()
        await read(T0)
        first_fit_s = time.perf_counter() - started
        started = time.perf_counter()
        await reader.settle()  # the store write, which begins once the first fit is over
        write_s = time.perf_counter() - started
        tsdb.samples = 0
        steady_s, peak = 0.0, 0
        for hour in range(1, hours + 1):
            clock[0] = T0 + 3600 * hour
            tracemalloc.start()
            started = time.perf_counter()
            history = await read(clock[0])
            await reader.settle()
            steady_s += time.perf_counter() - started
            peak = max(peak, tracemalloc.get_traced_memory()[1])
            tracemalloc.stop()
            del history
        disk = sum(path.stat().st_size for path in Path(directory).rglob("block-*.npy"))
    arrived = series * 3600 / STEP * hours
    return {"read_per_hour": tsdb.samples / hours, "arrived_per_hour": arrived / hours,
            "ratio": tsdb.samples / arrived, "first_fit_read_s": first_fit_s,
            "first_write_s": write_s, "refit_read_s": steady_s / hours,
            "refit_peak_mb": peak / 2**20, "disk_mb": disk / 2**20}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--series", type=int, nargs="+", default=[10_000])
    parser.add_argument("--window", default="56d", help="train.window (preset: default is 56d)")
    parser.add_argument("--hours", type=int, default=6, help="hourly refits after the first fit")
    args = parser.parse_args()
    window = parse_duration(args.window)
    points = int(window / STEP)
    results = {}
    print(f"one rule, preset: default, window {args.window} at a 5-minute step ({points} points a series), "
          f"refit hourly; samples counted at the reader")
    for series in args.series:
        kept = await measure(series, window, args.hours, kept=True)
        full = await measure(series, window, args.hours, kept=False)
        results[series] = {"history": kept, "full": full}
        print(f"{series:>7} series  history store: {kept['read_per_hour']:>13,.0f} samples read/h for "
              f"{kept['arrived_per_hour']:,.0f} arrived = {kept['ratio']:.3f}x  | full-window refits: "
              f"{full['read_per_hour']:,.0f}/h = {full['ratio']:,.0f}x")
        print(f"{'':>15}first fit's read {kept['first_fit_read_s']:.2f} s with the store vs "
              f"{full['first_fit_read_s']:.2f} s without ({kept['first_fit_read_s'] / full['first_fit_read_s']:.2f}x),"
              f" then {kept['first_write_s']:.2f} s writing the window after the fit; a refit's read and write "
              f"{kept['refit_read_s']:.2f} s vs a full-window read {full['refit_read_s']:.2f} s")
        print(f"{'':>15}store on disk {kept['disk_mb']:,.0f} MB ({kept['disk_mb'] / series * 1e5 / 1024:.1f} GB per "
              f"100k series); peak allocated by a refit's read {kept['refit_peak_mb']:,.0f} MB with the store vs "
              f"{full['refit_peak_mb']:,.0f} MB without")
    print(json.dumps({str(k): v for k, v in results.items()}))


if __name__ == "__main__":
    asyncio.run(main())
