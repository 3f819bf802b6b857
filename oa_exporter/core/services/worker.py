"""Worker: runs the jobs a daemon queued, with the daemon's own Trainer code and artifact store.

Jobs of a sharded daemon name their shard: the worker fits that shard's series with the Trainer of that shard
(the shard's names in the store, its own history), so the shards' models and fit records stay apart in the
shared store exactly as when each replica fits its share itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping

from ..domain import Bands, Model, Rule
from ..errors import ArtifactError
from ..jobs import BandsJob, TrainingJob, TrainingOutcome
from ..ports import ModelEngine
from .trainer import Trainer

log = logging.getLogger(__name__)


class JobWorker:
    """Executes training jobs (query, fit, store) and band jobs (load, forecast) on a worker machine."""

    def __init__(self, trainers: Callable[[int], Trainer], engines: Mapping[str, ModelEngine],
                 cached_models: int = 16):
        self.trainers = trainers  # the Trainer of shard i, over that shard's view of the shared store
        self.engines = engines
        self.cached_models = cached_models
        self._models: OrderedDict[str, Model] = OrderedDict()  # loaded models by artifact id, for band jobs

    async def train(self, job: TrainingJob, attempt: int = 1) -> TrainingOutcome:
        """Fit and store the job's rule; a job already done (a redelivery) returns the stored model unrefit."""
        rule, started, trainer = job.rule, time.perf_counter(), self.trainers(job.shard.index)
        done = await self._already_stored(trainer, job)
        if done:
            log.info("rule %s: the model for this window is already stored (%s): not refitting", rule.name, done)
            return TrainingOutcome(done, job.window_end, await self._series(trainer, rule), attempts=attempt)
        model = await trainer.train(rule, job.window_end, job.ongoing, job.shard)
        if not model.artifact:
            raise ArtifactError(f"rule {rule.name}: fitted, but the artifact store refused the model (see the "
                                "worker's log): the daemon cannot load it")
        record = trainer.records.get(rule.name)
        return TrainingOutcome(model.artifact, model.trained_at, dict(record.series) if record else {},
                               len(model.fitted.errors), time.perf_counter() - started, attempt)

    async def bands(self, job: BandsJob) -> Bands:
        """Bands from the stored model the job names (kept loaded for the next refresh)."""
        model = await self._model(self.trainers(job.shard), job.rule, job.artifact)
        engine = self.engines[job.rule.model.engine]
        return await asyncio.to_thread(engine.predict, model, job.start, job.steps, job.rule.level)

    async def _already_stored(self, trainer: Trainer, job: TrainingJob) -> str:
        fingerprint = job.rule.fingerprint()
        for info in await trainer.store.list(job.rule.name):
            if info.fingerprint == fingerprint and info.trained_at == round(job.window_end * 1000) / 1000:
                return info.id
        return ""

    async def _series(self, trainer: Trainer, rule: Rule) -> dict[str, int]:
        record = await trainer.store.get_record(rule.name)
        return dict(record.series) if record is not None and record.fingerprint == rule.fingerprint() else {}

    async def _model(self, trainer: Trainer, rule: Rule, artifact: str) -> Model:
        model = self._models.get(artifact)
        if model is None:
            model = await trainer.read(rule, artifact)
            if model is None:
                raise ArtifactError(f"model {artifact} could not be loaded (see the worker's log)")
            self._models[artifact] = model
            while len(self._models) > self.cached_models:
                self._models.popitem(last=False)
        self._models.move_to_end(artifact)
        return model
