"""A rule as its rules file would say it, with every default and preset value written out."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from .domain import Rule
from .durations import format_duration


def definition(rule: Rule) -> dict[str, Any]:
    """The rule's keys as in YAML, nothing inherited left implicit (presets expanded, defaults filled in)."""
    return {
        "anomaly": rule.name,
        "expr": rule.expr,
        "step": format_duration(rule.step),
        "model": {"engine": rule.model.engine, "name": rule.model.name, "params": dict(rule.model.params)},
        "train": {"window": format_duration(rule.train_window), "every": format_duration(rule.train_every)},
        "forecast": {"horizon": format_duration(rule.horizon), "level": rule.level},
        "direction": rule.direction.value,
        "min_history": format_duration(rule.min_history),
        "max_series": rule.max_series,
        "repeat_window": format_duration(rule.repeat_window) if rule.repeat_window else "off",
        "calibrate": format_duration(rule.calibrate) if rule.calibrate else "off",
        "settle_after": format_duration(rule.settle_after) if rule.settle_after else "off",
        "new_normal_after": format_duration(rule.new_normal_after) if rule.new_normal_after else "off",
        "labels": dict(rule.labels),
        **({"for": format_duration(rule.alert_for)} if rule.alert_for is not None else {}),
    }


def etag(group: str, source: Mapping[str, Any]) -> str:
    """The version of a rule as written (its group and keys): changes whenever a write would change it."""
    canonical = json.dumps({"group": group, "rule": source}, sort_keys=True, default=str).encode()
    return '"' + hashlib.sha256(canonical).hexdigest()[:20] + '"'
