"""QueuedTrainer: fits run on workers elsewhere; the daemon sends the job and loads the model the worker stored."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from ..domain import Model, Rule, SeriesKey
from ..errors import ArtifactError
from ..excursions import Ongoing
from ..jobs import TrainingJob
from ..ports import JobQueue
from ..sharding import Shard
from .trainer import Trainer


class QueuedTrainer(Trainer):
    """A Trainer whose `train` hands the whole job (query, fit, store) to a worker through a JobQueue; a sharded
    daemon's job names its shard, so the worker fits that share and stores it under the shard's names."""

    def __init__(self, *args: Any, queue: JobQueue, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.queue = queue

    async def train(self, rule: Rule, now: float, ongoing: Mapping[SeriesKey, Ongoing] | None = None,
                    shard: Shard | None = None) -> Model:
        """Queue the job (the excursions in progress with it), wait for the worker, load its model; the outcome
        is recorded as a local fit's is."""
        started = time.perf_counter()
        try:
            outcome = await self.queue.train(TrainingJob(rule, now, dict(ongoing or {}), shard or self.shard))
            model = await self.read(rule, outcome.artifact) if outcome.artifact else None
            if model is None:
                raise ArtifactError(f"the worker's model {outcome.artifact or '(not stored)'} could not be loaded "
                                    "from the artifact store: are daemon and workers sharing one store and key?")
        except Exception as e:
            self.telemetry.fit_done(rule.name, time.perf_counter() - started, False)
            await self._record(rule, error=str(e) or type(e).__name__)
            raise
        self.telemetry.fit_done(rule.name, outcome.fit_seconds, True, outcome.fallbacks)
        await self._record(rule, model=model, series=outcome.series)
        return model
