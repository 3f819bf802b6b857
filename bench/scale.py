"""Sizing shards: what one shard of a rule costs at 100k and 250k series, and training on 1 and 2 Dask workers.

    nice -n 10 python bench/scale.py --series 100000 250000 --shards 1 4 [--dask]
    nice -n 10 python bench/scale.py --series 10000 --shards --dask --dask-model mlforecast:Ridge

For every (series, shards) pair, a fresh process runs shard 0 of the layout beside a Prometheus-API source of
that many series (in its own process) and prints: the fit of the shard's series (SeasonalProfile, two days at
5 minutes, in the local pool), a scoring cycle's wall time and CPU time (instant query of every series, the
shard's selection, scoring, /metrics render and gzip), the bytes each replica reads from the TSDB per cycle
(the whole instant query, whatever the shard count), the shard's /metrics page (plain and gzip), and the peak
RSS. With --dask: the fit of all the series on a Dask cluster of 1 and then 2 workers of 2 GB each, sent as the
trainer sends it (SeasonalProfile in jobs of row blocks from this process, joined here; with --dask-model
mlforecast:Ridge, one job, and DistributedMLForecast fits rules of 5,000 series or more), against the same fit in
one process: wall and CPU time, and the peak memory of the largest worker. Baselines are measured in the same run:
shards 1 is the single daemon. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import METRIC, labels, start_source  # noqa: E402

STEP = 300.0
RULES = f"""
groups:
  - name: bench
    interval: 1m
    rules:
      - anomaly: bench
        expr: {METRIC}
        step: 5m
        train: {{window: 2d}}
        min_history: 1d
        max_series: 1000000
"""


def history(n: int, now: float):
    """Two days of generated history for the n series of the source."""
    import numpy as np

    from oa_exporter.adapters.tsdb.prometheus import series_key
    from oa_exporter.core.domain import SeriesMatrix

    series = labels(n)
    end = np.floor(now / STEP) * STEP
    points = int(2 * 86400 / STEP)
    t = end - STEP * np.arange(points)[::-1]
    values = 100 + 10 * np.sin(2 * np.pi * t / 86400)[None, :] + np.random.default_rng(0).normal(0, 1, (n, points))
    return SeriesMatrix([series_key(m) for m in series], series, t[0], STEP, values)


def fit_shard(n: int, now: float, count: int, spec, level: float):
    """In a training process: the shard's share of the history, fitted (what shard 0 of `count` trains)."""
    from oa_exporter.adapters.engines.statsforecast import StatsForecastEngine
    from oa_exporter.core.sharding import Shard, select_history

    mine = select_history(history(n, now), Shard(0, count))
    started = time.perf_counter()
    fitted = StatsForecastEngine().fit(mine, spec, level)
    return mine.keys, mine.labels, mine.start, float(mine.timestamps[-1]), fitted, time.perf_counter() - started


async def one_shard(n: int, count: int, repeat: int) -> dict:
    from oa_exporter.bootstrap import bootstrap
    from oa_exporter.core.domain import Model
    from oa_exporter.core.services.inferencer import Forecasts
    from oa_exporter.settings import Settings

    now = time.time()
    source, url = start_source(n, now)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            Path(tmp, "rules.yaml").write_text(RULES)
            app = bootstrap(Settings(rules=(str(Path(tmp, "rules.yaml")),), prometheus_url=url, artifact_dir=tmp,
                                     pool_workers=1, query_timeout=300, shard_count=count, shard_index=0))
            await app.load_rules()
            await app.runner.pause()
            group, slot = app.rules.groups[0], app.runner.slots["bench"]
            rule = slot.rule
            keys, series, start, end, fitted, fit_s = await app.dispatcher.run(fit_shard, n, now, count, rule.model,
                                                                               rule.level)
            model = Model(rule.name, rule.fingerprint(), "statsforecast", keys, series, end, start, end, STEP, fitted)
            bands = await app.runner.inferencer.bands(rule, model, now)
            slot.forecasts, slot.loaded, slot.last_fit_attempt = Forecasts.of(model, bands), True, now
            await app.runner.cycle(group, now)  # the first cycle hashes the series and builds the label blocks
            walls, cpus = [], []
            for _ in range(repeat):
                wall, cpu = time.perf_counter(), time.process_time()
                await app.runner.cycle(group, now)
                walls.append(time.perf_counter() - wall)
                cpus.append(time.process_time() - cpu)
            async with aiohttp.ClientSession() as session, \
                    session.post(f"{url}/api/v1/query", data={"query": METRIC, "time": str(now)}) as r:
                query_bytes = len(await r.read())
            page = app.page.page()
            owned = slot.owned[0]
            await app.close()
    finally:
        source.kill()
    return {"series": n, "shards": count, "owned": owned, "fit_s": round(fit_s, 2),
            "cycle_ms": round(1000 * statistics.median(walls), 1),
            "cycle_cpu_ms": round(1000 * statistics.median(cpus), 1),
            "query_bytes": query_bytes, "page_bytes": len(page), "page_gzip_bytes": len(gzip.compress(page, 6)),
            "rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


async def dask_training(n: int, model: str) -> dict:
    """The model (engine:name) on all n series: one process, then on a Dask cluster of 1 and 2 workers, sent as the
    trainer sends it (a separable model in row blocks from this process); wall and CPU time of each, and the peak
    memory of this process, of the scheduler and of the largest worker."""
    from bench._dispatch import DaskCluster
    from oa_exporter.adapters.dispatch.dask import DaskDispatcher
    from oa_exporter.bootstrap import engine_registry
    from oa_exporter.core.domain import ModelSpec
    from oa_exporter.core.services.trainer import fit_rule

    spec = ModelSpec(*model.split(":", 1))
    data, engine, warm = history(n, time.time()), engine_registry()[spec.engine], engine_registry()[spec.engine]
    warm.distributed_from = 1  # type: ignore[attr-defined]  # the warm-up takes the distributed path too
    wall, cpu = time.perf_counter(), time.process_time()
    engine.fit(data, spec, 99.0)
    result = {"series": n, "model": model, "history_mb": round(data.values.nbytes / 1e6, 1),
              "one_process_s": round(time.perf_counter() - wall, 2),
              "one_process_cpu_s": round(time.process_time() - cpu, 2)}
    with tempfile.TemporaryDirectory() as tmp:
        for workers in (1, 2):
            with DaskCluster(Path(tmp), workers, memory=WORKER_MEMORY) as cluster:
                dispatcher = DaskDispatcher(cluster.address, timeout=3600)
                small = history(400, time.time())
                dispatcher.block_bytes = small.values.nbytes // 8  # warm: imports, on every worker
                await fit_rule(dispatcher, warm, small, spec, 99.0)
                dispatcher.block_bytes = BLOCK_BYTES
                scheduler, nannies = cluster.procs[0].pid, [p.pid for p in cluster.procs[1:]]
                before = sum(_cpu(pid) for pid in [scheduler, *_in_groups(nannies)])
                wall, cpu = time.perf_counter(), time.process_time()
                await fit_rule(dispatcher, engine, data, spec, 99.0)
                key = f"dask_{workers}w"
                result[f"{key}_s"] = round(time.perf_counter() - wall, 2)
                result[f"{key}_daemon_cpu_s"] = round(time.process_time() - cpu, 2)
                result[f"{key}_cluster_cpu_s"] = round(
                    sum(_cpu(pid) for pid in [scheduler, *_in_groups(nannies)]) - before, 2)
                result[f"{key}_worker_peak_mb"] = round(max(_peak(pid) for pid in _in_groups(nannies, False)), 1)
                result[f"{key}_scheduler_peak_mb"] = round(_peak(scheduler), 1)
                await dispatcher.close()
    result["daemon_peak_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return result


WORKER_MEMORY = "2GB"  # each worker's --memory-limit, as the tests start them
BLOCK_BYTES = 32 << 20  # the dask dispatcher's default block


def _in_groups(leaders: list[int], with_leaders: bool = True) -> list[int]:
    """The processes of the process groups led by `leaders` (a worker's nanny and the worker it started)."""
    import os

    found = []
    for pid in map(int, filter(str.isdigit, os.listdir("/proc"))):
        try:
            if os.getpgid(pid) in leaders and (with_leaders or pid not in leaders):
                found.append(pid)
        except ProcessLookupError:
            continue
    return found


def _cpu(pid: int) -> float:
    """User and system CPU seconds of a process so far."""
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _peak(pid: int) -> float:
    """A process's peak resident memory (VmHWM), MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--series", type=int, nargs="+", default=[100_000, 250_000])
    parser.add_argument("--shards", type=int, nargs="*", default=[1, 4])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dask", action="store_true", help="also time training on 1 and 2 Dask workers")
    parser.add_argument("--dask-model", default="statsforecast:SeasonalProfile", help="engine:name for --dask")
    parser.add_argument("--one", type=int, nargs=2, help=argparse.SUPPRESS)  # series, shards: in a fresh process
    parser.add_argument("--dask-one", help=argparse.SUPPRESS)  # series:engine:name
    args = parser.parse_args()
    if args.one:
        print(json.dumps(asyncio.run(one_shard(*args.one, args.repeat))))
        return
    if args.dask_one:
        series, model = args.dask_one.split(":", 1)
        print(json.dumps(asyncio.run(dask_training(int(series), model))))
        return
    rows = []
    for n in args.series:
        for count in args.shards:
            row = _child(["--one", str(n), str(count), "--repeat", str(args.repeat)])
            rows.append(row)
            print(f"{n:>7} series, shard 0 of {count}: owns {row['owned']:>6}; fit {row['fit_s']:6.1f} s; cycle "
                  f"{row['cycle_ms']:7.1f} ms wall, {row['cycle_cpu_ms']:7.1f} ms CPU; TSDB reply "
                  f"{row['query_bytes'] / 1e6:5.1f} MB; /metrics {row['page_bytes'] / 1e6:5.1f} MB "
                  f"({row['page_gzip_bytes'] / 1e6:4.1f} MB gzip); peak RSS {row['rss_mb']:6.0f} MB", flush=True)
    training = []
    if args.dask:
        for n in args.series:
            row = _child(["--dask-one", f"{n}:{args.dask_model}"])
            training.append(row)
            print(f"{n:>7} series ({row['history_mb']:.0f} MB of history), {args.dask_model}: one process "
                  f"{row['one_process_s']:.1f} s ({row['one_process_cpu_s']:.1f} s CPU); Dask 1 worker "
                  f"{row['dask_1w_s']:.1f} s, 2 workers {row['dask_2w_s']:.1f} s "
                  f"({row['dask_1w_s'] / row['dask_2w_s']:.2f}x)", flush=True)
            for w in (1, 2):
                print(f"{'':>9}{w} worker(s): CPU {row[f'dask_{w}w_daemon_cpu_s']:.1f} s here, "
                      f"{row[f'dask_{w}w_cluster_cpu_s']:.1f} s on the cluster; peak memory: largest worker "
                      f"{row[f'dask_{w}w_worker_peak_mb']:.0f} MB, scheduler {row[f'dask_{w}w_scheduler_peak_mb']:.0f}"
                      f" MB", flush=True)
            print(f"{'':>9}peak memory of this process (history, one-process fit): {row['daemon_peak_mb']:.0f} MB",
                  flush=True)
    print(json.dumps({"shards": rows, "training": training}))


def _child(extra: list[str]) -> dict:
    done = subprocess.run([sys.executable, __file__, *extra], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
