"""Self-monitoring metrics with prometheus_client, in a registry of our own (never the global one)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from ... import __version__
from ...core.domain import Rule, RuleSet, SeriesState
from .coverage import BandCoverage

QUERY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
FIT_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 120, 300, 600, 1800)
QUEUES = ("training", "inference")
STATES = tuple(s.value for s in SeriesState)
WARNINGS = ("no-series",)


class _ModelAge(Collector):
    """oa_model_age_seconds, computed from the training times when the page is rendered."""

    def __init__(self, clock: Callable[[], float]):
        self.clock = clock
        self.trained_at: dict[str, float] = {}

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("oa_model_age_seconds", "Seconds since the model in use was trained.",
                                   labels=["rule"])
        now = self.clock()
        for rule, trained_at in self.trained_at.items():
            family.add_metric([rule], max(now - trained_at, 0.0))
        yield family


class WebConfigMetrics:
    """Whether the web config file (--web.config.file) in force is its latest version; the daemon's and a
    worker's registries both carry these."""

    def __init__(self, r: CollectorRegistry):
        self.ok = Gauge("oa_web_config_last_reload_successful", "Whether the last read of the web config file "
                        "succeeded (1) or failed (0: the previous settings stay in force).", registry=r)
        self.time = Gauge("oa_web_config_last_reload_success_timestamp_seconds",
                          "Time of the last successful read of the web config file.", registry=r)

    def loaded(self, ok: bool, at: float) -> None:
        self.ok.set(1 if ok else 0)
        if ok:
            self.time.set(at)


class PrometheusTelemetry:
    """Telemetry port over prometheus_client metrics."""

    def __init__(self, clock: Callable[[], float] = time.time):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        Gauge("oa_build_info", "OpenAnomaly build information.", ["version"], registry=r).labels(__version__).set(1)
        self.loaded = Gauge("oa_rules_loaded", "Rules currently loaded.", registry=r)
        self.reload_ok = Gauge("oa_rules_last_reload_successful",
                               "Whether the last rules (re)load succeeded (1) or failed (0).", registry=r)
        self.reload_time = Gauge("oa_rules_last_reload_success_timestamp_seconds",
                                 "Time of the last successful rules (re)load.", registry=r)
        self.reload_failures = Counter("oa_rules_reload_failures", "Rules (re)loads that failed.", registry=r)
        self.web_config = WebConfigMetrics(r)
        self.series = Gauge("oa_rule_series", "Series of a rule by state (ready, not-ready, failed).",
                            ["rule", "state"], registry=r)
        self.healthy = Gauge("oa_rule_healthy", "Whether the rule's last query and fit worked (1) or not (0).",
                             ["rule"], registry=r)
        self.warnings = Gauge("oa_rule_warning", "Conditions of a rule that deserve a look, 1 while they hold, by "
                              "reason: no-series (its expr has selected no series for 5 minutes: a typo in a "
                              "metric or label name?).", ["rule", "reason"], registry=r)
        self.annotations = Gauge("oa_rule_annotation", "The rule's annotations as written (always 1), for alert "
                                 "templates: name is the annotation's key, value its text.",
                                 ["rule", "name", "value"], registry=r)
        self._annotations: dict[str, set[tuple[str, str]]] = {}  # per rule, the pairs exported
        self.query_seconds = Histogram("oa_query_duration_seconds", "TSDB query duration by kind (range, instant).",
                                       ["rule", "kind"], buckets=QUERY_BUCKETS, registry=r)
        self.query_failures = Counter("oa_query_failures", "TSDB queries that failed.", ["rule", "kind"],
                                      registry=r)
        self.fit_seconds = Histogram("oa_fit_duration_seconds", "Model fit duration.", ["rule"],
                                     buckets=FIT_BUCKETS, registry=r)
        self.fits = Counter("oa_fits", "Model fits that finished.", ["rule"], registry=r)
        self.fit_failures = Counter("oa_fit_failures", "Model fits that failed as a whole.", ["rule"], registry=r)
        self.fallbacks = Counter("oa_fit_fallback_series", "Series fitted by the fallback model after their "
                                 "model failed.", ["rule"], registry=r)
        self.last_fit = Gauge("oa_model_last_fit_timestamp_seconds", "Training time of the model in use.",
                              ["rule"], registry=r)
        self.refit_period = Gauge("oa_rule_refit_period_seconds", "The rule's refit period (train.every).",
                                  ["rule"], registry=r)
        self.cycle_seconds = Histogram("oa_cycle_duration_seconds", "Scoring cycle duration of a rule group.",
                                       ["group"], buckets=QUERY_BUCKETS, registry=r)
        self.overruns = Counter("oa_cycle_overruns", "Scoring cycles that took longer than the group interval.",
                                ["group"], registry=r)
        self.rejected = Counter("oa_artifact_rejected", "Stored models refused (and refit) by reason: corrupt, "
                                "signature, format, version, fingerprint, unreadable.", ["rule", "reason"], registry=r)
        self.artifact_failures = Counter("oa_artifact_failures", "Artifact store operations that failed, by "
                                         "operation (read, write, delete, record; list: searching the store for "
                                         "models of removed rules).", ["rule", "operation"], registry=r)
        self.artifact_size = Gauge("oa_artifact_size_bytes", "Size of the rule's last stored model.", ["rule"],
                                   registry=r)
        self.artifact_write_seconds = Histogram("oa_artifact_write_duration_seconds", "Time to store a model.",
                                                buckets=QUERY_BUCKETS, registry=r)
        self._artifact_labels: dict[str, set[tuple[str, str]]] = {}  # per rule, label pairs to forget
        self.shard_index = Gauge("oa_shard_index", "This replica's shard (0-based).", registry=r)
        self.shard_count = Gauge("oa_shard_count", "Shards the rules' series are split into.", registry=r)
        self.shard_count.set(1)
        self.shard_owned = Gauge("oa_shard_series", "Series of the rule this shard fits, scores and exports.",
                                 ["rule"], registry=r)
        self.shard_queried = Gauge("oa_shard_query_series", "Series the rule's instant query returned (all "
                                   "shards').", ["rule"], registry=r)
        self._job_metrics(r)
        self.model_age = _ModelAge(clock)
        r.register(self.model_age)
        self.coverage = BandCoverage()
        r.register(self.coverage)

    def _job_metrics(self, r: CollectorRegistry) -> None:
        self.jobs_queued = Gauge("oa_jobs_queued", "Jobs handed to a queue that no worker has started yet.",
                                 ["queue"], registry=r)
        self.jobs_running = Gauge("oa_jobs_running", "Jobs running on a worker now.", ["queue"], registry=r)
        self.jobs_succeeded = Counter("oa_jobs_succeeded", "Jobs that finished.", ["queue"], registry=r)
        self.jobs_failed = Counter("oa_jobs_failed", "Jobs that failed for good, by reason (error; timeout: past "
                                   "the job time limit; lost: its worker died or no result came; broker: it could "
                                   "not be queued).", ["queue", "reason"],
                                   registry=r)
        self.jobs_retried = Counter("oa_jobs_retried", "Extra attempts jobs took (time limits, lost workers).",
                                    ["queue"], registry=r)
        self.job_seconds = Histogram("oa_job_duration_seconds", "Job duration from hand-over to result.", ["queue"],
                                     buckets=FIT_BUCKETS, registry=r)
        for queue in QUEUES:  # exported at 0 from the start: rate() and alerts see them
            for metric in (self.jobs_queued, self.jobs_running, self.jobs_succeeded, self.jobs_retried):
                metric.labels(queue)

    def job_queued(self, queue: str) -> None:
        self.jobs_queued.labels(queue).inc()

    def job_running(self, queue: str) -> None:
        self.jobs_queued.labels(queue).dec()
        self.jobs_running.labels(queue).inc()

    def job_done(self, queue: str, seconds: float, ok: bool, retries: int = 0, started: bool = True,
                 reason: str = "") -> None:
        (self.jobs_running if started else self.jobs_queued).labels(queue).dec()
        if ok:
            self.jobs_succeeded.labels(queue).inc()
        else:
            self.jobs_failed.labels(queue, reason or "error").inc()
        self.jobs_retried.labels(queue).inc(retries)
        self.job_seconds.labels(queue).observe(seconds)

    def query_done(self, rule: str, kind: str, seconds: float, ok: bool) -> None:
        self.query_seconds.labels(rule, kind).observe(seconds)
        if not ok:
            self.query_failures.labels(rule, kind).inc()

    def fit_done(self, rule: str, seconds: float, ok: bool, fallbacks: int = 0) -> None:
        self.fit_seconds.labels(rule).observe(seconds)
        (self.fits if ok else self.fit_failures).labels(rule).inc()
        self.fallbacks.labels(rule).inc(fallbacks)

    def model_in_use(self, rule: str, trained_at: float) -> None:
        self.last_fit.labels(rule).set(trained_at)
        self.model_age.trained_at[rule] = trained_at

    def series_states(self, rule: str, counts: dict[str, int]) -> None:
        for state in STATES:
            self.series.labels(rule, state).set(counts.get(state, 0))

    def rule_health(self, rule: str, healthy: bool, error: str = "") -> None:
        self.healthy.labels(rule).set(1 if healthy else 0)

    def rule_warning(self, rule: str, reason: str, active: bool) -> None:
        self.warnings.labels(rule, reason).set(1 if active else 0)

    def cycle_done(self, group: str, seconds: float, overrun: bool) -> None:
        self.cycle_seconds.labels(group).observe(seconds)
        if overrun:
            self.overruns.labels(group).inc()

    def rules_loaded(self, rules: RuleSet | None, ok: bool, at: float) -> None:
        self.reload_ok.set(1 if ok else 0)
        if ok and rules is not None:
            self.loaded.set(len(rules.rules))
            self.reload_time.set(at)
            for rule in rules.rules:
                self.refit_period.labels(rule.name).set(rule.train_every)
                for reason in WARNINGS:
                    self.warnings.labels(rule.name, reason)  # 0 from the start: an alert's `for` sees it
                self._export_annotations(rule)
                for counter in (self.fits, self.fit_failures, self.fallbacks):
                    counter.labels(rule.name)  # exported at 0 from the start: rate() and alerts see them
        else:
            self.reload_failures.inc()

    def _export_annotations(self, rule: Rule) -> None:
        pairs = set(rule.annotations.items())
        for name, text in self._annotations.get(rule.name, set()) - pairs:
            _remove(self.annotations, rule.name, name, text)
        for name, text in pairs:
            self.annotations.labels(rule.name, name, text).set(1)
        self._annotations[rule.name] = pairs

    def artifact_rejected(self, rule: str, reason: str) -> None:
        self.rejected.labels(rule, reason).inc()
        self._artifact_labels.setdefault(rule, set()).add(("rejected", reason))

    def artifact_failed(self, rule: str, operation: str) -> None:
        self.artifact_failures.labels(rule, operation).inc()
        self._artifact_labels.setdefault(rule, set()).add(("failed", operation))

    def artifact_stored(self, rule: str, size: int, seconds: float) -> None:
        self.artifact_size.labels(rule).set(size)
        self.artifact_write_seconds.observe(seconds)

    def band_coverage(self, rule: str, inside: int, scored: int, at: float) -> None:
        self.coverage.add(rule, inside, scored, at)

    def shard_layout(self, index: int, count: int) -> None:
        self.shard_index.set(index)
        self.shard_count.set(count)

    def shard_series(self, rule: str, owned: int, total: int) -> None:
        self.shard_owned.labels(rule).set(owned)
        self.shard_queried.labels(rule).set(total)

    def forget_rule(self, rule: Rule) -> None:
        for metric in (self.shard_owned, self.shard_queried, self.healthy, self.fit_seconds, self.fits,
                       self.fit_failures, self.fallbacks, self.last_fit, self.refit_period, self.artifact_size):
            _remove(metric, rule.name)
        for kind, label in self._artifact_labels.pop(rule.name, set()):
            _remove(self.rejected if kind == "rejected" else self.artifact_failures, rule.name, label)
        for state in STATES:
            _remove(self.series, rule.name, state)
        for reason in WARNINGS:
            _remove(self.warnings, rule.name, reason)
        for name, text in self._annotations.pop(rule.name, set()):
            _remove(self.annotations, rule.name, name, text)
        for kind in ("range", "instant"):
            _remove(self.query_seconds, rule.name, kind)
            _remove(self.query_failures, rule.name, kind)
        self.model_age.trained_at.pop(rule.name, None)
        self.coverage.forget(rule.name)

    def render(self) -> bytes:
        """Text exposition of the self-monitoring metrics."""
        return generate_latest(self.registry)


def _remove(metric: Gauge | Counter | Histogram, *labels: str) -> None:
    with contextlib.suppress(KeyError):  # never observed for this rule: nothing to remove
        metric.remove(*labels)
