"""Fits on workers: the daemon queues a job, a JobWorker (query, fit, store) runs it, the daemon loads the model.

The queue here is an in-process fake of the JobQueue port; the celery adapter over real brokers is tested in
tests/integration/test_celery_dispatch.py."""

from __future__ import annotations

import asyncio
import logging

import numpy as np
import pytest

from oa_exporter.adapters.engines.statsforecast import StatsForecastEngine
from oa_exporter.adapters.stores.local import LocalArtifactStore
from oa_exporter.adapters.telemetry.null import NullTelemetry
from oa_exporter.bootstrap import engine_registry, shard_trainers
from oa_exporter.core.domain import Bands, Direction, ModelSpec, Rule
from oa_exporter.core.errors import DispatchError, EngineError
from oa_exporter.core.jobs import (
    BandsJob,
    TrainingJob,
    TrainingOutcome,
    bands_from_payload,
    bands_to_payload,
    rule_from_dict,
    rule_to_dict,
)
from oa_exporter.core.services.inferencer import Inferencer
from oa_exporter.core.services.worker import JobWorker
from oa_exporter.core.sharding import Shard
from oa_exporter.settings import Settings
from tests.unit.fakes import FakeTsdb, InlineDispatcher, value, values
from tests.unit.harness import END
from tests.unit.test_runner import REQUESTS, SPIKED, fake_tsdb
from tests.unit.test_sharding import RULES as SHARDED_RULES
from tests.unit.test_sharding import many_series

RULES = f"""
groups:
  - name: web
    interval: 1m
    rules:
      - anomaly: requests
        expr: {REQUESTS}
        labels: {{team: web}}
"""


class WorkerQueue:
    """JobQueue whose 'worker' is a JobWorker in this process, over its own store object on the same directory."""

    def __init__(self, worker: JobWorker):
        self.worker = worker
        self.trained: list[TrainingJob] = []
        self.banded: list[BandsJob] = []
        self.down = False

    async def train(self, job: TrainingJob) -> TrainingOutcome:
        if self.down:
            raise DispatchError("could not queue the training job: broker unreachable")
        self.trained.append(TrainingJob.from_payload(job.payload()))  # as it would travel: JSON-safe, rebuilt
        return TrainingOutcome.from_payload(dict((await self.worker.train(self.trained[-1])).payload()))

    async def bands(self, job: BandsJob) -> Bands:
        if self.down:
            raise DispatchError("could not queue the inference job: broker unreachable")
        self.banded.append(job)
        return bands_from_payload(bands_to_payload(await self.worker.bands(BandsJob.from_payload(job.payload()))))

    async def close(self) -> None:
        pass


def job_worker(tsdb: FakeTsdb, models) -> tuple[JobWorker, InlineDispatcher]:
    """A worker wired as `oa-exporter worker` wires it (a Trainer per shard), over a store of its own."""
    engines, store, dispatcher = engine_registry(), LocalArtifactStore(models), InlineDispatcher()
    settings = Settings(artifact_keep=3, history_max_bytes=0)
    return JobWorker(shard_trainers(settings, tsdb, store, dispatcher, engines), engines), dispatcher


def a_rule(**changes) -> Rule:
    fields = dict(name="requests", group="web", expr=REQUESTS, step=60.0, labels={"team": "web"},
                  model=ModelSpec("statsforecast", "SeasonalProfile", {"seasons": ["1d"]}), direction=Direction.ABOVE)
    return Rule(**{**fields, **changes})


def test_a_rule_travels_as_json_and_comes_back_with_its_fingerprint():
    rule = a_rule()
    again = rule_from_dict(rule_to_dict(rule), rule.fingerprint())
    assert again == rule and again.fingerprint() == rule.fingerprint()
    job = TrainingJob(rule, END)
    assert TrainingJob.from_payload(job.payload()) == job
    sharded = TrainingJob(rule, END, shard=Shard(2, 3))
    assert TrainingJob.from_payload(sharded.payload()) == sharded and sharded.key != job.key


def test_a_worker_that_would_fit_another_rule_refuses_the_job():
    payload = TrainingJob(a_rule(), END).payload()
    payload["rule"]["expr"] = "something_else"  # e.g. a worker whose defaults differ from the daemon's
    with pytest.raises(EngineError, match="different versions"):
        TrainingJob.from_payload(payload)


def test_bands_travel_exactly():
    rng = np.random.default_rng(1)
    yhat = rng.normal(size=(3, 5))
    yhat[1, 2] = np.nan
    bands = Bands(END, 60.0, yhat, yhat - 1, yhat + 1)
    again = bands_from_payload(bands_to_payload(bands))
    assert again.start == END and again.step == 60.0
    np.testing.assert_array_equal(again.yhat, bands.yhat)
    np.testing.assert_array_equal(again.upper, bands.upper)


async def test_the_daemon_scores_with_the_model_its_worker_stored(start_daemon, tmp_path):
    tsdb = fake_tsdb()
    worker, worker_fits = job_worker(tsdb, tmp_path / "models")
    queue = WorkerQueue(worker)
    daemon = await start_daemon(RULES, tsdb, queue=queue, dispatcher="celery", celery_broker="redis://unused")
    await daemon.trained()
    assert len(queue.trained) == 1 and worker_fits.jobs == 1
    assert daemon.dispatcher.jobs == 0  # nothing was fitted in the daemon
    assert {host for host, s in daemon.scores("requests").items() if s > 1} == set(SPIKED)
    status = daemon.api()["requests"]
    assert (tmp_path / "models" / status.artifact).exists()
    assert status.series["ready"] == 10
    assert daemon.fits("requests") == 1


async def test_a_failed_dispatch_keeps_the_model_and_the_next_one_refits(start_daemon, tmp_path):
    tsdb = fake_tsdb()
    worker, _ = job_worker(tsdb, tmp_path / "models")
    queue = WorkerQueue(worker)
    rules = RULES.replace("labels: {team: web}", "labels: {team: web}\n        train: {window: 3d, every: 30m}")
    daemon = await start_daemon(rules, tsdb, queue=queue, dispatcher="celery", celery_broker="redis://unused")
    await daemon.trained()
    queue.down = True
    await daemon.trained(END + 40 * 60)  # a refit is due: its dispatch fails
    assert value(daemon.page, "oa_fit_failures_total", rule="requests") == 1
    assert len(daemon.scores("requests")) == 10  # still scoring with the model it has
    assert "broker unreachable" in daemon.api()["requests"].error
    queue.down = False
    await daemon.trained(END + 80 * 60)
    assert daemon.fits("requests") == 2 and len(queue.trained) == 2


async def test_a_redelivered_job_returns_the_stored_model_without_refitting(tmp_path):
    worker, fits = job_worker(fake_tsdb(), tmp_path / "models")
    job = TrainingJob(a_rule(), END)
    first = await worker.train(job)
    again = await worker.train(job, attempt=2)
    assert again.artifact == first.artifact and again.attempts == 2
    assert fits.jobs == 1
    assert again.series == first.series == {"ready": 10, "failed": 0, "not-ready": 0}


async def test_band_refreshes_go_to_the_inference_queue_and_fall_back_here_when_it_fails(tmp_path, caplog):
    tsdb = fake_tsdb()
    worker, _ = job_worker(tsdb, tmp_path / "models")
    queue = WorkerQueue(worker)
    rule = a_rule()
    outcome = await worker.train(TrainingJob(rule, END))
    model = await worker.trainers(0).read(rule, outcome.artifact)
    engines = engine_registry()
    inferencer = Inferencer(tsdb, engines, NullTelemetry(), queue, offload=lambda r: True)
    remote = await inferencer.bands(rule, model, END + 30)
    local = StatsForecastEngine().predict(model, remote.start, remote.yhat.shape[1], rule.level)
    assert len(queue.banded) == 1
    np.testing.assert_array_equal(remote.yhat, local.yhat)
    np.testing.assert_array_equal(remote.lower, local.lower)
    queue.down = True
    with caplog.at_level(logging.WARNING):
        fallback = await inferencer.bands(rule, model, END + 30)
    np.testing.assert_array_equal(fallback.upper, local.upper)
    assert "inference queue failed" in caplog.text
    never = Inferencer(tsdb, engines, NullTelemetry(), queue, offload=lambda r: False)
    queue.down = False
    await never.bands(rule, model, END + 30)
    assert len(queue.banded) == 1


async def test_a_rule_whose_fit_is_still_running_is_not_queued_again(start_daemon, tmp_path):
    tsdb = fake_tsdb()
    worker, fits = job_worker(tsdb, tmp_path / "models")
    fits.gate = asyncio.Event()  # the worker's fit hangs until released
    queue = WorkerQueue(worker)
    rules = RULES.replace("labels: {team: web}", "labels: {team: web}\n        train: {window: 3d, every: 5m}")
    daemon = await start_daemon(rules, tsdb, queue=queue, dispatcher="celery", celery_broker="redis://unused")
    for minute in range(0, 30, 5):  # refits fall due again and again while the first one runs
        await daemon.cycle(END + 60 * minute)
        await asyncio.sleep(0)
    assert len(queue.trained) == 1
    fits.gate.set()
    await daemon.fits_done()
    await daemon.trained(END + 40 * 60)
    assert len(queue.trained) == 2 and daemon.fits("requests") == 2


async def test_sharded_daemons_send_their_shares_to_the_workers_and_keep_their_models_apart(start_daemon, tmp_path,
                                                                                              caplog):
    tsdb = many_series()  # 60 series
    worker, worker_fits = job_worker(tsdb, tmp_path / "models")
    queue = WorkerQueue(worker)
    options = dict(queue=queue, dispatcher="celery", celery_broker="redis://unused", celery_inference="always",
                   shard_count=2)
    replicas = [await start_daemon(SHARDED_RULES, tsdb, shard_index=i, **options) for i in range(2)]
    with caplog.at_level(logging.WARNING):
        pages = [await replica.trained() for replica in replicas]
    owned = [set(values(page, "oa_anomaly_score", rule="requests")) for page in pages]
    assert owned[0] and owned[1] and not owned[0] & owned[1] and len(owned[0] | owned[1]) == 60
    assert [job.shard for job in queue.trained] == [Shard(0, 2), Shard(1, 2)] and worker_fits.jobs == 2
    assert all(replica.dispatcher.jobs == 0 for replica in replicas)  # fitted on the worker, not in the daemons
    for i, replica in enumerate(replicas):  # each model covers its shard's series only, under the shard's name
        stored, _ = await worker.trainers(i).store.get(replica.api()["requests"].artifact)
        assert {labels["instance"] for labels in stored.labels} == owned[i]
    assert {job.shard for job in queue.banded} == {0, 1}  # band refreshes too, each from its shard's model
    assert "inference queue failed" not in caplog.text
    folders = sorted(p.name for p in (tmp_path / "models").iterdir() if p.is_dir() and not p.name.startswith("."))
    assert folders == ["requests", "requests%40shard-1"]

    again = await start_daemon(SHARDED_RULES, tsdb, shard_index=1, **options)  # shard 1 restarted
    page = await again.trained()
    assert set(values(page, "oa_anomaly_score", rule="requests")) == owned[1]
    assert len(queue.trained) == 2  # it loaded its own stored model: no job
