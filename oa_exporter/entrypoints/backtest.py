"""oa-exporter backtest: what the rules would have flagged, replayed over Prometheus history or CSV files.

    oa-exporter backtest --rules rules.yaml [--rule NAME] --from 2026-11-01 --to now [--prometheus-url URL]
    oa-exporter backtest --rules rules.yaml --csv a.csv b.csv

The history is read once; then every series is replayed cycle by cycle through the daemon's own Trainer,
Inferencer and refit schedule (core/services/backtester.py), in worker processes, a chunk of series per
job. Against Prometheus the cycles are the rule's step grid from --from to --to, and the first model is
fitted at the first cycle on the train.window before it; with --csv every row is a cycle and is scored at
its own timestamp (--from/--to narrow the rows scored, not the history trained on).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import multiprocessing
import os
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from ..core.domain import Rule, RuleGroup, RuleSet, SeriesMatrix
from ..core.durations import parse_duration
from ..core.errors import OAError
from ..core.services.backtester import Replay, Samples
from ..settings import Settings
from .flags import add_setting_flag

log = logging.getLogger("oa_exporter")
SETTINGS = ("rules", "model_engine", "log_level", "log_format")  # flags of `run` that `backtest` shares


@dataclass(frozen=True)
class Job:
    """One unit of work for a worker: a rule, the history its Trainer may read, the cycles to score."""

    rule: Rule
    history: SeriesMatrix
    samples: Samples
    stamps: list[str] | None = None  # the CSV's own timestamps, written back as they were

    @property
    def points(self) -> int:
        return int(self.samples.values.size)


def add_parser(commands: Any) -> None:
    """Register `oa-exporter backtest`."""
    parser = commands.add_parser(
        "backtest", help="replay rules over past data: what would have been flagged",
        description="Replay rules over Prometheus history (--from/--to) or timestamp,value CSV files (--csv) "
                    "with the daemon's own fitting and scoring; write per-series CSVs, plots and a summary.")
    for f in fields(Settings):
        if f.name in SETTINGS or f.name.startswith("query_") or f.metadata["flag"].startswith("--prometheus"):
            add_setting_flag(parser, f)
    parser.add_argument("--rule", action="append", dest="only", help="replay only this rule (repeatable)")
    parser.add_argument("--from", dest="start", help="first time to score: RFC 3339, unix seconds, now-7d")
    parser.add_argument("--to", dest="end", default=None,
                        help="last time to score (default: now; with --csv, the end of the files)")
    parser.add_argument("--csv", nargs="+", default=None, help="timestamp,value files to replay instead")
    parser.add_argument("--out", default="backtest", help="directory for the results (default ./backtest)")
    parser.add_argument("--jobs", type=int, default=0, help="worker processes (default: one per core)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress bar on stderr (default: when stderr is a terminal)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Handler of `oa-exporter backtest`; returns the exit code."""
    from ..adapters.reports.backtest_files import BacktestReport
    from .logs import configure

    settings = Settings.from_env().with_overrides(
        {f.name: _typed(getattr(args, f.name, None)) for f in fields(Settings)})
    configure(settings.log_level, settings.log_format)
    try:
        rules = _rules(settings, args.only)
        now = time.time()
        start = _time(args.start, now) if args.start else None
        end = _time(args.end, now) if args.end else math.inf if args.csv else now
        if args.csv:
            jobs = list(csv_jobs(rules, args.csv, start, end))
        elif start is None:
            raise OAError("--from is required with Prometheus (or give --csv files)")
        else:
            jobs = asyncio.run(prometheus_jobs(settings, rules, start, end, args.jobs or _cores()))
    except (OAError, OSError, ValueError) as e:
        log.error("backtest: %s", e)
        return 1
    report = BacktestReport(Path(args.out))
    show = args.progress if args.progress is not None else sys.stderr.isatty()
    with Progress(sum(j.points for j in jobs), sys.stderr if show else None) as progress:
        for job, replay in replay_all(jobs, args.jobs or _cores()):
            report.add(replay, job.stamps)
            progress.advance(job.points)
    report.finish()
    sys.stdout.write(report.text())
    return 0


def replay_all(jobs: Sequence[Job], workers: int) -> Iterator[tuple[Job, Replay]]:
    """Replay every job, in `workers` processes (in this one when 1), yielding results as they finish."""
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            yield job, replay_job(job)
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=context) as pool:
        # the longest first: the pool ends together instead of waiting on one long straggler
        pending: dict[Future[Replay], Job] = {
            pool.submit(replay_job, job): job for job in sorted(jobs, key=lambda j: -j.points)}
        for future in as_completed(pending):
            yield pending[future], future.result()


def replay_job(job: Job) -> Replay:
    """Replay one job (in a worker process): the daemon's services, wired over the job's history."""
    from ..bootstrap import backtester

    return asyncio.run(backtester(job.history).replay(job.rule, job.samples))


def csv_jobs(rules: RuleSet, paths: Iterable[str], start: float | None, end: float) -> Iterator[Job]:
    """One job per rule and file: the file's rows are the cycles, scored at their own timestamps."""
    from ..adapters.tsdb.csv_files import read_csv

    files = [read_csv(p) for p in paths]
    for rule in rules.rules:
        for series in files:
            scored = (series.times <= end) & (series.times >= (start if start is not None else -math.inf))
            samples = Samples([series.key], [series.labels], series.times[scored], series.values[None, scored])
            stamps = [s for s, keep in zip(series.stamps, scored.tolist()) if keep]
            yield Job(rule, series.history(rule.step), samples, stamps)


async def prometheus_jobs(settings: Settings, rules: RuleSet, start: float, end: float, chunks: int) -> list[Job]:
    """Each rule's history from the TSDB in one range query, split into `chunks` jobs of series."""
    from ..bootstrap import tsdb_client

    tsdb = tsdb_client(settings)
    jobs: list[Job] = []
    try:
        for rule in rules.rules:
            first, last = math.ceil(start / rule.step) * rule.step, math.floor(end / rule.step) * rule.step
            if last < first:
                raise OAError(f"rule {rule.name}: no {rule.step:g}s step between --from and --to")
            history = await tsdb.query_range(rule.expr, first - rule.train_window + rule.step, last, rule.step)
            if len(history.keys) > rule.max_series:
                raise OAError(f"rule {rule.name}: expr returns {len(history.keys)} series, above max_series "
                              f"{rule.max_series}")
            columns = slice(int(round((first - history.start) / rule.step)), None)
            jobs.extend(_split(rule, history, columns, chunks))
            log.info("backtest: rule %s: %d series over %d cycles", rule.name, len(history.keys),
                     history.values[:, columns].shape[1])
    finally:
        await tsdb.close()
    return jobs


def _split(rule: Rule, history: SeriesMatrix, columns: slice, chunks: int) -> Iterator[Job]:
    for rows in np.array_split(np.arange(len(history.keys)), max(min(chunks, len(history.keys)), 1)):
        if not len(rows):
            continue
        part = history.select(rows)
        samples = Samples(part.keys, part.labels, part.timestamps[columns], part.values[:, columns])
        yield Job(rule, part, samples)


class Progress:
    """A one-line progress bar: points replayed, elapsed and remaining time; silent without a stream."""

    def __init__(self, total: int, stream: TextIO | None, width: int = 30):
        self.total, self.stream, self.width = max(total, 1), stream, width
        self.done, self.started, self._drawn = 0, time.monotonic(), 0.0

    def advance(self, points: int) -> None:
        self.done += points
        if self.stream is not None and (time.monotonic() - self._drawn > 0.2 or self.done >= self.total):
            self._draw()

    def _draw(self) -> None:
        assert self.stream is not None
        self._drawn = time.monotonic()
        fraction = min(self.done / self.total, 1.0)
        elapsed = self._drawn - self.started
        left = elapsed / fraction - elapsed if fraction > 0 else 0.0
        bar = "#" * int(fraction * self.width) + "-" * (self.width - int(fraction * self.width))
        self.stream.write(f"\rbacktest [{bar}] {fraction:4.0%} {self.done:,}/{self.total:,} points "
                          f"{_clock(elapsed)} elapsed, ~{_clock(left)} left ")
        self.stream.flush()

    def __enter__(self) -> Progress:
        if self.stream is not None:
            self._draw()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.stream is not None:
            self.stream.write("\n")


def _rules(settings: Settings, only: list[str] | None) -> RuleSet:
    from ..bootstrap import config_store

    if not settings.rules:
        raise OAError("no rules given: pass --rules FILE|DIR|GLOB")
    rules = config_store(settings).load()
    if only:
        unknown = sorted(set(only) - {r.name for r in rules.rules})
        if unknown:
            raise OAError(f"no rule named {', '.join(unknown)} in {', '.join(settings.rules)}")
        rules = RuleSet(tuple(RuleGroup(g.name, g.interval, tuple(r for r in g.rules if r.name in only), g.file)
                              for g in rules.groups))
    return rules


def _time(text: str, now: float) -> float:
    """RFC 3339 / ISO 8601, unix seconds, `now`, or `now-<duration>`."""
    from ..adapters.tsdb.csv_files import parse_time

    text = text.strip()
    if text == "now":
        return now
    if text.startswith("now-"):
        return now - parse_duration(text[4:])
    return parse_time(text)


def _typed(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _cores() -> int:
    return max(os.cpu_count() or 1, 1)


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"

