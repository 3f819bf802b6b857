"""In-memory artifact store: models live as long as the process; a restart refits every rule.

For stateless deployments and tests. Artifacts still go through the codec, so what comes back is what a
durable store would return (verified, with the same ids and listing order).
"""

from __future__ import annotations

import builtins

from ...core.domain import ArtifactInfo, FitRecord, Model
from ...core.errors import ArtifactError
from . import codec


class NoopArtifactStore:
    """ArtifactStore in a dict: nothing is written anywhere."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.records: dict[str, bytes] = {}

    async def put(self, model: Model, payload: bytes) -> str:
        name = codec.artifact_id(model)
        self.blobs[name] = codec.encode(model, payload)
        return name

    async def get(self, artifact_id: str) -> tuple[Model, bytes]:
        codec.checked_id(artifact_id)
        blob = self.blobs.get(artifact_id)
        if blob is None:
            raise ArtifactError(f"memory:{artifact_id}: not found")
        return codec.decode(blob, f"memory:{artifact_id}")

    async def list(self, rule: str | None = None) -> builtins.list[ArtifactInfo]:
        prefix = f"{codec.folder(rule)}/" if rule is not None else ""
        infos = (codec.parse_id(name) for name in self.blobs if name.startswith(prefix))
        return codec.newest_first(info for info in infos if info is not None)

    async def delete(self, artifact_id: str) -> None:
        codec.checked_id(artifact_id)
        self.blobs.pop(artifact_id, None)

    async def put_record(self, record: FitRecord) -> None:
        self.records[record.rule] = codec.encode_record(record)

    async def get_record(self, rule: str) -> FitRecord | None:
        data = self.records.get(rule)
        return codec.decode_record(data, f"memory:{codec.record_id(rule)}") if data is not None else None

    async def close(self) -> None:
        pass
