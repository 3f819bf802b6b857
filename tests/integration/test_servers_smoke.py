"""Smoke tests: real Prometheus / VictoriaMetrics started by tests/servers.py serve the data given."""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import pytest

from tests.servers import PrometheusServer, Series, TSDBServer, VictoriaMetricsServer

pytestmark = pytest.mark.integration

STEP = 300
DAY = 86400
SELECTOR = '{__name__=~"smoke_sine|smoke_gappy"}'


@pytest.fixture(scope="module")
def data() -> tuple[float, list[Series]]:
    """Three 5-minute series over the last 3 days ending now; one has a NaN gap."""
    end = float(int(time.time()))
    ts = end - STEP * np.arange(3 * DAY // STEP, -1, -1)
    rng = np.random.default_rng(0)
    wave = np.sin(2 * np.pi * ts / DAY)
    gappy = 5 + wave + rng.normal(0, 0.1, ts.size)
    gappy[-300:-280] = np.nan  # 100 minutes missing, inside the 2-day window
    return end, [
        ("smoke_sine", {"instance": "a"}, ts, 10 * wave + rng.normal(0, 0.5, ts.size)),
        ("smoke_sine", {"instance": "b", "note": 'quo"te'}, ts, 3 * wave + 100.25),
        ("smoke_gappy", {"job": "x"}, ts, gappy),
    ]


@pytest.fixture(scope="module", params=["prometheus", "victoria"])
def server(request, data, tmp_path_factory) -> Iterator[TSDBServer]:
    """Each real server, loaded with the smoke data."""
    cls = PrometheusServer if request.param == "prometheus" else VictoriaMetricsServer
    with cls(tmp_path_factory.mktemp(request.param), series=data[1]) as srv:
        yield srv


def _by_series(result: list[dict]) -> dict[tuple, np.ndarray]:
    """Map sorted label items -> array of (t, v) rows."""
    return {tuple(sorted(r["metric"].items())): np.array(r["values"], dtype=np.float64) for r in result}


def assert_matches_written(srv: TSDBServer, end: float, series: list[Series]) -> None:
    """A 2-day query_range returns ~every written point with the written values."""
    got = _by_series(srv.query_range(SELECTOR, end - 2 * DAY, end, STEP)["result"])
    assert len(got) == 3
    for name, labels, ts, values in series:
        rows = got[tuple(sorted({"__name__": name, **labels}.items()))]
        window = (ts >= end - 2 * DAY) & ~np.isnan(values)
        assert abs(len(rows) - window.sum()) <= 2, (name, labels, len(rows), window.sum())
        written = dict(zip(ts[window].tolist(), values[window].tolist(), strict=True))
        hits = np.array([(v, written[t]) for t, v in rows if t in written])
        assert len(hits) >= window.sum() - 2
        np.testing.assert_allclose(hits[:, 0], hits[:, 1], rtol=1e-9)


def test_instant_query_sees_latest(server: TSDBServer) -> None:
    result = server.query(SELECTOR)["result"]
    assert len(result) == 3


def test_range_query_matches_written(server: TSDBServer, data) -> None:
    assert_matches_written(server, *data)


def test_empty_fixtures_are_up(prometheus_server: PrometheusServer, victoria_server) -> None:
    assert prometheus_server.query("vector(1)")["result"][0]["value"][1] == "1"
    assert victoria_server.query("vector(1)")["result"][0]["value"][1] == "1"


def test_prometheus_restart_keeps_data(tmp_path, data) -> None:
    with PrometheusServer(tmp_path, series=data[1]) as srv:
        port = srv.port
        srv.stop()
        assert not srv.running
        with pytest.raises(OSError):  # urllib's URLError: connection refused
            srv.query("vector(1)")
        srv.start()
        assert srv.port == port
        assert_matches_written(srv, *data)
        assert "out_of_order_time_window" in srv.config_path.read_text()
