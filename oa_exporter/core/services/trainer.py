"""Trainer: history from the TSDB → a fitted model in the artifact store."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping

import numpy as np

from ..domain import Model, Rule, SeriesMatrix
from ..errors import ArtifactError, CardinalityError, EngineError
from ..ports import ArtifactStore, JobDispatcher, ModelEngine, Telemetry, TsdbClient

log = logging.getLogger(__name__)


class Trainer:
    """Fits a rule's series off the event loop and keeps the model in the artifact store."""

    def __init__(
        self,
        tsdb: TsdbClient,
        engines: Mapping[str, ModelEngine],
        store: ArtifactStore,
        dispatcher: JobDispatcher,
        telemetry: Telemetry,
        clock: Callable[[], float] = time.time,
    ):
        self.tsdb = tsdb
        self.engines = engines
        self.store = store
        self.dispatcher = dispatcher
        self.telemetry = telemetry
        self.clock = clock

    async def train(self, rule: Rule, now: float) -> Model:
        """Query the training window, fit every series with enough history, save the model."""
        history = await self._history(rule, now)
        eligible = np.flatnonzero(history_span(history) >= rule.min_history)
        engine = self.engines[rule.model.engine]
        started = time.perf_counter()
        try:
            fitted = await self.dispatcher.run(engine.fit, history.select(eligible), rule.model, rule.level)
        except Exception as e:
            self.telemetry.fit_done(rule.name, time.perf_counter() - started, False)
            raise EngineError(f"fit failed: {type(e).__name__}: {e}") from e
        model = Model(
            rule=rule.name, fingerprint=rule.fingerprint(), engine=engine.name,
            keys=[history.keys[i] for i in eligible], labels=[history.labels[i] for i in eligible],
            trained_at=now, window_start=history.start, window_end=history.timestamps[-1],
            step=rule.step, fitted=fitted,
        )
        self.telemetry.fit_done(rule.name, time.perf_counter() - started, True, len(fitted.errors))
        for row, error in fitted.errors.items():
            log.warning("rule %s: series %s fell back to the default model: %s", rule.name, model.labels[row], error)
        await self._save(engine, model)
        return model

    async def load(self, rule: Rule, now: float) -> Model | None:
        """The stored model of this rule if it matches the rule and is younger than its refit period."""
        engine = self.engines[rule.model.engine]
        try:
            found = await self.store.load_latest(rule.name, rule.fingerprint())
            if found is None:
                return None
            model, payload = found
            fitted = await asyncio.to_thread(engine.loads, payload)
        except (ArtifactError, ValueError) as e:
            log.warning("rule %s: stored model unusable, refitting: %s", rule.name, e)
            return None
        if now - model.trained_at >= rule.train_every:
            return None
        return Model(**{**model.__dict__, "fitted": fitted})

    async def _history(self, rule: Rule, now: float) -> SeriesMatrix:
        end = math.floor(now / rule.step) * rule.step
        start = end - rule.train_window + rule.step
        started, ok = time.perf_counter(), False
        try:
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

    async def _save(self, engine: ModelEngine, model: Model) -> None:
        try:
            payload = await asyncio.to_thread(engine.dumps, model.fitted)
            await self.store.save(model, payload)
        except (ArtifactError, OSError) as e:  # the model still serves; only a restart would refit
            log.error("rule %s: could not store the model: %s", model.rule, e)


def history_span(history: SeriesMatrix) -> np.ndarray:
    """Seconds from each series' first sample to the end of the window (0 for an empty series)."""
    present = ~np.isnan(history.values)
    first = np.argmax(present, axis=1)
    span = (history.values.shape[1] - first) * history.step
    return np.where(present.any(axis=1), span, 0.0)
