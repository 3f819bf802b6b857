"""Runner: one ticker per rule group scores its rules; fits run beside it as tracked tasks."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..calibration import Calibration
from ..domain import (
    FitEvent,
    InstantVector,
    Model,
    Rule,
    RuleGroup,
    RuleScores,
    RuleSet,
    RuleStatus,
    SeriesKey,
    SeriesState,
)
from ..durations import iso_time
from ..errors import OAError
from ..excursions import Excursions, Ongoing
from ..ports import ResultSink, Telemetry
from ..scoring import Repeats, Settling
from ..sharding import Ownership, Shard
from ..throttle import Throttled
from .inferencer import Forecasts, Inferencer
from .trainer import Trainer

log = logging.getLogger(__name__)
NEW_SERIES_REFIT = 3600.0  # while series without a model are present, refit at most this often
NEW_SERIES_UPDATE = 600.0  # ... or, for global models, condition the model on them at most this often
FIT_HISTORY = 20  # fits of each rule kept for the API, newest last
NO_SERIES_WARNING = 300.0  # a rule whose expr has selected no series for this long is flagged (typo?)
NO_SERIES = "no-series"


@dataclass
class RuleSlot:
    """Everything the runner keeps for one rule between cycles."""

    rule: Rule
    forecasts: Forecasts | None = None
    fit_task: asyncio.Task | None = None
    last_fit_attempt: float = -math.inf
    failures: int = 0
    unmodelled: int = 0
    loaded: bool = False
    updatable: bool = False  # a global model: new series join it by `update`, no refit
    last_update: float = -math.inf
    series: dict[str, int] = field(default_factory=dict)  # series per SeriesState in the last cycle
    fit_error: str = ""  # why the last fit failed ("" when it worked)
    cycle_error: str = ""  # why the last scoring cycle failed
    repeats: Repeats = field(default_factory=Repeats)  # per series, what the repeat rule remembers
    settling: Settling = field(default_factory=Settling)  # per series, the excursion settle_after follows
    calibration: Calibration = field(default_factory=Calibration)  # per series, how far its band is widened
    ownership: Ownership = field(default_factory=Ownership)  # which of the query's series this shard owns
    owned: tuple[int, int] = (0, 0)  # series this shard owned in the last cycle, of the query's total
    resharded: bool = False  # the shard layout changed: series that came to this shard are fitted at once
    scores: RuleScores | None = None  # the last cycle's results
    fit_history: deque[FitEvent] = field(default_factory=lambda: deque(maxlen=FIT_HISTORY))
    empty_since: float | None = None  # since when the rule's expr has selected no series (None: it selects some)
    warning: str = ""  # something to look at that stops nothing ("" when all is well)
    excursions: Excursions = field(default_factory=Excursions)  # per series, the excursion in progress

    def next_fit(self, interval: float) -> float:
        """When a (re)fit is due: at train.every, retried with backoff while fits fail, sooner (at most hourly)
        while series without a model are present; -inf when never tried."""
        if self.resharded and self.unmodelled > 0:
            return -math.inf
        if self.forecasts is None:
            return self.last_fit_attempt + min(self.rule.train_every, interval * 2 ** min(self.failures, 6))
        trained_at = self.forecasts.model.trained_at
        retry = min(self.rule.train_every, interval * 2 ** min(self.failures, 6))  # backoff while refits fail
        scheduled = max(trained_at + self.rule.train_every, self.last_fit_attempt + retry)
        if self.unmodelled > 0 and not self.updatable:  # a model loaded at start counts as a fit attempt
            return min(scheduled, max(self.last_fit_attempt, trained_at) + min(self.rule.train_every, NEW_SERIES_REFIT))
        return scheduled

    def fit_due(self, now: float, interval: float) -> bool:
        """Whether a (re)fit should start now."""
        return now >= self.next_fit(interval)

    def update_due(self, now: float, interval: float) -> bool:
        """Whether to condition a global model on series it has not seen, instead of waiting for a refit."""
        idle = self.fit_task is None or self.fit_task.done()
        return (self.updatable and self.unmodelled > 0 and self.forecasts is not None and idle
                and now - self.last_update >= max(NEW_SERIES_UPDATE, interval))

    @property
    def error(self) -> str:
        return self.cycle_error or self.fit_error


@dataclass
class Runner:
    """Drives training and scoring for the current rule set; `apply` swaps rule sets without losing models."""

    trainer: Trainer
    inferencer: Inferencer
    sink: ResultSink
    telemetry: Telemetry
    clock: Callable[[], float] = time.time
    slots: dict[str, RuleSlot] = field(default_factory=dict)
    rules: RuleSet = field(default_factory=RuleSet)
    fits: dict[str, int] = field(default_factory=dict)  # fits started by this process, per rule
    shard: Shard = field(default_factory=Shard)  # this replica's share of every rule's series
    _groups: list[asyncio.Task] = field(default_factory=list)
    _closing: bool = False
    _failures_log: Throttled = field(default_factory=lambda: Throttled(log))  # a lasting outage: a line a minute

    def reshard(self, shard: Shard) -> None:
        """Adopt a new shard layout: series that left stop being scored (and exported) at the next cycle, every
        model stays for the series it still owns, and a rule that gained series it has no model for refits now."""
        if shard == self.shard:
            return
        log.info("shard %d of %d (was %d of %d)", shard.index, shard.count, self.shard.index, self.shard.count)
        self.shard = self.trainer.shard = shard
        self.inferencer.shard = shard.index
        for slot in self.slots.values():
            slot.resharded = True
        self.telemetry.shard_layout(shard.index, shard.count)

    async def apply(self, rules: RuleSet) -> None:
        """Adopt a new rule set: unchanged rules keep their models, removed rules disappear."""
        await self._stop_groups()
        fresh: dict[str, RuleSlot] = {}
        for rule in rules.rules:
            fresh[rule.name] = self._carry_over(self.slots.get(rule.name), rule)
        for name, slot in self.slots.items():
            if fresh.get(name) is not slot:
                self._drop(slot, removed=name not in fresh)
        self.slots = fresh
        self.rules = rules
        self._groups = [asyncio.create_task(self._run_group(g), name=f"group:{g.name}") for g in rules.groups]

    async def cycle(self, group: RuleGroup, now: float) -> None:
        """Score every rule of a group once, then publish the results together."""
        await asyncio.gather(*(self._cycle_rule(self.slots[r.name], group, now) for r in group.rules))
        await asyncio.to_thread(self.sink.flush)

    def status(self, now: float) -> list[RuleStatus]:
        """Every rule, group by group, as GET /api/v1/rules shows it."""
        return [self._status(self.slots[rule.name], group, now)
                for group in self.rules.groups for rule in group.rules if rule.name in self.slots]

    def top_scores(self, name: str, count: int) -> list[dict[str, Any]]:
        """The rule's `count` highest-scoring series of the last cycle, highest first (unscored series last)."""
        slot = self.slots.get(name)
        scores = slot.scores if slot else None
        if scores is None or not len(scores.keys):
            return []
        order = np.argsort(-np.nan_to_num(scores.score, nan=-np.inf), kind="stable")[:count]
        return [{"labels": dict(scores.labels[i]), "y": _number(scores.y[i]), "yhat": _number(scores.yhat[i]),
                 "yhat_lower": _number(scores.lower[i]), "yhat_upper": _number(scores.upper[i]),
                 "score": _number(scores.score[i])} for i in order.tolist()]

    def fit_history(self, name: str) -> list[FitEvent]:
        """The rule's last fits started by this process, oldest first."""
        slot = self.slots.get(name)
        return list(slot.fit_history) if slot else []

    async def pause(self) -> None:
        """Stop the group tickers, keeping every model: cycles are then driven by hand (tests, benchmarks)."""
        await self._stop_groups()

    async def close(self) -> None:
        """Stop the tickers and every fit; safe to call twice."""
        self._closing = True
        await self._stop_groups()
        tasks = [s.fit_task for s in self.slots.values() if s.fit_task and not s.fit_task.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.trainer.history is not None:  # the windows read for fits: a restart resumes from them
            await self.trainer.history.settle()

    async def _run_group(self, group: RuleGroup) -> None:
        while not self._closing:
            started = time.perf_counter()
            try:
                await self.cycle(group, self.clock())
            except Exception:  # a bug in one cycle must not stop the group: log it and tick on
                log.exception("group %s: scoring cycle crashed", group.name)
            spent = time.perf_counter() - started
            self.telemetry.cycle_done(group.name, spent, overrun=spent > group.interval)
            await asyncio.sleep(max(group.interval - spent, 0.0))

    async def _cycle_rule(self, slot: RuleSlot, group: RuleGroup, now: float) -> None:
        rule = slot.rule
        if not slot.loaded:
            await self._load(slot, now)
        if slot.fit_due(now, group.interval) and (slot.fit_task is None or slot.fit_task.done()):
            slot.last_fit_attempt, slot.resharded = now, False
            fit = self._fit(slot, now, slot.excursions.ongoing())  # what the scores said so far, taken now
            slot.fit_task = asyncio.create_task(fit, name=f"fit:{rule.name}")
        try:
            if slot.forecasts and self.inferencer.needs_refresh(rule, slot.forecasts.bands, now):
                bands = await self.inferencer.bands(rule, slot.forecasts.model, now)
                slot.forecasts = Forecasts(slot.forecasts.model, bands, slot.forecasts.index)
            queried = await self.inferencer.sample(rule, now)
        except OAError as e:
            self._failures_log.log(logging.ERROR, rule.name, f"rule {rule.name}: scoring failed: {e}")
            slot.cycle_error = str(e)
            self.telemetry.rule_health(rule.name, False, str(e))
            self.sink.forget(rule.name)
            return
        # sharding, scoring and rendering hold the CPU for a while at 100k series: off the loop, scrapes stay fast
        scores = await asyncio.to_thread(self._score_and_publish, slot, queried)
        slot.scores = scores
        slot.unmodelled = int(scores.ready.size - scores.ready.sum())
        if slot.cycle_error:
            log.info("rule %s: scoring works again", rule.name)
            self._failures_log.clear(rule.name)
        slot.series, slot.cycle_error = dict(scores.states), ""
        self._watch_emptiness(slot, slot.owned[1], now)  # the query's series, whichever shard owns them
        self.telemetry.rule_health(rule.name, slot.failures == 0)
        if slot.update_due(now, group.interval):
            slot.last_update = now
            slot.fit_task = asyncio.create_task(self._update(slot, now, slot.excursions.ongoing()),
                                                name=f"update:{rule.name}")

    def _watch_emptiness(self, slot: RuleSlot, series: int, now: float) -> None:
        """Flag a rule whose expr has selected nothing for NO_SERIES_WARNING (log, API, oa_rule_warning)."""
        name = slot.rule.name
        if series:
            if slot.warning:
                log.info("rule %s: its expr selects %d series again", name, series)
                self.telemetry.rule_warning(name, NO_SERIES, False)
            slot.empty_since, slot.warning = None, ""
            return
        slot.empty_since = now if slot.empty_since is None else slot.empty_since
        if not slot.warning and now - slot.empty_since >= NO_SERIES_WARNING:
            slot.warning = (f"its expr has selected no series for {(now - slot.empty_since) / 60:.0f} minutes: is a "
                            "metric or label name misspelt, or is the target not scraped yet?")
            log.warning("rule %s: %s (expr: %s)", name, slot.warning, slot.rule.expr)
            self.telemetry.rule_warning(name, NO_SERIES, True)

    def _score_and_publish(self, slot: RuleSlot, queried: InstantVector) -> RuleScores:
        vector = slot.ownership.select(queried, self.shard)
        slot.owned = (len(vector.keys), len(queried.keys))
        self.telemetry.shard_series(slot.rule.name, *slot.owned)
        scores = self.inferencer.score(slot.rule, vector, slot.forecasts, slot.repeats, slot.calibration,
                                       slot.settling)
        self.sink.publish(scores)
        slot.excursions.observe(scores)
        return scores

    async def _load(self, slot: RuleSlot, now: float) -> None:
        slot.loaded = True
        model = await self.trainer.load(slot.rule, now)
        if model is not None:
            log.info("rule %s: loaded the stored model trained at %s", slot.rule.name, iso_time(model.trained_at))
            await self._adopt(slot, model, now)

    async def _fit(self, slot: RuleSlot, now: float, ongoing: dict[SeriesKey, Ongoing]) -> None:
        rule = slot.rule
        self.fits[rule.name] = self.fits.get(rule.name, 0) + 1
        try:
            model = await self.trainer.train(rule, now, ongoing)
            await self._adopt(slot, model, self.clock())
            slot.failures, slot.fit_error = 0, ""
            slot.fit_history.append(FitEvent(now, self.clock(), True, series=len(model.keys)))
            log.info("rule %s: fitted %d series%s", rule.name, len(model.keys),
                     "" if model.keys else " (its expr selects none with enough history yet)")
            await self.trainer.prune_removed(set(self.slots), self.clock())
        except Exception as e:  # OAError is expected (TSDB down, cardinality); others are bugs, logged loudly
            slot.failures += 1
            slot.fit_error = str(e) or type(e).__name__
            slot.fit_history.append(FitEvent(now, self.clock(), False, slot.fit_error))
            log.log(logging.ERROR, "rule %s: training failed (attempt %d): %s", rule.name, slot.failures, e,
                    exc_info=not isinstance(e, OAError))
            self.telemetry.rule_health(rule.name, False, str(e))

    async def _update(self, slot: RuleSlot, now: float, ongoing: dict[SeriesKey, Ongoing]) -> None:
        assert slot.forecasts is not None
        try:
            model = await self.trainer.update(slot.rule, slot.forecasts.model, now, ongoing)
        except Exception as e:  # the model in use stays; the next refit will take the new series
            log.warning("rule %s: could not condition the model on new series: %s", slot.rule.name, e,
                        exc_info=not isinstance(e, OAError))
            return
        before = len(slot.forecasts.model.keys)
        await self._adopt(slot, model, now)
        log.info("rule %s: model conditioned on %d series (%d before), weights unchanged", slot.rule.name,
                 len(model.keys), before)

    async def _adopt(self, slot: RuleSlot, model: Model, now: float) -> None:
        bands = await self.inferencer.bands(slot.rule, model, now)
        slot.forecasts = Forecasts.of(model, bands)
        slot.updatable = self.trainer.can_update(slot.rule)
        self.telemetry.model_in_use(slot.rule.name, model.trained_at)

    def _carry_over(self, old: RuleSlot | None, rule: Rule) -> RuleSlot:
        if old is None or old.rule.fingerprint() != rule.fingerprint():
            return RuleSlot(rule)
        old.rule = rule  # labels, direction or cadence changed: the model still fits
        return old

    def _drop(self, slot: RuleSlot, removed: bool) -> None:
        if slot.fit_task and not slot.fit_task.done():
            slot.fit_task.cancel()
        if removed:
            self.sink.forget(slot.rule.name)
            self.telemetry.forget_rule(slot.rule)
            self.trainer.forget(slot.rule.name)
            self.fits.pop(slot.rule.name, None)

    def _status(self, slot: RuleSlot, group: RuleGroup, now: float) -> RuleStatus:
        rule, model = slot.rule, slot.forecasts.model if slot.forecasts else None
        record = self.trainer.records.get(rule.name)
        record = record if record is not None and record.fingerprint == rule.fingerprint() else None
        fitting = slot.fit_task is not None and not slot.fit_task.done()
        state = ("error" if slot.error else NO_SERIES if slot.warning else "ok" if model else
                 "fitting" if fitting else "pending")
        series = {s.value: 0 for s in SeriesState} | (slot.series or dict(record.series if record else {}))
        last_fit = model.trained_at if model else record.trained_at if record else None
        return RuleStatus(
            name=rule.name, group=group.name, state=state, series=series, last_fit=last_fit,
            next_fit=None if fitting else max(slot.next_fit(group.interval), now),
            fits_since_start=self.fits.get(rule.name, 0), artifact=model.artifact or None if model else None,
            error=slot.error or None, fingerprint=rule.fingerprint(), warning=slot.warning or None,
            labels=dict(rule.labels), annotations=dict(rule.annotations),
            shard={"index": self.shard.index, "count": self.shard.count, "series": slot.owned[0],
                   "of": slot.owned[1]},
            anomalous=int(np.count_nonzero(slot.scores.score > 1.0)) if slot.scores is not None else 0,
        )

    async def _stop_groups(self) -> None:
        for task in self._groups:
            task.cancel()
        await asyncio.gather(*self._groups, return_exceptions=True)
        self._groups = []


def _number(value: float) -> float | None:
    """A float for JSON: NaN (no forecast, not scored) becomes None."""
    return None if math.isnan(value) else float(value)
