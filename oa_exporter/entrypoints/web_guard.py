"""What the port enforces now (TLS, basic auth, headers), from the web config file as it is now.

exporter-toolkit reads its web config file at every request and handshake, so new users, passwords and
certificates take effect without a restart. Here the file is looked at (its modification time, size and
inode) at most once a second, when a connection, request or handshake asks, and read again when it changed;
`reload()` (SIGHUP, POST /-/reload) reads it at once. A file that does not load keeps the settings in force:
the error is logged once per version of the file and `on_load(False, ...)` is told (a metric), where
exporter-toolkit would answer 500 to every request until the file is fixed.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .web_config import BasicAuth, TlsContext, WebConfig, WebConfigError, file_stamps, load_web_config

log = logging.getLogger(__name__)

CHECK_EVERY = 1.0  # seconds between looks at the web config file
OnLoad = Callable[[bool, float], None]  # (loaded?, when): each time the file was read, at start included


@dataclass
class WebSecurity:
    """One version of the web config file, ready to enforce: swapped whole when the file is re-read."""

    config: WebConfig = field(default_factory=WebConfig)
    auth: BasicAuth = field(default_factory=lambda: BasicAuth({}))
    tls: TlsContext | None = None

    @classmethod
    def from_config(cls, config: WebConfig) -> WebSecurity:
        return cls(config, BasicAuth(config.users), TlsContext(config.tls) if config.tls else None)

    @property
    def extra_headers(self) -> tuple[tuple[str, str], ...]:
        return self.config.headers


def _ignore(ok: bool, at: float) -> None:
    pass


class WebGuard:
    """The web config file's current WebSecurity; calling it gives the settings in force, re-reading the file
    when it changed; `reload()` re-reads it now. Thread-safe: the scrape front's threads, the event loop and
    TLS handshakes all ask."""

    def __init__(self, path: str, on_load: OnLoad | None = None):
        self.path = path
        self._on_load = on_load or _ignore
        self._lock = threading.Lock()
        self._tried = self._stamp()
        self._checked = time.monotonic()
        self.security = WebSecurity.from_config(load_web_config(path))  # WebConfigError: the start fails
        self._on_load(True, time.time())

    def __call__(self) -> WebSecurity:
        if self.path and time.monotonic() - self._checked >= CHECK_EVERY and self._lock.acquire(blocking=False):
            try:  # whoever finds the lock taken uses the settings in force meanwhile
                self._checked = time.monotonic()
                self._reread_if_changed()
            finally:
                self._lock.release()
        return self.security

    def reload(self) -> None:
        """Re-read the file now; WebConfigError (the settings in force stay) when it is invalid."""
        if not self.path:
            return
        with self._lock:
            self._tried = self._stamp()
            self._load()

    def _reread_if_changed(self) -> None:
        stamp = self._stamp()
        if stamp == self._tried:
            return
        self._tried = stamp  # a bad version is tried (and logged) once, not at every look
        try:
            self._load()
        except WebConfigError as e:
            log.error("the web config file changed but cannot be used, the previous settings stay in force: %s", e)
            return
        log.info("web config file %s re-read", self.path)

    def _load(self) -> None:
        try:
            security = WebSecurity.from_config(load_web_config(self.path))
        except WebConfigError:
            self._on_load(False, time.time())
            raise
        self.security = security
        self._on_load(True, time.time())

    def _stamp(self) -> tuple:
        return file_stamps((Path(self.path),)) if self.path else ()


def rotating_context(guard: WebGuard) -> ssl.SSLContext | None:
    """A context for servers that take one context at start (aiohttp's sites), or None without TLS: each
    handshake switches to the web config's context in force, so new files and rotated certificates are served
    there too. Turning TLS on or off there takes a restart (a plain listener stays plain, as in exporter-toolkit)."""
    tls = guard().tls
    if tls is None:
        return None
    context = tls.tls.context()

    def switch(connection: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: ssl.SSLContext) -> None:
        connection.context = (guard().tls or tls).current()  # TLS taken out of the file: the last settings

    context.sni_callback = switch
    return context
