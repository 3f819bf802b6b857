"""A worker's own metrics: the jobs it ran, by queue and outcome, in a registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from ... import __version__
from .prometheus_client import FIT_BUCKETS, QUEUES, WebConfigMetrics


class WorkerMetrics:
    """oa_worker_* metrics of one `oa-exporter worker` process; thread-safe (jobs run on Celery's threads)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        Gauge("oa_build_info", "OpenAnomaly build information.", ["version"], registry=r).labels(__version__).set(1)
        self.running = Gauge("oa_worker_jobs_running", "Jobs this worker runs now.", ["queue"], registry=r)
        self.jobs = Counter("oa_worker_jobs", "Jobs this worker ended, by outcome: succeeded, failed, retried (an "
                            "attempt that failed and was queued again).", ["queue", "outcome"], registry=r)
        self.seconds = Histogram("oa_worker_job_duration_seconds", "Time this worker spent on a job attempt.",
                                 ["queue"], buckets=FIT_BUCKETS, registry=r)
        self.web_config = WebConfigMetrics(r)
        for queue in QUEUES:
            self.running.labels(queue)
            for outcome in ("succeeded", "failed", "retried"):
                self.jobs.labels(queue, outcome)

    def started(self, queue: str) -> None:
        self.running.labels(queue).inc()

    def ended(self, queue: str, outcome: str, seconds: float) -> None:
        self.running.labels(queue).dec()
        self.jobs.labels(queue, outcome).inc()
        self.seconds.labels(queue).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
