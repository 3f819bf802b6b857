"""Generated metric histories with known anomalies, for tests against real servers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

DAY = 86400.0


@dataclass
class Scenario:
    """Series of one metric with a daily cycle and noise; some get a spike in their last samples."""

    end: float
    metric: str = "oa_test_requests"
    series: int = 20
    days: float = 3.0
    step: float = 60.0
    spiked: tuple[int, ...] = (0, 1, 2)
    spike_points: int = 3
    constant: int | None = 19
    gappy: int | None = 18
    short: int | None = 17
    seed: int = 7
    data: list = field(default_factory=list)

    def build(self) -> list[tuple[str, dict[str, str], np.ndarray, np.ndarray]]:
        rng = np.random.default_rng(self.seed)
        times = self.end - self.step * np.arange(int(self.days * DAY / self.step))[::-1]
        out = []
        for i in range(self.series):
            base = 100 + 10 * i + 20 * np.sin(2 * np.pi * times / DAY + i)
            values = base + rng.normal(0, 1.0, len(times))
            if i in self.spiked:
                values[-self.spike_points :] += 30.0
            if i == self.constant:
                values = np.full(len(times), 42.0)
            if i == self.gappy:
                values[len(times) // 3 : len(times) // 3 + 300] = np.nan
                values[-200:-100] = np.nan
            if i == self.short:
                values[: -int(0.25 * DAY / self.step)] = np.nan
            out.append((self.metric, {"instance": f"host-{i:02d}", "job": "synthetic"}, times, values))
        self.data = out
        return out


# Families of series with known answers, for detection budgets (tests/unit/test_synthetic_families.py) and
# bench/synthetic.py. Each is generated from a fixed seed on a 5-minute grid; `scale` is the size of its
# normal variation, the unit injected anomalies are stated in.

STEP = 300.0
PER_DAY = int(DAY / STEP)
WARMUP_DAYS = 3.0  # excursions are counted after it (the default preset scores from 3 days of history on)


@dataclass(frozen=True)
class Family:
    """A kind of series: `make(rng, t)` gives its values at times t (seconds from its start)."""

    name: str
    describe: str
    make: Callable[[np.random.Generator, np.ndarray], np.ndarray]
    scale: float  # its normal variation (noise σ, increment σ, ...): injected anomalies are multiples of it
    lifetime: float = 0.0  # days the series exists, at the end of the replay (0: all of it); "starts today"


def _daily(t: np.ndarray, phase: float = 0.0) -> np.ndarray:
    return np.sin(2 * np.pi * t / DAY + phase)


FAMILIES = {f.name: f for f in [
    Family("random_walk", "a level drifting by N(0, 0.5) per step, no cycle",
           lambda rng, t: 100 + np.cumsum(rng.normal(0, 0.5, len(t))), 0.5),
    Family("slow_ramp", "a level rising by 50σ over 21 days, N(0, 1) noise, no cycle",
           lambda rng, t: 100 + 50 * t / (21 * DAY) + rng.normal(0, 1, len(t)), 1.0),
    Family("white_noise", "N(100, 5), no cycle",
           lambda rng, t: 100 + rng.normal(0, 5, len(t)), 5.0),
    Family("growing_cycle", "a daily cycle whose amplitude grows from 10 to 40 over 21 days, N(0, 1) noise",
           lambda rng, t: 100 + (10 + 30 * t / (21 * DAY)) * _daily(t) + rng.normal(0, 1, len(t)), 1.0),
    Family("lasting_step", "a daily cycle (amplitude 20), N(0, 1) noise, +8σ for good from day 10",
           lambda rng, t: 100 + 20 * _daily(t) + rng.normal(0, 1, len(t)) + 8.0 * (t >= 10 * DAY), 1.0),
    Family("sparse_counter", "a rate of rare events: Poisson(0.05) per step",
           lambda rng, t: rng.poisson(0.05, len(t)).astype(float), 0.25),
    Family("zero_inflated", "a counter idle 60 % of the time, else Poisson(10 + 5 · daily cycle)",
           lambda rng, t: np.where(rng.random(len(t)) < 0.6, 0.0, rng.poisson(10 + 5 * (1 + _daily(t)))), 5.0),
    Family("heavy_tailed", "a daily cycle (amplitude 10) with Student-t (2 degrees of freedom) bursts, scale 2",
           lambda rng, t: 100 + 10 * _daily(t) + 2 * rng.standard_t(2, len(t)), 2.0),
    Family("starts_today", "a daily cycle (amplitude 20), N(0, 1) noise, present for the last 2 days only",
           lambda rng, t: 100 + 20 * _daily(t) + rng.normal(0, 1, len(t)), 1.0, lifetime=2.0),
]}


@dataclass(frozen=True)
class Injected:
    """Anomalies added to a family: `size` × its scale, upwards, for `length` samples at each onset (indexes)."""

    size: float
    length: int
    onsets: tuple[int, ...]


@dataclass(frozen=True)
class Generated:
    """Series of one family on one grid: values[i] is series i (NaN before it exists)."""

    family: Family
    times: np.ndarray
    values: np.ndarray
    first: int  # the first index that counts (the series' start plus the warm-up)
    injected: Injected | None = None


def generate(family: Family, series: int = 5, days: float = 21.0, seed: int = 1, size: float | None = None,
             length: int = 6, start: float = 1_700_000_000.0) -> Generated:
    """`series` series of `family`, seeds seed, seed+1, ...; with `size`, anomalies of `size` × scale for
    `length` samples injected at fixed times after the warm-up (about every 4 days; twice on a young series)."""
    times = start + STEP * np.arange(int(days * PER_DAY))
    begin = max(len(times) - int(family.lifetime * PER_DAY), 0) if family.lifetime else 0
    values = np.full((series, len(times)), np.nan)
    for i in range(series):
        rng = np.random.default_rng(seed + i)
        values[i, begin:] = family.make(rng, times[begin:] - times[0])
    first = begin if family.lifetime else int(WARMUP_DAYS * PER_DAY)
    injected = None
    if size is not None:
        spacing = (len(times) - first) // (3 if family.lifetime else 5)
        onsets = tuple(range(first + spacing // 2, len(times) - length, spacing))
        for onset in onsets:
            values[:, onset : onset + length] += size * family.scale
        injected = Injected(size, length, onsets)
    return Generated(family, times, values, first, injected)


def excursions(score: np.ndarray, first: int) -> np.ndarray:
    """Per series (rows), the runs of consecutive samples scoring above 1 that begin at or after `first`."""
    paging = np.nan_to_num(score, nan=0.0) > 1.0
    begins = paging & ~np.pad(paging, ((0, 0), (1, 0)))[:, :-1]
    return np.count_nonzero(begins[:, first:], axis=1)


def delays(score: np.ndarray, injected: Injected) -> np.ndarray:
    """Per series and injected anomaly, samples from its onset to its first score above 1 (-1: not flagged
    while it lasted)."""
    out = np.full((score.shape[0], len(injected.onsets)), -1)
    for j, onset in enumerate(injected.onsets):
        flagged = np.nan_to_num(score[:, onset : onset + injected.length], nan=0.0) > 1.0
        out[:, j] = np.where(flagged.any(axis=1), np.argmax(flagged, axis=1), -1)
    return out


def default_rule(preset: str = "default", step: float = STEP):  # noqa: ANN201 - a Rule
    """The rule `oa-exporter backtest` replays a family under: the preset, stepped at the grid."""
    from oa_exporter.bootstrap import engine_registry, model_checker
    from oa_exporter.core.domain import ModelSpec
    from oa_exporter.core.rules import SourceDocument, build_rule_set

    document = {"groups": [{"name": "synthetic", "interval": f"{step:g}s", "rules": [
        {"anomaly": "synthetic", "expr": "synthetic", "preset": preset, "step": f"{step:g}s"}]}]}
    return build_rule_set([SourceDocument("synthetic", document)], ModelSpec("statsforecast", "SeasonalProfile"),
                          check_model=model_checker(engine_registry())).rules[0]


def replay(generated: Generated, rule, workers: int = 1) -> np.ndarray:  # noqa: ANN001 - a Rule
    """The scores `oa-exporter backtest` gives every sample of the family's series under `rule` (NaN: not
    scored), through its own jobs: the daemon's Trainer, Inferencer and refit schedule, causal."""
    from oa_exporter.core.domain import SeriesMatrix
    from oa_exporter.core.services.backtester import Samples
    from oa_exporter.entrypoints.backtest import Job, replay_all

    n = len(generated.values)
    labels = [{"family": generated.family.name, "series": str(i)} for i in range(n)]
    keys = [f'{{"family":"{generated.family.name}","series":"{i}"}}'.encode() for i in range(n)]
    jobs = []
    for rows in np.array_split(np.arange(n), max(min(workers, n), 1)):
        part = generated.values[rows]
        picked = ([keys[i] for i in rows], [labels[i] for i in rows])
        history = SeriesMatrix(*picked, float(generated.times[0]), STEP, part)
        jobs.append((rows, Job(rule, history, Samples(*picked, generated.times, part))))
    score = np.full(generated.values.shape, np.nan)
    by_job = {id(job): rows for rows, job in jobs}
    for job, result in replay_all([job for _, job in jobs], workers):
        score[by_job[id(job)]] = result.score
    return score
