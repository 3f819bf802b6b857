"""The first fit with the history store against the plain read, and the store's memory and disk, one rule.

    nice -n 10 python bench/history_first_fit.py --series 10000 --pairs 3

One rule with `preset: default` (train.window 56 d) over 5-minute data from an in-memory TSDB that generates
the samples (bench/tsdb_load.py's), fitted once from nothing through the Trainer as the daemon does: its
range read, the fit in a child process of the local pool (LocalPoolDispatcher, one worker), the model
written to a LocalArtifactStore in a temporary directory. With the history store (a fresh --history.dir
each run) the store writes the window once the model is stored; without, there is none. The two alternate,
--pairs pairs, the order swapped every pair (store first, then plain first, ...), so that load on a
shared machine falls on both alike (after one untimed small fit: the pool's start); printed: each run's
train() time (what the rule waits for its first model), the time until the store's write is done as well,
and the ratio of the medians store / plain.

Then, once, the store's own cost at this size: its disk (blocks, table, meta) after the first fit, the peak
memory its write of the whole window allocates (tracemalloc, beyond the matrix it is given), and the peak a
refit's read allocates beyond the matrix it returns (which the fit needs anyway). Between fits the store
holds nothing in memory. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.tsdb_load import STEP, T0, GeneratedTsdb, rule, window_of  # noqa: E402
from oa_exporter.adapters.dispatch.local_pool import LocalPoolDispatcher  # noqa: E402
from oa_exporter.adapters.stores.history_local import LocalHistoryStore  # noqa: E402
from oa_exporter.adapters.stores.local import LocalArtifactStore  # noqa: E402
from oa_exporter.adapters.telemetry.null import NullTelemetry  # noqa: E402
from oa_exporter.bootstrap import engine_registry  # noqa: E402
from oa_exporter.core.durations import parse_duration  # noqa: E402
from oa_exporter.core.services.history import HistoryReader  # noqa: E402
from oa_exporter.core.services.trainer import Trainer  # noqa: E402


async def first_fit(series: int, window: float, kept: bool, pool: LocalPoolDispatcher) -> dict[str, float]:
    """Seconds of the rule's first train() from nothing, and until the store's write of its window is done."""
    tsdb, bench_rule = GeneratedTsdb(series), rule(window)
    with tempfile.TemporaryDirectory(prefix="oa-first-fit-") as directory:
        reader = (HistoryReader(tsdb, LocalHistoryStore(Path(directory) / "history", 2**40), 120.0, lambda: T0)
                  if kept else None)
        store = LocalArtifactStore(Path(directory) / "models")
        trainer = Trainer(tsdb, engine_registry(), store, pool, NullTelemetry(), lambda: T0, history=reader)
        gc.collect()
        started = time.perf_counter()
        model = await trainer.train(bench_rule, T0)
        train_s = time.perf_counter() - started
        if reader is not None:
            await reader.settle()
        written_s = time.perf_counter() - started
        assert len(model.keys) == series, len(model.keys)
        await store.close()
    return {"train_s": train_s, "written_s": written_s}


async def store_cost(series: int, window: float) -> dict[str, float]:
    """The store's disk after a first read, and what its write and a refit's read allocate beyond the matrix."""
    tsdb, bench_rule = GeneratedTsdb(series), rule(window)
    with tempfile.TemporaryDirectory(prefix="oa-history-cost-") as directory:
        reader = HistoryReader(tsdb, LocalHistoryStore(directory, 2**40), 120.0, lambda: T0)
        history = await tsdb.query_range(bench_rule.expr, *window_of(bench_rule, T0), STEP)
        store, state_rule = reader.store, bench_rule
        await reader.read(state_rule, *window_of(bench_rule, T0))  # the first fit's read, and its write
        await reader.settle()
        state = await store.state(bench_rule.name)
        assert state is not None
        first = round(history.start / STEP)
        gc.collect()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        await store.write(bench_rule.name, state, history.values, first, first)  # the whole window, again
        write_peak = tracemalloc.get_traced_memory()[1] - base
        tracemalloc.stop()
        disk = sum(path.stat().st_size for path in Path(directory).rglob("*") if path.is_file())
        blocks = sum(path.stat().st_size for path in Path(directory).rglob("block-*.npy"))
        del history
        gc.collect()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        refit = await reader.read(bench_rule, *window_of(bench_rule, T0 + 3600))
        await reader.settle()
        read_peak = tracemalloc.get_traced_memory()[1] - base - refit.values.nbytes
        tracemalloc.stop()
        matrix = refit.values.nbytes
    return {"disk_bytes": disk, "block_bytes": blocks, "write_peak_bytes": write_peak,
            "refit_read_peak_beyond_matrix_bytes": read_peak, "matrix_bytes": matrix}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--series", type=int, default=10_000)
    parser.add_argument("--window", default="56d", help="train.window (preset: default is 56d)")
    parser.add_argument("--pairs", type=int, default=3,
                        help="pairs of first fits, the order swapped each pair (0: none, the store's cost only)")
    parser.add_argument("--no-cost", action="store_true", help="skip the store's memory and disk measurement")
    args = parser.parse_args()
    window = parse_duration(args.window)
    print(f"one rule, preset: default, {args.series:,} series, window {args.window} at a 5-minute step; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    pool = LocalPoolDispatcher(workers=1)
    runs: dict[str, list[dict[str, float]]] = {"store": [], "plain": []}
    try:
        if args.pairs:
            await first_fit(100, window, True, pool)  # untimed: the pool's forkserver starts, imports load
        for pair in range(args.pairs):
            for kind in ("store", "plain") if pair % 2 == 0 else ("plain", "store"):
                run = await first_fit(args.series, window, kind == "store", pool)
                runs[kind].append(run)
                print(f"pair {pair + 1} {kind:>5}: first train() {run['train_s']:7.2f} s"
                      + (f", the store's write done at {run['written_s']:.2f} s" if kind == "store" else "")
                      + f"  (load {os.getloadavg()[0]:.1f})")
    finally:
        await pool.close()
    result: dict[str, object] = {"series": args.series, "window": args.window}
    if args.pairs:
        median = {kind: float(np.median([r["train_s"] for r in rs])) for kind, rs in runs.items()}
        pairs = [s["train_s"] / p["train_s"] for s, p in zip(runs["store"], runs["plain"], strict=True)]
        result.update({"median_train_s": median, "ratio_store_vs_plain": median["store"] / median["plain"],
                       "pair_ratios": pairs,
                       "median_written_s": float(np.median([r["written_s"] for r in runs["store"]]))})
        print(f"first fit, median of {args.pairs}: {median['store']:.2f} s with the store, {median['plain']:.2f} s "
              f"without: {result['ratio_store_vs_plain']:.3f}x (pairs: {', '.join(f'{r:.3f}' for r in pairs)})")
    if not args.no_cost:
        cost = await store_cost(args.series, window)
        result["cost"] = cost
        per = 1e5 / args.series
        print(f"store: {cost['disk_bytes'] / 2**20:,.0f} MB on disk ({cost['block_bytes'] / 2**20:,.0f} MB of blocks), "
              f"{cost['disk_bytes'] * per / 2**30:.2f} GiB per 100k series scaled linearly; its write of the "
              f"window allocates {cost['write_peak_bytes'] / 2**20:,.0f} MB at peak "
              f"({cost['write_peak_bytes'] * per / 2**20:,.0f} MB per 100k), a refit's read "
              f"{cost['refit_read_peak_beyond_matrix_bytes'] / 2**20:,.0f} MB beyond its "
              f"{cost['matrix_bytes'] / 2**20:,.0f} MB matrix "
              f"({cost['refit_read_peak_beyond_matrix_bytes'] * per / 2**20:,.0f} MB per 100k)")
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    print(json.dumps(result))


if __name__ == "__main__":
    asyncio.run(main())
