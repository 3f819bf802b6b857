"""Fixtures wrapping the real servers of tests/servers.py."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:  # `tests.servers` importable under plain `pytest` too
    sys.path.insert(0, _ROOT)

from tests.servers import PrometheusServer, VictoriaMetricsServer  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    """Register the integration marker."""
    config.addinivalue_line("markers", "integration: needs real Prometheus / VictoriaMetrics servers")


@pytest.fixture
def prometheus_server(tmp_path) -> Iterator[PrometheusServer]:
    """An empty Prometheus with the remote-write receiver on."""
    with PrometheusServer(tmp_path) as server:
        yield server


@pytest.fixture
def victoria_server(tmp_path) -> Iterator[VictoriaMetricsServer]:
    """An empty single-node VictoriaMetrics."""
    with VictoriaMetricsServer(tmp_path) as server:
        yield server
