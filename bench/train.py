"""Training throughput of the default model against Prophet, measured in one run; and its memory at scale.

    python bench/train.py                    # both datasets: Prophet, ours through the Trainer, MSTL
    python bench/train.py --memory 50000     # peak RSS of one rule of 50,000 series of the 5-minute set

Two datasets, generated with a fixed seed: 5-minute samples over 14 days (4,032 points a series) and
1-minute samples over 7 days (10,080). Each series has its own level, linear trend, daily and weekly cycle
(size and phase), Gaussian noise and three spikes. On each, one core (BLAS and numba threads pinned to one,
the inline dispatcher, StatsForecast with n_jobs=1):

- Prophet (daily + weekly seasonality, interval_width 0.99), fit + 1 h forecast, one series after the other
  over the first `--prophet-series`: the baseline. One untimed fit first (the Stan model's loading). Its
  series are fitted in `--repeats` slices, each followed by one timed training of ours per model, so that
  other load on a shared machine falls on both alike.
- ours: `preset: default`'s model end to end through the Trainer (range query to an in-memory TSDB, fit,
  the artifact encoded, written and fsynced to a LocalArtifactStore in a temporary directory, the rule's fit
  record too), then its 1 h bands at 99 %, over `--series` series; median of `--repeats` after one untimed
  run. The plain defaults (a rule with neither `preset:` nor `model:`) the same way.
- StatsForecast MSTL (a daily season, AutoETS trend; the model the statistical engines would reach for)
  fit + 1 h forecast at 99 % on the first `--mstl-series` series only, for reference: it takes seconds a
  series. One untimed fit first (numba compiles); its series are spread over the same rounds.

ratio = our series/s divided by Prophet's, both measured in this run, on wall-clock time. Each row also
gives CPU seconds (this process and its children: Prophet's CmdStan runs as a child process) and the ratio on
those, which other work on a shared machine disturbs less. The last line is one JSON object:
ratio_vs_prophet_5m, ratio_vs_prophet_1m, series_per_s_5m, series_per_s_1m, rss_mb (the run's peak RSS), ...

`--memory N` trains one rule of N series of the 5-minute set and nothing else, and prints the process's peak
RSS (target: 4 GB at 50,000 series). Its TSDB builds the query result when asked instead of holding a copy
of the data as ReplayTsdb does: what a TSDB stores lives in the TSDB's process, the daemon's training worker
only ever holds the answer to its range query.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import asyncio  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from importlib import metadata  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import METRIC, labels  # noqa: E402
from oa_exporter.adapters.dispatch.inline import InlineDispatcher  # noqa: E402
from oa_exporter.adapters.stores.local import LocalArtifactStore  # noqa: E402
from oa_exporter.adapters.telemetry.null import NullTelemetry  # noqa: E402
from oa_exporter.adapters.tsdb.prometheus import series_key  # noqa: E402
from oa_exporter.adapters.tsdb.replay import ReplayTsdb  # noqa: E402
from oa_exporter.bootstrap import engine_registry  # noqa: E402
from oa_exporter.core.domain import InstantVector, Model, ModelSpec, Rule, SeriesMatrix  # noqa: E402
from oa_exporter.core.presets import PRESETS  # noqa: E402
from oa_exporter.core.services.trainer import Trainer  # noqa: E402

DAY, HOUR = 86400.0, 3600.0
END = 1_701_302_400.0  # a midnight (UTC): the time of the fit, the last sample of each dataset
LEVEL = 99.0
SEED = 20261128
GENERATE_ROWS = 1024  # series generated at a time: the temporaries stay small next to the matrix
MEMORY_TARGET_MB = 4096.0


@dataclass(frozen=True)
class Dataset:
    """One resolution and window: `step` seconds between samples over `days`."""

    name: str
    step: float
    days: int

    @property
    def points(self) -> int:
        return int(self.days * DAY / self.step)

    @property
    def horizon(self) -> int:
        return int(HOUR / self.step)

    @property
    def start(self) -> float:
        return END - self.step * (self.points - 1)


DATASETS = (Dataset("5m", 300.0, 14), Dataset("1m", 60.0, 7))


def generate(data: Dataset, n: int, seed: int = SEED) -> np.ndarray:
    """n series on the dataset's grid: level + trend + daily and weekly cycles + noise + three spikes."""
    rng = np.random.default_rng(seed)
    base, trend = rng.uniform(50, 1000, n), rng.uniform(-0.2, 0.4, n)  # trend: share of the level per window
    day_amp, week_amp = rng.uniform(0.05, 0.4, n), rng.uniform(0.0, 0.2, n)  # shares of the level
    day_phase, week_phase = rng.uniform(0, 2 * np.pi, n), rng.uniform(0, 2 * np.pi, n)
    noise = rng.uniform(0.01, 0.05, n)
    spikes = rng.integers(data.points // 2, data.points, (n, 3))
    t = data.start + data.step * np.arange(data.points)
    ramp = np.linspace(0.0, 1.0, data.points)
    out = np.empty((n, data.points))
    for lo in range(0, n, GENERATE_ROWS):
        rows = slice(lo, min(lo + GENERATE_ROWS, n))
        b = base[rows, None]
        block = out[rows]
        block[:] = rng.standard_normal(block.shape)
        block *= noise[rows, None] * b
        block += b * (1 + trend[rows, None] * ramp)
        block += b * day_amp[rows, None] * np.sin(2 * np.pi * t / DAY + day_phase[rows, None])
        block += b * week_amp[rows, None] * np.sin(2 * np.pi * t / (7 * DAY) + week_phase[rows, None])
        np.put_along_axis(block, spikes[rows], np.take_along_axis(block, spikes[rows], 1)
                          + 8 * noise[rows, None] * b, axis=1)
    return out


def matrix(data: Dataset, values: np.ndarray) -> SeriesMatrix:
    series = labels(len(values))
    return SeriesMatrix([series_key(m) for m in series], series, data.start, data.step, values)


def rule(data: Dataset, model: ModelSpec, n: int) -> Rule:
    preset = PRESETS["default"]
    return Rule(name=f"bench_{data.name}", group="bench", expr=METRIC, step=data.step, model=model,
                train_window=data.points * data.step, train_every=preset.train_every, horizon=HOUR, level=LEVEL,
                min_history=preset.min_history, max_series=n)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclass(frozen=True)
class Spent:
    """Wall-clock seconds, and CPU seconds of this process and its finished children (CmdStan runs as one)."""

    wall: float
    cpu: float

    @staticmethod
    def now() -> Spent:
        own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return Spent(time.perf_counter(), own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime)

    def since(self) -> Spent:
        now = Spent.now()
        return Spent(now.wall - self.wall, now.cpu - self.cpu)


# --- ours, through the Trainer -----------------------------------------------------------------------------

async def train_once(trainer: Trainer, the_rule: Rule, data: Dataset) -> Model:
    """What a refit costs the daemon: query, fit, store; then the bands the Inferencer asks for."""
    model = await trainer.train(the_rule, END)
    engine = trainer.engines[the_rule.model.engine]
    bands = engine.predict(model, model.window_end + data.step, data.horizon, the_rule.level)
    assert bands.yhat.shape == (len(model.keys), data.horizon) and np.isfinite(bands.upper).all()
    return model


class Ours:
    """One rule over every series of `history`: a Trainer reading a ReplayTsdb, storing into a LocalArtifactStore
    in a temporary directory, run inline. One untimed training on entry (imports, the store's index)."""

    def __init__(self, data: Dataset, history: SeriesMatrix, model: ModelSpec):
        self.data, self.history, self.rule = data, history, rule(data, model, len(history.keys))
        self.times: list[Spent] = []

    async def __aenter__(self) -> Ours:
        self.directory = tempfile.TemporaryDirectory(prefix="oa-bench-train-")
        self.store = LocalArtifactStore(self.directory.name)
        self.trainer = Trainer(ReplayTsdb(self.history), engine_registry(), self.store, InlineDispatcher(),
                               NullTelemetry())
        self.first = await train_once(self.trainer, self.rule, self.data)
        assert self.first.artifact and int(np.count_nonzero(self.first.fitted.ok)) == len(self.history.keys)
        return self

    async def run(self) -> None:
        gc.collect()
        started = Spent.now()
        await train_once(self.trainer, self.rule, self.data)
        self.times.append(started.since())

    def median(self) -> Spent:
        return Spent(float(np.median([t.wall for t in self.times])), float(np.median([t.cpu for t in self.times])))

    async def __aexit__(self, *exc: object) -> None:
        try:
            stored = await self.store.list(self.rule.name)  # each run rewrote the model (same rule, same time)
            assert [info.id for info in stored] == [self.first.artifact]
        finally:
            await self.store.close()
            self.directory.cleanup()


# --- Prophet, the baseline ---------------------------------------------------------------------------------

def prophet_fit(data: Dataset, y: np.ndarray) -> None:
    import pandas as pd
    from prophet import Prophet

    frame = pd.DataFrame({"ds": pd.to_datetime(data.start + data.step * np.arange(len(y)), unit="s"), "y": y})
    model = Prophet(daily_seasonality=True, weekly_seasonality=True, yearly_seasonality=False, interval_width=0.99)
    model.fit(frame)
    future = model.make_future_dataframe(periods=data.horizon, freq=f"{int(data.step)}s", include_history=False)
    forecast = model.predict(future)
    assert len(forecast) == data.horizon and forecast["yhat_upper"].notna().all()


def prophet(data: Dataset, values: np.ndarray) -> Spent:
    """Seconds for fit + 1 h forecast of every row, one after the other."""
    started = Spent.now()
    for y in values:
        prophet_fit(data, y)
    return started.since()


# --- StatsForecast MSTL, for reference ---------------------------------------------------------------------

def mstl_fit(data: Dataset, rows: np.ndarray) -> None:
    """MSTL(daily season) fit + 1 h forecast at 99 % of every row, StatsForecast with n_jobs=1."""
    import pandas as pd
    from statsforecast import StatsForecast
    from statsforecast.models import MSTL

    ds = pd.to_datetime(data.start + data.step * np.arange(rows.shape[1]), unit="s")
    frame = pd.DataFrame({"unique_id": np.repeat(np.arange(len(rows)), rows.shape[1]),
                          "ds": np.tile(ds, len(rows)), "y": rows.reshape(-1)})
    forecaster = StatsForecast(models=[MSTL(season_length=[int(DAY / data.step)])], freq=f"{int(data.step)}s",
                               n_jobs=1)
    forecast = forecaster.fit(frame).predict(h=data.horizon, level=[int(LEVEL)])
    assert len(forecast) == len(rows) * data.horizon


def mstl(data: Dataset, rows: np.ndarray) -> Spent:
    """Seconds for MSTL on `rows` (none: nothing spent)."""
    started = Spent.now()
    if len(rows):
        mstl_fit(data, rows)
    return started.since()


# --- memory -------------------------------------------------------------------------------------------------

class GeneratingTsdb:
    """A TsdbClient whose range query builds the generated dataset on demand: the data stays 'in the TSDB'."""

    def __init__(self, data: Dataset, n: int):
        self.data, self.n = data, n
        self.seconds = 0.0  # spent generating: the TSDB's work, not the daemon's

    async def query_range(self, expr: str, start: float, end: float, step: float) -> SeriesMatrix:
        assert (start, end, step) == (self.data.start, END, self.data.step), (start, end, step)
        started = time.perf_counter()
        result = matrix(self.data, generate(self.data, self.n))
        self.seconds += time.perf_counter() - started
        return result

    async def query(self, expr: str, at: float) -> InstantVector:
        raise NotImplementedError("training asks range queries only")

    async def close(self) -> None:
        pass


async def memory(n: int) -> dict[str, float]:
    data = DATASETS[0]
    the_rule = rule(data, PRESETS["default"].model, n)
    engine_registry()  # imports before the baseline reading
    before = peak_rss_mb()
    with tempfile.TemporaryDirectory(prefix="oa-bench-train-") as directory:
        store = LocalArtifactStore(directory)
        tsdb = GeneratingTsdb(data, n)
        trainer = Trainer(tsdb, engine_registry(), store, InlineDispatcher(), NullTelemetry())
        try:
            started = time.perf_counter()
            model = await train_once(trainer, the_rule, data)
            seconds = time.perf_counter() - started - tsdb.seconds
            size = (Path(directory) / str(model.artifact)).stat().st_size
        finally:
            await store.close()
    ready = int(np.count_nonzero(model.fitted.ok))
    query_mb = n * data.points * 8 / 2**20
    peak = peak_rss_mb()
    print(f"{n} series x {data.points} points (5 min x 14 days) in one rule, preset default: trained in "
          f"{seconds:.1f} s ({n / seconds:.0f} series/s; {tsdb.seconds:.1f} s more generating the data), "
          f"{ready} ready, artifact {size / 2**20:.1f} MB")
    print(f"peak RSS {peak:.0f} MB (before the training {before:.0f} MB; the query result alone is "
          f"{query_mb:.0f} MB of float64); target <= {MEMORY_TARGET_MB:.0f} MB: "
          f"{'fits' if peak <= MEMORY_TARGET_MB else 'DOES NOT FIT'}")
    return {"memory_series": n, "points": data.points, "peak_rss_mb": round(peak, 1),
            "rss_before_mb": round(before, 1), "seconds": round(seconds, 2),
            "generation_seconds": round(tsdb.seconds, 2), "series_ready": ready,
            "fits_4gb": peak <= MEMORY_TARGET_MB}


# --- the run ------------------------------------------------------------------------------------------------

async def interleaved(data: Dataset, values: np.ndarray, args: argparse.Namespace) -> tuple[Spent, ...]:
    """`repeats` rounds, each: a slice of Prophet's series, a slice of MSTL's, one training of ours per model;
    other load on the machine then falls on all of them alike. Prophet, MSTL: total seconds; ours: median."""
    for name in ("cmdstanpy", "prophet", "prophet.plot"):
        logging.getLogger(name).disabled = True
    prophet_fit(data, values[0])  # warm: imports, the Stan model
    if args.mstl_series:
        mstl_fit(data, values[:1, -int(3 * DAY / data.step):])  # warm: numba compiles on the first fit
    history = matrix(data, values)
    baselines: list[tuple[Spent, Spent]] = []
    async with Ours(data, history, PRESETS["default"].model) as default, \
            Ours(data, history, ModelSpec("statsforecast", "SeasonalProfile", {})) as plain:
        for prophet_rows, mstl_rows in zip(np.array_split(values[: args.prophet_series], args.repeats),
                                           np.array_split(values[: args.mstl_series], args.repeats), strict=True):
            baselines.append((prophet(data, prophet_rows), mstl(data, mstl_rows)))
            await default.run()
            await plain.run()
    prophet_s, mstl_s = (Spent(sum(b[k].wall for b in baselines), sum(b[k].cpu for b in baselines)) for k in (0, 1))
    return prophet_s, mstl_s, default.median(), plain.median()


def measure(data: Dataset, args: argparse.Namespace) -> dict[str, float]:
    values = generate(data, args.series)
    prophet_s, mstl_s, default, plain = asyncio.run(interleaved(data, values, args))
    rows = {  # name: (series, seconds)
        f"Prophet {metadata.version('prophet')}, daily + weekly, interval_width 0.99": (args.prophet_series, prophet_s),
        "ours: preset default, Trainer -> LocalArtifactStore": (args.series, default),
        "ours: plain defaults (no preset), Trainer -> store": (args.series, plain),
        f"StatsForecast MSTL([{int(DAY / data.step)}]), subset, reference": (args.mstl_series, mstl_s),
    }
    wall = {name: n / spent.wall for name, (n, spent) in rows.items()}  # series/s
    cpu = {name: n / spent.cpu for name, (n, spent) in rows.items()}  # series per CPU second
    base, ours_name, plain_name, mstl_name = rows
    print(f"\n{data.name}: {data.points} points a series ({int(data.step)} s x {data.days} days), "
          f"fit + {data.horizon}-step forecast at {LEVEL:g} %, one core")
    print(f"  {'model':56} {'series':>6} {'wall s':>8} {'series/s':>9} {'vs Prophet':>10} {'cpu s':>8} {'vs (cpu)':>9}")
    for name, (n, spent) in rows.items():
        print(f"  {name:56} {n:6d} {spent.wall:8.3f} {wall[name]:9.1f} {wall[name] / wall[base]:9.1f}x "
              f"{spent.cpu:8.3f} {cpu[name] / cpu[base]:8.1f}x")
    return {f"ratio_vs_prophet_{data.name}": round(wall[ours_name] / wall[base], 1),
            f"series_per_s_{data.name}": round(wall[ours_name], 1),
            f"cpu_ratio_vs_prophet_{data.name}": round(cpu[ours_name] / cpu[base], 1),
            f"prophet_series_per_s_{data.name}": round(wall[base], 3),
            f"plain_series_per_s_{data.name}": round(wall[plain_name], 1),
            f"plain_ratio_vs_prophet_{data.name}": round(wall[plain_name] / wall[base], 1),
            f"mstl_series_per_s_{data.name}": round(wall[mstl_name], 3),
            f"mstl_ratio_vs_prophet_{data.name}": round(wall[mstl_name] / wall[base], 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--series", type=int, default=2000, help="series trained through the Trainer (>= 200)")
    parser.add_argument("--prophet-series", type=int, default=20, help="series fitted by Prophet (>= 20)")
    parser.add_argument("--mstl-series", type=int, default=3, help="series fitted by MSTL (0: skip it)")
    parser.add_argument("--repeats", type=int, default=5, help="timed trainings of ours (the median is kept)")
    parser.add_argument("--quick", action="store_true", help="200 / 5 / 1 series, 3 repeats: a smoke run")
    parser.add_argument("--memory", type=int, metavar="N", help="only: peak RSS of training N series (5-minute set)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    if args.memory:
        print(json.dumps(asyncio.run(memory(args.memory))))
        return
    if args.quick:
        args.series, args.prophet_series, args.mstl_series, args.repeats = 200, 5, 1, 3
    print(f"prophet {metadata.version('prophet')}, statsforecast {metadata.version('statsforecast')}, "
          f"numpy {np.__version__}; seed {SEED}; MSTL on the first {args.mstl_series} series only (seconds each)")
    result: dict[str, float] = {}
    for data in DATASETS:
        result.update(measure(data, args))
    result.update(series=args.series, prophet_series=args.prophet_series, mstl_series=args.mstl_series,
                  rss_mb=round(peak_rss_mb(), 1))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
