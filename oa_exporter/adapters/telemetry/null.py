"""Telemetry that records nothing: for a backtest, where there is no /metrics page to feed."""

from __future__ import annotations

from typing import Any


class NullTelemetry:
    """Every Telemetry report is accepted and dropped, whatever reports the port gains later."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _ignore


def _ignore(*args: Any, **kwargs: Any) -> None:
    return None
