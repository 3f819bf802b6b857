"""A replay whose refits run ahead on threads, with the faster numpy helpers, gives the straightforward
replay's forecasts and scores: the refits inline, one after the other, on tests/arrays_reference.py."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace

import numpy as np
import pytest

from oa_exporter.bootstrap import backtester
from oa_exporter.core import seasonal
from oa_exporter.core.domain import SeriesMatrix
from oa_exporter.core.errors import EngineError
from oa_exporter.core.presets import PRESETS
from oa_exporter.core.services.backtester import Replay, Samples
from tests import arrays_reference
from tests.unit.test_backtest import DAY, RULE, STEP, generated

DEFAULT = replace(RULE, model=PRESETS["default"].model, train_every=3600.0, min_history=DAY, level=99.99,  # the preset
                  repeat_window=6 * 3600.0, settle_after=3600.0, new_normal_after=0.0)  # with a day's warm-up


def replay(times: np.ndarray, values: np.ndarray, rule=DEFAULT, threads: int = 1, fails_at: float | None = None
           ) -> Replay:
    keys = [json.dumps({"instance": str(i)}).encode() for i in range(len(values))]
    labels = [{"instance": str(i)} for i in range(len(values))]
    tool = backtester(SeriesMatrix(keys, labels, float(times[0]), STEP, values), threads)
    if fails_at is not None:  # one fit fails: the schedule retries on its backoff, off the hourly pace
        fit = tool.trainer.fit

        async def flaky(rule, now, ongoing=None):
            if now == fails_at:
                raise EngineError("fit refused")
            return await fit(rule, now, ongoing)

        tool.trainer.fit = flaky

    async def run() -> Replay:
        try:
            return await tool.replay(rule, Samples(keys, labels, times, values))
        finally:
            await tool.close()

    return asyncio.run(run())


def assert_same(fast: Replay, plain: Replay) -> None:
    assert fast.fits == plain.fits
    assert fast.fit_errors == plain.fit_errors
    for name in ("yhat", "lower", "upper", "score"):
        np.testing.assert_allclose(getattr(fast, name), getattr(plain, name), rtol=0, atol=1e-9, equal_nan=True)


@pytest.fixture
def straightforward(monkeypatch):
    """Replays with the model on the straightforward numpy helpers, refits inline."""

    def run(*args, **kwargs) -> Replay:
        with monkeypatch.context() as patch:
            patch.setattr(seasonal, "arrays", arrays_reference)
            return replay(*args, **kwargs)

    return run


def test_refits_ahead_on_threads_with_the_fast_helpers_score_as_the_straightforward_replay(straightforward):
    times, values, spikes = generated(days=4, series=6)
    values[2, : int(1.5 * DAY / STEP)] = np.nan  # a series that appears later: hourly refits while it waits
    values[3, ::7] = np.nan  # gaps
    plain = straightforward(times, values)
    fast = replay(times, values, threads=3)
    assert plain.fits == 4 * 24 and (plain.score[:, spikes[-1]] > 1).all()  # a replay worth comparing
    assert_same(fast, plain)


def test_a_failed_fit_changes_the_pace_and_the_fits_ahead_still_match(straightforward):
    times, values, _ = generated(days=3, series=3)
    fails_at = float(times[int(1.5 * DAY / STEP)])
    plain = straightforward(times, values, fails_at=fails_at)
    fast = replay(times, values, threads=2, fails_at=fails_at)
    assert len(plain.fit_errors) == 1 and "fit refused" in plain.fit_errors[0]
    assert_same(fast, plain)


def test_a_rule_that_holds_excursions_back_is_replayed_alike_on_threads(straightforward):
    times, values, spikes = generated(days=4, series=3)
    values[:, spikes[0] : spikes[0] + 40] += 30.0  # an excursion in progress across refits
    held = replace(DEFAULT, new_normal_after=3 * 3600.0)  # its fits depend on the scores: none may run ahead
    plain = straightforward(times, values, held)
    assert not np.allclose(plain.upper, straightforward(times, values).upper, equal_nan=True)  # it does depend
    assert_same(replay(times, values, held, threads=2), plain)
