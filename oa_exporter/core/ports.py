"""The ports: what the core needs from the outside world, and nothing about how it is done."""

from __future__ import annotations

import builtins
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar, runtime_checkable

import numpy as np

from .domain import (
    ArtifactInfo,
    Bands,
    Capabilities,
    FitRecord,
    Fitted,
    HistoryState,
    InstantVector,
    Model,
    ModelSpec,
    Rule,
    RuleScores,
    RuleSet,
    SeriesMatrix,
    StoredRule,
)
from .jobs import BandsJob, TrainingJob, TrainingOutcome

T = TypeVar("T")


class TsdbClient(Protocol):
    """Any Prometheus-API time-series database."""

    async def query_range(self, expr: str, start: float, end: float, step: float) -> SeriesMatrix:
        """History of every series of `expr` on the grid start, start+step, ..., end."""

    async def query(self, expr: str, at: float) -> InstantVector:
        """The value of every series of `expr` at time `at`."""

    async def close(self) -> None:
        """Release connections."""


@runtime_checkable
class Reachable(Protocol):
    """A TSDB client that knows whether its server has ever answered (readiness)."""

    answered: bool


class ModelEngine(Protocol):
    """The brain: fits a batch of series and forecasts bands for them."""

    name: str
    default_model: str  # what a rule that names only this engine (or nothing) gets

    @property
    def versions(self) -> Mapping[str, str]:
        """Library versions its models depend on: a stored model fitted under other versions is refit."""

    def validate(self, spec: ModelSpec) -> None:
        """Raise ValueError if this engine cannot build the model the spec names."""

    def fit(self, history: SeriesMatrix, spec: ModelSpec, level: float) -> Fitted:
        """Learn every series of `history` (CPU-bound: called in a worker, never on the event loop)."""

    def predict(self, model: Model, start: float, steps: int, level: float) -> Bands:
        """Forecast and interval at `level` % on the grid start, start+step, ... (steps points)."""

    def dumps(self, fitted: Fitted) -> bytes:
        """Serialise what `fit` learned."""

    def loads(self, data: bytes) -> Fitted:
        """Inverse of `dumps`."""

    def capabilities(self, spec: ModelSpec) -> Capabilities:
        """What the model the spec names can do: global model, GPU, update without refit."""

    def update(self, model: Model, history: SeriesMatrix) -> Fitted:
        """The fitted model conditioned on newer `history` (whose rows it then covers) without refitting its weights;
        only where capabilities(spec).update, others raise NotImplementedError."""

    def join(self, parts: Sequence[Fitted]) -> Fitted:
        """One Fitted of the series of `parts` (fits of consecutive row blocks), in order; only where
        capabilities(spec).separable, others raise NotImplementedError."""


class ArtifactStore(Protocol):
    """Where fitted models live between fits, across restarts and for other replicas. Raises ArtifactError."""

    async def put(self, model: Model, payload: bytes) -> str:
        """Store a model with its engine-serialised payload, whole or not at all; return its artifact id."""

    async def get(self, artifact_id: str) -> tuple[Model, bytes]:
        """A stored model and its payload, verified before it is returned; ArtifactRejected if untrusted."""

    async def list(self, rule: str | None = None) -> builtins.list[ArtifactInfo]:
        """The stored models of one rule (or of every rule), newest first."""

    async def delete(self, artifact_id: str) -> None:
        """Remove a stored model; one that is already gone is not an error."""

    async def put_record(self, record: FitRecord) -> None:
        """Keep how the rule's last fit went, beside its models."""

    async def get_record(self, rule: str) -> FitRecord | None:
        """How the rule's last fit went, as this or another replica recorded it; None if never."""

    async def close(self) -> None:
        """Release clients and files; safe to call twice."""


class HistoryStore(Protocol):
    """Where each rule's training-window history is kept between fits, in blocks of columns. Raises HistoryError."""

    async def state(self, rule: str) -> HistoryState | None:
        """What is stored for the rule (its series, grid and newest column); None if nothing."""

    async def read(self, rule: str, state: HistoryState, out: np.ndarray, first_column: int) -> None:
        """Fill `out` (rows: state.keys; columns: first_column, first_column+1, ...) from the stored blocks."""

    async def write(self, rule: str, state: HistoryState, values: np.ndarray, first_column: int,
                    changed_from: int) -> None:
        """Store the window `values` (rows: state.keys) from first_column on, rewriting only blocks at or after
        column changed_from; blocks older than first_column are deleted. HistoryError over the disk budget."""

    async def drop(self, rule: str) -> None:
        """Forget the rule's history; absent is not an error."""


class ConfigStore(Protocol):
    """Where the rules come from."""

    def load(self) -> RuleSet:
        """Parse and validate every rules file; raise RuleError listing every problem."""


class JobDispatcher(Protocol):
    """Runs CPU-bound jobs off the event loop, on this machine."""

    async def run(self, fn: Callable[..., T], *args: Any, gpu: bool = False) -> T:
        """Run fn(*args) elsewhere and await its result; exceptions propagate. gpu: place it on a free GPU."""

    async def split(self, series: int, points: int) -> tuple[int, int]:
        """How to send a separable fit of series x points: (series per job, jobs at once); (series, 1) is one job."""

    async def close(self) -> None:
        """Stop the workers; safe to call twice."""


class JobQueue(Protocol):
    """Sends whole jobs to workers elsewhere, which read the TSDB and the artifact store themselves."""

    async def train(self, job: TrainingJob) -> TrainingOutcome:
        """A worker fits the rule and stores the model; raises DispatchError if the job fails or is lost."""

    async def bands(self, job: BandsJob) -> Bands:
        """A worker forecasts bands from a stored model; raises DispatchError if the job fails or is lost."""

    async def close(self) -> None:
        """Release connections; safe to call twice."""


class ResultSink(Protocol):
    """Where scores go: the /metrics page, remote write, ... Called from worker threads: be thread-safe."""

    def publish(self, scores: RuleScores) -> None:
        """Replace the rule's previous results with these."""

    def flush(self) -> None:
        """Make everything published so far visible (e.g. render the /metrics page once)."""

    def forget(self, rule: str) -> None:
        """Drop every result of a rule that no longer exists."""


class Telemetry(Protocol):
    """Self-monitoring: the services report, an adapter turns reports into metrics."""

    def query_done(self, rule: str, kind: str, seconds: float, ok: bool) -> None:
        """A range or instant query finished."""

    def fit_done(self, rule: str, seconds: float, ok: bool, fallbacks: int = 0) -> None:
        """A fit finished (ok=False: it failed as a whole); fallbacks: series fitted by the fallback model."""

    def model_in_use(self, rule: str, trained_at: float) -> None:
        """The rule now scores with a model trained at `trained_at` (fitted or loaded)."""

    def series_states(self, rule: str, counts: dict[str, int]) -> None:
        """How many series of the rule are in each SeriesState."""

    def rule_health(self, rule: str, healthy: bool, error: str = "") -> None:
        """Whether the rule's last cycle worked."""

    def rule_warning(self, rule: str, reason: str, active: bool) -> None:
        """A condition of a rule that deserves a look but stops nothing (reason: no-series) began or ended."""

    def cycle_done(self, group: str, seconds: float, overrun: bool) -> None:
        """A group finished a scoring cycle."""

    def rules_loaded(self, rules: RuleSet | None, ok: bool, at: float) -> None:
        """A (re)load of the rules finished; rules is None when it failed."""

    def artifact_rejected(self, rule: str, reason: str) -> None:
        """A stored model of the rule was refused (a RejectReason) and the rule will be refit."""

    def artifact_failed(self, rule: str, operation: str) -> None:
        """The artifact store failed an operation (read, write, delete, record) for the rule."""

    def artifact_stored(self, rule: str, size: int, seconds: float) -> None:
        """A model of the rule was stored: its size in bytes and how long the write took."""

    def band_coverage(self, rule: str, inside: int, scored: int, at: float) -> None:
        """One cycle: of `scored` series with a forecast and a sample, `inside` lay within their `level` band."""

    def job_queued(self, queue: str) -> None:
        """A job was handed to a queue (training, inference)."""

    def job_running(self, queue: str) -> None:
        """A queued job started on a worker."""

    def job_done(self, queue: str, seconds: float, ok: bool, retries: int = 0, started: bool = True,
                 reason: str = "") -> None:
        """A job finished (ok) or failed for good (reason: error, timeout, lost, broker); retries: extra attempts."""

    def shard_layout(self, index: int, count: int) -> None:
        """This replica is now shard `index` of `count`."""

    def shard_series(self, rule: str, owned: int, total: int) -> None:
        """One cycle: this shard owns `owned` of the `total` series the rule's query returned."""

    def forget_rule(self, rule: Rule) -> None:
        """Drop every per-rule metric of a removed rule."""


class RulesEditor(Protocol):
    """The write side of a config store: one rule at a time, checked against the version the caller read.

    Every write is validated with the whole rule set it would make, as a load would, and is all or nothing.
    Raises RuleError (invalid), ConflictError (stale `if_match`, or a read-only store), NotFound.
    """

    def rule(self, name: str) -> StoredRule | None:
        """The rule as stored, or None."""

    def put_rule(self, group: str, rule: Mapping[str, Any], if_match: str | None,
                 dry_run: bool = False) -> StoredRule:
        """Create or replace the rule `rule["anomaly"]` in `group` (created when new); return it as stored
        (with `dry_run`: validate only, write nothing)."""

    def delete_rule(self, name: str, if_match: str | None) -> None:
        """Remove the rule (and its group, once empty)."""
