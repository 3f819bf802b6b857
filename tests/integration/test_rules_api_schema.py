"""The live daemon keeps to the OpenAPI description it serves: schemathesis generates requests from it."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from tests.servers import PrometheusServer, free_port
from tests.synthetic import Scenario

pytestmark = pytest.mark.integration

RULES = """\
groups:
  - name: synthetic
    interval: 5s
    rules:
      - anomaly: requests
        expr: oa_test_requests
        step: 1m
        train: {window: 1d, every: 1d}
        min_history: 12h
"""


@pytest.fixture(scope="module")
def daemon(tmp_path_factory) -> Iterator[str]:
    """A writable daemon (subprocess) beside a real Prometheus with a day of data."""
    tmp = tmp_path_factory.mktemp("schema")
    scenario = Scenario(end=time.time(), series=5, days=1.0)
    with PrometheusServer(tmp, series=scenario.build()) as prometheus:
        rules = tmp / "rules.yaml"
        rules.write_text(RULES)
        port = free_port()
        process = subprocess.Popen(
            [sys.executable, "-m", "oa_exporter.entrypoints.cli", "run", "--rules", str(rules),
             "--prometheus-url", prometheus.url, "--web.listen-address", f"127.0.0.1:{port}",
             "--artifact.store", "noop", "--web.enable-rules-api", "--pool.workers", "1",
             "--preview.timeout", "20", "--preview.max-points", "500000", "--rules.poll-interval", "0"],
            stdout=subprocess.DEVNULL, stderr=(tmp / "daemon.log").open("wb"))
        base = f"http://127.0.0.1:{port}"
        try:
            _wait_ready(base)
            yield base
        finally:
            process.terminate()
            process.wait(20)


def _wait_ready(base: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{base}/-/ready", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise AssertionError("daemon not ready")


@pytest.fixture
def api_schema(daemon):
    return schemathesis.openapi.from_url(f"{daemon}/api/v1/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
def test_the_rules_api_keeps_to_its_openapi_description(case):
    # every check but "schema-valid data is accepted": a rule can match the schema and still be refused (422)
    # for what only validation knows: its PromQL, its engine's parameters, its durations
    case.call_and_validate(excluded_checks=[schemathesis.checks.positive_data_acceptance])
