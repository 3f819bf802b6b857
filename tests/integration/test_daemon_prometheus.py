"""End to end: rules file → real Prometheus (backfilled) → fit → score → /metrics, as a user scrapes it."""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from oa_exporter.entrypoints.daemon import serve
from oa_exporter.settings import Settings
from tests.servers import PrometheusServer, free_port
from tests.synthetic import Scenario

pytestmark = pytest.mark.integration

RULES = """
groups:
  - name: synthetic
    interval: 2s
    rules:
      - anomaly: requests
        expr: oa_test_requests
        step: 1m
        train: {window: 3d, every: 1d}
        forecast: {horizon: 1h, level: 99}
        min_history: 1d
        labels: {team: sre}
      - anomaly: broken_promql_at_server
        expr: label_replace(oa_test_requests, "broken", "$1", "job", "(")
        step: 1m
        train: {window: 3d}
        min_history: 1d
      - anomaly: clashing
        expr: label_replace(oa_test_requests{instance="host-05"}, "rule", "theirs", "", "")
        step: 1m
        train: {window: 3d}
        min_history: 1d
      - anomaly: too_many
        expr: oa_test_requests
        step: 1m
        train: {window: 3d}
        min_history: 1d
        max_series: 5
"""


def samples(text: str) -> dict[str, list]:
    by_name: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            by_name.setdefault(sample.name, []).append(sample)
    return by_name


def value(found: dict, name: str, **labels: str) -> float | None:
    """The value of the first sample of `name` carrying these labels, or None."""
    for sample in found.get(name, []):
        if all(sample.labels.get(k) == v for k, v in labels.items()):
            return sample.value
    return None


async def scrape(url: str) -> dict[str, list]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return samples(await response.text())


async def after_cycles(url: str, group: str, cycles: int = 2, timeout: float = 120.0) -> dict[str, list]:
    """The page once the group finished `cycles` more scoring cycles (the first may be under way now)."""
    deadline = time.monotonic() + timeout
    before = value(await scrape(url), "oa_cycle_duration_seconds_count", group=group) or 0.0
    while time.monotonic() < deadline:
        found = await scrape(url)
        if (value(found, "oa_cycle_duration_seconds_count", group=group) or 0.0) >= before + cycles:
            return found
        await asyncio.sleep(0.3)
    raise AssertionError(f"group {group}: not {cycles} more cycles within {timeout}s")


async def wait_for_scores(url: str, rule: str, timeout: float = 180.0) -> dict[str, list]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            found = await scrape(url)
        except aiohttp.ClientError:
            found = {}
        if any(s.labels.get("rule") == rule for s in found.get("oa_anomaly_score", [])):
            return found
        await asyncio.sleep(0.5)
    raise AssertionError(f"no scores for rule {rule} within {timeout}s")


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory):
    scenario = Scenario(end=time.time())
    with PrometheusServer(tmp_path_factory.mktemp("prom"), series=scenario.build()) as server:
        server.scenario = scenario
        yield server


async def run_daemon(prometheus, tmp_path: Path, rules: str = RULES, port: int | None = None):
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(rules)
    port = port or free_port()
    settings = Settings(
        rules=(str(rules_file),), prometheus_url=prometheus.url, web_listen_address=f"127.0.0.1:{port}",
        artifact_dir=str(tmp_path / "models"), pool_workers=1, query_retries=1,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings, stop=stop))
    return f"http://127.0.0.1:{port}", stop, task


async def test_injected_anomalies_score_above_one_and_normal_points_below(prometheus, tmp_path):
    base, stop, task = await run_daemon(prometheus, tmp_path)
    try:
        found = await wait_for_scores(f"{base}/metrics", "requests")
    finally:
        stop.set()
        assert await task == 0
    scores = {s.labels["instance"]: s.value for s in found["oa_anomaly_score"] if s.labels["rule"] == "requests"}
    for spiked in ("host-00", "host-01", "host-02"):
        assert scores[spiked] > 1, scores
    normal = [v for k, v in scores.items() if k not in ("host-00", "host-01", "host-02", "host-19")]
    assert sum(v < 1 for v in normal) >= 0.9 * len(normal), scores
    assert scores["host-19"] == 0.0  # constant series, exactly on its forecast
    assert "host-17" not in scores  # too short: not ready, not scored
    ys = {s.labels["instance"] for s in found["oa_y"] if s.labels["rule"] == "requests"}
    assert "host-17" in ys  # ... but its value is still exported

    sample = next(s for s in found["oa_yhat"] if s.labels == {**s.labels, "instance": "host-05", "rule": "requests"})
    assert sample.labels == {"rule": "requests", "instance": "host-05", "job": "synthetic", "team": "sre"}
    lower = {s.labels["instance"]: s.value for s in found["oa_yhat_lower"] if s.labels["rule"] == "requests"}
    upper = {s.labels["instance"]: s.value for s in found["oa_yhat_upper"] if s.labels["rule"] == "requests"}
    yhat = {s.labels["instance"]: s.value for s in found["oa_yhat"] if s.labels["rule"] == "requests"}
    assert all(lower[k] <= yhat[k] <= upper[k] for k in yhat)
    clash = next(s for s in found["oa_y"] if s.labels["rule"] == "clashing")
    assert clash.labels["exported_rule"] == "theirs"


async def test_self_metrics_report_states_failures_and_reload(prometheus, tmp_path):
    base, stop, task = await run_daemon(prometheus, tmp_path)
    try:
        await wait_for_scores(f"{base}/metrics", "requests")
        found = await after_cycles(f"{base}/metrics", "synthetic")  # the failing rules through one more cycle
        async with aiohttp.ClientSession() as session:
            for path in ("/-/healthy", "/-/ready"):
                async with session.get(base + path) as response:
                    assert response.status == 200
    finally:
        stop.set()
        assert await task == 0

    def value(name: str, **labels: str) -> float:
        return next(s.value for s in found[name] if all(s.labels.get(k) == v for k, v in labels.items()))

    assert value("oa_rules_loaded") == 4
    assert value("oa_rules_last_reload_successful") == 1
    assert value("oa_rule_series", rule="requests", state="ready") == 19
    assert value("oa_rule_series", rule="requests", state="not-ready") == 1
    assert value("oa_rule_healthy", rule="requests") == 1
    assert value("oa_rule_healthy", rule="too_many") == 0
    assert value("oa_rule_healthy", rule="broken_promql_at_server") == 0
    assert value("oa_query_failures_total", rule="broken_promql_at_server", kind="instant") >= 1
    assert value("oa_fits_total", rule="requests") >= 1
    assert value("oa_fit_duration_seconds_count", rule="requests") >= 1
    assert 0 <= value("oa_model_age_seconds", rule="requests") < 120
    assert value("oa_cycle_duration_seconds_count", group="synthetic") >= 1
    assert not any(s.labels.get("rule") == "too_many" for s in found.get("oa_y", []))
    assert math.isfinite(value("oa_rules_last_reload_success_timestamp_seconds"))
