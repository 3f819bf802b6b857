"""`--web.allowed-hosts`: the Host header names the port answers, against DNS rebinding.

A page on another site can point its own name at the daemon's address (DNS rebinding): the browser then sends
the page's requests, with the page's name as Host and Origin, to the daemon, which sees a same-origin request
and lets the page read /metrics and the API, and reload or edit the rules where that is enabled. A request
whose Host is not a name the operator listed is refused instead. IP addresses and `localhost` always pass: a
rebinding page cannot make a browser send them (its Host is the page's own name), and Prometheus scrapes pods
by address.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

WARN_EVERY = 60.0  # seconds between log lines about refused hosts
REFUSED = "Host not allowed (see --web.allowed-hosts)\n"


@dataclass
class AllowedHosts:
    """The names of --web.allowed-hosts (`*.example.com`: any name under example.com); none: every Host."""

    names: tuple[str, ...] = ()
    _warned_at: float = field(default=-WARN_EVERY, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        listed = (name.strip().lower().rstrip(".") for entry in self.names for name in entry.split(","))
        self.names = tuple(name for name in listed if name)

    def allows(self, host: str | None) -> bool:
        """Whether a request with this Host header value is answered (no Host: HTTP/1.0, not a browser)."""
        if not self.names or not host:
            return True
        name = hostname(host)
        if name is not None and (name == "localhost" or _is_address(name)
                                 or any(_matches(name, allowed) for allowed in self.names)):
            return True
        self._say_refused(host)
        return False

    def _say_refused(self, host: str) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._warned_at < WARN_EVERY:
                return
            self._warned_at = now
        log.warning("refused a request for Host %r: not in --web.allowed-hosts (%s); further ones are not logged "
                    "for a minute", host[:100], ", ".join(self.names))


def hostname(host: str) -> str | None:
    """The name in a Host header value, without its port, lower case; None when it is not one."""
    host = host.strip().lower()
    if host.startswith("["):  # [v6]:port
        address, bracket, port = host[1:].partition("]")
        if not bracket or (port and not (port.startswith(":") and port[1:].isdigit())):
            return None
        return address
    name, colon, port = host.partition(":")
    if colon and not port.isdigit():
        return None
    return name.rstrip(".") or None


def _matches(name: str, allowed: str) -> bool:
    if allowed.startswith("*."):  # a name under the domain, not the domain itself
        return name.endswith(allowed[1:]) and len(name) > len(allowed) - 1
    return name == allowed


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True
