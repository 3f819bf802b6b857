"""Fixtures wrapping the real servers of tests/servers.py."""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:  # `tests.servers` importable under plain `pytest` too
    sys.path.insert(0, _ROOT)

from tests.dask_cluster import DaskCluster  # noqa: E402
from tests.servers import PrometheusServer, SeaweedS3Server, VictoriaMetricsServer  # noqa: E402


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


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory) -> Iterator[SeaweedS3Server]:
    """One real S3 server (SeaweedFS) for the session; each test takes its own bucket."""
    with SeaweedS3Server(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


@pytest.fixture(scope="session")
def dask_cluster(tmp_path_factory) -> Iterator[DaskCluster]:
    """One real Dask cluster for the session: a scheduler and two single-threaded workers on loopback."""
    with DaskCluster(tmp_path_factory.mktemp("dask")) as cluster:
        yield cluster


_buckets = itertools.count()


@pytest.fixture
def s3_bucket(seaweed) -> str:
    """A fresh, empty bucket."""
    return seaweed.create_bucket(f"oa-test-{next(_buckets)}")


@pytest.fixture
def s3_env(seaweed, monkeypatch) -> dict[str, str]:
    """The store identity's credentials in the standard AWS variables, nothing else of the machine's AWS setup;
    returned too, for daemons started as subprocesses."""
    env = {"AWS_ACCESS_KEY_ID": seaweed.access_key, "AWS_SECRET_ACCESS_KEY": seaweed.secret_key,
           "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": "/nonexistent",
           "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent", "AWS_DEFAULT_REGION": "us-east-1"}
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env
