"""The Prometheus-API reader against real Prometheus and VictoriaMetrics, and against a recording server."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from aiohttp import web

from oa_exporter.adapters.tsdb.prometheus import HttpAuth, PrometheusClient
from oa_exporter.core.errors import QueryError, TsdbError
from tests.servers import PrometheusServer, VictoriaMetricsServer, free_port
from tests.synthetic import Scenario

pytestmark = pytest.mark.integration
SERVERS = {"prometheus": PrometheusServer, "victoriametrics": VictoriaMetricsServer}


@pytest.fixture(scope="module", params=sorted(SERVERS))
def tsdb(request, tmp_path_factory):
    scenario = Scenario(end=float(int(time.time()) // 60 * 60), series=6, spiked=(), constant=5, gappy=4, short=3)
    with SERVERS[request.param](tmp_path_factory.mktemp(request.param), series=scenario.build()) as server:
        server.scenario = scenario
        yield server


async def test_range_query_returns_the_written_history_on_one_grid(tsdb):
    scenario = tsdb.scenario
    client = PrometheusClient(tsdb.url)
    try:
        start = scenario.end - 2 * 86400
        history = await client.query_range("oa_test_requests", start, scenario.end, 60)
    finally:
        await client.close()
    assert history.values.shape == (6, 2 * 1440 + 1)
    by_instance = {labels["instance"]: row for labels, row in zip(history.labels, history.values, strict=True)}
    written = {labels["instance"]: (times, values) for _, labels, times, values in scenario.data}
    for instance in ("host-00", "host-05"):
        times, values = written[instance]
        expected = values[times >= start]
        assert np.allclose(by_instance[instance], expected)
    assert np.isnan(by_instance["host-03"][: 1440]).all()  # short history: nothing before its start


async def test_range_query_is_split_below_the_points_limit(tsdb):
    scenario = tsdb.scenario
    client = PrometheusClient(tsdb.url)
    try:  # 15 s over 2 days is 11,521 points: more than one query may return
        history = await client.query_range('oa_test_requests{instance="host-00"}', scenario.end - 2 * 86400,
                                           scenario.end, 15)
    finally:
        await client.close()
    assert history.values.shape == (1, 11521)
    assert np.count_nonzero(~np.isnan(history.values)) > 11000


async def test_instant_query_returns_every_series_latest_value(tsdb):
    client = PrometheusClient(tsdb.url)
    try:
        vector = await client.query("oa_test_requests", tsdb.scenario.end)
    finally:
        await client.close()
    latest = {labels["instance"]: values[-1] for _, labels, _, values in tsdb.scenario.data}
    got = {labels["instance"]: v for labels, v in zip(vector.labels, vector.values, strict=True)}
    assert set(got) == set(latest) - {"host-04"} or set(got) == set(latest)
    assert got["host-00"] == pytest.approx(latest["host-00"])
    assert len(set(vector.keys)) == len(vector.keys)


async def test_bad_promql_fails_at_once_without_retries(tsdb):
    client = PrometheusClient(tsdb.url, retries=3, backoff=30.0)  # a retry would wait 30 s first
    started = time.monotonic()
    try:
        with pytest.raises(QueryError):
            await client.query("sum(rate(oa_test_requests[5m]", time.time())
    finally:
        await client.close()
    assert time.monotonic() - started < 20.0


async def test_server_down_is_a_clear_tsdb_error():
    client = PrometheusClient(f"http://127.0.0.1:{free_port()}", retries=1, backoff=0.01)
    try:
        with pytest.raises(TsdbError, match="127.0.0.1"):
            await client.query("up", time.time())
    finally:
        await client.close()


async def answering(aiohttp_server, handler) -> str:
    """URL of a loopback server whose query endpoint is `handler`."""
    app = web.Application()
    app.router.add_post("/api/v1/query", handler)
    return str((await aiohttp_server(app)).make_url(""))


async def test_auth_and_extra_headers_reach_the_server(tmp_path, aiohttp_server):
    seen: list = []
    attempts = {"n": 0}

    async def handler(request: web.Request) -> web.Response:
        attempts["n"] += 1
        if attempts["n"] == 1:
            return web.json_response({"status": "error", "error": "overloaded"}, status=503)
        seen.append((dict(request.headers), dict(await request.post())))
        return web.json_response({"status": "success", "data": {"resultType": "vector", "result": [
            {"metric": {"__name__": "up", "job": "x"}, "value": [1.0, "1"]}]}})

    token = tmp_path / "token"
    token.write_text("s3cret\n")
    auth = HttpAuth(bearer_token_file=str(token), headers={"X-Scope-OrgID": "team-a"})
    client = PrometheusClient(await answering(aiohttp_server, handler), auth, retries=2, backoff=0.01)
    try:
        vector = await client.query("up", 1.0)
    finally:
        await client.close()
    headers, form = seen[0]
    assert headers["Authorization"] == "Bearer s3cret"
    assert headers["X-Scope-OrgID"] == "team-a"
    assert form["query"] == "up"
    assert attempts["n"] == 2  # the 503 was retried
    assert vector.values.tolist() == [1.0]


async def test_basic_auth_is_sent(tmp_path, aiohttp_server):
    seen: list = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        return web.json_response({"status": "success", "data": {"resultType": "vector", "result": []}})

    password = tmp_path / "pw"
    password.write_text("hunter2")
    auth = HttpAuth(basic_user="oa", basic_password_file=str(password))
    client = PrometheusClient(await answering(aiohttp_server, handler), auth)
    try:
        await asyncio.wait_for(client.query("up", 1.0), 5)
    finally:
        await client.close()
    assert seen == ["Basic b2E6aHVudGVyMg=="]


@pytest.mark.parametrize(("compression", "asked"), [("none", "identity"), ("gzip", "gzip")])
async def test_answers_are_asked_for_uncompressed_unless_gzip_is_chosen(aiohttp_server, compression, asked):
    seen: list = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Accept-Encoding"))
        response = web.json_response({"status": "success", "data": {"resultType": "vector", "result": [
            {"metric": {"__name__": "up"}, "value": [1.0, "1"]}]}})
        if "gzip" in (request.headers.get("Accept-Encoding") or ""):
            response.enable_compression(web.ContentCoding.gzip)
        return response

    client = PrometheusClient(await answering(aiohttp_server, handler), compression=compression)
    try:
        vector = await client.query("up", 1.0)
    finally:
        await client.close()
    assert seen == [asked]
    assert vector.values.tolist() == [1.0]


async def test_a_gzipped_range_read_equals_a_plain_one(tsdb):
    start = tsdb.scenario.end - 2 * 86400
    reads = []
    for compression in ("gzip", "none"):
        client = PrometheusClient(tsdb.url, compression=compression)
        try:
            reads.append(await client.query_range("oa_test_requests", start, tsdb.scenario.end, 60))
        finally:
            await client.close()
    gzipped, plain = reads
    assert gzipped.keys == plain.keys and len(plain.keys) == 6
    np.testing.assert_array_equal(gzipped.values, plain.values)


async def test_instant_and_range_queries_name_series_identically(tsdb):
    client = PrometheusClient(tsdb.url)
    try:
        vector = await client.query("oa_test_requests", tsdb.scenario.end)
        history = await client.query_range("oa_test_requests", tsdb.scenario.end - 3600, tsdb.scenario.end, 60)
    finally:
        await client.close()
    assert set(vector.keys) == set(history.keys)
    assert sorted(map(dict, vector.labels), key=str) == sorted(history.labels, key=str)
