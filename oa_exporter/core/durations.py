"""Prometheus duration syntax: 30s, 5m, 1h30m, 14d, 1w, 500ms."""

from __future__ import annotations

import re
from datetime import UTC, datetime

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
_PART = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")
_WHOLE = re.compile(r"^(?:\d+(?:ms|s|m|h|d|w|y))+$")


MAX_SECONDS = 100 * 365 * 86400


def parse_duration(text: str) -> float:
    """Seconds in a Prometheus duration string; ValueError if it is not one."""
    if not isinstance(text, str) or not _WHOLE.match(text):
        raise ValueError(f"invalid duration {text!r} (use Prometheus syntax such as 30s, 5m, 1h, 14d)")
    seconds = sum(int(n) * _UNITS[unit] for n, unit in _PART.findall(text))
    if seconds <= 0:
        raise ValueError(f"duration {text!r} must be positive")
    if seconds > MAX_SECONDS:
        raise ValueError(f"duration {text!r} is longer than 100 years")
    return float(seconds)


def format_duration(seconds: float) -> str:
    """The shortest Prometheus duration string for a whole number of seconds."""
    rest = int(seconds)
    parts = []
    for unit in ("w", "d", "h", "m", "s"):
        count, rest = divmod(rest, int(_UNITS[unit]))
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


def iso_time(unix: float) -> str:
    """A Unix time as an ISO 8601 UTC time, to the second: 2026-12-03T12:00:00Z."""
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
