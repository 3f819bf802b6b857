"""SeasonalProfile's parameters: their defaults and their validation (see seasonal.py for what each does)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .durations import parse_duration

DEFAULTS: dict[str, Any] = {
    "seasons": ["1d", "1w"], "buckets": 288, "level_window": "3h", "scale_buckets": None, "tail": None,
    "residual_lag": "0s", "range_margin": None, "local_window": None, "holdout": "7d", "range_history": None,
    "robust_reference": False, "resolution": False, "amplitude_window": None, "cross_fit": None,
}
DURATIONS = (  # parameters in Prometheus duration syntax
    "local_window", "amplitude_window", "holdout", "range_history", "level_window", "residual_lag", "cross_fit",
)
OPTIONAL = ("local_window", "amplitude_window", "range_history", "cross_fit")  # None: off


def settings(params: Mapping[str, Any]) -> dict[str, Any]:
    """Validated parameters with defaults; ValueError names the bad one."""
    unknown = set(params) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"SeasonalProfile has no parameter(s) {sorted(unknown)}; it takes {sorted(DEFAULTS)}")
    merged = {**DEFAULTS, **params}
    seasons = merged["seasons"]
    if not isinstance(seasons, Sequence) or isinstance(seasons, str):
        raise ValueError("SeasonalProfile seasons must be a list of durations such as [1d, 1w]")
    buckets = merged["buckets"]
    if isinstance(buckets, bool) or not isinstance(buckets, int) or buckets < 2:
        raise ValueError("SeasonalProfile buckets must be an integer >= 2")
    scale_buckets = merged["scale_buckets"]
    if scale_buckets is not None and (isinstance(scale_buckets, bool) or not isinstance(scale_buckets, int)
                                      or scale_buckets < 1):
        raise ValueError("SeasonalProfile scale_buckets must be an integer >= 1 (1: one noise level all day)")
    tail = merged["tail"]
    if tail is not None and (isinstance(tail, bool) or not isinstance(tail, int | float) or not 90 <= tail < 100):
        raise ValueError("SeasonalProfile tail must be a level in % from 90 to below 100, e.g. 99")
    margin = merged["range_margin"]
    if margin is not None and (isinstance(margin, bool) or not isinstance(margin, int | float)
                               or not 1 <= margin <= 10):
        raise ValueError("SeasonalProfile range_margin must be a factor from 1 to 10 (1.05: 5 % beyond the range)")
    for flag in ("robust_reference", "resolution"):
        if not isinstance(merged[flag], bool):
            raise ValueError(f"SeasonalProfile {flag} must be true or false")
    durations = {name: _duration(name, merged[name]) for name in DURATIONS}
    seasons = [_duration("seasons", season) for season in seasons]
    return {
        **durations,
        "robust_reference": bool(merged["robust_reference"]),
        "resolution": bool(merged["resolution"]),
        "seasons": sorted(seasons),
        "buckets": buckets,
        "scale_buckets": scale_buckets,
        "tail": float(tail) if tail is not None else None,
        "range_margin": float(margin) if margin is not None else None,
    }


def _duration(name: str, value: Any) -> float | None:
    """A duration parameter in seconds (None for an optional one left off; `residual_lag` may be 0); the
    ValueError names the parameter."""
    if value is None and name in OPTIONAL:
        return None
    if name == "residual_lag" and value in ("0s", 0):
        return 0.0
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise ValueError(f"SeasonalProfile {name}: {exc}") from None
