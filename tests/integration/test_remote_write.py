"""Remote write end to end, into a real Prometheus (--web.enable-remote-write-receiver) and a real
VictoriaMetrics (/api/v1/write): results arrive queryable; a receiver outage, and a SIGKILLed daemon while the
receiver is down, lose nothing. The source of the scored series is a second, backfilled Prometheus."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from oa_exporter.adapters.sinks.remote_write import RemoteDestination, RemoteWriteOptions, RemoteWriteSink
from oa_exporter.bootstrap import bootstrap
from oa_exporter.core.domain import ModelSpec, Rule, RuleScores
from oa_exporter.entrypoints.daemon import serve
from oa_exporter.settings import Settings
from tests.integration.test_daemon_prometheus import samples, scrape
from tests.servers import PrometheusServer, TSDBServer, VictoriaMetricsServer, free_port
from tests.synthetic import Scenario

pytestmark = pytest.mark.integration

RULES = """
groups:
  - name: rw
    interval: 1s
    rules:
      - anomaly: requests
        expr: oa_test_requests
        step: 1m
        train: {window: 3d, every: 1d}
        min_history: 1d
        labels: {team: sre}
"""
SERIES = 6
FAMILIES = "oa_y|oa_yhat|oa_yhat_lower|oa_yhat_upper|oa_anomaly_score"
ALL = f'{{__name__=~"{FAMILIES}",rule="requests"}}'
MAX_GAP = 2.5  # seconds between two cycles' samples of one series, with the ticker's jitter (interval 1s, fast cycles)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Iterator[PrometheusServer]:
    scenario = Scenario(end=time.time(), series=SERIES, spiked=(0,), constant=None, gappy=None, short=None)
    with PrometheusServer(tmp_path_factory.mktemp("source"), series=scenario.build()) as server:
        yield server


@pytest.fixture(params=["prometheus", "victoria-metrics"])
def receiver(request, tmp_path) -> Iterator[TSDBServer]:
    """An empty receiver, not started: the test starts (and stops) it."""
    if request.param == "prometheus":
        server: TSDBServer = PrometheusServer(tmp_path)
    else:  # one sample per series and millisecond: a batch sent twice (at least once delivery) is not counted twice
        server = VictoriaMetricsServer(tmp_path, extra_args=["-dedup.minScrapeInterval=1ms"])
    yield server
    server.stop()


def write_url(server: TSDBServer) -> str:
    return f"{server.url}/api/v1/write"


def settle(server: TSDBServer) -> None:
    """Make what was written searchable now (VictoriaMetrics buffers writes for up to a second)."""
    if isinstance(server, VictoriaMetricsServer):
        urllib.request.urlopen(f"{server.url}/internal/force_flush", timeout=10).read()


def count(server: TSDBServer, at: float | None = None) -> int:
    """Samples of every result family of the rule in the TSDB, up to `at`."""
    settle(server)
    expr = " + ".join(f'sum(count_over_time({name}{{rule="requests"}}[15m]))' for name in FAMILIES.split("|"))
    result = server.query(expr, time=at)["result"]
    return int(float(result[0]["value"][1])) if result else 0


def stamps(server: TSDBServer, instance: str, until: float | None = None) -> list[float]:
    """Timestamps of one series' oa_y samples (raw, as written)."""
    settle(server)
    [series] = server.query(f'oa_y{{rule="requests",instance="{instance}"}}[15m]', time=until)["result"]
    return [float(t) for t, _ in series["values"]]


def largest_gap(times: list[float]) -> float:
    return max((b - a for a, b in zip(times, times[1:])), default=0.0)


def recording_cycles(runner) -> list[float]:
    """The time of every scoring cycle the runner starts, as its samples are stamped."""
    started: list[float] = []
    cycle = runner.cycle

    async def recorded(group, now):
        started.append(now)
        await cycle(group, now)

    runner.cycle = recorded
    return started


def milliseconds(times: list[float]) -> set[int]:
    return {round(t * 1000) for t in times}


def slowest_cycle(found: dict) -> float:
    """An upper bound of the daemon's slowest scoring cycle so far: the smallest bucket holding all of them."""
    buckets = [(float(s.labels["le"]), s.value) for s in found["oa_cycle_duration_seconds_bucket"]]
    total = max(count for _, count in buckets)
    return min(bound for bound, count in buckets if count == total)


async def wait_until(condition, timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = await asyncio.to_thread(condition)
        if found:
            return found
        await asyncio.sleep(0.3)
    raise AssertionError(f"{what}: not within {timeout:.0f}s")


def settings_for(source: PrometheusServer, receiver: TSDBServer, tmp_path: Path, mode: str) -> Settings:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    return Settings(
        rules=(str(rules),), prometheus_url=source.url, web_listen_address=f"127.0.0.1:{free_port()}",
        artifact_dir=str(tmp_path / "models"), pool_workers=1, query_retries=1, output_mode=mode,
        remote_write_urls=(write_url(receiver),), remote_write_queue_dir=str(tmp_path / "queue"),
        remote_write_max_backoff=0.5,
    )


def all_results_arrived(receiver: TSDBServer) -> bool:
    settle(receiver)
    found = receiver.query(f"count by (__name__) ({ALL})")["result"]
    return len(found) == 5 and all(int(r["value"][1]) == SERIES for r in found)


async def test_results_arrive_queryable_with_their_names_labels_and_timestamps(source, receiver, tmp_path):
    receiver.start()
    settings = settings_for(source, receiver, tmp_path, "both")
    app = bootstrap(settings)
    cycles = recording_cycles(app.runner)
    stop = asyncio.Event()
    started = time.time()
    task = asyncio.create_task(serve(settings, app=app, stop=stop))
    try:
        await wait_until(lambda: all_results_arrived(receiver), timeout=180, what="every family of every series")
        arrived = time.time()
        await wait_until(lambda: len([t for t in cycles if t > arrived]) >= 3, what="a few more cycles")
        page = await scrape(f"http://{settings.web_listen_address}/metrics")
    finally:
        stop.set()
        assert await task == 0
    assert any(s.labels.get("rule") == "requests" for s in page["oa_anomaly_score"])  # `both`: /metrics too

    [score] = receiver.query('oa_anomaly_score{instance="host-00"}')["result"]
    assert score["metric"] == {"__name__": "oa_anomaly_score", "rule": "requests", "instance": "host-00",
                               "job": "synthetic", "team": "sre"}
    assert float(score["value"][1]) > 1  # the spiked series, as /metrics shows it

    times = stamps(receiver, "host-03")
    assert started <= times[0] and times[-1] <= time.time()
    assert len(times) >= 3 and min(b - a for a, b in zip(times, times[1:])) > 0.5
    assert milliseconds([t for t in cycles if t >= times[0]][:-1]) <= milliseconds(times)  # every cycle's sample
    [y] = receiver.query('oa_y{instance="host-03"}', time=times[-1])["result"]
    [truth] = source.query('oa_test_requests{instance="host-03"}', time=times[-1])["result"]
    exact = isinstance(receiver, PrometheusServer)  # VictoriaMetrics keeps 12 significant digits
    expected = float(truth["value"][1]) if exact else pytest.approx(float(truth["value"][1]), rel=1e-11)
    assert float(y["value"][1]) == expected  # the value the TSDB had at the sample's timestamp


async def test_a_receiver_outage_during_scoring_loses_no_sample(source, receiver, tmp_path):
    receiver.start()
    settings = settings_for(source, receiver, tmp_path, "remote-write")
    app = bootstrap(settings)
    registry = app.telemetry.registry
    url = write_url(receiver)
    cycles = recording_cycles(app.runner)
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings, app=app, stop=stop))
    try:
        await wait_until(lambda: all_results_arrived(receiver), timeout=180, what="results before the outage")
        receiver.stop()
        down = time.time()
        # five cycles scored while the receiver is down (about five seconds; longer on a loaded machine)
        await wait_until(lambda: len([t for t in cycles if t > down]) >= 5 and time.time() - down >= 5,
                         what="five cycles during the outage")
        page = await scrape(f"http://{settings.web_listen_address}/metrics")
        assert page["oa_remote_write_queue_samples"][0].value >= 4 * SERIES * 5
        assert page["oa_remote_write_samples_retried_total"][0].value > 0
        assert page["oa_remote_write_oldest_sample_age_seconds"][0].value >= 3
        assert "oa_anomaly_score" not in page or not page["oa_anomaly_score"]  # remote-write only: not on /metrics
        receiver.start()
        up = time.time()
        await wait_until(lambda: len([t for t in cycles if t > up + 1]) >= 2, what="a few cycles after it")
        await wait_until(lambda: registry.get_sample_value("oa_remote_write_queue_samples", {"url": url}) == 0,
                         what="the queue drained")
    finally:
        stop.set()
        assert await task == 0
    queued = registry.get_sample_value("oa_remote_write_samples_queued_total", {"url": url})
    assert registry.get_sample_value("oa_remote_write_samples_sent_total", {"url": url}) == queued
    assert registry.get_sample_value("oa_remote_write_queue_samples", {"url": url}) == 0
    assert not [s for m in registry.collect() if m.name == "oa_remote_write_samples_dropped" for s in m.samples]
    # every sample the daemon produced is in the TSDB, once (VictoriaMetrics shows the last writes after a while)
    await wait_until(lambda: count(receiver) == queued, timeout=60, what=f"{queued:.0f} samples in the TSDB")
    times = stamps(receiver, "host-02")
    assert times[0] < down and times[-1] > up + 1
    scored = [t for t in cycles if t >= times[0]][:-1]  # the last cycle may have been cut short by the stop
    assert milliseconds(scored) <= milliseconds(times)  # every cycle, outage or not, is in the TSDB: no hole


def run_daemon(source: PrometheusServer, receiver: TSDBServer, tmp_path: Path, port: int) -> subprocess.Popen:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    env = {**os.environ, "OA_WEB_LISTEN_ADDRESS": f"127.0.0.1:{port}", "OA_ARTIFACT_DIR": str(tmp_path / "models"),
           "OA_POOL_WORKERS": "1", "OA_OUTPUT_MODE": "remote-write", "OA_REMOTE_WRITE_URL": write_url(receiver),
           "OA_REMOTE_WRITE_QUEUE_DIR": str(tmp_path / "queue"), "OA_REMOTE_WRITE_MAX_BACKOFF": "0.5"}
    return subprocess.Popen(
        [sys.executable, "-m", "oa_exporter", "run", "--rules", str(rules), "--prometheus-url", source.url],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )


def page_of(port: int) -> dict[str, list]:
    return samples(urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode())


def metric_of(port: int, name: str) -> float | None:
    try:
        found = page_of(port)
    except OSError:
        return None
    return found[name][0].value if found.get(name) else None


async def test_sigkill_while_the_receiver_is_down_then_a_restart_drains_the_queue(source, receiver, tmp_path):
    port = free_port()
    daemon = run_daemon(source, receiver, tmp_path, port)  # the receiver is not started: down from the start
    try:
        backlog = await wait_until(
            lambda: (q := metric_of(port, "oa_remote_write_queue_samples")) and q >= 3 * SERIES * 5 and q,
            timeout=180, what="three scored cycles queued")  # a loaded machine takes a while to start and fit
        # two cycles' samples lie at most one cycle apart: the interval, or the slowest cycle on a loaded machine
        max_gap = MAX_GAP + max(slowest_cycle(page_of(port)) - 1.0, 0.0)
        killed = time.time()
        daemon.send_signal(signal.SIGKILL)
        daemon.wait(timeout=10)

        daemon = run_daemon(source, receiver, tmp_path, port)  # the receiver is still down
        await wait_until(lambda: (q := metric_of(port, "oa_remote_write_queue_samples")) and q >= backlog,
                         timeout=180, what="the queue found again after the restart")
        receiver.start()
        await wait_until(lambda: metric_of(port, "oa_remote_write_queue_samples") == 0, timeout=120,
                         what="the queue drained")
        assert metric_of(port, "oa_remote_write_samples_dropped_total") is None
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=30) == 0, daemon.stderr.read()[-2000:] if daemon.stderr else ""
    finally:
        daemon.kill()
    await wait_until(lambda: count(receiver, at=killed) >= backlog, timeout=60,  # all queued before the SIGKILL
                     what=f"{backlog:.0f} samples written before the SIGKILL in the TSDB")
    before = stamps(receiver, "host-04", until=killed)
    assert before[-1] > killed - max_gap and largest_gap(before) <= max_gap  # no hole up to the kill


async def test_samples_prometheus_refuses_are_dropped_and_counted_not_retried(tmp_path):
    """A real 400: samples older than the head block, to a Prometheus without an out-of-order window."""
    registry = CollectorRegistry()
    with PrometheusServer(tmp_path, out_of_order_window=None) as server:
        url = write_url(server)
        sink = RemoteWriteSink([RemoteDestination(url)], tmp_path / "queue",
                               RemoteWriteOptions(min_backoff=0.01, max_backoff=0.05), registry)
        await sink.start()
        rule = Rule("old", "g", "up", 60.0, ModelSpec("statsforecast", "SeasonalProfile"))
        try:
            for at in (time.time(), time.time() - 30 * 86400):  # now; then a month old, behind the head: 400
                labels = [{"instance": f"host-{i}"} for i in range(3)]
                column = np.arange(3.0)
                sink.publish(RuleScores(rule, [str(i).encode() for i in range(3)], labels, at, column, column,
                                        column, column, column))
                sink.flush()
            value = registry.get_sample_value
            await wait_until(lambda: value("oa_remote_write_samples_dropped_total", {"url": url, "reason": "http_400"})
                             == 15 and value("oa_remote_write_samples_sent_total", {"url": url}) == 15,
                             timeout=60, what="one cycle accepted, one refused")
            await asyncio.sleep(0.5)
            assert value("oa_remote_write_samples_retried_total", {"url": url}) == 0
            assert value("oa_remote_write_queue_samples", {"url": url}) == 0
        finally:
            await sink.close()
        assert len(server.query('oa_y{rule="old"}')["result"]) == 3
