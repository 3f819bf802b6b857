"""The daemon's life as an operator sees it: CLI start and SIGTERM, TSDB outages, restarts that keep models."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.integration.test_daemon_prometheus import after_cycles, run_daemon, samples, scrape, value, wait_for_scores
from tests.servers import PrometheusServer, free_port
from tests.synthetic import Scenario

pytestmark = pytest.mark.integration

RULES = """
groups:
  - name: lifecycle
    interval: 1s
    rules:
      - anomaly: requests
        expr: oa_test_requests
        step: 1m
        train: {window: 3d, every: 1d}
        min_history: 1d
"""


@pytest.fixture
def prometheus(tmp_path):
    scenario = Scenario(end=time.time(), series=8, spiked=(0,), constant=None, gappy=None, short=None)
    with PrometheusServer(tmp_path, series=scenario.build()) as server:
        yield server


async def test_prometheus_down_then_back_up(prometheus, tmp_path):
    base, stop, task = await run_daemon(prometheus, tmp_path, RULES)
    try:
        await wait_for_scores(f"{base}/metrics", "requests")
        prometheus.stop()
        down = await after_cycles(f"{base}/metrics", "lifecycle", cycles=3)  # cycles scored blind
        assert value(down, "oa_rule_healthy", rule="requests") == 0
        assert value(down, "oa_anomaly_score", rule="requests") is None  # no stale scores while blind
        assert value(down, "oa_query_failures_total", rule="requests", kind="instant") >= 1
        prometheus.start()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            back = await scrape(f"{base}/metrics")
            if value(back, "oa_rule_healthy", rule="requests") == 1 and value(back, "oa_anomaly_score"):
                break
            await asyncio.sleep(0.5)
        else:
            raise AssertionError("the daemon did not recover when Prometheus came back")
        assert value(back, "oa_fits_total", rule="requests") == 1  # the model survived the outage
    finally:
        stop.set()
        assert await task == 0


async def test_restart_loads_the_stored_model_instead_of_refitting(prometheus, tmp_path):
    base, stop, task = await run_daemon(prometheus, tmp_path, RULES)
    try:
        await wait_for_scores(f"{base}/metrics", "requests")
    finally:
        stop.set()
        assert await task == 0
    assert list((tmp_path / "models" / "requests").glob("*.oamodel"))

    base, stop, task = await run_daemon(prometheus, tmp_path, RULES)
    try:
        found = await wait_for_scores(f"{base}/metrics", "requests", timeout=90)
    finally:
        stop.set()
        assert await task == 0
    assert value(found, "oa_fits_total", rule="requests") == 0  # nothing was fitted this time
    assert value(found, "oa_model_age_seconds", rule="requests") > 0
    assert value(found, "oa_anomaly_score", rule="requests", instance="host-00") > 1


def test_cli_run_serves_metrics_and_stops_cleanly_on_sigterm(prometheus, tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    port = free_port()
    env = {**os.environ, "OA_WEB_LISTEN_ADDRESS": f"127.0.0.1:{port}", "OA_ARTIFACT_DIR": str(tmp_path / "m"),
           "OA_POOL_WORKERS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "oa_exporter", "run", "--rules", str(rules), "--prometheus-url", prometheus.url,
         "--log.format", "json"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        found = _poll_scores(f"http://127.0.0.1:{port}/metrics", deadline=time.monotonic() + 60)
        assert value(found, "oa_anomaly_score", rule="requests", instance="host-00") > 1
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    finally:
        process.kill()
    log_lines = process.stderr.read().splitlines()
    assert any('"msg": "shutting down"' in line for line in log_lines), log_lines[-5:]


def test_cli_run_refuses_invalid_rules_with_file_and_line(tmp_path):
    rules = tmp_path / "bad.yaml"
    rules.write_text("groups:\n  - name: g\n    rules:\n      - anomaly: x\n        expr: up\n        stepp: 1m\n")
    result = subprocess.run(
        [sys.executable, "-m", "oa_exporter", "run", "--rules", str(rules), "--web.listen-address",
         f"127.0.0.1:{free_port()}"], capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1
    assert f"{rules}:6" in result.stderr and "stepp" in result.stderr


def _poll_scores(url: str, deadline: float) -> dict:
    while time.monotonic() < deadline:
        try:
            found = samples(urllib.request.urlopen(url, timeout=2).read().decode())
            if found.get("oa_anomaly_score"):
                return found
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError("no scores served")
