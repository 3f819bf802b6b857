"""The async ArtifactStore methods of a store whose I/O blocks: each call runs in a worker thread."""

from __future__ import annotations

import asyncio
import builtins
from abc import ABC, abstractmethod

from ...core.domain import ArtifactInfo, FitRecord, Model


class ThreadedStore(ABC):
    """Base of the stores that block (files, boto3): the event loop never waits on their I/O."""

    async def put(self, model: Model, payload: bytes) -> str:
        return await asyncio.to_thread(self._put, model, payload)

    async def get(self, artifact_id: str) -> tuple[Model, bytes]:
        return await asyncio.to_thread(self._get, artifact_id)

    async def list(self, rule: str | None = None) -> builtins.list[ArtifactInfo]:
        return await asyncio.to_thread(self._list, rule)

    async def delete(self, artifact_id: str) -> None:
        await asyncio.to_thread(self._delete, artifact_id)

    async def put_record(self, record: FitRecord) -> None:
        await asyncio.to_thread(self._put_record, record)

    async def get_record(self, rule: str) -> FitRecord | None:
        return await asyncio.to_thread(self._get_record, rule)

    @abstractmethod
    def _put(self, model: Model, payload: bytes) -> str: ...

    @abstractmethod
    def _get(self, artifact_id: str) -> tuple[Model, bytes]: ...

    @abstractmethod
    def _list(self, rule: str | None) -> builtins.list[ArtifactInfo]: ...

    @abstractmethod
    def _delete(self, artifact_id: str) -> None: ...

    @abstractmethod
    def _put_record(self, record: FitRecord) -> None: ...

    @abstractmethod
    def _get_record(self, rule: str) -> FitRecord | None: ...
