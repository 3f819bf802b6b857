"""Celery dispatcher: training and band jobs travel to workers through a broker (Redis, RabbitMQ, SQLite).

The daemon sends a task by name with a JSON payload (a rule spec, a window, an artifact id) and polls its
result; the worker queries the TSDB itself and writes the model to the artifact store, so models never travel
through the broker. Tasks are acknowledged late: a worker killed mid-job leaves its message to be redelivered
to another worker (at once on RabbitMQ, after the visibility timeout on Redis), and the same job always makes
the same artifact, so running it twice is harmless. Timeouts and lost job processes are retried, boundedly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from celery import Celery
from celery.exceptions import Retry
from celery.result import AsyncResult

from ...core.domain import Bands
from ...core.errors import DispatchError, JobTimeout, QueryError, TsdbError, WorkerDied
from ...core.jobs import (
    INFERENCE,
    TRAINING,
    BandsJob,
    TrainingJob,
    TrainingOutcome,
    bands_from_payload,
    bands_to_payload,
)
from ...core.ports import Telemetry
from ...core.services.worker import JobWorker

T = TypeVar("T")
log = logging.getLogger(__name__)
TRAIN_TASK, BANDS_TASK = "oa.train", "oa.bands"
RETRIED = (JobTimeout, WorkerDied)  # a stuck or crashed job process: worth another attempt
READY = frozenset({"SUCCESS", "FAILURE", "REVOKED"})


@dataclass(frozen=True)
class CeleryOptions:
    """How daemon and workers reach the broker, and how long jobs may take."""

    broker: str
    result_backend: str = ""  # "": derived from the broker (Redis → the same Redis, AMQP → rpc://, SQLite → db)
    job_timeout: float = 3600.0  # seconds one attempt of a job may run
    retries: int = 1  # extra attempts after a timeout, a lost job process or an unreachable TSDB
    retry_delay: float = 5.0
    visibility_timeout: float = 0.0  # Redis/SQS: seconds before an unacknowledged job is redelivered (0: derived)
    publish_timeout: float = 5.0  # seconds to reach the broker before a dispatch fails

    @property
    def backend(self) -> str:
        return self.result_backend or default_result_backend(self.broker)

    @property
    def redelivery_after(self) -> float:
        """Longer than any attempt can take, so a running job is never handed out twice."""
        return self.visibility_timeout or self.job_timeout + 600.0

    @property
    def deadline(self) -> float:
        """How long the daemon waits for a job: every attempt, and a redelivery, with room to spare."""
        return (self.retries + 1) * (self.job_timeout + self.retry_delay) + self.redelivery_after + 60.0


def default_result_backend(broker: str) -> str:
    """Results go back the way jobs came: Redis → Redis, RabbitMQ → rpc:// (replies over AMQP), SQLite → a table."""
    if broker.startswith(("redis://", "rediss://")):
        return broker
    if broker.startswith(("amqp://", "amqps://", "pyamqp://")):
        return "rpc://"
    if broker.startswith("sqla+"):
        return "db+" + broker.removeprefix("sqla+")
    raise ValueError(f"OA_CELERY_BROKER {broker!r}: expected redis://, amqp:// or sqla+sqlite:/// "
                     "(or set OA_CELERY_RESULT_BACKEND)")


def celery_app(options: CeleryOptions) -> Celery:
    """The Celery app of daemon and workers: late acks, JSON only, one queue per kind of job."""
    app = Celery("oa_exporter", broker=options.broker, backend=options.backend, set_as_current=False)
    fast_fail = {"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 1.0}
    app.conf.update(
        task_serializer="json", result_serializer="json", accept_content=["json"], result_accept_content=["json"],
        task_acks_late=True, task_reject_on_worker_lost=True, worker_prefetch_multiplier=1,
        worker_cancel_long_running_tasks_on_connection_loss=True, broker_connection_retry_on_startup=True,
        task_track_started=True, result_extended=True, result_expires=max(3600, int(options.deadline)),
        task_routes={TRAIN_TASK: {"queue": TRAINING}, BANDS_TASK: {"queue": INFERENCE}},
        task_default_queue=TRAINING, task_publish_retry_policy=fast_fail,
        broker_connection_timeout=options.publish_timeout,
        broker_transport_options=_transport_options(options),
        redis_socket_connect_timeout=options.publish_timeout, redis_socket_timeout=30,
        result_backend_transport_options={"retry_policy": fast_fail},
        worker_hijack_root_logger=False, worker_redirect_stdouts=False,
    )
    return app


def _transport_options(options: CeleryOptions) -> dict[str, Any]:
    """Redis redelivers unacknowledged jobs after a visibility timeout; SQLAlchemy hands its options to
    create_engine, so it gets none; AMQP brokers redeliver as soon as a worker's connection drops."""
    if options.broker.startswith(("redis://", "rediss://")):
        sweep = max(1.0, min(10.0, options.redelivery_after / 4))  # look for abandoned jobs this often
        return {"visibility_timeout": options.redelivery_after, "socket_connect_timeout": options.publish_timeout,
                "unacked_restore_interval": sweep, "unacked_restore_throttle": 1}
    return {}


class CeleryJobQueue:
    """JobQueue over Celery for the daemon: every broker call runs on one thread (Celery clients are not
    thread-safe), results are polled without blocking the event loop."""

    def __init__(self, app: Celery, options: CeleryOptions, telemetry: Telemetry, poll_interval: float = 0.5):
        self.app = app
        self.options = options
        self.telemetry = telemetry
        self.poll_interval = poll_interval  # the longest wait between polls: short jobs are polled sooner
        self._client = ThreadPoolExecutor(1, thread_name_prefix="celery-client")

    async def train(self, job: TrainingJob) -> TrainingOutcome:
        return TrainingOutcome.from_payload(await self._run(TRAINING, TRAIN_TASK, job.key, job.payload()))

    async def bands(self, job: BandsJob) -> Bands:
        return bands_from_payload(await self._run(INFERENCE, BANDS_TASK, job.key, job.payload()))

    async def close(self) -> None:
        await self._call(self.app.close)
        self._client.shutdown(wait=False)

    async def _run(self, queue: str, task: str, key: str, payload: dict[str, Any]) -> Any:
        job = _Tracked(queue, key, self.telemetry)
        try:
            result = await self._send(task, queue, key, payload)
        except DispatchError:
            job.done(False, reason="broker")
            raise
        try:
            state = await self._wait(result, job)
            value, retries = await self._call(lambda: (result.result, result.retries or 0))
        except DispatchError:
            job.done(False, reason="lost")
            raise
        if state != "SUCCESS":
            job.done(False, retries, "timeout" if "JobTimeout" in _describe(value) else "error")
            raise DispatchError(f"{queue} job {key} failed on the worker: {_describe(value)}")
        job.done(True, retries)
        return value

    async def _wait(self, result: AsyncResult, job: _Tracked) -> str:
        """Poll until the job is done, often at first (most jobs are short), then every poll_interval."""
        state, pause = await self._state(result), 0.01
        while state not in READY:
            if state == "STARTED":
                job.running()
            if job.elapsed > self.options.deadline:
                raise DispatchError(f"job {job.key} gave no result in {self.options.deadline:.0f} s: lost")
            await asyncio.sleep(pause)
            state, pause = await self._state(result), min(pause * 1.5, self.poll_interval)
        return state

    async def _send(self, task: str, queue: str, key: str, payload: dict[str, Any]) -> AsyncResult:
        task_id = f"{key}:{uuid.uuid4().hex[:12]}"  # a fresh id: an old result of the same job is never reused
        try:
            return await self._call(self.app.send_task, task, args=[payload], queue=queue, task_id=task_id)
        except Exception as e:  # kombu's connection errors, whatever the transport
            raise DispatchError(f"could not queue the {queue} job: broker unreachable: {e}") from e

    async def _state(self, result: AsyncResult) -> str:
        try:
            return str(await self._call(lambda: result.state))
        except Exception as e:
            raise DispatchError(f"lost track of job {result.id}: result backend unreachable: {e}") from e

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._client, lambda: fn(*args, **kwargs))


class _Tracked:
    """One job as the telemetry hears of it: queued at once, running once a worker starts it, then done."""

    def __init__(self, queue: str, key: str, telemetry: Telemetry):
        self.queue, self.key, self.telemetry = queue, key, telemetry
        self.started = time.perf_counter()
        self.is_running = False
        telemetry.job_queued(queue)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def running(self) -> None:
        if not self.is_running:
            self.is_running = True
            self.telemetry.job_running(self.queue)

    def done(self, ok: bool, retries: int = 0, reason: str = "") -> None:
        self.telemetry.job_done(self.queue, self.elapsed, ok, retries, self.is_running, reason)


def _describe(value: Any) -> str:
    return f"{type(value).__name__}: {value}" if isinstance(value, BaseException) else str(value)


class JobObserver(Protocol):
    """What a worker reports of the jobs it runs (its own /metrics)."""

    def started(self, queue: str) -> None: ...

    def ended(self, queue: str, outcome: str, seconds: float) -> None: ...


def register_jobs(app: Celery, options: CeleryOptions, worker: JobWorker,
                  run: Callable[[Coroutine[Any, Any, Any]], Any], observer: JobObserver | None = None) -> None:
    """The worker's tasks: each runs the JobWorker coroutine on the worker's event loop via `run`."""

    @app.task(name=TRAIN_TASK, bind=True, max_retries=options.retries)
    def train(task: Any, payload: dict[str, Any]) -> dict[str, Any]:
        job = TrainingJob.from_payload(payload)
        attempt = task.request.retries + 1
        log.info("rule %s: training job %s (attempt %d)", job.rule.name, task.request.id, attempt)
        with _observed(observer, TRAINING):
            try:
                return run(worker.train(job, attempt)).payload()
            except (*RETRIED, TsdbError) as e:
                if isinstance(e, QueryError):  # the TSDB refused the query: another attempt would too
                    raise
                log.warning("rule %s: training job failed (attempt %d), retrying: %s", job.rule.name, attempt, e)
                raise task.retry(exc=e, countdown=options.retry_delay) from e

    @app.task(name=BANDS_TASK, bind=True, max_retries=options.retries)
    def bands(task: Any, payload: dict[str, Any]) -> dict[str, Any]:
        job = BandsJob.from_payload(payload)
        with _observed(observer, INFERENCE):
            return bands_to_payload(run(worker.bands(job)))


@contextlib.contextmanager
def _observed(observer: JobObserver | None, queue: str) -> Iterator[None]:
    """Report one attempt: succeeded, retried (it failed and is queued again) or failed (for good)."""
    if observer is None:
        yield
        return
    started = time.perf_counter()
    observer.started(queue)
    try:
        yield
    except Retry:
        observer.ended(queue, "retried", time.perf_counter() - started)
        raise
    except BaseException:  # retries used up (task.retry raises the error itself), or not worth retrying
        observer.ended(queue, "failed", time.perf_counter() - started)
        raise
    observer.ended(queue, "succeeded", time.perf_counter() - started)


def start_worker(app: Celery, queue: str, concurrency: int, log_level: str = "INFO") -> None:
    """Consume one queue until stopped (SIGTERM: finish running jobs, then exit). Jobs run in threads: each
    fit runs in its own child process, so threads give real parallelism and keep one event loop per worker."""
    app.Worker(queues=[queue], concurrency=concurrency, pool="threads", loglevel=log_level, without_heartbeat=True,
               without_mingle=True, without_gossip=True, optimization="fair").start()
