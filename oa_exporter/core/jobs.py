"""Jobs that run on workers: what travels is a rule spec, a window and artifact ids, never a model.

A payload is plain JSON, so any queue can carry it. The worker rebuilds the rule and checks its fingerprint,
so a worker running another version of the code refuses a job it would fit differently.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .domain import Bands, Direction, ModelSpec, Rule, SeriesKey
from .errors import EngineError
from .excursions import Ongoing
from .sharding import Shard

TRAINING = "training"
INFERENCE = "inference"


@dataclass(frozen=True)
class TrainingJob:
    """Fit a rule on the window that ends at `window_end`, holding back the excursions in progress the daemon
    saw (`ongoing`): the same job always makes the same artifact. A sharded daemon's job fits only its `shard`'s
    series, and the worker stores the model under that shard's names (see adapters/stores/sharded.py)."""

    rule: Rule
    window_end: float
    ongoing: Mapping[SeriesKey, Ongoing] = field(default_factory=dict)
    shard: Shard = field(default_factory=Shard)

    @property
    def key(self) -> str:
        """Idempotency key: one rule version, one window, one shard."""
        key = f"train:{self.rule.name}:{self.rule.fingerprint()}:{round(self.window_end * 1000)}"
        return key if self.shard.whole else f"{key}:shard-{self.shard.index}-of-{self.shard.count}"

    def payload(self) -> dict[str, Any]:
        return {"rule": rule_to_dict(self.rule), "fingerprint": self.rule.fingerprint(),
                "window_end": self.window_end,
                "ongoing": [[base64.b64encode(key).decode(), e.after, e.since] for key, e in self.ongoing.items()],
                "shard": [self.shard.index, self.shard.count]}

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> TrainingJob:
        ongoing = {base64.b64decode(key): Ongoing(float(after), float(since))
                   for key, after, since in payload.get("ongoing", [])}
        index, count = payload.get("shard", [0, 1])
        return cls(rule_from_dict(payload["rule"], payload["fingerprint"]), float(payload["window_end"]), ongoing,
                   Shard(int(index), int(count)))


@dataclass(frozen=True)
class TrainingOutcome:
    """What a worker answers for a training job: where the model is, and how the fit went."""

    artifact: str  # "" when the model could not be stored (the worker's store failed)
    trained_at: float
    series: dict[str, int] = field(default_factory=dict)
    fallbacks: int = 0
    fit_seconds: float = 0.0
    attempts: int = 1  # deliveries it took: retries after time limits and redeliveries after lost workers

    def payload(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> TrainingOutcome:
        return cls(**payload)


@dataclass(frozen=True)
class BandsJob:
    """Forecast bands from a stored model: `steps` points on the rule's grid from `start`; `shard`: the index of
    the shard whose model it is (its names in the store)."""

    rule: Rule
    artifact: str
    start: float
    steps: int
    shard: int = 0

    @property
    def key(self) -> str:
        return f"bands:{self.artifact}:{round(self.start * 1000)}:{self.steps}"

    def payload(self) -> dict[str, Any]:
        return {"rule": rule_to_dict(self.rule), "fingerprint": self.rule.fingerprint(), "artifact": self.artifact,
                "start": self.start, "steps": self.steps, "shard": self.shard}

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> BandsJob:
        rule = rule_from_dict(payload["rule"], payload["fingerprint"])
        return cls(rule, str(payload["artifact"]), float(payload["start"]), int(payload["steps"]),
                   int(payload.get("shard", 0)))


def rule_to_dict(rule: Rule) -> dict[str, Any]:
    """A rule as JSON-safe values (the inverse of rule_from_dict)."""
    fields = asdict(rule)
    fields["model"] = {"engine": rule.model.engine, "name": rule.model.name, "params": dict(rule.model.params)}
    fields["direction"] = rule.direction.value
    fields["labels"] = dict(rule.labels)
    return fields


def rule_from_dict(fields: dict[str, Any], fingerprint: str) -> Rule:
    """The rule a payload carries; EngineError when this code would not fit it as the sender's does."""
    fields = dict(fields)
    fields["model"] = ModelSpec(**fields["model"])
    fields["direction"] = Direction(fields["direction"])
    rule = Rule(**fields)
    if rule.fingerprint() != fingerprint:
        raise EngineError(f"rule {rule.name!r}: the job's fingerprint {fingerprint} is not this worker's "
                          f"{rule.fingerprint()}: daemon and worker run different versions")
    return rule


def bands_to_payload(bands: Bands) -> dict[str, Any]:
    """Bands as JSON: the arrays as base64 float64, exact and a third of their decimal size."""
    return {"start": bands.start, "step": bands.step, "shape": list(bands.yhat.shape),
            **{name: _encode(getattr(bands, name)) for name in ("yhat", "lower", "upper")}}


def bands_from_payload(payload: dict[str, Any]) -> Bands:
    shape = tuple(payload["shape"])
    yhat, lower, upper = (_decode(payload[name], shape) for name in ("yhat", "lower", "upper"))
    return Bands(float(payload["start"]), float(payload["step"]), yhat, lower, upper)


def _encode(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array, dtype="<f8").tobytes()).decode()


def _decode(text: str, shape: tuple[int, ...]) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f8").reshape(shape).copy()
