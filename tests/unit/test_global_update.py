"""A global model scores series that appeared after its fit without a refit: the runner conditions it on them."""

from __future__ import annotations

import pytest

from tests.unit.fakes import DAY, FakeTsdb, seasonal_series, value
from tests.unit.harness import END

EXPR = "sum by (instance, job) (rate(requests_total[5m]))"
RULES = f"""
groups:
  - name: web
    interval: 1m
    rules:
      - anomaly: requests
        expr: {EXPR}
        preset: none
        model: {{engine: mlforecast, name: Ridge}}
"""


def newcomers() -> list:
    """Four series that start after the first fit, with two days of history by the time they are seen."""
    series = seasonal_series("requests", 4, END - 2 * DAY + 60, END + 2 * 3600, seed=31)
    for i, s in enumerate(series):
        s.labels["instance"] = f"new-{i}"
    return series


async def test_new_series_of_a_global_model_are_scored_without_a_refit(start_daemon):
    pytest.importorskip("mlforecast", reason="needs the mlforecast extra: pip install 'oa-exporter[mlforecast]'")
    tsdb = FakeTsdb({EXPR: seasonal_series("requests", 6, END - 3 * DAY + 60, END + 2 * 3600, seed=3)})
    daemon = await start_daemon(RULES, tsdb)
    await daemon.trained()
    assert daemon.states("requests") == {"ready": 6, "not-ready": 0, "failed": 0}

    tsdb.data[EXPR] += newcomers()
    await daemon.trained(END + 600)  # sees 4 unknown series: conditions the model on them
    await daemon.cycle(END + 660)
    assert daemon.states("requests") == {"ready": 10, "not-ready": 0, "failed": 0}
    scores = daemon.scores("requests")
    assert all(scores[f"new-{i}"] < 1 for i in range(4)), scores
    assert daemon.fits("requests") == 1  # no refit
    assert daemon.dispatcher.jobs == 1
    assert value(daemon.page, "oa_model_last_fit_timestamp_seconds", rule="requests") == END


async def test_a_model_that_cannot_update_refits_for_new_series_instead(start_daemon):
    rules = RULES.replace("        model: {engine: mlforecast, name: Ridge}\n", "")
    tsdb = FakeTsdb({EXPR: seasonal_series("requests", 6, END - 3 * DAY + 60, END + 2 * 3600, seed=3)})
    daemon = await start_daemon(rules, tsdb)
    await daemon.trained()
    tsdb.data[EXPR] += newcomers()
    await daemon.trained(END + 600)
    assert daemon.states("requests")["not-ready"] == 4  # waits for the (at most hourly) refit
    await daemon.trained(END + 3600 + 60)
    assert daemon.states("requests") == {"ready": 10, "not-ready": 0, "failed": 0}
    assert daemon.fits("requests") == 2
