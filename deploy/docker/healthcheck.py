#!/usr/bin/env python3
"""Container health check of the oa-exporter image (its HEALTHCHECK runs this, with no arguments).

The image has one HEALTHCHECK for every role, so the check looks at the container's main process (PID 1)
to see which role it plays:

- `oa-exporter run` (the daemon) or `demo`: GET http://127.0.0.1:PORT/-/healthy must answer 200. PORT is
  the one the process was told, by `--web.listen-address` or OA_WEB_LISTEN_ADDRESS (default 10100).
- `oa-exporter worker` and anything else: the check passes (a worker serves HTTP only with
  `--worker.listen-address`, which the Helm chart probes itself); the container is
  as alive as its main process (Docker restarts it by its restart policy when it exits). Orchestrators that
  want a stricter worker check override it (`docker run --no-healthcheck`, compose `healthcheck: {disable:
  true}` or a Kubernetes probe of their own).

Only the standard library: the slim image has no curl.
"""

from __future__ import annotations

import os
import sys
import urllib.request
from collections.abc import Mapping, Sequence

HTTP_ROLES = ("run", "demo")
ROLES = (*HTTP_ROLES, "worker", "check", "backtest")
DEFAULT_ADDRESS = ":10100"


def role(argv: Sequence[str]) -> str:
    """The oa-exporter subcommand in a command line ('' when none)."""
    return next((a for a in argv if a in ROLES), "")


def health_url(argv: Sequence[str], environ: Mapping[str, str]) -> str:
    """Where the daemon in `argv` answers /-/healthy: its flag, else its variable, else the default port."""
    address = environ.get("OA_WEB_LISTEN_ADDRESS") or DEFAULT_ADDRESS
    for i, arg in enumerate(argv):
        if arg == "--web.listen-address" and i + 1 < len(argv):
            address = argv[i + 1]
        elif arg.startswith("--web.listen-address="):
            address = arg.split("=", 1)[1]
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/-/healthy"


def check(argv: Sequence[str], environ: Mapping[str, str], timeout: float = 4.0) -> int:
    """0 when the process of `argv` is healthy, 1 otherwise (Docker's HEALTHCHECK convention)."""
    if role(argv) not in HTTP_ROLES:
        return 0
    url = health_url(argv, environ)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - a loopback http URL
            return 0 if response.status == 200 else 1
    except OSError as e:
        print(f"{url}: {e}", file=sys.stderr)
        return 1


def main_process_argv(path: str = "/proc/1/cmdline") -> list[str]:
    """The command line of the container's main process."""
    with open(path, "rb") as f:
        return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]


if __name__ == "__main__":
    sys.exit(check(main_process_argv(), os.environ))
