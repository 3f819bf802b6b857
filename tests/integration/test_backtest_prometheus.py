"""`oa-exporter backtest` against a real Prometheus gives the scores the running daemon gave."""

from __future__ import annotations

import asyncio
import csv
import math
import time
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from oa_exporter.entrypoints.cli import main
from oa_exporter.entrypoints.daemon import serve
from oa_exporter.settings import Settings
from tests.servers import PrometheusServer, free_port
from tests.synthetic import Scenario

pytestmark = pytest.mark.integration

# Bands that do not depend on the minute (no season: a level and one noise scale), so that the daemon's
# scoring cycle, a few seconds after its fit, and the backtest's next step read the same band.
RULES = """
groups:
  - name: synthetic
    interval: 2s
    rules:
      - anomaly: requests
        expr: oa_test_requests
        step: 1m
        model: {name: SeasonalProfile, params: {seasons: []}}
        train: {window: 3d, every: 1d}
        forecast: {horizon: 1h, level: 99}
        min_history: 1d
"""


@pytest.fixture
def prometheus(tmp_path):
    scenario = Scenario(end=math.floor(time.time() / 60) * 60)  # the last samples on this minute: still fresh
    with PrometheusServer(tmp_path, series=scenario.build()) as server:
        yield server


async def scrape(url: str) -> dict[str, list]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        text = await response.text()
    found: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append(sample)
    return found


async def wait_for_scores(url: str, rule: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if any(s.labels.get("rule") == rule for s in (await scrape(url)).get("oa_anomaly_score", [])):
                return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.5)
    raise AssertionError(f"no scores for rule {rule} within {timeout}s")


async def daemon_scores(prometheus: PrometheusServer, rules: Path, tmp_path: Path) -> tuple[dict, float]:
    """The daemon's scores per instance, and when it trained the model that gave them."""
    port = free_port()
    settings = Settings(rules=(str(rules),), prometheus_url=prometheus.url, web_listen_address=f"127.0.0.1:{port}",
                        artifact_dir=str(tmp_path / "models"), pool_workers=1, query_retries=1)
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings, stop=stop))
    try:
        await wait_for_scores(f"http://127.0.0.1:{port}/metrics", "requests")
        found = await scrape(f"http://127.0.0.1:{port}/metrics")
    finally:
        stop.set()
        assert await task == 0
    trained_at = next(s.value for s in found["oa_model_last_fit_timestamp_seconds"] if s.labels["rule"] == "requests")
    results = {}
    for name in ("oa_y", "oa_yhat", "oa_yhat_lower", "oa_yhat_upper", "oa_anomaly_score"):
        for sample in found.get(name, []):
            if sample.labels["rule"] == "requests":
                results.setdefault(sample.labels["instance"], {})[name] = sample.value
    return {k: v for k, v in results.items() if "oa_anomaly_score" in v}, trained_at


async def test_backtest_reproduces_the_daemons_scores(prometheus, tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    daemon, trained_at = await daemon_scores(prometheus, rules, tmp_path)
    assert len(daemon) == 19 and all(daemon[h]["oa_anomaly_score"] > 1 for h in ("host-00", "host-01", "host-02"))

    fitted = math.floor(trained_at / 60) * 60  # the daemon's fit read the window ending on this minute
    out = tmp_path / "backtest"
    code = await asyncio.to_thread(main, [
        "backtest", "--rules", str(rules), "--from", str(fitted), "--to", str(fitted + 60),
        "--prometheus-url", prometheus.url, "--out", str(out), "--jobs", "1", "--no-progress"])
    assert code == 0
    replayed = {}
    for path in (out / "requests").glob("*.csv"):
        rows = list(csv.DictReader(path.open()))
        assert [r["anomaly_score"] for r in rows[:1]] == [""]  # the first cycle fits; the next is scored
        instance = path.stem.split("instance=")[1].split(",")[0]
        if rows[1]["anomaly_score"]:
            replayed[instance] = rows[1]
    assert set(replayed) == set(daemon)
    columns = {"oa_y": "y", "oa_yhat": "yhat", "oa_yhat_lower": "yhat_lower", "oa_yhat_upper": "yhat_upper",
               "oa_anomaly_score": "anomaly_score"}
    for instance, exported in daemon.items():
        for metric, column in columns.items():
            assert float(replayed[instance][column]) == pytest.approx(exported[metric], rel=1e-9, abs=1e-9), (
                instance, metric)
