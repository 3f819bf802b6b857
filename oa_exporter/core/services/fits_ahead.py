"""FitsAhead: a replay's next refits, started before the replay reaches them, for a dispatcher that runs
several at once.

A replay (Backtester) scores cycle after cycle and refits when the schedule says so; each refit waits for its
fit. But a fit is a function of the rule, the time and the history before it, and of nothing the replay has
scored, as long as no excursion in progress is held back from it (new_normal_after 0, as `preset: default`
has). Then the refits the schedule will call for can be fitted beforehand, side by side: after each refit,
the next `depth` of them are started at the cycle times that follow at the schedule's current pace. When the
replay reaches a refit, it takes the fit started for that very time, or fits there as before when none was
(a failure changed the pace, or nothing runs ahead). Either way the fit is the same call with the same inputs,
so the replay's scores are the same; the Trainer stores and records each fit in the replay's order.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable

import numpy as np

from ..domain import Model, Rule
from .trainer import Trainer

Fit = tuple[Model, dict[str, int]]


class FitsAhead:
    """Fits of one rule started ahead of its replay, by cycle time."""

    def __init__(self, trainer: Trainer, rule: Rule, times: np.ndarray, depth: int):
        self.trainer = trainer
        self.rule = rule
        self.times = times
        self.depth = depth if rule.new_normal_after <= 0 else 0  # held-back excursions depend on the scores
        self.started: dict[float, asyncio.Task[Fit]] = {}

    def take(self, now: float) -> Awaitable[Fit] | None:
        """The fit started for `now`, if one was."""
        return self.started.pop(now, None)

    def plan(self, now: float, due: float) -> None:
        """After a refit at `now`, with the next one due at `due`: start the next `depth` fits, at the pace
        due - now. Fits started for times before `due` will not be taken: they are dropped."""
        for time in [t for t in self.started if t < due]:
            self.started.pop(time).cancel()
        pace, at = due - now, due
        if not np.isfinite(pace) or pace <= 0:
            return
        for _ in range(self.depth):
            index = int(np.searchsorted(self.times, at))  # the first cycle at or after it: when fit_due says so
            if index >= len(self.times):
                return
            time = float(self.times[index])
            if time not in self.started:
                self.started[time] = asyncio.create_task(self.trainer.fit(self.rule, time))
            at = time + pace

    async def close(self) -> None:
        """Drop the fits never taken (their outcome, even an error, was never needed)."""
        tasks = list(self.started.values())
        self.started.clear()
        for task in tasks:
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*tasks, return_exceptions=True)
