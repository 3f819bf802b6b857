"""Beside a real Prometheus that scrapes a live series: a rule on darts' default model (LinearRegressionModel)
is refit seconds into a +30σ jump and the jumped series keeps paging; once the jump has lasted longer than
the rule's `new_normal_after`, a refit takes it as the new normal."""

from __future__ import annotations

import asyncio
import importlib.util
import time
from dataclasses import dataclass

import aiohttp
import numpy as np
import pytest
from aiohttp import web

from tests.integration.test_daemon_prometheus import run_daemon, scrape, value
from tests.servers import PrometheusServer, free_port

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(importlib.util.find_spec("darts") is None, reason="darts is not installed")]

STEP = 2.0
JUMP = 30.0  # the series' noise is 1
BOUND = 24.0  # new_normal_after
LABELS = {"instance": "host-00", "job": "live"}
RULES = f"""
groups:
  - name: live
    interval: 2s
    rules:
      - anomaly: jump
        expr: oa_test_live
        step: 2s
        model: {{engine: darts, name: LinearRegressionModel}}
        train: {{window: 2h, every: 8s}}
        forecast: {{horizon: 1m, level: 99}}
        min_history: 30m
        new_normal_after: {BOUND:g}s
"""


class LiveSeries:
    """A level with a slow cycle and unit noise; `jump()` raises it by 30σ from then on."""

    def __init__(self) -> None:
        self.rng = np.random.default_rng(3)
        self.jumped_at: float | None = None

    def at(self, t: np.ndarray) -> np.ndarray:
        base = 100 + 5 * np.sin(2 * np.pi * t / 600) + self.rng.normal(0, 1, np.shape(t))
        return base + (JUMP if self.jumped_at is not None else 0.0) * (t >= (self.jumped_at or np.inf))

    def jump(self) -> None:
        self.jumped_at = time.time()

    async def metrics(self, request: web.Request) -> web.Response:
        line = f'oa_test_live{{instance="host-00",job="live"}} {float(self.at(np.array(time.time()))):.6f}\n'
        return web.Response(text=line, content_type="text/plain")


@pytest.fixture
async def live(tmp_path):
    """The live series served for scraping, two hours of its past backfilled into a Prometheus scraping it."""
    series, port = LiveSeries(), free_port()
    app = web.Application()
    app.router.add_get("/metrics", series.metrics)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    now = time.time()
    past = np.arange(now - 7200, now - 1, STEP)
    scrape_config = {"scrape_configs": [{"job_name": "live", "honor_labels": True, "scrape_interval": "1s",
                                         "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}]}
    with PrometheusServer(tmp_path, series=[("oa_test_live", LABELS, past, series.at(past))],
                          extra_config=scrape_config) as server:
        yield series, server
    await runner.cleanup()


@dataclass(frozen=True)
class Seen:
    """One scrape of the daemon: when, the training time of the model in use, the series' score."""

    at: float
    trained_at: float | None
    score: float | None


async def look(url: str) -> Seen:
    try:
        found = await scrape(url)
    except aiohttp.ClientError:  # not listening yet
        return Seen(time.time(), None, None)
    return Seen(time.time(), value(found, "oa_model_last_fit_timestamp_seconds", rule="jump"),
                value(found, "oa_anomaly_score", rule="jump"))


async def watch(url: str, until, timeout: float) -> list[Seen]:
    """Scrape the daemon every quarter second until `until(seen so far)` holds."""
    seen: list[Seen] = []
    deadline = time.monotonic() + timeout
    while not seen or not until(seen):
        assert time.monotonic() < deadline, f"timed out; last seen {seen[-1:]}"
        seen.append(await look(url))
        await asyncio.sleep(0.25)
    return seen


def settled(seen: list[Seen]) -> list[Seen]:
    """The scrapes whose model had been in use for more than a cycle (the score is that model's)."""
    first: dict[float, float] = {}
    for s in seen:
        if s.trained_at is not None:
            first.setdefault(s.trained_at, s.at)
    return [s for s in seen if s.trained_at is not None and s.score is not None
            and s.at - first[s.trained_at] > STEP + 0.5]


async def test_a_refit_seconds_into_a_jump_keeps_paging_until_new_normal_after(live, tmp_path):
    series, prometheus = live
    base, stop, task = await run_daemon(prometheus, tmp_path, RULES)
    url = f"{base}/metrics"
    try:
        before = settled(await watch(url, lambda seen: bool(settled(seen)), timeout=120))
        series.jump()
        jumped = series.jumped_at
        assert jumped is not None
        past = jumped + BOUND + 2 * STEP  # models trained from here on surely see the jump as the new normal
        seen = await watch(url, lambda seen: sum(s.trained_at >= past for s in settled(seen)
                                                 if s.trained_at is not None) >= 8, timeout=120)
    finally:
        stop.set()
        assert await task == 0
    assert before[-1].score is not None and before[-1].score < 1.0
    scored = [s for s in settled(seen) if s.trained_at is not None and s.score is not None]
    held = [s.score for s in scored if jumped < s.trained_at < jumped + BOUND]
    assert min(s.trained_at for s in scored if s.trained_at > jumped) < jumped + 2 * 8.0  # refit seconds into it
    assert held and min(held) > 1.0, f"the jump stopped paging after a refit: {np.round(held, 2)}"
    after = [s.score for s in scored if s.trained_at >= past]
    assert max(after) < 1.0, f"still paging after new_normal_after: {np.round(after, 2)}"
