"""A preview sends its worker the history from the first sample on, not the empty train.window before it, and
scores as the replay of the whole grid it read."""

from __future__ import annotations

import asyncio
import json

import numpy as np

from oa_exporter.bootstrap import replay_in_child
from oa_exporter.core.domain import SeriesMatrix
from oa_exporter.core.services.backtester import Replay, Samples
from oa_exporter.core.services.preview import Previewer
from tests.unit.test_backtest import DAY, STEP, generated
from tests.unit.test_backtest_ahead import DEFAULT, assert_same

RULE = DEFAULT  # train.window 7 days; the history holds 3 days: its first 4 days of columns are empty


class ReadTsdb:
    """Answers the range read with a grid of its own (the columns before `times` empty)."""

    def __init__(self, times: np.ndarray, values: np.ndarray):
        self.times, self.values = times, values

    async def query_range(self, expr: str, start: float, end: float, step: float) -> SeriesMatrix:
        columns = int(round((end - start) / step)) + 1
        grid = np.full((len(self.values), columns), np.nan)
        grid[:, columns - self.values.shape[1]:] = self.values
        keys = [json.dumps({"instance": str(i)}).encode() for i in range(len(self.values))]
        return SeriesMatrix(keys, [{"instance": str(i)} for i in range(len(self.values))], start, step, grid)


def test_the_worker_gets_the_history_from_its_first_sample_and_the_same_scores():
    times, values, _ = generated(days=3, series=4)
    values[1, : int(1.5 * DAY / STEP)] = np.nan  # a series that appears later
    values[2, ::5] = np.nan  # gaps
    sent: list[SeriesMatrix] = []

    async def run_replay(rule, history, samples, timeout) -> Replay:
        sent.append(history)
        return await asyncio.to_thread(replay_in_child, rule, history, samples)  # a loop of its own

    tsdb = ReadTsdb(times, values)
    start, end = float(times[int(DAY / STEP)]), float(times[-1])  # the range: the last 2 days
    preview = asyncio.run(Previewer(tsdb, run_replay, clock=lambda: end).preview(RULE, start, end))

    whole = asyncio.run(tsdb.query_range("", start - RULE.train_window + STEP, end, STEP))
    scored = slice(whole.values.shape[1] - (len(times) - int(DAY / STEP)), None)
    plain = replay_in_child(RULE, whole, Samples(whole.keys, whole.labels, whole.timestamps[scored],
                                                 whole.values[:, scored]))
    assert whole.values.shape[1] > 2 * len(times)  # most of the grid read is empty
    assert sent[0].start == times[0] and sent[0].values.shape[1] == len(times)
    assert preview.replay.fits > 0 and np.isfinite(preview.replay.score).any()  # a replay worth comparing
    np.testing.assert_array_equal(preview.replay.times, plain.times)
    assert_same(preview.replay, plain)
