"""The body of bench/dispatch.py (see its docstring): imported only in the benchmark's own process."""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from oa_exporter.adapters.dispatch.dask import DaskDispatcher
from oa_exporter.adapters.dispatch.local_pool import LocalPoolDispatcher
from oa_exporter.adapters.stores.local import LocalArtifactStore
from oa_exporter.adapters.telemetry.null import NullTelemetry
from oa_exporter.bootstrap import celery_queue, engine_registry, tsdb_client
from oa_exporter.core.domain import ModelSpec, Rule
from oa_exporter.core.jobs import TrainingJob
from oa_exporter.core.services.queued_trainer import QueuedTrainer
from oa_exporter.core.services.trainer import Trainer
from oa_exporter.settings import Settings

METRIC = "bench_training_load"
STEP, WINDOW = 300.0, 14 * 86400.0


def _serve_source(port: int, shards: int, per_shard: int) -> None:
    from aiohttp import web

    from oa_exporter.demo.signals import DemoSeries, DemoSignals
    from oa_exporter.demo.source import make_source

    series = [DemoSeries(METRIC, (("instance", f"host-{i}"), ("shard", f"s{k}")), 100.0 + i, 0.4, 0.05, 1.0)
              for k in range(shards) for i in range(per_shard)]
    web.run_app(make_source(DemoSignals(time.time() - 86400.0, series)), host="127.0.0.1", port=port, print=None)


def start_source(shards: int, per_shard: int) -> tuple[multiprocessing.Process, str]:
    port = _free_port()
    process = multiprocessing.get_context("spawn").Process(target=_serve_source, args=(port, shards, per_shard),
                                                           daemon=True)
    process.start()
    _wait_port(port)
    return process, f"http://127.0.0.1:{port}"


def rule(shard: int, model: ModelSpec) -> Rule:
    return Rule(name=f"bench-{shard}", group="bench", expr=f'{METRIC}{{shard="s{shard}"}}', step=STEP, model=model,
                train_window=WINDOW, min_history=86400.0)


async def local_pool_run(url: str, rules: list[Rule], workers: int, models: Path) -> float:
    """Wall seconds for every rule's Trainer.train at once on a pool of `workers` processes."""
    settings = Settings(prometheus_url=url, query_timeout=300)
    tsdb, pool = tsdb_client(settings), LocalPoolDispatcher(workers, timeout=3600)
    trainer = Trainer(tsdb, engine_registry(), LocalArtifactStore(models), pool, NullTelemetry())
    await trainer.train(rules[0], time.time() - 3600)  # warm: the forkserver is up, the model's code compiled
    started = time.perf_counter()
    await asyncio.gather(*(trainer.train(r, time.time()) for r in rules))
    seconds = time.perf_counter() - started
    await pool.close()
    await tsdb.close()
    return seconds


async def dask_run(url: str, rules: list[Rule], workers: int, models: Path, logs: Path) -> float:
    """Wall seconds for every rule's Trainer.train at once, fits on a Dask cluster of `workers` workers."""
    with DaskCluster(logs, workers) as cluster:
        settings = Settings(prometheus_url=url, query_timeout=300)
        tsdb, dask = tsdb_client(settings), DaskDispatcher(cluster.address, timeout=3600)
        trainer = Trainer(tsdb, engine_registry(), LocalArtifactStore(models), dask, NullTelemetry())
        try:
            await trainer.train(rules[0], time.time() - 3600)  # warm, as for the pool: imports done on a worker
            if workers > 1:  # ... and on the other
                await asyncio.gather(*(trainer.train(r, time.time() - 1800) for r in rules[:workers]))
            started = time.perf_counter()
            await asyncio.gather(*(trainer.train(r, time.time()) for r in rules))
            return time.perf_counter() - started
        finally:
            await dask.close()
            await tsdb.close()


class DaskCluster:
    """`dask scheduler` and `workers` `dask worker` processes (1 thread each), every socket on loopback."""

    def __init__(self, logs: Path, workers: int, memory: str = "4GB"):
        self.logs, self.size, self.port, self.memory = logs, workers, _free_port(), memory
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.procs: list[subprocess.Popen] = []

    def __enter__(self) -> DaskCluster:
        self._spawn("scheduler", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", str(self.port),
                    "--dashboard-address", "127.0.0.1:0")
        _wait_port(self.port)
        for i in range(self.size):
            self._spawn(f"worker-{self.size}-{i}", "distributed.cli.dask_worker", self.address, "--host", "127.0.0.1",
                        "--dashboard-address", "127.0.0.1:0", "--nworkers", "1", "--nthreads", "1",
                        "--memory-limit", self.memory)
        from distributed import Client

        with Client(self.address, timeout=60) as client:
            client.wait_for_workers(self.size, timeout=120)
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs:  # kill -9: a worker takes ~10 s to leave on SIGTERM
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def _spawn(self, name: str, module: str, *args: str) -> None:
        with open(self.logs / f"dask-{name}.log", "ab") as out:
            self.procs.append(subprocess.Popen([sys.executable, "-m", module, *args], stdout=out,
                                               stderr=subprocess.STDOUT, start_new_session=True))


async def celery_run(env: dict[str, str], rules: list[Rule], workers: int, logs: Path) -> float:
    """Wall seconds for every rule's job at once with `workers` worker processes (concurrency 1 each)."""
    settings = Settings.from_env(env)
    queue = celery_queue(settings, NullTelemetry())
    procs = [start_worker(env, logs / f"worker-{workers}-{i}.log") for i in range(workers)]
    try:
        for i in range(workers):
            wait_log(logs / f"worker-{workers}-{i}.log", "ready.")
        await queue.train(TrainingJob(rules[0], time.time() - 3600))  # a warm-up job, as for the pool
        started = time.perf_counter()
        await asyncio.gather(*(queue.train(TrainingJob(r, time.time())) for r in rules))
        seconds = time.perf_counter() - started
        jobs = [(logs / f"worker-{workers}-{i}.log").read_text().count("training job train:") for i in range(workers)]
        print(f"  jobs per worker (warm-up included): {jobs}")
        return seconds
    finally:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
        await queue.close()


async def overhead(url: str, env: dict[str, str], rule_: Rule, models: Path, logs: Path, repeat: int,
                   celery: bool = True) -> dict:
    """Per-job cost above calling the engine directly, for a job whose own work is tiny."""
    settings = Settings(prometheus_url=url)
    engines = engine_registry()
    tsdb, store = tsdb_client(settings), LocalArtifactStore(models)
    engine = engines[rule_.model.engine]

    async def direct() -> None:  # the same query, fit and store, no dispatcher in between
        history = await tsdb.query_range(rule_.expr, time.time() - WINDOW, time.time(), STEP)
        fitted = engine.fit(history, rule_.model, rule_.level)
        engine.dumps(fitted)

    pool = LocalPoolDispatcher(1, timeout=600)
    pooled = Trainer(tsdb, engines, store, pool, NullTelemetry())
    cluster = DaskCluster(logs, 1).__enter__()
    dask = DaskDispatcher(cluster.address, timeout=600)
    on_dask = Trainer(tsdb, engines, store, dask, NullTelemetry())
    jobs = [("direct", direct), ("pool", lambda: pooled.train(rule_, time.time())),
            ("dask", lambda: on_dask.train(rule_, time.time()))]
    proc, queued = None, None
    if celery:
        queued = QueuedTrainer(tsdb, engines, store, pool, NullTelemetry(),
                               queue=celery_queue(Settings.from_env(env), NullTelemetry()))
        proc = start_worker(env, logs / "worker-overhead.log")
        jobs.append(("celery", lambda: queued.train(rule_, time.time())))
    try:
        if proc is not None:
            wait_log(logs / "worker-overhead.log", "ready.")
        for _, job in jobs:
            await job()  # warm
        samples: dict[str, list[float]] = {name: [] for name, _ in jobs}
        for _ in range(repeat):  # round by round: a change in the machine's load hits every dispatcher alike
            for name, job in jobs:
                started = time.perf_counter()
                await job()
                samples[name].append(time.perf_counter() - started)
        timings = {name: statistics.median(times) for name, times in samples.items()}
    finally:
        if proc is not None and queued is not None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
            await queued.queue.close()
        await pool.close()
        await dask.close()
        cluster.__exit__()
        await tsdb.close()
    return timings


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "oa_exporter", "worker", "--queue", "training",
                                 "--concurrency", "1"], env={**os.environ, **env}, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def wait_log(path: Path, text: str, timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{path}: no {text!r} within {timeout:.0f} s")


def purge(broker: str) -> None:
    import contextlib

    from celery import Celery

    app = Celery(broker=broker, set_as_current=False)
    with app.connection_for_write() as conn, conn.channel() as channel, contextlib.suppress(Exception):
        channel.queue_purge("training")
    app.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


async def main(description: str) -> None:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--rules", type=int, default=16, help="training jobs queued at once")
    parser.add_argument("--series", type=int, default=6, help="series per rule")
    parser.add_argument("--model", default="AutoETS", help="statsforecast model of the CPU-bound jobs")
    parser.add_argument("--broker", default="redis://127.0.0.1:6379/12")
    parser.add_argument("--repeat", type=int, default=10, help="jobs timed for the overhead")
    parser.add_argument("--skip-celery", action="store_true")
    parser.add_argument("--skip-pool", action="store_true", help="only the dask (and celery) runs")
    parser.add_argument("--overhead-only", action="store_true", help="only the dispatch overhead per job")
    args = parser.parse_args()

    source, url = start_source(args.rules + 1, args.series)
    model = ModelSpec("statsforecast", args.model)
    rules = [rule(k, model) for k in range(args.rules)]
    tiny = Rule(name="tiny", group="bench", expr=f'{METRIC}{{shard="s{args.rules}",instance="host-0"}}', step=STEP,
                model=ModelSpec("statsforecast", "SeasonalProfile"), train_window=WINDOW, min_history=86400.0)
    result: dict[str, float] = {"rules": args.rules, "series_per_rule": args.series}
    with tempfile.TemporaryDirectory(prefix="oa-bench-dispatch-") as tmp:
        root = Path(tmp)
        env = {"OA_DISPATCHER": "celery", "OA_CELERY_BROKER": args.broker, "OA_PROMETHEUS_URL": url,
               "OA_ARTIFACT_DIR": str(root / "models"), "OA_PROMETHEUS_TIMEOUT": "300", "OA_LOG_LEVEL": "info"}
        try:
            for workers in () if args.skip_pool or args.overhead_only else (1, 2):
                seconds = await local_pool_run(url, rules, workers, root / "models")
                result[f"pool_{workers}w_s"] = round(seconds, 2)
                print(f"local pool, {workers} worker(s): {seconds:.2f} s for {args.rules} jobs "
                      f"({args.rules * args.series / seconds:.1f} series/s)", flush=True)
            if not (args.skip_pool or args.overhead_only):
                result["pool_speedup"] = round(result["pool_1w_s"] / result["pool_2w_s"], 2)
                print(f"local pool speed-up, 2 workers over 1: {result['pool_speedup']:.2f}x (target >= 1.7x)")
            for workers in () if args.overhead_only else (1, 2):
                seconds = await dask_run(url, rules, workers, root / "models", root)
                result[f"dask_{workers}w_s"] = round(seconds, 2)
                print(f"dask, {workers} worker(s): {seconds:.2f} s for {args.rules} jobs "
                      f"({args.rules * args.series / seconds:.1f} series/s)", flush=True)
            if not args.overhead_only:
                result["dask_speedup"] = round(result["dask_1w_s"] / result["dask_2w_s"], 2)
                print(f"dask speed-up, 2 workers over 1: {result['dask_speedup']:.2f}x (target >= 1.7x)")
            if not (args.skip_celery or args.overhead_only):
                purge(args.broker)
                for workers in (1, 2):
                    seconds = await celery_run(env, rules, workers, root)
                    result[f"celery_{workers}w_s"] = round(seconds, 2)
                    print(f"celery, {workers} worker(s): {seconds:.2f} s for {args.rules} jobs "
                          f"({args.rules * args.series / seconds:.1f} series/s)", flush=True)
                result["celery_speedup"] = round(result["celery_1w_s"] / result["celery_2w_s"], 2)
                print(f"celery speed-up, 2 workers over 1: {result['celery_speedup']:.2f}x (target >= 1.7x)")
            if not args.skip_celery:
                purge(args.broker)
            timings = await overhead(url, env, tiny, root / "models", root, args.repeat, not args.skip_celery)
            for name in timings.keys() - {"direct"}:
                result[f"{name}_overhead_ms"] = round(1000 * (timings[name] - timings["direct"]), 1)
            result["direct_job_ms"] = round(1000 * timings["direct"], 1)
            costs = ", ".join(f"{name} {result[f'{name}_overhead_ms']:.1f} ms"
                              for name in ("pool", "dask", "celery") if name in timings)
            print(f"one-series job: direct {1000 * timings['direct']:.1f} ms; dispatch overhead per job: {costs}")
        finally:
            source.kill()
    print(json.dumps(result))

