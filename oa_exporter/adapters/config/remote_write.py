"""The remote-write destinations file: URL, credentials, TLS and headers per destination.

It takes the shape of Prometheus's own `remote_write` section, so one can be pasted in:

    remote_write:
      - url: https://mimir.example/api/v1/push
        headers: {X-Scope-OrgID: team-a}
        basic_auth: {username: oa, password_file: /etc/oa/mimir-password}
        tls_config: {ca_file: /etc/oa/ca.pem, cert_file: ..., key_file: ..., insecure_skip_verify: false}
      - url: http://victoria:8428/api/v1/write
        authorization: {credentials_file: /var/run/secrets/token}   # a bearer token; or bearer_token_file

Unknown keys are errors, not silently ignored; Prometheus's queue options are flags here (--remote-write.*).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

DESTINATION_KEYS = {"url", "name", "headers", "basic_auth", "authorization", "bearer_token", "bearer_token_file",
                    "tls_config"}
BASIC_AUTH_KEYS = {"username": "basic_user", "password": "basic_password", "password_file": "basic_password_file"}
AUTHORIZATION_KEYS = {"type", "credentials", "credentials_file"}
TLS_KEYS = {"ca_file": "ca_file", "cert_file": "cert_file", "key_file": "key_file",
            "insecure_skip_verify": "insecure_skip_verify"}


@dataclass(frozen=True)
class DestinationConfig:
    """One destination: its URL and the keyword arguments of the TSDB reader's HttpAuth."""

    url: str
    auth: dict[str, Any]


def load_destinations(path: str | Path) -> list[DestinationConfig]:
    """Every destination of the file; ValueError naming the file and the entry for anything wrong."""
    try:
        document = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"{path}: {e}") from e
    if not isinstance(document, dict) or not isinstance(document.get("remote_write"), list):
        raise ValueError(f"{path}: expected a `remote_write:` list of destinations")
    return [_destination(entry, f"{path}: remote_write[{i}]") for i, entry in enumerate(document["remote_write"])]


def _destination(entry: Any, where: str) -> DestinationConfig:
    entry = _mapping(entry, where, DESTINATION_KEYS)
    url = entry.get("url")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ValueError(f"{where}: `url` must be an http:// or https:// URL")
    auth: dict[str, Any] = {}
    headers = _mapping(entry.get("headers", {}), f"{where}.headers", None)
    auth["headers"] = {str(k): str(v) for k, v in headers.items()}
    for key, field in BASIC_AUTH_KEYS.items():
        if key in (basic := _mapping(entry.get("basic_auth", {}), f"{where}.basic_auth", set(BASIC_AUTH_KEYS))):
            auth[field] = str(basic[key])
    authorization = _mapping(entry.get("authorization", {}), f"{where}.authorization", AUTHORIZATION_KEYS)
    if str(authorization.get("type", "Bearer")).lower() != "bearer":
        raise ValueError(f"{where}.authorization: only the Bearer type is supported")
    auth["bearer_token"] = str(authorization.get("credentials", entry.get("bearer_token", "")))
    auth["bearer_token_file"] = str(authorization.get("credentials_file", entry.get("bearer_token_file", "")))
    tls = _mapping(entry.get("tls_config", {}), f"{where}.tls_config", set(TLS_KEYS))
    for key, field in TLS_KEYS.items():
        if key in tls:
            auth[field] = bool(tls[key]) if key == "insecure_skip_verify" else str(tls[key])
    return DestinationConfig(url, auth)


def _mapping(value: Any, where: str, allowed: set[str] | None) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{where}: expected a mapping")
    unknown = set(value) - allowed if allowed is not None else set()
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)} (allowed: {sorted(allowed or ())})")
    return value
