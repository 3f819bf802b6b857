"""Local-disk artifact store: one file per fitted model, written atomically, verified on load.

File layout: MAGIC, 4-byte header length, a JSON header (what the model covers, with the payload's
sha256), then the engine's payload. A torn or tampered file fails its checksum and is refit, never loaded.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import struct
import tempfile
from pathlib import Path

import numpy as np

from ...core.domain import Fitted, Model
from ...core.errors import ArtifactError

MAGIC = b"OAMODEL1"
SUFFIX = ".oamodel"


class LocalArtifactStore:
    """ArtifactStore in a directory: <dir>/<rule>/<fingerprint>-<trained_at>.oamodel; keeps the newest few."""

    def __init__(self, directory: str | Path, keep: int = 3):
        self.directory = Path(directory)
        self.keep = keep

    async def save(self, model: Model, payload: bytes) -> str:
        return await asyncio.to_thread(self._save, model, payload)

    async def load_latest(self, rule: str, fingerprint: str) -> tuple[Model, bytes] | None:
        return await asyncio.to_thread(self._load_latest, rule, fingerprint)

    def _save(self, model: Model, payload: bytes) -> str:
        folder = self.directory / _safe(model.rule)
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{model.fingerprint}-{int(model.trained_at * 1000):015d}{SUFFIX}"
        _write_atomically(folder / name, _encode(model, payload))
        self._prune(folder)
        return f"{folder.name}/{name}"

    def _load_latest(self, rule: str, fingerprint: str) -> tuple[Model, bytes] | None:
        candidates = sorted((self.directory / _safe(rule)).glob(f"{fingerprint}-*{SUFFIX}"), reverse=True)
        if not candidates:
            return None
        return _decode(candidates[0].read_bytes(), str(candidates[0]))

    def _prune(self, folder: Path) -> None:
        files = sorted(folder.glob(f"*{SUFFIX}"), key=lambda p: p.name.split("-")[-1], reverse=True)
        for old in files[self.keep :]:
            old.unlink(missing_ok=True)


def _encode(model: Model, payload: bytes) -> bytes:
    header = {
        "rule": model.rule, "fingerprint": model.fingerprint, "engine": model.engine,
        "keys": [k.decode() for k in model.keys], "labels": model.labels, "trained_at": model.trained_at,
        "window_start": model.window_start, "window_end": model.window_end, "step": model.step,
        "sha256": hashlib.sha256(payload).hexdigest(),
    }
    raw = json.dumps(header).encode()
    return MAGIC + struct.pack(">I", len(raw)) + raw + payload


def _decode(blob: bytes, where: str) -> tuple[Model, bytes]:
    if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + 4:
        raise ArtifactError(f"{where}: not an OpenAnomaly model file")
    (size,) = struct.unpack(">I", blob[len(MAGIC) : len(MAGIC) + 4])
    start = len(MAGIC) + 4
    try:
        header = json.loads(blob[start : start + size])
    except ValueError as e:
        raise ArtifactError(f"{where}: unreadable header: {e}") from e
    payload = blob[start + size :]
    if hashlib.sha256(payload).hexdigest() != header.get("sha256"):
        raise ArtifactError(f"{where}: payload checksum mismatch (torn or tampered file)")
    model = Model(
        rule=header["rule"], fingerprint=header["fingerprint"], engine=header["engine"],
        keys=[k.encode() for k in header["keys"]], labels=header["labels"], trained_at=header["trained_at"],
        window_start=header["window_start"], window_end=header["window_end"], step=header["step"],
        fitted=Fitted(None, np.zeros(0, bool)),
    )
    return model, payload


def _write_atomically(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "_-:" else "_" for c in name)
