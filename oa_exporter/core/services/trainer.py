"""Trainer: history from the TSDB → a fitted model in the artifact store, and back after a restart."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace

import numpy as np

from ..domain import FitRecord, Fitted, Model, ModelSpec, Rule, SeriesKey, SeriesMatrix, SeriesState
from ..durations import format_duration
from ..errors import ArtifactError, ArtifactRejected, CardinalityError, DispatchError, EngineError, RejectReason
from ..excursions import Ongoing, held_back
from ..ports import ArtifactStore, JobDispatcher, ModelEngine, Telemetry, TsdbClient
from ..sharding import Shard, select_history
from .history import HistoryReader

log = logging.getLogger(__name__)
# Models of a rule that no rules file names any more are deleted once the newest of them is this old: a rule
# removed by mistake and put back within a week keeps its model, and a rule that another replica sharing the
# store still scores (and so refits) is never touched.
REMOVED_RULE_GRACE = 7 * 86400.0
ORPHAN_CHECK_PERIOD = 3600.0  # how often the store is searched for them


async def fit_rule(dispatcher: JobDispatcher, engine: ModelEngine, history: SeriesMatrix, spec: ModelSpec,
                   level: float) -> Fitted:
    """engine.fit(history, spec, level) through the dispatcher: one job, or, for a separable model that the
    dispatcher wants split (a cluster), jobs of consecutive row blocks, a few at once, joined in order.

    Blocks are views of `history`, so the split copies nothing here, and a job carries only its block: no
    worker ever holds the whole history. The first block that fails fails the fit (the others are cancelled).
    """
    capabilities = engine.capabilities(spec)
    rows, at_once = (await dispatcher.split(len(history.keys), history.values.shape[1]) if capabilities.separable
                     else (len(history.keys), 1))
    if rows >= len(history.keys):
        return await dispatcher.run(engine.fit, history, spec, level, gpu=capabilities.gpu)
    slots = asyncio.Semaphore(max(at_once, 1))

    async def block(first: int) -> Fitted:
        part = SeriesMatrix(history.keys[first : first + rows], history.labels[first : first + rows],
                            history.start, history.step, history.values[first : first + rows])
        async with slots:
            return await dispatcher.run(engine.fit, part, spec, level, gpu=capabilities.gpu)

    try:
        async with asyncio.TaskGroup() as group:
            parts = [group.create_task(block(first)) for first in range(0, len(history.keys), rows)]
    except BaseExceptionGroup as failed:  # the first failure, as one job's would be
        raise failed.exceptions[0]  # noqa: B904 - it carries its own traceback
    return engine.join([part.result() for part in parts])


class Trainer:
    """Fits a rule's series off the event loop; keeps the models, and how each fit went, in the artifact store."""

    def __init__(
        self,
        tsdb: TsdbClient,
        engines: Mapping[str, ModelEngine],
        store: ArtifactStore,
        dispatcher: JobDispatcher,
        telemetry: Telemetry,
        clock: Callable[[], float] = time.time,
        keep: int = 3,
        history: HistoryReader | None = None,
    ):
        self.tsdb = tsdb
        self.history = history  # keeps each rule's window between fits: a refit reads only what is new
        self.engines = engines
        self.store = store
        self.dispatcher = dispatcher
        self.telemetry = telemetry
        self.clock = clock
        self.keep = max(keep, 1)  # the newest model is the one in use: never prune it
        self.records: dict[str, FitRecord] = {}  # per rule: how its last fit went (ours, or a stored one)
        self.shard = Shard()  # the series this replica fits: its share of every rule's (a reload may change it)
        self._orphans_checked = -math.inf

    async def train(self, rule: Rule, now: float, ongoing: Mapping[SeriesKey, Ongoing] | None = None,
                    shard: Shard | None = None) -> Model:
        """Query the training window, fit every series with enough history, store the model; record the outcome.
        `ongoing`: the rule's excursions in progress, held back from the fit while younger than new_normal_after;
        `shard`: whose series to fit (default: this replica's; a worker fits the shard its job names). The history
        store keeps the window read once the model is stored, never beside the fit or the model's write."""
        try:
            return await self.adopt(rule, self.fit(rule, now, ongoing, shard))
        finally:
            self._release(rule)

    async def fit(self, rule: Rule, now: float, ongoing: Mapping[SeriesKey, Ongoing] | None = None,
                  shard: Shard | None = None) -> tuple[Model, dict[str, int]]:
        """What `train` fits, neither stored nor recorded: the model and its series per state. Several may
        run at once (a backtest fits ahead); `adopt` then keeps each, in order."""
        return await self._fit(rule, now, ongoing, shard or self.shard)

    async def adopt(self, rule: Rule, fitting: Awaitable[tuple[Model, dict[str, int]]]) -> Model:
        """Await a fit (from `fit`, perhaps started earlier), store its model and record the outcome."""
        try:
            model, series = await fitting
        except Exception as e:
            await self._record(rule, error=str(e) or type(e).__name__)
            raise
        model = await self._save(self.engines[rule.model.engine], model)
        await self._record(rule, model=model, series=series)
        return model

    async def load(self, rule: Rule, now: float) -> Model | None:
        """The rule's newest stored model if it can be trusted, was fitted for this rule by this engine and its
        libraries, and is younger than train.every; None means refit. Every refusal is logged and counted."""
        await self._load_record(rule)
        fingerprint = rule.fingerprint()
        try:
            stored = await self.store.list(rule.name)
        except (ArtifactError, OSError) as e:
            self._failed(rule.name, "read", e)
            return None
        matching = [info for info in stored if info.fingerprint == fingerprint]
        if not matching:
            if stored:
                self._rejected(rule.name, ArtifactRejected(RejectReason.FINGERPRINT, (
                    f"{stored[0].id}: fitted for another version of the rule (fingerprint {stored[0].fingerprint}, "
                    f"the rule's is now {fingerprint})")))
            return None
        newest = matching[0]
        if now - newest.trained_at >= rule.train_every:
            log.info("rule %s: the stored model %s is older than train.every: refitting", rule.name, newest.id)
            return None
        return await self.read(rule, newest.id)

    def can_update(self, rule: Rule) -> bool:
        """Whether the rule's model can take new series from their history without a refit (global models)."""
        return self.engines[rule.model.engine].capabilities(rule.model).update

    async def update(self, rule: Rule, model: Model, now: float,
                     ongoing: Mapping[SeriesKey, Ongoing] | None = None) -> Model:
        """The model conditioned on the rule's current history, series that appeared since its fit included,
        weights unchanged, excursions in progress held back as in `train`. Not stored (the next fit is); band
        jobs then run here, as it has no artifact."""
        try:
            history = select_history(await self._history(rule, now), self.shard)
            with self._held_back(rule, history, ongoing, now):
                fresh = history.select(np.flatnonzero(history_span(history) >= rule.min_history))  # a copy
        finally:
            self._release(rule)
        engine = self.engines[rule.model.engine]
        fitted = await asyncio.to_thread(engine.update, model, fresh)
        return replace(model, keys=fresh.keys, labels=fresh.labels, fitted=fitted,
                       window_end=float(fresh.timestamps[-1]), artifact="")

    async def prune_removed(self, rules: set[str], now: float) -> None:
        """Delete the stored models of rules not in `rules` whose newest model is older than REMOVED_RULE_GRACE
        (at most once per ORPHAN_CHECK_PERIOD); a store failure is logged and counted, never raised."""
        if now - self._orphans_checked < ORPHAN_CHECK_PERIOD:
            return
        self._orphans_checked = now
        try:
            stored = await self.store.list()
        except (ArtifactError, OSError) as e:
            self._failed("", "list", e)
            return
        newest: dict[str, float] = {}
        for info in stored:
            newest[info.rule] = max(newest.get(info.rule, -math.inf), info.trained_at)
        removed = {rule for rule, at in newest.items() if rule not in rules and now - at >= REMOVED_RULE_GRACE}
        for info in (i for i in stored if i.rule in removed):
            try:
                await self.store.delete(info.id)
            except (ArtifactError, OSError) as e:
                self._failed(info.rule, "delete", e)
        if self.history is not None:  # their history too: it no longer counts against --history.max-bytes
            for rule in sorted(removed):
                await self.history.forget(rule)
        if removed:
            log.info("deleted the stored models of %d removed rules (%s): none was trained in the last %s",
                     len(removed), ", ".join(sorted(removed)), format_duration(REMOVED_RULE_GRACE))

    def forget(self, rule: str) -> None:
        """Drop what is kept in memory about a removed rule (its stored models and record stay)."""
        self.records.pop(rule, None)

    async def _fit(self, rule: Rule, now: float, ongoing: Mapping[SeriesKey, Ongoing] | None,
                   shard: Shard) -> tuple[Model, dict[str, int]]:
        history = select_history(await self._history(rule, now), shard)
        eligible = np.flatnonzero(history_span(history) >= rule.min_history)
        # every series ready (the usual case): fit the query result itself, not a copy of it (1.5 GB at 50k series)
        selected = history if len(eligible) == len(history.keys) else history.select(eligible)
        engine = self.engines[rule.model.engine]
        started = time.perf_counter()
        try:
            with self._held_back(rule, selected, ongoing, now):
                fitted = await fit_rule(self.dispatcher, engine, selected, rule.model, rule.level)
        except Exception as e:
            self.telemetry.fit_done(rule.name, time.perf_counter() - started, False)
            if isinstance(e, DispatchError):  # timed out, or its process died: already says so, and may be retried
                raise
            raise EngineError(f"fit failed: {type(e).__name__}: {e}") from e
        model = Model(
            rule=rule.name, fingerprint=rule.fingerprint(), engine=engine.name,
            keys=[history.keys[i] for i in eligible], labels=[history.labels[i] for i in eligible],
            trained_at=now, window_start=history.start, window_end=history.timestamps[-1],
            step=rule.step, fitted=fitted, versions=dict(engine.versions),
        )
        self.telemetry.fit_done(rule.name, time.perf_counter() - started, True, len(fitted.errors))
        for row, error in fitted.errors.items():
            log.warning("rule %s: series %s fell back to the default model: %s", rule.name, model.labels[row], error)
        ready = int(np.count_nonzero(fitted.ok))
        series = {SeriesState.READY.value: ready, SeriesState.FAILED.value: len(eligible) - ready,
                  SeriesState.NOT_READY.value: len(history.keys) - len(eligible)}
        return model, series

    async def _history(self, rule: Rule, now: float) -> SeriesMatrix:
        end = math.floor(now / rule.step) * rule.step
        start = end - rule.train_window + rule.step
        started, ok = time.perf_counter(), False
        try:
            if self.history is not None:
                history = await self.history.read(rule, start, end)
            else:
                history = await self.tsdb.query_range(rule.expr, start, end, rule.step)
            ok = True
        finally:
            self.telemetry.query_done(rule.name, "range", time.perf_counter() - started, ok)
        if len(history.keys) > rule.max_series:
            raise CardinalityError(
                f"expr returns {len(history.keys)} series over the training window, above max_series "
                f"{rule.max_series}: narrow the expr or raise max_series"
            )
        return history

    def _release(self, rule: Rule) -> None:
        """The window read for the rule's fit is no longer in use (samples held back in it restored): store it."""
        if self.history is not None:
            self.history.release(rule.name)

    @contextmanager
    def _held_back(self, rule: Rule, history: SeriesMatrix, ongoing: Mapping[SeriesKey, Ongoing] | None,
                   now: float) -> Iterator[None]:
        """Within the block, the samples of the excursions in progress younger than new_normal_after are missing."""
        with held_back(history, ongoing or {}, now, rule.new_normal_after) as held:
            if held:
                log.info("rule %s: %d series in an excursion younger than new_normal_after (%gs): fitted without it",
                         rule.name, held, rule.new_normal_after)
            yield

    async def _save(self, engine: ModelEngine, model: Model) -> Model:
        """Store the model and prune the rule's old ones; a store failure leaves the model serving, unstored."""
        started = time.perf_counter()
        try:
            payload = await asyncio.to_thread(engine.dumps, model.fitted)
            artifact = await self.store.put(model, payload)
        except (ArtifactError, OSError) as e:  # the model still serves; only a restart would refit
            self._failed(model.rule, "write", e)
            return model
        self.telemetry.artifact_stored(model.rule, len(payload), time.perf_counter() - started)
        await self._prune(model.rule)
        return replace(model, artifact=artifact)

    async def _prune(self, rule: str) -> None:
        """Keep the rule's newest `keep` models, whatever their fingerprint; delete the older ones."""
        try:
            for old in (await self.store.list(rule))[self.keep :]:
                await self.store.delete(old.id)
        except (ArtifactError, OSError) as e:
            self._failed(rule, "delete", e)

    async def read(self, rule: Rule, artifact_id: str) -> Model | None:
        """A stored model, checked and loaded by its engine; None (counted) when it must not be used."""
        engine = self.engines[rule.model.engine]
        try:
            model, payload = await self.store.get(artifact_id)  # verified (checksum, HMAC) before we see it
            _check_compatible(rule, engine, model, artifact_id)
            fitted = await asyncio.to_thread(engine.loads, payload)
        except ArtifactRejected as e:
            self._rejected(rule.name, e)
            return None
        except ValueError as e:  # trusted and intact, but not a model this engine can load
            self._rejected(rule.name, ArtifactRejected(RejectReason.UNREADABLE, f"{artifact_id}: {e}"))
            return None
        except (ArtifactError, OSError) as e:
            self._failed(rule.name, "read", e)
            return None
        if rule.name not in self.records:  # stored before fit records existed, or the record was lost
            self.records[rule.name] = FitRecord(rule.name, model.fingerprint, model.trained_at, True,
                                                trained_at=model.trained_at, artifact=artifact_id)
        return replace(model, fitted=fitted, artifact=artifact_id)

    async def _load_record(self, rule: Rule) -> None:
        """Adopt the stored fit record of this version of the rule, unless this process has a newer one."""
        fingerprint = rule.fingerprint()
        current = self.records.get(rule.name)
        if current is not None and current.fingerprint == fingerprint:
            return
        self.records.pop(rule.name, None)
        try:
            stored = await self.store.get_record(rule.name)
        except (ArtifactError, OSError) as e:
            self._failed(rule.name, "record", e)
            return
        if stored is not None and stored.fingerprint == fingerprint:
            self.records[rule.name] = stored

    async def _record(self, rule: Rule, model: Model | None = None, series: dict[str, int] | None = None,
                      error: str = "") -> None:
        """Remember and store how a fit went; a failed fit keeps the last good model's details."""
        fingerprint = rule.fingerprint()
        last = self.records.get(rule.name)
        last = last if last is not None and last.fingerprint == fingerprint else None
        record = FitRecord(
            rule=rule.name, fingerprint=fingerprint, finished_at=self.clock(), ok=not error, error=error,
            trained_at=model.trained_at if model else (last.trained_at if last else None),
            series=series if series is not None else (dict(last.series) if last else {}),
            artifact=model.artifact if model else (last.artifact if last else ""),
        )
        self.records[rule.name] = record
        try:
            await self.store.put_record(record)
        except (ArtifactError, OSError) as e:
            self._failed(rule.name, "record", e)

    def _rejected(self, rule: str, e: ArtifactRejected) -> None:
        log.warning("rule %s: stored model refused (%s), refitting: %s", rule, e.reason.value, e)
        self.telemetry.artifact_rejected(rule, e.reason.value)

    def _failed(self, rule: str, operation: str, e: Exception) -> None:
        log.error("rule %s: artifact store %s failed: %s", rule, operation, e)
        self.telemetry.artifact_failed(rule, operation)


def _check_compatible(rule: Rule, engine: ModelEngine, model: Model, where: str) -> None:
    """ArtifactRejected unless the model was fitted for this rule by this engine under the same libraries."""
    if model.rule != rule.name or model.fingerprint != rule.fingerprint():
        raise ArtifactRejected(RejectReason.FINGERPRINT, f"{where}: fitted for rule {model.rule!r} with fingerprint "
                               f"{model.fingerprint}, not {rule.name!r} with {rule.fingerprint()}")
    theirs, ours = {"engine": model.engine, **model.versions}, {"engine": engine.name, **engine.versions}
    if theirs != ours:
        changed = ", ".join(f"{name} {theirs.get(name, 'absent')} (now {ours.get(name, 'absent')})"
                            for name in sorted(theirs.keys() | ours.keys()) if theirs.get(name) != ours.get(name))
        raise ArtifactRejected(RejectReason.VERSION, f"{where}: fitted under {changed}")


def history_span(history: SeriesMatrix) -> np.ndarray:
    """Seconds from each series' first sample to the end of the window (0 for an empty series)."""
    present = ~np.isnan(history.values)
    first = np.argmax(present, axis=1)
    span = (history.values.shape[1] - first) * history.step
    return np.where(present.any(axis=1), span, 0.0)
