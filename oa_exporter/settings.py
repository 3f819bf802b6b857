"""Settings: the only reader of OA_* environment variables. Every field is also a command-line flag."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

DEFAULT_PORT = 10100  # outside the 9100-9999 range the Prometheus wiki allocates to exporters


def _opt(flag: str, env: str, help: str, **extra: Any) -> dict[str, Any]:
    return {"flag": flag, "env": env, "help": help, **extra}


@dataclass(frozen=True)
class Settings:
    """Everything the daemon can be told; defaults suit a daemon beside a local Prometheus."""

    rules: tuple[str, ...] = field(default=(), metadata=_opt(
        "--rules", "OA_RULES", "rules files, directories or globs (repeatable; env: comma-separated)", many=True))
    rules_poll_interval: float = field(default=10.0, metadata=_opt(
        "--rules.poll-interval", "OA_RULES_POLL_INTERVAL",
        "seconds between checks of the rules files' content (file events reload at once; 0 = no watching)"))
    prometheus_url: str = field(default="http://localhost:9090", metadata=_opt(
        "--prometheus-url", "OA_PROMETHEUS_URL", "base URL of the Prometheus-API TSDB to read from"))
    web_listen_address: str = field(default=f":{DEFAULT_PORT}", metadata=_opt(
        "--web.listen-address", "OA_WEB_LISTEN_ADDRESS", "address to serve /metrics and the API on"))
    log_level: str = field(default="info", metadata=_opt(
        "--log.level", "OA_LOG_LEVEL", "debug, info, warn or error", choices=("debug", "info", "warn", "error")))
    log_format: str = field(default="logfmt", metadata=_opt(
        "--log.format", "OA_LOG_FORMAT", "logfmt or json", choices=("logfmt", "json")))
    query_timeout: float = field(default=30.0, metadata=_opt(
        "--prometheus.timeout", "OA_PROMETHEUS_TIMEOUT", "seconds before a TSDB query is abandoned"))
    query_retries: int = field(default=3, metadata=_opt(
        "--prometheus.retries", "OA_PROMETHEUS_RETRIES", "retries of a failed TSDB query (with backoff)"))
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
        "--artifact.store", "OA_ARTIFACT_STORE", "where models are kept: local", choices=("local",)))
    artifact_dir: str = field(default="./oa-models", metadata=_opt(
        "--artifact.dir", "OA_ARTIFACT_DIR", "directory of the local artifact store"))
    dispatcher: str = field(default="local", metadata=_opt(
        "--dispatcher", "OA_DISPATCHER", "where fits run: local (process pool)", choices=("local",)))
    pool_workers: int = field(default=0, metadata=_opt(
        "--pool.workers", "OA_POOL_WORKERS", "training processes (0 = cores - 1, at least 1)"))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from OA_* variables, defaults for the rest."""
        environ = os.environ if environ is None else environ
        values = {}
        for f in fields(cls):
            raw = environ.get(f.metadata["env"])
            if raw is not None and raw != "":
                values[f.name] = _convert(f, raw)
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
