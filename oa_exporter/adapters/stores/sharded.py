"""One shard's view of a shared artifact store: its models and fit records under names of its own.

Shard 0 keeps the plain rule names (a single daemon is shard 0 of 1, so turning sharding on or off keeps its
models); shard i > 0 stores rule R as `R@shard-i`. The name depends on the index only, never on the count: when
the count changes, each shard still finds the model it fitted, which covers the series it keeps.
"""

from __future__ import annotations

import builtins
from dataclasses import replace

from ...core.domain import ArtifactInfo, FitRecord, Model
from ...core.ports import ArtifactStore


def stored_name(rule: str, index: int) -> str:
    """The name shard `index` keeps a rule's models and record under."""
    return rule if index == 0 else f"{rule}@shard-{index}"


class ShardedArtifactStore:
    """ArtifactStore that renames rules on the way in and back on the way out."""

    def __init__(self, inner: ArtifactStore, index: int):
        self.inner = inner
        self.index = index
        self._suffix = stored_name("", index)

    async def put(self, model: Model, payload: bytes) -> str:
        return await self.inner.put(replace(model, rule=self._in(model.rule)), payload)

    async def get(self, artifact_id: str) -> tuple[Model, bytes]:
        model, payload = await self.inner.get(artifact_id)
        return replace(model, rule=self._out(model.rule)), payload

    async def list(self, rule: str | None = None) -> builtins.list[ArtifactInfo]:
        if rule is not None:
            return [replace(info, rule=rule) for info in await self.inner.list(self._in(rule))]
        return [replace(info, rule=self._out(info.rule)) for info in await self.inner.list() if self._mine(info.rule)]

    async def delete(self, artifact_id: str) -> None:
        await self.inner.delete(artifact_id)

    async def put_record(self, record: FitRecord) -> None:
        await self.inner.put_record(replace(record, rule=self._in(record.rule)))

    async def get_record(self, rule: str) -> FitRecord | None:
        record = await self.inner.get_record(self._in(rule))
        return replace(record, rule=rule) if record is not None else None

    async def close(self) -> None:
        await self.inner.close()

    def _in(self, rule: str) -> str:
        return stored_name(rule, self.index)

    def _out(self, stored: str) -> str:
        return stored.removesuffix(self._suffix) if self._suffix else stored

    def _mine(self, stored: str) -> bool:
        if self._suffix:
            return stored.endswith(self._suffix)
        return "@shard-" not in stored
