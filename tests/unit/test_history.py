"""History read once: refits replayed with the history store and with full-window reads give the same matrix
and the same scores; a refit reads only what is new; restarts resume; changes and budgets are honoured."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

import numpy as np
import pytest

from oa_exporter.adapters.stores.history_local import LocalHistoryStore
from oa_exporter.adapters.stores.noop import NoopArtifactStore
from oa_exporter.adapters.telemetry.null import NullTelemetry
from oa_exporter.bootstrap import engine_registry
from oa_exporter.core.domain import Rule, SeriesMatrix
from oa_exporter.core.presets import PRESETS
from oa_exporter.core.scoring import anomaly_score
from oa_exporter.core.services.history import HistoryReader
from oa_exporter.core.services.trainer import Trainer
from tests.unit.fakes import DAY, FakeClock, FakeSeries, FakeTsdb, InlineDispatcher, seasonal_series

STEP = 60.0
T0 = 1_800_000_000.0  # a multiple of the step
PRESET = PRESETS["default"]
RULE = Rule("load", "g", "load", STEP, PRESET.model, train_window=3 * DAY, train_every=120.0, level=PRESET.level,
            min_history=DAY)


class Counting:
    """A TsdbClient in front of another, counting the samples (series × points) its range reads return."""

    def __init__(self, tsdb: FakeTsdb):
        self.tsdb, self.samples, self.reads = tsdb, 0, 0

    async def query_range(self, expr: str, start: float, end: float, step: float) -> SeriesMatrix:
        matrix = await self.tsdb.query_range(expr, start, end, step)
        self.samples += matrix.values.size
        self.reads += 1
        return matrix

    async def query(self, expr, at):
        return await self.tsdb.query(expr, at)

    async def close(self) -> None:
        pass


def churning_tsdb() -> FakeTsdb:
    """20 series over 4 days; one with a gap, one born late, one that ages out of the window."""
    series = seasonal_series("load", 20, T0 - 4 * DAY, T0 + DAY, STEP)
    series[3].values[2000:2300] = np.nan
    born = series[4]
    born.values[born.times < T0 - 3600] = np.nan  # appears an hour before the first fit
    late = FakeSeries({"__name__": "load", "instance": "late", "job": "fake"}, series[0].times.copy(),
                      series[0].values.copy() + 5)
    late.values[late.times < T0 + 1800] = np.nan  # appears half an hour after the first fit
    gone = series[5]
    gone.values[gone.times > T0 - 3 * DAY + 1800] = np.nan  # its last sample leaves the window after ~30 min
    return FakeTsdb({"load": [*series, late]})


def window(now: float) -> tuple[float, float]:
    end = np.floor(now / STEP) * STEP
    return end - RULE.train_window + STEP, end


def by_key(matrix: SeriesMatrix) -> dict[bytes, np.ndarray]:
    return dict(zip(matrix.keys, matrix.values, strict=True))


async def test_every_refit_reads_the_matrix_a_full_window_read_returns(tmp_path):
    tsdb, clock = churning_tsdb(), FakeClock(T0)
    reader = HistoryReader(tsdb, LocalHistoryStore(tmp_path, 2**30), 120.0, clock)
    backfilled = FakeSeries({"__name__": "load", "instance": "backfilled", "job": "fake"},
                            tsdb.data["load"][1].times, tsdb.data["load"][1].values - 7)
    for refit in range(40):  # every 2 minutes for 80 minutes: the late series is born, the gone one ages out
        clock.now = T0 + 120 * refit
        if refit == 20:  # a series with 4 days of history shows up at once
            tsdb.data["load"].append(backfilled)
        start, end = window(clock.now)
        kept, full = await reader.read(RULE, start, end), await tsdb.query_range("load", start, end, STEP)
        assert kept.start == full.start and kept.values.shape[1] == full.values.shape[1]
        assert set(kept.keys) == set(full.keys), refit
        expected = by_key(full)
        for key, row in by_key(kept).items():
            np.testing.assert_array_equal(row, expected[key])
    instances = {labels["instance"] for labels in kept.labels}
    assert {"late", "backfilled"} <= instances and "host-05" not in instances  # born, backfilled, aged out


async def test_scores_equal_those_of_full_window_refits(tmp_path):
    tsdb, clock = churning_tsdb(), FakeClock(T0)
    engines = engine_registry()
    reader = HistoryReader(tsdb, LocalHistoryStore(tmp_path, 2**30), 120.0, clock)
    kept = Trainer(tsdb, engines, NoopArtifactStore(), InlineDispatcher(), NullTelemetry(), clock, history=reader)
    full = Trainer(tsdb, engines, NoopArtifactStore(), InlineDispatcher(), NullTelemetry(), clock)
    engine = engines[RULE.model.engine]
    for refit in range(0, 40, 3):
        clock.now = T0 + 120 * refit
        bands = {}
        for name, trainer in (("kept", kept), ("full", full)):
            model = await trainer.train(RULE, clock.now)
            predicted = engine.predict(model, model.window_end + STEP, 30, RULE.level)
            bands[name] = {key: (predicted.yhat[i], predicted.lower[i], predicted.upper[i])
                           for i, key in enumerate(model.keys)}
        assert bands["kept"].keys() == bands["full"].keys()
        for key, (yhat, lower, upper) in bands["full"].items():
            k_yhat, k_lower, k_upper = bands["kept"][key]
            y = yhat + np.linspace(-50, 50, len(yhat))
            np.testing.assert_allclose(anomaly_score(y, k_yhat, k_lower, k_upper),
                                       anomaly_score(y, yhat, lower, upper), rtol=0, atol=1e-9)
            np.testing.assert_allclose(k_upper, upper, rtol=0, atol=1e-9)


async def test_a_refit_reads_only_what_arrived_plus_the_overlap_and_a_restart_resumes(tmp_path):
    tsdb = FakeTsdb({"load": seasonal_series("load", 20, T0 - 4 * DAY, T0 + DAY, STEP)})
    counting, clock = Counting(tsdb), FakeClock(T0)
    reader = HistoryReader(counting, LocalHistoryStore(tmp_path, 2**30), 120.0, clock)
    await reader.read(RULE, *window(T0))
    assert counting.samples == 20 * 4320  # the first fit reads the whole window once
    counting.samples = 0
    for refit in range(1, 6):
        clock.now = T0 + 120 * refit
        await reader.read(RULE, *window(clock.now))
    arrived = 20 * 2 * 5  # two new points a series per refit
    assert counting.samples <= 3 * arrived  # 2 new + 2 overlap columns: 2x
    await reader.settle()  # its last write, which runs beside the fit
    restarted = HistoryReader(counting, LocalHistoryStore(tmp_path, 2**30), 120.0, clock)
    counting.samples, clock.now = 0, clock.now + 120
    await restarted.read(RULE, *window(clock.now))
    assert counting.samples == 20 * 4


@pytest.mark.parametrize("change", [{"expr": "load * 2"}, {"step": 120.0}, {"train_window": 2 * DAY}])
async def test_a_changed_expr_step_or_window_reads_the_whole_window_again(tmp_path, change):
    tsdb = FakeTsdb({"load": seasonal_series("load", 3, T0 - 4 * DAY, T0 + DAY, STEP)})
    tsdb.data["load * 2"] = tsdb.data["load"]
    counting, clock = Counting(tsdb), FakeClock(T0)
    reader = HistoryReader(counting, LocalHistoryStore(tmp_path, 2**30), 120.0, clock)
    await reader.read(RULE, *window(T0))
    changed = replace(RULE, **change)
    end = T0 + 600
    start = end - changed.train_window + changed.step
    counting.samples = 0
    history = await reader.read(changed, start, end)
    assert counting.samples == history.values.size  # all of it, from the TSDB


async def test_a_rule_over_the_disk_budget_reads_its_whole_window_and_says_so_once(tmp_path, caplog):
    tsdb = FakeTsdb({"load": seasonal_series("load", 3, T0 - 4 * DAY, T0 + DAY, STEP)})
    counting, clock = Counting(tsdb), FakeClock(T0)
    reader = HistoryReader(counting, LocalHistoryStore(tmp_path, 1000), 120.0, clock)
    with caplog.at_level(logging.WARNING):
        for refit in range(3):
            clock.now = T0 + 120 * refit
            counting.samples = 0
            history = await reader.read(RULE, *window(clock.now))
            assert counting.samples == history.values.size == 3 * 4320
    assert len([r for r in caplog.records if "history store write failed" in r.getMessage()]) == 1
    assert not list(tmp_path.glob("*/block-*.npy"))


async def test_samples_held_back_from_a_fit_stay_in_the_stored_history(tmp_path):
    from oa_exporter.core.excursions import Ongoing

    class Elsewhere(InlineDispatcher):  # like the process pool: the event loop runs on while the fit does
        async def run(self, fn, *args, gpu=False):
            await asyncio.sleep(0.2)
            return await asyncio.to_thread(fn, *args)

    tsdb = FakeTsdb({"load": seasonal_series("load", 5, T0 - 4 * DAY, T0 + DAY, STEP)})
    clock, engines = FakeClock(T0), engine_registry()
    reader = HistoryReader(tsdb, LocalHistoryStore(tmp_path, 2**30), 120.0, clock)
    trainer = Trainer(tsdb, engines, NoopArtifactStore(), Elsewhere(), NullTelemetry(), clock, history=reader)
    first = (await tsdb.query_range("load", *window(T0), STEP)).keys[0]
    await trainer.train(RULE, T0, {first: Ongoing(after=T0 - 3600, since=T0 - 3500)})  # its last hour held back
    clock.now = T0 + 120
    kept = by_key(await reader.read(RULE, *window(clock.now)))
    full = by_key(await tsdb.query_range("load", *window(clock.now), STEP))
    np.testing.assert_array_equal(kept[first], full[first])  # nothing of the held-back hour was lost


async def test_the_store_keeps_the_window_once_the_fit_is_over_never_beside_it(tmp_path):
    seen_while_fitting = []

    class Watching(InlineDispatcher):  # like the process pool: the event loop runs on while the fit does
        async def run(self, fn, *args, gpu=False):
            await asyncio.sleep(0.3)  # time for a write that had begun to run
            seen_while_fitting.append(len(list(tmp_path.glob("*/block-*.npy"))))
            return await asyncio.to_thread(fn, *args)

    tsdb, clock = FakeTsdb({"load": seasonal_series("load", 5, T0 - 4 * DAY, T0 + DAY, STEP)}), FakeClock(T0)
    reader = HistoryReader(tsdb, LocalHistoryStore(tmp_path, 2**30), 120.0, clock)
    trainer = Trainer(tsdb, engine_registry(), NoopArtifactStore(), Watching(), NullTelemetry(), clock, history=reader)
    await trainer.train(RULE, T0)
    await reader.settle()
    assert seen_while_fitting == [0]  # nothing written while the first fit ran
    first, last = (round(t / STEP) for t in window(T0))
    assert len(list(tmp_path.glob("*/block-*.npy"))) == last // 256 - first // 256 + 1  # then all of it
