"""The celery dispatcher on real brokers: a daemon queues fits, `oa-exporter worker` processes train them from the
real Prometheus and store the models, the daemon loads them and serves scores."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import aiohttp
import pytest

from oa_exporter.adapters.telemetry.prometheus_client import PrometheusTelemetry
from oa_exporter.bootstrap import celery_queue
from oa_exporter.core.domain import ModelSpec, Rule
from oa_exporter.core.errors import DispatchError
from oa_exporter.core.jobs import TrainingJob
from oa_exporter.entrypoints.daemon import serve
from oa_exporter.settings import Settings
from tests.integration.test_daemon_prometheus import samples, scrape, value, wait_for_scores
from tests.proxy import CountingProxy
from tests.servers import PrometheusServer, free_port
from tests.synthetic import Scenario
from tests.workers import SYSTEM_RABBITMQ, SYSTEM_REDIS, RedisServer, Worker, reachable

pytestmark = pytest.mark.integration

RULES = """
groups:
  - name: synthetic
    interval: 1s
    rules:
      - anomaly: requests
        expr: oa_test_requests
        step: 1m
        train: {window: 3d, every: 1d}
        min_history: 1d
"""


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory):
    scenario = Scenario(end=time.time())
    with PrometheusServer(tmp_path_factory.mktemp("prom"), series=scenario.build()) as server:
        yield server


def purge(broker: str) -> None:
    """Drop jobs left in the queues by an earlier run (the machine's brokers outlive the tests)."""
    from celery import Celery

    app = Celery(broker=broker, set_as_current=False)
    for queue in ("training", "inference"):
        with app.connection_for_write() as conn, conn.channel() as channel, \
                contextlib.suppress(Exception):  # the queue does not exist yet
            channel.queue_purge(queue)
    app.close()


def broker_url(kind: str, tmp_path: Path) -> str:
    if kind == "redis":
        if not reachable("127.0.0.1", 6379):
            pytest.fail("Redis is not running on 127.0.0.1:6379 (.ci/run starts it)")
        return SYSTEM_REDIS
    if kind == "rabbitmq":
        if not reachable("127.0.0.1", 5672):
            pytest.fail("RabbitMQ is not running on 127.0.0.1:5672 (.ci/run starts it)")
        return SYSTEM_RABBITMQ
    return f"sqla+sqlite:///{tmp_path / 'broker.db'}"


def worker_env(broker: str, prometheus: PrometheusServer, tmp_path: Path, **extra: str) -> dict[str, str]:
    """The OA_* variables daemon and workers share."""
    return {"OA_DISPATCHER": "celery", "OA_CELERY_BROKER": broker, "OA_PROMETHEUS_URL": prometheus.url,
            "OA_ARTIFACT_STORE": "local", "OA_ARTIFACT_DIR": str(tmp_path / "models"), "OA_JOB_TIMEOUT": "120",
            "OA_LOG_LEVEL": "info", **extra}


def daemon_settings(env: dict[str, str], tmp_path: Path, rules: str = RULES) -> Settings:
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(rules)
    port = free_port()
    settings = Settings.from_env(env).with_overrides({
        "rules": (str(rules_file),), "web_listen_address": f"127.0.0.1:{port}", "query_retries": 1})
    return settings


@contextlib.asynccontextmanager
async def daemon(settings: Settings):
    """The daemon serving on settings.web_listen_address; yields its base URL; stops it (exit 0) at the end."""
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings, stop=stop))
    try:
        yield f"http://127.0.0.1:{settings.web_listen_address.rsplit(':', 1)[1]}"
    finally:
        stop.set()
        assert await task == 0


async def api_rules(base: str) -> list[dict]:
    async with aiohttp.ClientSession() as session, session.get(f"{base}/api/v1/rules") as response:
        return (await response.json())["data"]["rules"]


@pytest.mark.parametrize("kind", ["redis", "rabbitmq", "sqlite"])
async def test_the_daemon_queues_fits_and_serves_the_workers_models(kind, prometheus, tmp_path):
    broker = broker_url(kind, tmp_path)
    if kind != "sqlite":
        purge(broker)
    env = worker_env(broker, prometheus, tmp_path)
    settings = daemon_settings(env, tmp_path)
    with Worker(env, tmp_path / "worker.log") as worker:
        worker.wait_for_log("ready.")
        async with daemon(settings) as base:
            found = await wait_for_scores(f"{base}/metrics", "requests", timeout=90)
            rules = await api_rules(base)
        assert "training job" in worker.log()  # the worker fitted it, not the daemon
        own = samples(urllib.request.urlopen(f"{worker.metrics_url}/metrics", timeout=5).read().decode())
        assert value(own, "oa_worker_jobs_total", queue="training", outcome="succeeded") >= 1
        assert value(own, "oa_worker_jobs_running", queue="training") == 0
        assert urllib.request.urlopen(f"{worker.metrics_url}/-/healthy", timeout=5).status == 200
    scores = {s.labels["instance"]: s.value for s in found["oa_anomaly_score"] if s.labels["rule"] == "requests"}
    assert scores["host-00"] > 1 and scores["host-05"] < 1, scores
    artifact = rules[0]["artifact"]
    assert artifact and (tmp_path / "models" / artifact).exists()  # written by the worker, loaded by the daemon
    assert rules[0]["series"]["ready"] == 19
    assert value(found, "oa_jobs_succeeded_total", queue="training") >= 1
    assert value(found, "oa_jobs_queued", queue="training") == 0
    assert value(found, "oa_fits_total", rule="requests") >= 1


REFITTING = RULES.replace("every: 1d", "every: 20s")


async def test_workers_resume_each_rules_history_from_the_model_directory_they_share(prometheus, tmp_path):
    """A rule's fits on one worker, then on another started after it stopped (the next worker to take the rule,
    or a restart): after the very first fit, every fit reads from the TSDB only what is new, whichever worker
    it runs on, through the history kept beside the models (.history in the shared --artifact.dir)."""
    broker = broker_url("redis", tmp_path)
    purge(broker)
    proxy = await CountingProxy(prometheus.url).start()  # counts what the workers' range reads return
    env = worker_env(broker, prometheus, tmp_path, OA_PROMETHEUS_URL=proxy.url, OA_HISTORY_DIR="",
                     OA_CELERY_VISIBILITY_TIMEOUT="6")  # a job lost with the first worker goes to the second
    try:
        async with daemon(daemon_settings(env, tmp_path, REFITTING)) as base:
            with Worker(env, tmp_path / "one.log"):
                await wait_for_metric(base, "oa_fits_total", lambda v: v >= 1, timeout=120, rule="requests")
                whole = proxy.counts.range_samples
                proxy.counts.reset()
                fits = await wait_for_metric(base, "oa_fits_total", lambda v: v >= 3, timeout=120, rule="requests")
            one_read = proxy.counts.range_samples
            with Worker(env, tmp_path / "other.log") as other:
                done = await wait_for_metric(base, "oa_fits_total", lambda v: v >= fits + 2, timeout=120,
                                             rule="requests")
                assert "training job" in other.log()
            refits = done - 1
    finally:
        await proxy.close()
    assert 0.7 * 20 * 4320 < whole <= 20 * 4321  # the first fit read the window once
    assert (tmp_path / "models" / ".history").is_dir()
    assert one_read <= 10 * 20 * (fits - 1), one_read  # a few columns a series a refit, not 4,320
    assert proxy.counts.range_samples <= 10 * 20 * refits, (proxy.counts.range_samples, whole)  # both workers


def slow_rule() -> Rule:
    """AutoETS on every series: seconds of work, long enough to kill the worker in the middle of it."""
    return Rule(name="slow", group="g", expr="oa_test_requests", step=60.0, model=ModelSpec("statsforecast", "AutoETS"),
                train_window=3 * 86400.0, min_history=86400.0)


@pytest.mark.parametrize("kind", ["redis", "rabbitmq"])
async def test_a_job_whose_worker_is_killed_is_redelivered_and_completes(kind, prometheus, tmp_path):
    broker = broker_url(kind, tmp_path)
    purge(broker)
    env = worker_env(broker, prometheus, tmp_path, OA_CELERY_VISIBILITY_TIMEOUT="6")
    settings = Settings.from_env(env)
    queue = celery_queue(settings, PrometheusTelemetry())
    job = TrainingJob(slow_rule(), time.time())
    with Worker(env, tmp_path / "first.log") as first:
        first.wait_for_log("ready.")
        pending = asyncio.create_task(queue.train(job))
        await asyncio.to_thread(first.wait_for_log, "training job")
        await asyncio.sleep(1.0)  # in the middle of the fit
        first.kill()
        assert "succeeded" not in first.log()
    with Worker(env, tmp_path / "second.log") as second:
        outcome = await asyncio.wait_for(pending, 120)
        assert "training job" in second.log()
    await queue.close()
    assert outcome.artifact and (tmp_path / "models" / outcome.artifact).exists()
    assert outcome.trained_at == pytest.approx(job.window_end, abs=1e-3)


async def test_broker_down_keeps_the_models_scoring_and_dispatch_resumes_when_it_returns(prometheus, tmp_path):
    rules = RULES.replace("every: 1d", "every: 4s")  # a refit is due every few seconds
    with RedisServer(tmp_path) as redis:
        env = worker_env(redis.url, prometheus, tmp_path)
        settings = daemon_settings(env, tmp_path, rules)
        with Worker(env, tmp_path / "worker.log") as worker:
            worker.wait_for_log("ready.")
            async with daemon(settings) as base:
                await wait_for_scores(f"{base}/metrics", "requests", timeout=90)
                redis.stop()
                failed = await wait_for_metric(base, "oa_fit_failures_total", lambda v: v >= 2, rule="requests")
                during = await scrape(f"{base}/metrics")  # still scoring with the model it has
                assert value(during, "oa_anomaly_score", rule="requests", instance="host-00") > 1
                assert value(during, "oa_jobs_failed_total", queue="training", reason="broker") >= 1
                fits_before = value(during, "oa_fits_total", rule="requests")
                redis.start()
                await wait_for_metric(base, "oa_fits_total", lambda v: v > fits_before, rule="requests")
    assert failed >= 2


async def wait_for_metric(base: str, name: str, ok, timeout: float = 90.0, **labels: str) -> float:
    deadline, current = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        with contextlib.suppress(aiohttp.ClientConnectionError):  # the daemon's port not open yet
            current = value(await scrape(f"{base}/metrics"), name, **labels)
            if current is not None and ok(current):
                return current
        await asyncio.sleep(0.5)
    raise AssertionError(f"{name}{labels} never satisfied the condition; last {current}")


async def test_an_unreachable_broker_fails_the_dispatch_quickly(tmp_path):
    settings = Settings(dispatcher="celery", celery_broker=f"redis://127.0.0.1:{free_port()}/0")
    queue = celery_queue(settings, PrometheusTelemetry())
    started = time.monotonic()
    with pytest.raises(DispatchError, match="broker unreachable"):
        await queue.train(TrainingJob(slow_rule(), time.time()))
    await queue.close()
    assert time.monotonic() - started < 30


async def test_a_stuck_job_times_out_and_is_retried_a_bounded_number_of_times(prometheus, tmp_path):
    broker = broker_url("redis", tmp_path)
    purge(broker)
    env = worker_env(broker, prometheus, tmp_path, OA_JOB_TIMEOUT="1", OA_JOB_RETRIES="1")
    telemetry = PrometheusTelemetry()
    queue = celery_queue(Settings.from_env(env), telemetry)
    with Worker(env, tmp_path / "worker.log") as worker:
        worker.wait_for_log("ready.")
        with pytest.raises(DispatchError, match="JobTimeout"):
            await asyncio.wait_for(queue.train(TrainingJob(slow_rule(), time.time())), 120)
        assert worker.log().count("training job train:") == 2  # the first attempt and one retry, no more
        own = samples(urllib.request.urlopen(f"{worker.metrics_url}/metrics", timeout=5).read().decode())
        assert value(own, "oa_worker_jobs_total", queue="training", outcome="retried") == 1
        assert value(own, "oa_worker_jobs_total", queue="training", outcome="failed") == 1
    await queue.close()
    page = telemetry.render().decode()
    assert 'oa_jobs_failed_total{queue="training",reason="timeout"} 1.0' in page
    assert 'oa_jobs_retried_total{queue="training"} 1.0' in page


async def test_band_refreshes_run_on_the_inference_queue(prometheus, tmp_path):
    broker = broker_url("redis", tmp_path)
    purge(broker)
    env = worker_env(broker, prometheus, tmp_path, OA_CELERY_INFERENCE="always")
    settings = daemon_settings(env, tmp_path)
    with Worker(env, tmp_path / "training.log") as training, \
            Worker(env, tmp_path / "inference.log", queue="inference") as inference:
        training.wait_for_log("ready.")
        inference.wait_for_log("ready.")
        async with daemon(settings) as base:
            found = await wait_for_scores(f"{base}/metrics", "requests", timeout=90)
        assert "Task oa.bands[" in inference.log() and "succeeded" in inference.log()
        assert "Task oa.bands[" not in training.log()
    scores = {s.labels["instance"]: s.value for s in found["oa_anomaly_score"] if s.labels["rule"] == "requests"}
    assert scores["host-00"] > 1 and scores["host-05"] < 1, scores
    assert value(found, "oa_jobs_succeeded_total", queue="inference") >= 1


def test_a_worker_whose_metrics_address_is_taken_says_so_and_exits(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "OA_CELERY_BROKER": "redis://127.0.0.1:1/0", "OA_ARTIFACT_DIR": str(tmp_path),
               "OA_WORKER_LISTEN_ADDRESS": f"127.0.0.1:{port}"}
        done = subprocess.run([sys.executable, "-m", "oa_exporter", "worker", "--queue", "training"], env=env,
                              capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "worker not started" in done.stderr and "address already in use" in done.stderr.lower()


async def test_sharded_daemons_share_the_workers_and_each_serves_its_own_share(prometheus, tmp_path):
    broker = broker_url("redis", tmp_path)
    purge(broker)
    env = worker_env(broker, prometheus, tmp_path, OA_CELERY_INFERENCE="always", OA_SHARD_COUNT="2")
    replicas = [daemon_settings(env, tmp_path).with_overrides({"shard_index": i}) for i in range(2)]
    with Worker(env, tmp_path / "training.log") as training, \
            Worker(env, tmp_path / "inference.log", queue="inference") as inference:
        training.wait_for_log("ready.")
        inference.wait_for_log("ready.")
        async with daemon(replicas[0]) as first, daemon(replicas[1]) as second:
            pages = await asyncio.gather(*(wait_for_scores(f"{base}/metrics", "requests", timeout=120)
                                           for base in (first, second)))
            rules = [(await api_rules(base))[0] for base in (first, second)]
        assert training.log().count("training job train:") == 2 and ":shard-1-of-2" in training.log()
        assert "succeeded" in inference.log()
    owned = [{s.labels["instance"] for s in page["oa_anomaly_score"] if s.labels["rule"] == "requests"}
             for page in pages]
    assert owned[0] and owned[1] and not owned[0] & owned[1] and len(owned[0] | owned[1]) == 19
    assert sum(rule["shard"]["series"] for rule in rules) == rules[0]["shard"]["of"]  # every series, one shard each
    assert [rule["series"]["ready"] for rule in rules] == [len(owned[0]), len(owned[1])]  # each fitted its share
    folders = sorted(p.name for p in (tmp_path / "models").iterdir() if p.is_dir() and not p.name.startswith("."))
    assert folders == ["requests", "requests%40shard-1"]
