"""`--web.config.file`: TLS, basic auth and extra headers for the daemon's port, in the format of Prometheus's
exporter-toolkit (the file node_exporter, blackbox_exporter and Prometheus read):

    tls_server_config:
      cert_file: server.crt
      key_file: server.key
      client_auth_type: RequireAndVerifyClientCert   # or NoClientCert (default), VerifyClientCertIfGiven
      client_ca_file: clients-ca.crt
      min_version: TLS12                              # TLS10 .. TLS13
      max_version: TLS13
      cipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256]   # TLS 1.2 only, Go's names
    http_server_config:
      headers: {Strict-Transport-Security: max-age=31536000}
    basic_auth_users:
      alice: $2y$10$...                               # bcrypt hash (htpasswd -nBC 10 alice)

Certificates are re-read when their files change (cert-manager rotates them); the file itself is re-read when it
changes and at every reload (web_guard.py).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import ssl
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
import yaml

TLS_VERSIONS = {"TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1, "TLS12": ssl.TLSVersion.TLSv1_2,
                "TLS13": ssl.TLSVersion.TLSv1_3}
CLIENT_AUTH = {"NoClientCert": ssl.CERT_NONE, "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
               "RequireAndVerifyClientCert": ssl.CERT_REQUIRED}
UNVERIFIED_CLIENT_AUTH = ("RequestClientCert", "RequireAnyClientCert")  # accept any certificate: refused
# Go's names (what the file holds) to OpenSSL's, for the TLS 1.2 suites Go offers
CIPHER_SUITES = {
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA", "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256", "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256": "ECDHE-ECDSA-AES128-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256": "ECDHE-RSA-AES128-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305": "ECDHE-RSA-CHACHA20-POLY1305",
}
# headers the server sets itself, or that change how a response is framed: not for the file to override
RESERVED_HEADERS = {"content-type", "content-length", "content-encoding", "transfer-encoding", "connection",
                    "date", "vary", "www-authenticate", "keep-alive", "upgrade", "server"}
TOP_KEYS = {"tls_server_config", "http_server_config", "basic_auth_users"}
TLS_KEYS = {"cert_file", "key_file", "client_auth_type", "client_ca_file", "min_version", "max_version",
            "cipher_suites", "prefer_server_cipher_suites"}
HTTP_KEYS = {"headers", "http2"}  # http2: accepted for compatibility; this server speaks HTTP/1.1
AUTH_CACHE = 256  # (user, password) pairs whose bcrypt check passed, kept so that scrapes do not pay for it
REALM = 'Basic realm="oa-exporter"'


class WebConfigError(ValueError):
    """The web config file is invalid; the message names the file and the key."""


@dataclass(frozen=True)
class TlsSettings:
    """tls_server_config, checked."""

    cert_file: Path
    key_file: Path
    client_auth: ssl.VerifyMode = ssl.CERT_NONE
    client_ca_file: Path | None = None
    min_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2
    max_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3
    ciphers: tuple[str, ...] = ()  # OpenSSL names; empty: OpenSSL's defaults
    prefer_server_ciphers: bool = False

    def files(self) -> tuple[Path, ...]:
        return (self.cert_file, self.key_file) + ((self.client_ca_file,) if self.client_ca_file else ())

    def context(self) -> ssl.SSLContext:
        """A server context from the files as they are now; WebConfigError when they do not make one."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version, context.maximum_version = self.min_version, self.max_version
        try:
            context.load_cert_chain(self.cert_file, self.key_file)
            if self.client_ca_file:
                context.load_verify_locations(self.client_ca_file)
            if self.ciphers:
                context.set_ciphers(":".join(self.ciphers))
        except (OSError, ssl.SSLError) as e:
            files = ", ".join(map(str, self.files()))
            raise WebConfigError(f"tls_server_config: cannot use the certificate files ({files}): {e}") from e
        context.verify_mode = self.client_auth
        if self.prefer_server_ciphers:
            context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
        context.options |= ssl.OP_NO_COMPRESSION
        return context


@dataclass(frozen=True)
class WebConfig:
    """The whole file, checked; the default (no file) is plain HTTP with no auth."""

    tls: TlsSettings | None = None
    users: Mapping[str, bytes] = field(default_factory=dict)  # user -> bcrypt hash
    headers: tuple[tuple[str, str], ...] = ()


def load_web_config(path: str) -> WebConfig:
    """Read and check the web config file; WebConfigError naming the key that is wrong."""
    if not path:
        return WebConfig()
    try:
        content = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise WebConfigError(f"--web.config.file {path}: {e}") from e
    base = Path(path).parent
    try:
        section = _mapping(content, "", TOP_KEYS)
        return WebConfig(_tls(section.get("tls_server_config"), base), _users(section.get("basic_auth_users")),
                         _headers(section.get("http_server_config")))
    except WebConfigError as e:
        raise WebConfigError(f"--web.config.file {path}: {e}") from e


def _mapping(node: Any, where: str, allowed: set[str]) -> Mapping:
    if node is None:
        return {}
    if not isinstance(node, Mapping):
        raise WebConfigError(f"{where or 'the file'} must be a mapping")
    for key in node:
        if key not in allowed:
            name = f"{where}.{key}" if where else key
            raise WebConfigError(f"unknown key {name} (allowed: {', '.join(sorted(allowed))})")
    return node


def _tls(node: Any, base: Path) -> TlsSettings | None:
    section = _mapping(node, "tls_server_config", TLS_KEYS)
    if not section:
        return None
    for key in ("cert_file", "key_file"):
        if not isinstance(section.get(key), str) or not section[key]:
            raise WebConfigError(f"tls_server_config.{key} is required (a file name)")
    auth = section.get("client_auth_type", "NoClientCert")
    if auth in UNVERIFIED_CLIENT_AUTH:
        raise WebConfigError(f"tls_server_config.client_auth_type {auth} accepts unverified certificates: use "
                             "RequireAndVerifyClientCert (or VerifyClientCertIfGiven)")
    if auth not in CLIENT_AUTH:
        raise WebConfigError(f"tls_server_config.client_auth_type {auth!r}: expected one of {', '.join(CLIENT_AUTH)}")
    ca = section.get("client_ca_file")
    if CLIENT_AUTH[auth] != ssl.CERT_NONE and not ca:
        raise WebConfigError(f"tls_server_config.client_ca_file is required with client_auth_type {auth}")
    tls = TlsSettings(
        _file(section["cert_file"], base), _file(section["key_file"], base), CLIENT_AUTH[auth],
        _file(ca, base) if ca else None, _version(section, "min_version", "TLS12"),
        _version(section, "max_version", "TLS13"), _ciphers(section.get("cipher_suites")),
        bool(section.get("prefer_server_cipher_suites", False)),
    )
    if tls.min_version > tls.max_version:
        raise WebConfigError("tls_server_config.min_version is above max_version")
    tls.context()  # the files must make a context now, not at the first connection
    return tls


def _file(name: str, base: Path) -> Path:
    path = Path(name)
    return path if path.is_absolute() else base / path  # relative to the config file, as the toolkit does


def _version(section: Mapping, key: str, default: str) -> ssl.TLSVersion:
    name = section.get(key, default)
    if name not in TLS_VERSIONS:
        raise WebConfigError(f"tls_server_config.{key} {name!r}: expected one of {', '.join(TLS_VERSIONS)}")
    return TLS_VERSIONS[name]


def _ciphers(node: Any) -> tuple[str, ...]:
    if node is None:
        return ()
    if not isinstance(node, list):
        raise WebConfigError("tls_server_config.cipher_suites must be a list")
    unknown = [name for name in node if name not in CIPHER_SUITES]
    if unknown:
        raise WebConfigError(f"tls_server_config.cipher_suites: unknown {', '.join(map(str, unknown))} (TLS 1.2 "
                             f"suites by Go's names, e.g. TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256)")
    return tuple(CIPHER_SUITES[name] for name in node)


def _users(node: Any) -> dict[str, bytes]:
    section = _mapping(node, "basic_auth_users", set(node or ()))
    users = {}
    for user, hashed in section.items():
        if not isinstance(user, str) or not user or ":" in user:
            raise WebConfigError(f"basic_auth_users: user {user!r} must be a non-empty name without ':'")
        if not isinstance(hashed, str) or not hashed.startswith(("$2a$", "$2b$", "$2y$")):
            raise WebConfigError(f"basic_auth_users.{user} must be a bcrypt hash ($2y$...: htpasswd -nBC 10 {user})")
        users[user] = hashed.encode()
    return users


def _headers(node: Any) -> tuple[tuple[str, str], ...]:
    section = _mapping(node, "http_server_config", HTTP_KEYS)
    headers = _mapping(section.get("headers"), "http_server_config.headers", set(section.get("headers") or ()))
    found = []
    for name, value in headers.items():
        if not isinstance(name, str) or not name.isascii() or not name.replace("-", "").isalnum():
            raise WebConfigError(f"http_server_config.headers: {name!r} is not a header name")
        if name.lower() in RESERVED_HEADERS:
            raise WebConfigError(f"http_server_config.headers.{name} is set by the server itself")
        if not isinstance(value, str) or any(c in value for c in "\r\n\0"):
            raise WebConfigError(f"http_server_config.headers.{name} must be a one-line string")
        found.append((name, value))
    return tuple(found)


class BasicAuth:
    """Checks `Authorization: Basic` against bcrypt hashes; passing pairs are remembered (bcrypt costs ~50 ms)."""

    def __init__(self, users: Mapping[str, bytes]):
        self.users = dict(users)
        self._passed: dict[bytes, str] = {}
        self._lock = threading.Lock()
        self._dummy = bcrypt.hashpw(b"unknown user", bcrypt.gensalt(rounds=4)) if users else b""

    @property
    def enabled(self) -> bool:
        return bool(self.users)

    def user(self, authorization: str | None) -> str | None:
        """The user an Authorization header proves, or None."""
        credentials = _basic_credentials(authorization)
        if credentials is None:
            return None
        user, password = credentials
        key = hashlib.sha256(f"{user}\0{password}".encode("utf-8", "surrogateescape")).digest()
        with self._lock:
            known = self._passed.get(key)
        if known is not None:
            return known
        return self._check(key, user, password)

    def known(self, authorization: str | None) -> str | None:
        """The user, if this header passed before (no bcrypt: cheap enough for the event loop)."""
        credentials = _basic_credentials(authorization)
        if credentials is None:
            return None
        key = hashlib.sha256("\0".join(credentials).encode("utf-8", "surrogateescape")).digest()
        with self._lock:
            return self._passed.get(key)

    def _check(self, key: bytes, user: str, password: str) -> str | None:
        hashed = self.users.get(user)
        # an unknown user still pays for a bcrypt check: the time does not tell which users exist
        ok = bcrypt.checkpw(password.encode("utf-8", "surrogateescape"), hashed or self._dummy) and hashed is not None
        if not ok:
            return None
        with self._lock:
            if len(self._passed) >= AUTH_CACHE:
                self._passed.clear()
            self._passed[key] = user
        return user


def _basic_credentials(authorization: str | None) -> tuple[str, str] | None:
    if not authorization:
        return None
    scheme, _, encoded = authorization.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, colon, password = decoded.partition(":")
    return (user, password) if colon else None


class TlsContext:
    """The server context, rebuilt when the certificate, key or CA file changes; the last good one stays in use
    while a rotation is half-written."""

    CHECK_EVERY = 1.0  # seconds between looks at the files' modification times

    def __init__(self, tls: TlsSettings):
        self.tls = tls
        self._stamp = self._stamps()
        self._context = tls.context()
        self._checked = time.monotonic()
        self._lock = threading.Lock()

    def current(self) -> ssl.SSLContext:
        now = time.monotonic()
        if now - self._checked >= self.CHECK_EVERY:
            with self._lock:
                self._checked = now
                stamp = self._stamps()
                if stamp != self._stamp:
                    try:
                        self._context = self.tls.context()
                        self._stamp = stamp
                    except WebConfigError:
                        pass  # keep serving with the old certificate until the new files are whole
        return self._context

    def _stamps(self) -> tuple:
        return file_stamps(self.tls.files())


def file_stamps(paths: tuple[Path, ...]) -> tuple:
    """What tells that files changed: modification time, size and inode of each (None: missing), symlinks
    followed (a Kubernetes Secret or ConfigMap swaps a link to a new directory)."""
    stamps: list[tuple[int, int, int] | None] = []
    for path in paths:
        try:
            st = os.stat(path)
            stamps.append((st.st_mtime_ns, st.st_size, st.st_ino))
        except OSError:
            stamps.append(None)
    return tuple(stamps)
