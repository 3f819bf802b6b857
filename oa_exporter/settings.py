"""Settings: the only reader of OA_* environment variables. Every field is also a command-line flag."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

_ORDINAL = re.compile(r"-(\d+)$")  # a StatefulSet pod's hostname ends in its ordinal
DEFAULT_PORT = 10100  # outside the 9100-9999 range the Prometheus wiki allocates to exporters
# Adapter choices in one word; any OA_* variable or flag set explicitly still wins over its preset value.
PRESETS: dict[str, dict[str, Any]] = {
    "standalone": {"dispatcher": "local", "artifact_store": "local", "config_store": "yaml"},
    "enterprise": {"dispatcher": "celery", "artifact_store": "s3", "config_store": "yaml",
                   "celery_broker": "redis://localhost:6379/0"},
}


# Whose flags a setting is: the daemon's (`run`) and its celery workers' (`worker`, which share its OA_*
# settings), unless it concerns only one of them. `demo`, `check` and `backtest` pick the few they take.
WORKER_ONLY = frozenset({"worker_listen_address"})
RUN_ONLY = frozenset({
    "config_store", "config_postgres_dsn", "rules", "rules_poll_interval", "web_listen_address", "web_enable_lifecycle",
    "web_enable_rules_api", "web_allowed_hosts", "preview_max_series", "preview_max_points", "preview_timeout",
    "preview_threads", "model_engine", "dispatcher", "pool_workers", "dask_scheduler", "celery_inference",
    "shard_count", "shard_index", "shard_count_file", "output_mode",
})


def flag_commands(name: str) -> tuple[str, ...]:
    """The commands among `run` and `worker` whose flags include the setting `name`."""
    if name in WORKER_ONLY:
        return ("worker",)
    if name in RUN_ONLY or name.startswith("remote_write_"):
        return ("run",)
    return ("run", "worker")


def _opt(flag: str, env: str, help: str, **extra: Any) -> dict[str, Any]:
    return {"flag": flag, "env": env, "help": help, **extra}


@dataclass(frozen=True)
class Settings:
    """Everything the daemon can be told; defaults suit a daemon beside a local Prometheus."""

    preset: str = field(default="standalone", metadata=_opt(
        "--preset", "OA_PRESET",
        "adapter defaults: standalone (process pool, local model store) or enterprise (celery workers on "
        "redis://localhost:6379/0, S3 model store); explicit settings win", choices=tuple(PRESETS)))
    config_store: str = field(default="yaml", metadata=_opt(
        "--config.store", "OA_CONFIG_STORE",
        "where the rules come from: yaml (files, directories, globs) or postgres (tables that replicas share)",
        choices=("yaml", "postgres")))
    config_postgres_dsn: str = field(default="", repr=False, metadata=_opt(
        "--config.postgres-dsn", "OA_CONFIG_POSTGRES_DSN",
        "PostgreSQL of the postgres config store, e.g. postgresql://oa@db:5432/oa (a schema: "
        "?options=-csearch_path%%3Dname)"))
    rules: tuple[str, ...] = field(default=(), metadata=_opt(
        "--rules", "OA_RULES", "rules files, directories or globs (repeatable; env: comma-separated)", many=True))
    rules_poll_interval: float = field(default=10.0, metadata=_opt(
        "--rules.poll-interval", "OA_RULES_POLL_INTERVAL",
        "seconds between checks of the rules files' content (file events reload at once; 0 = no watching)"))
    prometheus_url: str = field(default="http://localhost:9090", metadata=_opt(
        "--prometheus-url", "OA_PROMETHEUS_URL", "base URL of the Prometheus-API TSDB to read from"))
    web_listen_address: str = field(default=f":{DEFAULT_PORT}", metadata=_opt(
        "--web.listen-address", "OA_WEB_LISTEN_ADDRESS", "address to serve /metrics and the API on"))
    web_config_file: str = field(default="", metadata=_opt(
        "--web.config.file", "OA_WEB_CONFIG_FILE",
        "exporter-toolkit web config (TLS, basic auth, headers) for every path on the port; read at start, when it "
        "changes and on reload (SIGHUP, /-/reload)"))
    web_enable_lifecycle: bool = field(default=False, metadata=_opt(
        "--web.enable-lifecycle", "OA_WEB_ENABLE_LIFECYCLE",
        "allow POST/PUT /-/reload (403 otherwise); SIGHUP and the rules watcher reload regardless"))
    web_enable_rules_api: bool = field(default=False, metadata=_opt(
        "--web.enable-rules-api", "OA_WEB_ENABLE_RULES_API",
        "allow writing rules through the HTTP API and the web UI (PUT/DELETE /api/v1/rules/NAME); off: 403"))
    web_allowed_hosts: tuple[str, ...] = field(default=(), metadata=_opt(
        "--web.allowed-hosts", "OA_WEB_ALLOWED_HOSTS",
        "Host header names the port answers, against DNS rebinding (repeatable; env: comma-separated; "
        "*.example.com: the names under it); others get 403; IP addresses and localhost always pass; "
        "empty: any Host", many=True))
    preview_max_series: int = field(default=1000, metadata=_opt(
        "--preview.max-series", "OA_PREVIEW_MAX_SERIES", "series one preview (POST /api/v1/preview) may replay"))
    preview_max_points: int = field(default=20_000_000, metadata=_opt(
        "--preview.max-points", "OA_PREVIEW_MAX_POINTS",
        "points (series x steps, the train.window before the range included) one preview may read"))
    preview_timeout: float = field(default=60.0, metadata=_opt(
        "--preview.timeout", "OA_PREVIEW_TIMEOUT", "seconds a preview may run before it is stopped (504)"))
    preview_threads: int = field(default=0, metadata=_opt(
        "--preview.threads", "OA_PREVIEW_THREADS", "threads a preview fits its refits on (0 = one per core)"))
    worker_listen_address: str = field(default="", metadata=_opt(
        "--worker.listen-address", "OA_WORKER_LISTEN_ADDRESS",
        "where `oa-exporter worker` serves its own /metrics and /-/healthy, e.g. :10101 (empty: nowhere)"))
    log_level: str = field(default="info", metadata=_opt(
        "--log.level", "OA_LOG_LEVEL", "debug, info, warn or error", choices=("debug", "info", "warn", "error")))
    log_format: str = field(default="logfmt", metadata=_opt(
        "--log.format", "OA_LOG_FORMAT", "logfmt or json", choices=("logfmt", "json")))
    query_timeout: float = field(default=30.0, metadata=_opt(
        "--prometheus.timeout", "OA_PROMETHEUS_TIMEOUT", "seconds before a TSDB query is abandoned"))
    query_retries: int = field(default=3, metadata=_opt(
        "--prometheus.retries", "OA_PROMETHEUS_RETRIES", "retries of a failed TSDB query (with backoff)"))
    max_samples_per_query: int = field(default=2_000_000, metadata=_opt(
        "--prometheus.max-samples-per-query", "OA_PROMETHEUS_MAX_SAMPLES_PER_QUERY",
        "series × points one range query may return; reads of more are split in time (below the server's own "
        "limit, e.g. Prometheus --query.max-samples, 50M by default; a refused chunk is halved and retried)"))
    query_compression: str = field(default="none", metadata=_opt(
        "--prometheus.compression", "OA_PROMETHEUS_COMPRESSION",
        "whether to ask the TSDB for gzipped answers: none (the fastest beside it: Prometheus spends about 3 s "
        "of CPU gzipping a million samples) or gzip (a third of the bytes, for a slow link)",
        choices=("none", "gzip")))
    basic_auth_user: str = field(default="", metadata=_opt(
        "--prometheus.basic-auth.username", "OA_PROMETHEUS_BASIC_AUTH_USERNAME", "basic auth user"))
    basic_auth_password_file: str = field(default="", metadata=_opt(
        "--prometheus.basic-auth.password-file", "OA_PROMETHEUS_BASIC_AUTH_PASSWORD_FILE",
        "file holding the basic auth password"))
    bearer_token_file: str = field(default="", metadata=_opt(
        "--prometheus.bearer-token-file", "OA_PROMETHEUS_BEARER_TOKEN_FILE", "file holding a bearer token"))
    ca_file: str = field(default="", metadata=_opt(
        "--prometheus.tls.ca-file", "OA_PROMETHEUS_TLS_CA_FILE", "CA bundle to verify the TSDB's certificate"))
    cert_file: str = field(default="", metadata=_opt(
        "--prometheus.tls.cert-file", "OA_PROMETHEUS_TLS_CERT_FILE", "client certificate for mutual TLS"))
    key_file: str = field(default="", metadata=_opt(
        "--prometheus.tls.key-file", "OA_PROMETHEUS_TLS_KEY_FILE", "client key for mutual TLS"))
    insecure_skip_verify: bool = field(default=False, metadata=_opt(
        "--prometheus.tls.insecure-skip-verify", "OA_PROMETHEUS_TLS_INSECURE_SKIP_VERIFY",
        "do not verify the TSDB's certificate"))
    headers: tuple[str, ...] = field(default=(), metadata=_opt(
        "--prometheus.header", "OA_PROMETHEUS_HEADERS",
        "extra request header 'Name: value', e.g. 'X-Scope-OrgID: team-a' (repeatable; env: comma-separated)",
        many=True))
    model_engine: str = field(default="nixtla", metadata=_opt(
        "--model.engine", "OA_MODEL_ENGINE", "engine of rules that name none (nixtla = statsforecast)"))
    artifact_store: str = field(default="local", metadata=_opt(
        "--artifact.store", "OA_ARTIFACT_STORE",
        "where models are kept: local (a directory), s3 (a bucket) or noop (memory only: a restart refits)",
        choices=("local", "s3", "noop")))
    artifact_dir: str = field(default="./oa-models", metadata=_opt(
        "--artifact.dir", "OA_ARTIFACT_DIR", "directory of the local artifact store"))
    artifact_keep: int = field(default=3, metadata=_opt(
        "--artifact.keep", "OA_ARTIFACT_KEEP", "stored models kept per rule, newest first (at least 1)"))
    artifact_key: str = field(default="", repr=False, metadata=_opt(
        "--artifact.key", "OA_ARTIFACT_KEY",
        "secret that signs stored models (HMAC-SHA256); unsigned or mis-signed models are refused unread. "
        "Prefer the variable or --artifact.key-file: a flag shows in the process list"))
    artifact_require_signature: bool = field(default=False, metadata=_opt(
        "--artifact.require-signature", "OA_ARTIFACT_REQUIRE_SIGNATURE",
        "refuse to start without an artifact key, so that no unsigned model is ever loaded"))
    artifact_key_file: str = field(default="", metadata=_opt(
        "--artifact.key-file", "OA_ARTIFACT_KEY_FILE", "file holding the artifact signing key (wins over the key)"))
    history_dir: str = field(default="", metadata=_opt(
        "--history.dir", "OA_HISTORY_DIR",
        "directory keeping each rule's training window between fits, so that a refit reads only what is new "
        "(empty: beside the models: .history in --artifact.dir, or history/ under the s3 prefix; none for noop)"))
    history_max_bytes: int = field(default=16 * 2**30, metadata=_opt(
        "--history.max-bytes", "OA_HISTORY_MAX_BYTES",
        "disk budget of the history directory, every rule together (8 bytes a sample); a rule that does not fit "
        "reads its whole window at every fit; 0: keep no history"))
    history_overlap: float = field(default=120.0, metadata=_opt(
        "--history.overlap", "OA_HISTORY_OVERLAP",
        "seconds before the newest stored sample that a refit reads again, for samples that arrived late "
        "(at least one step)"))
    s3_endpoint: str = field(default="", metadata=_opt(
        "--artifact.s3.endpoint", "OA_S3_ENDPOINT",
        "URL of an S3-compatible server, e.g. http://minio:9000 (empty: AWS S3)"))
    s3_bucket: str = field(default="", metadata=_opt(
        "--artifact.s3.bucket", "OA_S3_BUCKET", "bucket of the s3 artifact store (must exist)"))
    s3_prefix: str = field(default="", metadata=_opt(
        "--artifact.s3.prefix", "OA_S3_PREFIX", "key prefix inside the bucket, e.g. oa-exporter/prod"))
    s3_region: str = field(default="", metadata=_opt(
        "--artifact.s3.region", "OA_S3_REGION", "S3 region (empty: from the AWS configuration)"))
    dispatcher: str = field(default="local", metadata=_opt(
        "--dispatcher", "OA_DISPATCHER",
        "where fits run: local (a process pool in the daemon), celery (workers fed through OA_CELERY_BROKER) or "
        "dask (an existing Dask cluster at OA_DASK_SCHEDULER)", choices=("local", "celery", "dask")))
    pool_workers: int = field(default=0, metadata=_opt(
        "--pool.workers", "OA_POOL_WORKERS", "training processes (0 = cores - 1, at least 1)"))
    job_timeout: float = field(default=3600.0, metadata=_opt(
        "--pool.job-timeout", "OA_JOB_TIMEOUT", "seconds a training job may run before it is killed"))
    job_retries: int = field(default=1, metadata=_opt(
        "--jobs.retries", "OA_JOB_RETRIES",
        "extra attempts of a job that timed out or whose process died (celery: also a TSDB outage)"))
    dask_scheduler: str = field(default="", metadata=_opt(
        "--dask.scheduler", "OA_DASK_SCHEDULER",
        "scheduler of the Dask cluster the dask dispatcher sends fits to, e.g. tcp://dask-scheduler:8786"))
    celery_broker: str = field(default="", metadata=_opt(
        "--celery.broker", "OA_CELERY_BROKER",
        "broker of the celery dispatcher: redis://HOST:6379/0, amqp://USER:PASS@HOST:5672//, sqla+sqlite:///PATH"))
    celery_result_backend: str = field(default="", metadata=_opt(
        "--celery.result-backend", "OA_CELERY_RESULT_BACKEND",
        "where job results go (empty: the broker's Redis, rpc:// for RabbitMQ, db+sqlite:///PATH for SQLite)"))
    celery_visibility_timeout: float = field(default=0.0, metadata=_opt(
        "--celery.visibility-timeout", "OA_CELERY_VISIBILITY_TIMEOUT",
        "Redis/SQLite brokers: seconds before a job whose worker vanished is redelivered (0 = job timeout + 600)"))
    celery_inference: str = field(default="auto", metadata=_opt(
        "--celery.inference", "OA_CELERY_INFERENCE",
        "which rules' forecast bands the inference queue computes: auto (models that want a GPU), always, never",
        choices=("auto", "always", "never")))

    # -- shards: replicas that split every rule's series between them --
    shard_count: int = field(default=1, metadata=_opt(
        "--shard.count", "OA_SHARD_COUNT",
        "replicas that split every rule's series between them (rendezvous hashing of the series' labels)"))
    shard_index: int = field(default=-1, metadata=_opt(
        "--shard.index", "OA_SHARD_INDEX",
        "this replica's shard, 0 to count-1 (-1: the ordinal ending $HOSTNAME, as in a StatefulSet's "
        "openanomaly-2)"))
    shard_count_file: str = field(default="", metadata=_opt(
        "--shard.count-file", "OA_SHARD_COUNT_FILE",
        "file holding the shard count, read at start and at every reload (SIGHUP, /-/reload, a rules change); "
        "wins over --shard.count, so the count changes without a restart"))

    # -- where results go: the /metrics page, Prometheus remote write, or both --
    output_mode: str = field(default="", metadata=_opt(
        "--output.mode", "OA_OUTPUT_MODE",
        "where results go: metrics (/metrics), remote-write, or both (default: metrics, and both when a "
        "remote-write receiver is configured)", choices=("metrics", "remote-write", "both")))
    remote_write_urls: tuple[str, ...] = field(default=(), metadata=_opt(
        "--remote-write.url", "OA_REMOTE_WRITE_URL",
        "remote-write receiver, e.g. http://prometheus:9090/api/v1/write (repeatable; env: comma-separated)",
        many=True))
    remote_write_config_file: str = field(default="", metadata=_opt(
        "--remote-write.config-file", "OA_REMOTE_WRITE_CONFIG_FILE",
        "YAML `remote_write:` list (Prometheus's shape) of destinations, each with its own credentials"))
    remote_write_basic_auth_user: str = field(default="", metadata=_opt(
        "--remote-write.basic-auth.username", "OA_REMOTE_WRITE_BASIC_AUTH_USERNAME",
        "basic auth user for the --remote-write.url receivers"))
    remote_write_basic_auth_password_file: str = field(default="", metadata=_opt(
        "--remote-write.basic-auth.password-file", "OA_REMOTE_WRITE_BASIC_AUTH_PASSWORD_FILE",
        "file holding their basic auth password"))
    remote_write_bearer_token_file: str = field(default="", metadata=_opt(
        "--remote-write.bearer-token-file", "OA_REMOTE_WRITE_BEARER_TOKEN_FILE",
        "file holding their bearer token (re-read on every request)"))
    remote_write_ca_file: str = field(default="", metadata=_opt(
        "--remote-write.tls.ca-file", "OA_REMOTE_WRITE_TLS_CA_FILE", "CA bundle to verify their certificates"))
    remote_write_cert_file: str = field(default="", metadata=_opt(
        "--remote-write.tls.cert-file", "OA_REMOTE_WRITE_TLS_CERT_FILE", "client certificate for mutual TLS"))
    remote_write_key_file: str = field(default="", metadata=_opt(
        "--remote-write.tls.key-file", "OA_REMOTE_WRITE_TLS_KEY_FILE", "client key for mutual TLS"))
    remote_write_insecure_skip_verify: bool = field(default=False, metadata=_opt(
        "--remote-write.tls.insecure-skip-verify", "OA_REMOTE_WRITE_TLS_INSECURE_SKIP_VERIFY",
        "do not verify their certificates"))
    remote_write_headers: tuple[str, ...] = field(default=(), metadata=_opt(
        "--remote-write.header", "OA_REMOTE_WRITE_HEADERS",
        "extra header 'Name: value' for them, e.g. 'X-Scope-OrgID: team-a' (repeatable; env: comma-separated)",
        many=True))
    remote_write_queue_dir: str = field(default="./oa-remote-write", metadata=_opt(
        "--remote-write.queue-dir", "OA_REMOTE_WRITE_QUEUE_DIR",
        "directory of the disk queues (one per destination) that keep unsent samples across outages and restarts"))
    remote_write_queue_max_bytes: int = field(default=1 << 30, metadata=_opt(
        "--remote-write.queue-max-bytes", "OA_REMOTE_WRITE_QUEUE_MAX_BYTES",
        "size cap of each destination's queue (compressed bytes); beyond it the oldest samples are dropped"))
    remote_write_max_samples_per_send: int = field(default=2000, metadata=_opt(
        "--remote-write.max-samples-per-send", "OA_REMOTE_WRITE_MAX_SAMPLES_PER_SEND", "samples per request at most"))
    remote_write_shards: int = field(default=4, metadata=_opt(
        "--remote-write.shards", "OA_REMOTE_WRITE_SHARDS",
        "parallel requests per destination (series are spread over them; each keeps its series in order)"))
    remote_write_timeout: float = field(default=30.0, metadata=_opt(
        "--remote-write.timeout", "OA_REMOTE_WRITE_TIMEOUT", "seconds before a request is abandoned (and retried)"))
    remote_write_min_backoff: float = field(default=0.03, metadata=_opt(
        "--remote-write.min-backoff", "OA_REMOTE_WRITE_MIN_BACKOFF", "first retry delay in seconds (doubling)"))
    remote_write_max_backoff: float = field(default=5.0, metadata=_opt(
        "--remote-write.max-backoff", "OA_REMOTE_WRITE_MAX_BACKOFF", "longest retry delay in seconds"))

    @property
    def outputs(self) -> str:
        """The output mode in force: the one set, else metrics, plus remote write when a receiver is configured."""
        if self.output_mode:
            return self.output_mode
        return "both" if self.remote_write_urls or self.remote_write_config_file else "metrics"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, preset: str | None = None) -> Settings:
        """Settings from OA_* variables, then the preset's values (`preset`, else OA_PRESET), defaults for the rest."""
        environ = os.environ if environ is None else environ
        chosen = preset or environ.get("OA_PRESET") or "standalone"
        if chosen not in PRESETS:
            raise ValueError(f"OA_PRESET={chosen!r}: expected one of {', '.join(PRESETS)}")
        values: dict[str, Any] = {**PRESETS[chosen], "preset": chosen}
        for f in fields(cls):
            raw = environ.get(f.metadata["env"])
            if raw is not None and raw != "":
                values[f.name] = _convert(f, raw)
        if "shard_index" not in values:  # a StatefulSet pod: its ordinal is its shard
            found = _ORDINAL.search(environ.get("HOSTNAME", ""))
            values["shard_index"] = int(found.group(1)) if found else -1
        return cls(**values)

    def with_overrides(self, overrides: Mapping[str, Any]) -> Settings:
        """A copy with the given (already typed) values, e.g. from command-line flags; None means unset."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


def _convert(f: Any, raw: str) -> Any:
    if f.metadata.get("many"):
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    kind = type(f.default)
    if kind is bool:
        return raw.strip().lower() in ("1", "true", "yes", "on")
    try:
        value = kind(raw)
    except ValueError as e:
        raise ValueError(f"{f.metadata['env']}={raw!r}: expected {kind.__name__}") from e
    choices = f.metadata.get("choices")
    if choices and value not in choices:  # as the flag's argparse choices do
        raise ValueError(f"{f.metadata['env']}={raw!r}: expected one of {', '.join(choices)}")
    return value
