"""The demo's own rules on the demo's series, replayed through the daemon's services: calm series never page,
at any time of day, and every scheduled anomaly does. Deterministic: the series are a function of time."""

from __future__ import annotations

import asyncio
from importlib import resources

import numpy as np
import pytest

from oa_exporter.bootstrap import backtester, config_store
from oa_exporter.core.domain import SeriesMatrix
from oa_exporter.core.services.backtester import Samples
from oa_exporter.demo.signals import ANOMALY_LENGTH, ANOMALY_START, HISTORY, DemoSignals
from oa_exporter.demo.source import select
from oa_exporter.settings import Settings

STEP = 60.0
CYCLE = 15.0  # the demo groups' interval


def demo_rules():
    with resources.as_file(resources.files("oa_exporter.demo").joinpath("rules.yaml")) as path:
        return config_store(Settings(rules=(str(path),))).load().rules


def replay(rule, signals: DemoSignals, start: float, end: float):
    rows = select(signals, rule.expr)
    grid = np.arange(start - HISTORY, end + STEP, STEP)
    keys = [repr(signals.series[r].metric).encode() for r in rows]
    labels = [signals.series[r].metric for r in rows]
    history = SeriesMatrix(keys, labels, float(grid[0]), STEP, signals.values(rows, grid))
    times = np.arange(start, end, CYCLE)
    samples = Samples(keys, labels, times, signals.values(rows, times))
    return rows, times, asyncio.run(backtester(history).replay(rule, samples, interval=CYCLE))


@pytest.mark.parametrize("hour", [0, 9, 14])  # night, the morning ramp, the busiest hour
def test_calm_demo_series_never_page(hour):
    day = 1_800_000_000.0 - 1_800_000_000.0 % 86400 + 3 * 86400  # a Monday
    start = day + hour * 3600.0
    signals = DemoSignals(start + 10 * 86400)  # the anomalies are scheduled long after
    for rule in demo_rules():
        _, _, result = replay(rule, signals, start, start + 2 * 3600)
        # from the cycle after the first fit on, every sample is scored: 15 days are enough history
        assert np.isfinite(result.score[:, 1:]).all(), rule.name
        assert np.nanmax(result.score) <= 1, (rule.name, np.nanmax(result.score))


def test_every_scheduled_anomaly_pages_while_it_lasts():
    started = 1_800_000_000.0 - 1_800_000_000.0 % 86400 + 4 * 86400 + 11 * 3600
    signals = DemoSignals(started)
    end = started + ANOMALY_START + ANOMALY_LENGTH * len(signals.series)
    for rule in demo_rules():
        rows, times, result = replay(rule, signals, started, end)
        truth = signals.anomalous(rows, times)
        paged = result.score > 1
        assert not (paged & ~truth).any(), rule.name  # no false positive
        for i in range(len(rows)):  # each series pages during its turn (the first minute may be smoothed)
            assert paged[i, truth[i]].mean() > 0.5, (rule.name, signals.series[rows[i]].metric)
