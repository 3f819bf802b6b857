"""Local-disk artifact store: one file per model under a directory, written atomically, listed from an index.

Layout: `<dir>/<rule>/<fingerprint>-<trained_at ms>.oamodel` (the format is in codec.py), the rule's fit
record beside them as `fit.json`, and a diskcache index of the artifact ids in `<dir>/.index`.

A write goes to a temporary file in the same folder, is fsynced, renamed over the final name and the folder
fsynced: a crash leaves either the whole artifact or a `.tmp-*` file that no listing shows (swept at the
next start). The files are the truth: the index is reconciled with them when the store opens, so an
artifact renamed into place just before a crash is listed after the restart.

The index holds only strings and integers; its Disk refuses pickled rows, so a tampered index file cannot
make the daemon unpickle anything (the artifacts themselves are guarded by the codec's HMAC).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import os
import shutil
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import diskcache

from ...core.domain import ArtifactInfo, FitRecord, Model
from ...core.errors import ArtifactError
from . import codec
from .threaded import ThreadedStore

INDEX = ".index"
TEMP_PREFIX = ".tmp-"
STALE_TEMP_S = 60.0  # a temporary file older than this at start was left by a crash


class _PlainDisk(diskcache.Disk):
    """A diskcache Disk that stores and loads only raw values: pickled keys or values are refused."""

    def put(self, key: Any) -> tuple[Any, bool]:
        if not isinstance(key, str):
            raise TypeError("index keys are artifact ids (str)")
        return super().put(key)

    def get(self, key: Any, raw: bool) -> Any:
        if not raw:
            raise ArtifactError("the artifact index holds a pickled key: refusing to load it")
        return super().get(key, raw)

    def store(self, value: Any, read: bool, key: Any = diskcache.UNKNOWN) -> tuple[Any, ...]:
        if type(value) is not int:
            raise TypeError("index values are sizes (int)")
        return super().store(value, read, key)

    def fetch(self, mode: int, filename: str | None, value: Any, read: bool) -> Any:
        if mode != diskcache.core.MODE_RAW:
            raise ArtifactError("the artifact index holds a non-raw value: refusing to load it")
        return super().fetch(mode, filename, value, read)


class LocalArtifactStore(ThreadedStore):
    """ArtifactStore in a directory of the local disk (one daemon per directory; replicas share S3 instead)."""

    def __init__(self, directory: str | Path, key: bytes | None = None):
        self.directory = Path(directory)
        self.key = key
        self._index: diskcache.Cache | None = None
        self._opening = threading.Lock()

    async def close(self) -> None:
        with self._opening:
            index, self._index = self._index, None
        if index is not None:
            await asyncio.to_thread(index.close)

    def _put(self, model: Model, payload: bytes) -> str:
        name = codec.artifact_id(model)
        blob = codec.encode(model, payload, self.key)
        index = self._opened()
        with _as_artifact_error(self.directory / name):
            write_atomically(self.directory / name, blob)
            index[name] = len(blob)
        return name

    def _get(self, artifact_id: str) -> tuple[Model, bytes]:
        codec.checked_id(artifact_id)
        path = self.directory / artifact_id
        with _as_artifact_error(path):
            blob = path.read_bytes()
        return codec.decode(blob, str(path), self.key)

    def _list(self, rule: str | None) -> builtins.list[ArtifactInfo]:
        index = self._opened()
        prefix = f"{codec.folder(rule)}/" if rule is not None else ""
        with _as_artifact_error(self.directory / INDEX):
            names = [name for name in index.iterkeys() if name.startswith(prefix)]
        return codec.newest_first(info for name in names if (info := codec.parse_id(name)) is not None)

    def _delete(self, artifact_id: str) -> None:
        codec.checked_id(artifact_id)
        index = self._opened()
        with _as_artifact_error(self.directory / artifact_id):
            index.delete(artifact_id)
            (self.directory / artifact_id).unlink(missing_ok=True)

    def _put_record(self, record: FitRecord) -> None:
        path = self.directory / codec.record_id(record.rule)
        with _as_artifact_error(path):
            write_atomically(path, codec.encode_record(record))

    def _get_record(self, rule: str) -> FitRecord | None:
        path = self.directory / codec.record_id(rule)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise ArtifactError(f"{path}: {e.strerror or e}") from e
        return codec.decode_record(data, str(path))

    def _opened(self) -> diskcache.Cache:
        with self._opening:
            if self._index is None:
                with _as_artifact_error(self.directory):
                    self.directory.mkdir(parents=True, exist_ok=True)
                    index = self._open_index()
                    self._reconcile(index)
                self._index = index
            return self._index

    def _open_index(self) -> diskcache.Cache:
        """The index, rebuilt from scratch when its file is damaged (the artifacts are the truth)."""
        path = self.directory / INDEX
        try:
            return diskcache.Cache(str(path), disk=_PlainDisk, eviction_policy="none", statistics=0)
        except sqlite3.DatabaseError:
            shutil.rmtree(path, ignore_errors=True)
            return diskcache.Cache(str(path), disk=_PlainDisk, eviction_policy="none", statistics=0)

    def _reconcile(self, index: diskcache.Cache) -> None:
        """Make the index list exactly the artifacts on disk; sweep temporary files left by a crash."""
        on_disk: dict[str, int] = {}
        for path in self.directory.glob(f"*/*{codec.SUFFIX}"):
            name = f"{path.parent.name}/{path.name}"
            if codec.parse_id(name) is not None:
                on_disk[name] = path.stat().st_size
        indexed = set(index.iterkeys())
        for name in indexed - on_disk.keys():
            index.delete(name)
        for name in on_disk.keys() - indexed:
            index[name] = on_disk[name]
        stale = time.time() - STALE_TEMP_S
        for temp in self.directory.glob(f"*/{TEMP_PREFIX}*"):
            with contextlib.suppress(OSError):
                if temp.stat().st_mtime < stale:
                    temp.unlink()


def write_atomically(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that a reader (or a crash) sees the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f"{TEMP_PREFIX}{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    """Make a rename durable (a power cut after it keeps the new name)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _as_artifact_error(path: Path) -> Iterator[None]:
    """OS and index errors as ArtifactError naming the path."""
    try:
        yield
    except FileNotFoundError as e:
        raise ArtifactError(f"{path}: not found") from e
    except OSError as e:
        raise ArtifactError(f"{path}: {e.strerror or e}") from e
    except diskcache.Timeout as e:
        raise ArtifactError(f"{path}: the artifact index is locked: {e}") from e
    except sqlite3.Error as e:
        raise ArtifactError(f"{path}: the artifact index failed: {e}") from e
