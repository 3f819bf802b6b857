"""The things OpenAnomaly reasons about, as frozen dataclasses and plain numpy arrays."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np

SeriesKey = bytes  # canonical, sorted label set of one input series, as the TSDB adapter encodes it


class Direction(StrEnum):
    """Which side of the forecast may score above 0."""

    BOTH = "both"
    ABOVE = "above"
    BELOW = "below"


class SeriesState(StrEnum):
    """Where one series of a rule stands."""

    READY = "ready"
    NOT_READY = "not-ready"
    FAILED = "failed"


@dataclass(frozen=True)
class ModelSpec:
    """Which engine fits the rule, which of its models, with which parameters."""

    engine: str
    name: str
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Rule:
    """One anomaly rule: a PromQL expression and how to model every series it returns."""

    name: str
    group: str
    expr: str
    step: float
    model: ModelSpec
    train_window: float = 14 * 86400.0
    train_every: float = 86400.0
    horizon: float = 3600.0
    level: float = 99.0
    direction: Direction = Direction.BOTH
    min_history: float = 86400.0
    max_series: int = 10000
    labels: Mapping[str, str] = field(default_factory=dict)
    file: str = ""
    line: int = 0
    repeat_window: float = 0.0  # seconds within which a repeat excursion does not page (scoring.Repeats); 0: off
    annotations: Mapping[str, str] = field(default_factory=dict)  # free text for people: shown, never exported
    calibrate: float = 0.0  # paging more than once in this many seconds widens a series' band (calibration.py)
    new_normal_after: float = 3 * 3600.0  # an excursion younger than this is held back from fits (excursions.py)
    settle_after: float = 0.0  # an excursion lasting this long pages again only when it grows (scoring.Settling)
    alert_for: float | None = None  # `for`: the wait of the alert written for the rule (alerting_rules.py); unset

    def fingerprint(self) -> str:
        """Hash of the fields that change the fitted model; equal fingerprints mean reusable models."""
        fields = {
            "expr": self.expr,
            "step": self.step,
            "engine": self.model.engine,
            "model": self.model.name,
            "params": self.model.params,
            "window": self.train_window,
            "level": self.level,
        }
        canonical = json.dumps(fields, sort_keys=True, default=str).encode()
        return hashlib.sha256(canonical).hexdigest()[:16]


@dataclass(frozen=True)
class RuleGroup:
    """Rules scored together on one cadence, like a Prometheus rule group."""

    name: str
    interval: float
    rules: tuple[Rule, ...]
    file: str = ""


@dataclass(frozen=True)
class RuleSet:
    """Every group of every rules file: built whole, swapped whole."""

    groups: tuple[RuleGroup, ...] = ()

    @property
    def rules(self) -> tuple[Rule, ...]:
        return tuple(rule for group in self.groups for rule in group.rules)


@dataclass(frozen=True)
class HistoryState:
    """What the history store holds for a rule: row i of every block is series keys[i]; columns are
    absolute grid indices (time / step); fingerprint ties it to the rule's expr, step and window."""

    fingerprint: str
    step: float
    keys: list[SeriesKey]
    labels: list[dict[str, str]]
    end_column: int  # the newest column stored
    full_read_at: float  # when the whole window was last read from the TSDB
    incomplete: bool = False  # series appeared whose older history may be missing: read all again when allowed
    generation: str = ""  # the store's write this state was read from ("": none, e.g. a fresh full read)
    start_column: int | None = None  # the oldest column stored (None: end_column's window, as the reader's)


@dataclass(frozen=True)
class SeriesMatrix:
    """History of many series on one regular grid: values[i, j] is series i at start + j*step (NaN = gap)."""

    keys: list[SeriesKey]
    labels: list[dict[str, str]]
    start: float
    step: float
    values: np.ndarray

    @property
    def timestamps(self) -> np.ndarray:
        return self.start + self.step * np.arange(self.values.shape[1])

    def select(self, rows: np.ndarray) -> SeriesMatrix:
        """The same grid restricted to some series."""
        return SeriesMatrix(
            keys=[self.keys[i] for i in rows],
            labels=[self.labels[i] for i in rows],
            start=self.start,
            step=self.step,
            values=self.values[rows],
        )


@dataclass(frozen=True)
class InstantVector:
    """The latest sample of every series an instant query returned.

    `labels` may be computed lazily from the keys: read it only for series you have not seen before.
    """

    keys: list[SeriesKey]
    labels: Sequence[Mapping[str, str]]
    values: np.ndarray
    timestamp: float


@dataclass(frozen=True)
class Bands:
    """Forecast and interval for many series over a horizon: arrays of shape (series, steps)."""

    start: float
    step: float
    yhat: np.ndarray
    lower: np.ndarray
    upper: np.ndarray

    @property
    def end(self) -> float:
        """First timestamp the bands no longer cover."""
        return self.start + self.step * self.yhat.shape[1]

    def column(self, at: float) -> int:
        """Index of the grid point at or just before `at`; may fall outside the horizon."""
        return int(np.floor((at - self.start) / self.step + 1e-9))


@dataclass(frozen=True)
class Capabilities:
    """What an engine's model can do besides fit and predict."""

    global_model: bool = False  # one model across series: forecasts a series it was not fitted on from its history
    gpu: bool = False  # trains on a GPU when one is at hand (and on the CPU otherwise)
    update: bool = False  # engine.update takes newer history (new series too, if global) without a full refit
    separable: bool = False  # the fit of a rule is its row blocks' fits put together (engine.join): may be spread


@dataclass
class Fitted:
    """What an engine learned for a batch of series: its own payload, and which series it could fit."""

    payload: Any
    ok: np.ndarray
    errors: dict[int, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Model:
    """A fitted model of one rule, as stored and loaded: the series it covers and the engine's state."""

    rule: str
    fingerprint: str
    engine: str
    keys: list[SeriesKey]
    labels: list[dict[str, str]]
    trained_at: float
    window_start: float
    window_end: float
    step: float
    fitted: Fitted
    versions: Mapping[str, str] = field(default_factory=dict)  # the engine's library versions that fitted it
    artifact: str = ""  # its id in the artifact store, once stored (or when loaded from there)


@dataclass(frozen=True)
class RuleScores:
    """One rule's results for one scoring cycle, one entry per series present in the TSDB now."""

    rule: Rule
    keys: list[SeriesKey]
    labels: Sequence[Mapping[str, str]]
    timestamp: float
    y: np.ndarray
    yhat: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    score: np.ndarray
    states: Mapping[str, int] = field(default_factory=dict)  # how many series are in each SeriesState

    @property
    def ready(self) -> np.ndarray:
        return ~np.isnan(self.yhat)


@dataclass(frozen=True)
class ArtifactInfo:
    """A stored model as a store lists it, without reading it."""

    id: str
    rule: str
    fingerprint: str
    trained_at: float


@dataclass(frozen=True)
class FitRecord:
    """How a rule's last fit went; kept beside its artifacts, so that restarts and other replicas see it."""

    rule: str
    fingerprint: str
    finished_at: float
    ok: bool
    error: str = ""
    trained_at: float | None = None  # training time of the model the rule has (the last good fit)
    series: Mapping[str, int] = field(default_factory=dict)  # series per SeriesState when it was fitted
    artifact: str = ""  # the artifact holding that model


@dataclass(frozen=True)
class RuleStatus:
    """One rule as GET /api/v1/rules shows it."""

    name: str
    group: str
    state: str  # ok, error, no-series (its expr selects nothing), fitting (first fit running) or pending (no model yet)
    series: Mapping[str, int]
    last_fit: float | None  # training time of the model in use (unix seconds)
    next_fit: float | None  # when the next fit is due; None while one runs
    fits_since_start: int  # fits this process started for the rule
    artifact: str | None  # the stored model in use
    error: str | None
    fingerprint: str
    shard: Mapping[str, int] = field(default_factory=dict)  # index, count; series it owns of the query's total
    anomalous: int = 0  # series scoring above 1 in the last cycle
    warning: str | None = None  # something to look at that stops nothing, e.g. an expr that selects no series
    labels: Mapping[str, str] = field(default_factory=dict)  # the rule's own labels, on every output series
    annotations: Mapping[str, str] = field(default_factory=dict)  # the rule's annotations, as written


@dataclass(frozen=True)
class StoredRule:
    """A rule as its config store holds it: its keys as written, its group, where it is, and its version."""

    name: str
    group: str
    source: Mapping[str, Any]  # the rule's keys as in the rules file (plain data)
    etag: str
    origin: str = ""  # the file (or table) holding it


@dataclass(frozen=True)
class FitEvent:
    """One fit of a rule, as its fit history shows it."""

    started_at: float
    finished_at: float
    ok: bool
    error: str = ""
    series: int = 0  # series the model covers (0 when the fit failed)
