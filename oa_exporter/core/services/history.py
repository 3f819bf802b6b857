"""History read once: a rule's training window kept between fits, so a refit reads only what is new.

Each read asks the TSDB for the columns after the newest stored one, plus `overlap` before it (late samples,
and the newest column, which may have been read before all its samples arrived); everything older comes from
the history store. The result is the matrix one full-window read would return: the overlap's columns come
from the TSDB alone, series with no sample left in the window are dropped, and new series start where the
TSDB first shows them. A new series already present at the first column read may have older history that
was never read (it was backfilled, or its expr's result changed); then the whole window is read again, at
most once per train.every, and until then the history is marked incomplete.

The history is dropped whenever the rule's expr, step or window changes (its fingerprint), and a store that
fails or is full falls back to full reads, logged once per rule.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from ..domain import HistoryState, Rule, SeriesKey, SeriesMatrix
from ..errors import HistoryChanged, HistoryError
from ..ports import HistoryStore, TsdbClient

log = logging.getLogger(__name__)

ATTEMPTS = 3  # reads of the store's state when another process keeps rewriting it, before a full read


def history_fingerprint(rule: Rule, source: str = "") -> str:
    """What the stored history depends on: the expr, the step, the window, and the TSDB it was read from."""
    fields = json.dumps({"expr": rule.expr, "step": rule.step, "window": rule.train_window, "source": source},
                        sort_keys=True)
    return hashlib.sha256(fields.encode()).hexdigest()[:16]


class HistoryReader:
    """Reads a rule's training window: from the store, and from the TSDB only what the store lacks."""

    def __init__(self, tsdb: TsdbClient, store: HistoryStore, overlap: float, clock: Callable[[], float],
                 source: str = ""):
        self.tsdb = tsdb
        self.source = source
        self.store = store
        self.overlap = overlap
        self.clock = clock
        self._failing: set[str] = set()  # rules whose store failure was logged
        self._locks: dict[str, asyncio.Lock] = {}
        self._pending: dict[str, tuple[Rule, HistoryState, np.ndarray, int, int]] = {}  # writes not begun
        self._writes: dict[str, asyncio.Task[None]] = {}  # per rule: the store write of its last read, if running

    async def read(self, rule: Rule, start: float, end: float) -> SeriesMatrix:
        """Every series of rule.expr on the grid start, start+step, ..., end, as one range read returns it."""
        async with self._locks.setdefault(rule.name, asyncio.Lock()):
            await self.settle(rule.name)
            first, last = round(start / rule.step), round(end / rule.step)
            for _ in range(ATTEMPTS):
                try:
                    state = await self._state(rule)
                    if state is None or state.end_column < first or (state.incomplete and
                                                                      self._may_reread(rule, state)):
                        break
                    return await self._incremental(rule, state, first, last)
                except HistoryChanged as e:  # another daemon or worker sharing the store wrote the rule meanwhile
                    log.info("rule %s: %s: reading its stored history again", rule.name, e)
            return await self._full(rule, start, end)

    def release(self, rule: str) -> None:
        """The caller is done with the matrix of the rule's last read (its model is stored): begin storing it.
        Never beside the fit: on a busy machine the write's disk and CPU slowed the first fit down."""
        pending = self._pending.pop(rule, None)
        if pending is not None:
            self._writes[rule] = asyncio.create_task(self._store(*pending))

    async def settle(self, rule: str | None = None) -> None:
        """Store what was read and wait for it (one rule, or all): what a read or a restart then finds."""
        for name in [rule] if rule is not None else [*self._pending, *self._writes]:
            self.release(name)
            write = self._writes.pop(name, None)
            if write is not None:
                await write

    async def forget(self, rule: str) -> None:
        """Drop a removed rule's history."""
        self._locks.pop(rule, None)
        self._pending.pop(rule, None)
        try:
            await self.store.drop(rule)
        except (HistoryError, OSError) as e:
            log.error("rule %s: could not drop its stored history: %s", rule, e)

    async def _state(self, rule: Rule) -> HistoryState | None:
        try:
            state = await self.store.state(rule.name)
        except HistoryChanged:
            raise
        except (HistoryError, OSError) as e:
            self._failed(rule, "read", e)
            return None
        if state is not None and state.fingerprint != history_fingerprint(rule, self.source):
            log.info("rule %s: its expr, step or window changed: reading its whole window again", rule.name)
            await self.forget(rule.name)
            return None
        return state

    def _may_reread(self, rule: Rule, state: HistoryState) -> bool:
        return self.clock() - state.full_read_at >= rule.train_every

    async def _full(self, rule: Rule, start: float, end: float) -> SeriesMatrix:
        history = await self.tsdb.query_range(rule.expr, start, end, rule.step)
        first = round(start / rule.step)
        state = HistoryState(history_fingerprint(rule, self.source), rule.step, list(history.keys),
                             list(history.labels), first + history.values.shape[1] - 1, self.clock(),
                             start_column=first)
        await self._write(rule, state, history.values, first, first)
        return history

    async def _incremental(self, rule: Rule, state: HistoryState, first: int, last: int) -> SeriesMatrix:
        step, points = rule.step, last - first + 1
        reread = max(first, min(state.end_column, last) + 1 - max(1, math.ceil(self.overlap / step)))
        stored = state.end_column - (last - first) if state.start_column is None else state.start_column
        kept_from = max(first, stored)
        if kept_from >= reread:  # another process stored a window far ahead of this one: none of it is of use
            return await self._full(rule, first * step, last * step)
        delta = await self.tsdb.query_range(rule.expr, reread * step, last * step, step)
        # another process's window may start after this one's (its clock ahead): read the columns before it too
        head = (await self.tsdb.query_range(rule.expr, first * step, (kept_from - 1) * step, step)
                if kept_from > first else None)
        keys, labels = list(state.keys), list(state.labels)
        index = {key: row for row, key in enumerate(keys)}
        rows, new = _rows(delta, index, keys, labels)
        values = np.full((len(keys) + (0 if head is None else len(head.keys)), points), np.nan)
        try:
            await self.store.read(rule.name, state, values[: len(state.keys), kept_from - first : reread - first],
                                  kept_from)
        except HistoryChanged:
            raise
        except (HistoryError, OSError) as e:
            self._failed(rule, "read", e)
            return await self._full(rule, first * step, last * step)
        values[rows, reread - first :] = delta.values
        if head is not None:
            values[_rows(head, index, keys, labels)[0], : kept_from - first] = head.values
            values = values[: len(keys)]
        if new and reread > first and not np.isnan(delta.values[new, 0]).all():  # older history may be missing
            if self._may_reread(rule, state):
                log.info("rule %s: series appeared that may have older history: reading its whole window again",
                         rule.name)
                return await self._full(rule, first * step, last * step)
            state = replace(state, incomplete=True)
        return await self._keep(rule, replace(state, keys=keys, labels=labels, end_column=last, start_column=first),
                                values, first, reread if head is None else first)

    async def _keep(self, rule: Rule, state: HistoryState, values: np.ndarray, first: int,
                    changed_from: int) -> SeriesMatrix:
        """Store the window and return it without the series that have no sample left in it."""
        alive = ~np.isnan(np.fmax.reduce(values, axis=1))  # NaN only where all are: no matrix-sized mask
        if not alive.all():
            rows = np.flatnonzero(alive)
            values = values[rows]
            state = replace(state, keys=[state.keys[i] for i in rows], labels=[state.labels[i] for i in rows])
            changed_from = first  # the rows moved: every block is rewritten
        await self._write(rule, state, values, first, changed_from)
        return SeriesMatrix(state.keys, state.labels, first * rule.step, rule.step, values)

    async def _write(self, rule: Rule, state: HistoryState, values: np.ndarray, first: int,
                     changed_from: int) -> None:
        """Store the window once the caller is done with it (release, settle, or the rule's next read)."""
        self._pending[rule.name] = (rule, state, values, first, changed_from)

    async def _store(self, rule: Rule, state: HistoryState, values: np.ndarray, first: int,
                     changed_from: int) -> None:
        try:
            await self.store.write(rule.name, state, values, first, changed_from)
        except (HistoryError, OSError) as e:
            self._failed(rule, "write", e)
            await self.forget(rule.name)
            return
        self._failing.discard(rule.name)

    def _failed(self, rule: Rule, operation: str, e: Exception) -> None:
        level = logging.DEBUG if rule.name in self._failing else logging.WARNING
        log.log(level, "rule %s: history store %s failed, reading the whole window from the TSDB: %s",
                rule.name, operation, e)
        self._failing.add(rule.name)


def _rows(matrix: SeriesMatrix, index: dict[SeriesKey, int], keys: list[SeriesKey],
          labels: list[dict[str, str]]) -> tuple[np.ndarray, list[int]]:
    """The row of each of the matrix's series, appending those not yet known; and which of its rows were new."""
    new = [row for row, key in enumerate(matrix.keys) if key not in index]
    for row in new:
        index[matrix.keys[row]] = len(keys)
        keys.append(matrix.keys[row])
        labels.append(matrix.labels[row])
    return np.array([index[key] for key in matrix.keys], dtype=np.int64), new
