"""The demo's generated series and the Prometheus-API source that serves them."""

from __future__ import annotations

import numpy as np
import pytest

from oa_exporter.adapters.tsdb.prometheus import PrometheusClient
from oa_exporter.core.errors import QueryError
from oa_exporter.demo.signals import ANOMALY_LENGTH, ANOMALY_START, DemoSignals
from oa_exporter.demo.source import SelectorError, make_source, select

NOW = 1_800_000_000.0


def test_values_are_a_function_of_series_and_time_only():
    signals = DemoSignals(NOW)
    rows = np.arange(len(signals.series))
    times = NOW - 3600 + 60 * np.arange(60)
    assert np.array_equal(signals.values(rows, times), DemoSignals(NOW).values(rows, times))
    assert np.array_equal(signals.values(rows[3:4], times), signals.values(rows, times)[3:4])


def test_anomalies_start_after_the_demo_starts_one_series_at_a_time():
    signals = DemoSignals(NOW)
    rows = np.arange(len(signals.series))
    history = NOW - 7 * 86400 + 60 * np.arange(7 * 1440)
    assert not signals.anomalous(rows, history).any()
    later = NOW + ANOMALY_START + ANOMALY_LENGTH * np.arange(len(rows)) + 1
    assert np.array_equal(signals.anomalous(rows, later), np.eye(len(rows), dtype=bool))


def test_selectors_match_like_prometheus():
    signals = DemoSignals(NOW)
    assert len(select(signals, "demo_http_requests_per_second")) == 8
    assert len(select(signals, 'demo_http_requests_per_second{service=~"check.*|cart",instance!="web-2"}')) == 2
    assert len(select(signals, '{job="node"}')) == 4
    with pytest.raises(SelectorError):
        select(signals, "sum(demo_queue_depth)")


async def test_the_production_reader_reads_the_demo_source(aiohttp_server):
    server = await aiohttp_server(make_source(DemoSignals(NOW), clock=lambda: NOW))
    client = PrometheusClient(str(server.make_url("")))
    try:
        vector = await client.query("demo_queue_depth", NOW)
        history = await client.query_range("demo_queue_depth", NOW - 86400, NOW, 60)
        with pytest.raises(QueryError, match="plain selectors"):
            await client.query("rate(demo_queue_depth[5m])", NOW)
    finally:
        await client.close()
    assert len(vector.keys) == 2 and history.values.shape == (2, 1441)
    assert np.allclose(history.values[:, -1], vector.values)
    assert set(history.keys) == set(vector.keys)


def test_fast_instant_parse_matches_the_full_parser_even_with_escapes():
    from oa_exporter.adapters.tsdb.prometheus import _fast_vector, _parsed_vector, series_key

    body = (b'{"status":"success","data":{"resultType":"vector","result":['
            b'{"metric":{"__name__":"x","path":"/a?b=1\\u0026c=\\u003c2\\u003e","q":"say \\"hi\\""},"value":[1,"2.5"]},'
            b'{"metric":{"__name__":"x","path":"/plain","\xc3\xa9":"\xc3\xa9t\xc3\xa9"},"value":[1,"NaN"]},'
            b'{"metric":{},"value":[1,"+Inf"]}]}}')
    fast, full = _fast_vector(body, 1.0), _parsed_vector(body, 1.0)
    assert fast is not None
    assert fast.keys == full.keys == [series_key(dict(m)) for m in full.labels]
    assert list(map(dict, fast.labels)) == list(full.labels)
    assert np.array_equal(fast.values, full.values, equal_nan=True)
    assert _fast_vector(b'{"status":"success","data":{"resultType":"vector","result":[]}}', 1.0) is None


async def test_the_series_endpoint_lists_what_a_selector_matches(aiohttp_client):
    client = await aiohttp_client(make_source(DemoSignals(NOW), clock=lambda: NOW))
    response = await client.get("/api/v1/series", params={"match[]": 'demo_queue_depth{queue="emails"}'})
    body = await response.json()
    assert body["status"] == "success"
    assert [m["queue"] for m in body["data"]] == ["emails"] and body["data"][0]["__name__"] == "demo_queue_depth"
