"""Range reads against servers started with low sample limits: chunks sized to fit, refusals halved, nothing lost."""

from __future__ import annotations

import asyncio
import logging
import time

import numpy as np
import pytest
from aiohttp import web

from oa_exporter.adapters.tsdb.prometheus import PrometheusClient
from oa_exporter.core.errors import QueryError
from tests.integration.test_daemon_prometheus import run_daemon, scrape
from tests.proxy import CountingProxy, Counts
from tests.servers import PrometheusServer, VictoriaMetricsServer
from tests.synthetic import Scenario

pytestmark = pytest.mark.integration
LIMIT = 400_000  # one read of the whole window is 300 × 4,320 ≈ 1.3M samples
LIMITS = {"prometheus": [f"--query.max-samples={LIMIT}"], "victoriametrics": [f"-search.maxSamplesPerQuery={LIMIT}"]}
SERVERS = {"prometheus": PrometheusServer, "victoriametrics": VictoriaMetricsServer}
RULES = """
groups:
  - name: limited
    interval: 2s
    rules:
      - anomaly: wide
        expr: oa_test_requests
        step: 1m
        train: {window: 3d, every: 1d}
        min_history: 1d
"""


@pytest.fixture(scope="module", params=sorted(SERVERS))
def limited(request, tmp_path_factory):
    """The server read once without a limit (the reference), then restarted with a low one."""
    end = float(int(time.time()) // 60 * 60)
    scenario = Scenario(end=end, series=300, spiked=(), constant=None, gappy=None, short=None)
    with SERVERS[request.param](tmp_path_factory.mktemp(request.param), series=scenario.build()) as server:
        server.scenario = scenario
        server.unlimited = unlimited_read(server, end - 3 * 86400 + 60, end)
        server.stop()
        server.extra_args = LIMITS[request.param]
        server.start()
        yield server


def unlimited_read(server, start: float, end: float) -> dict[str, np.ndarray]:
    """Every series of one range query over the whole window, on its grid."""
    grid = start + 60 * np.arange(int((end - start) / 60) + 1)
    out = {}
    for item in server.query_range("oa_test_requests", start, end, 60)["result"]:
        row = np.full(len(grid), np.nan)
        times = np.array([t for t, _ in item["values"]], dtype=float)
        row[np.searchsorted(grid, times)] = [float(v) for _, v in item["values"]]
        out[item["metric"]["instance"]] = row
    assert len(out) == 300
    return out


def expected(server, start: float) -> dict[str, np.ndarray]:
    """What one unlimited query returns from `start`."""
    return {instance: row[-int((server.scenario.end - start) / 60) - 1 :] for instance, row in server.unlimited.items()}


async def read(server, max_samples: int, start: float) -> tuple[dict[str, np.ndarray], Counts, Counts]:
    """Two reads through one client: what the first got, and what each asked of the server."""
    proxy = await CountingProxy(server.url).start()
    client = PrometheusClient(proxy.url, max_samples=max_samples)
    try:
        history = await client.query_range("oa_test_requests", start, server.scenario.end, 60)
        first, proxy.counts = proxy.counts, Counts()
        await client.query_range("oa_test_requests", start, server.scenario.end, 60)
    finally:
        await client.close()
        await proxy.close()
    rows = {labels["instance"]: row for labels, row in zip(history.labels, history.values, strict=True)}
    return rows, first, proxy.counts


async def test_a_read_too_big_for_the_server_is_split_until_it_fits(limited, caplog):
    start = limited.scenario.end - 86400 + 60  # 300 × 1,440 points: above the limit
    with caplog.at_level(logging.WARNING, "oa_exporter.adapters.tsdb.prometheus"):
        got, first, second = await read(limited, 10 * LIMIT, start)
    expected_rows = expected(limited, start)
    assert got.keys() == expected_rows.keys()
    for instance, values in expected_rows.items():
        np.testing.assert_array_equal(got[instance], values)
    assert first.refused >= 1
    assert second.refused == 0  # the budget it learned holds
    refusals = [r for r in caplog.records if "refused a range query" in r.getMessage()]
    assert len(refusals) == 1  # said once, though it was split more than once


async def test_a_read_under_the_budget_is_never_refused_by_prometheus(limited):
    if isinstance(limited, VictoriaMetricsServer):  # it counts every sample of each block a query touches
        pytest.skip("VictoriaMetrics counts raw samples of whole blocks, not the points a query returns")
    start = limited.scenario.end - 86400 + 60
    got, first, _ = await read(limited, LIMIT // 2, start)
    for instance, values in expected(limited, start).items():
        np.testing.assert_array_equal(got[instance], values)
    assert first.refused == 0
    assert first.widest <= LIMIT // 2
    assert first.range_queries >= 432_000 // (LIMIT // 2)


REFUSALS = [
    (422, "query processing would load too many samples into memory in query execution"),  # Prometheus, Thanos
    (422, "cannot select more than -search.maxSamplesPerQuery=1000 samples"),  # VictoriaMetrics
    (400, "the query exceeded the maximum number of chunks (limit: 10 chunks) (err-mimir-max-chunks-per-query)"),
    (503, "expanding series: the query hit the max number of chunks limit"),  # Cortex
]


@pytest.mark.parametrize(("status", "message"), REFUSALS)
async def test_a_server_refusing_even_one_point_is_a_query_error_after_halving(aiohttp_server, status, message):
    asked: list[int] = []

    async def refuse(request: web.Request) -> web.Response:
        form = await request.post()
        asked.append(round((float(form["end"]) - float(form["start"])) / 60) + 1)
        return web.json_response({"status": "error", "errorType": "execution", "error": message}, status=status)

    app = web.Application()
    app.router.add_post("/api/v1/query_range", refuse)
    client = PrometheusClient(str((await aiohttp_server(app)).make_url("")), retries=3, backoff=5.0)
    try:
        with pytest.raises(QueryError, match="one point"):
            await asyncio.wait_for(client.query_range("rate(up[5m])", 0, 59 * 60, 60), 10)
    finally:
        await client.close()
    assert asked == [60, 30, 15, 7, 3, 1]  # halved each time, never retried at the same width


async def test_the_daemon_fits_and_scores_every_series_beside_a_limited_server(limited, tmp_path):
    base, stop, task = await run_daemon(limited, tmp_path, RULES)
    try:
        deadline = time.monotonic() + 240
        scored: set[str] = set()
        while time.monotonic() < deadline and len(scored) < 300:
            await asyncio.sleep(1)
            found = await scrape(f"{base}/metrics")
            scored = {s.labels["instance"] for s in found.get("oa_anomaly_score", []) if s.labels["rule"] == "wide"}
    finally:
        stop.set()
        assert await task == 0
    assert len(scored) == 300
