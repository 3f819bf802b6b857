"""HistoryStore in a local directory: per rule, columnar blocks of float64 (.npy), a table of its series, a meta file.

    <dir>/<rule>-<hash>.lock             locked while the rule's history is written (exclusive) or read (shared)
    <dir>/<rule>-<hash>/meta.json        fingerprint, step, newest column, last full read, incomplete, generation
                        table.json       the series (keys and labels): row i of every block
                        block-<b>.npy    rows × 256 columns: absolute grid columns 256·b ... 256·b + 255

The layout sits on five blob operations (get, put, delete, list a rule's blocks, sizes of every rule's), which
the S3 store provides over a bucket prefix; blocks go through two more (get and put an array), which here
read and write the file directly and there go through bytes. A refit rewrites only the blocks its new columns
fall in, and deletes those that left the window. The disk budget covers every rule's blocks; a write that
would exceed it is refused.

Several processes may share the directory (two daemons, or a daemon and Celery workers on one volume):
- each blob is written to a temporary file of its own (process id and a random part) and renamed over the
  old one, so no reader sees half a file and two writers never write into the same temporary file;
- a write of a rule holds an exclusive lock (flock) on the rule's lock file, a read a shared one: writes of
  one rule never interleave, and a read never sees half of a write;
- every write is a new generation, named in meta.json (and the table's own, named in meta.json and in
  table.json): a write derived from a state that another process has replaced since rewrites the whole
  window it holds (its blocks, table and meta), never a mix of its blocks and the other's; a read that finds
  its state replaced raises HistoryChanged, and the reader starts again from the new state;
- meta.json is written last. A write that rewrites every block (rows moved, a full read, a replaced state)
  deletes meta.json first, so a crash in the middle leaves no history rather than a mix (the next fit reads
  the whole window); a write that appends leaves the previous state readable as it was.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from ...core.domain import HistoryState
from ...core.errors import HistoryChanged, HistoryError

BLOCK = 256  # columns per block: a day of 5-minute steps, ~4 hours of 1-minute steps


class LocalHistoryStore:
    """Each rule's training-window history under one directory, within `max_bytes` of blocks in all."""

    def __init__(self, directory: str | os.PathLike[str], max_bytes: int):
        self.dir = Path(directory)
        self.max_bytes = max_bytes
        self._sizes: dict[str, int] | None = None  # bytes of blocks per rule directory, scanned on first write

    async def state(self, rule: str) -> HistoryState | None:
        return await asyncio.to_thread(self._under_lock, rule, False, self._state, rule)

    async def read(self, rule: str, state: HistoryState, out: np.ndarray, first_column: int) -> None:
        await asyncio.to_thread(self._under_lock, rule, False, self._read, rule, state, out, first_column)

    async def write(self, rule: str, state: HistoryState, values: np.ndarray, first_column: int,
                    changed_from: int) -> None:
        await asyncio.to_thread(self._under_lock, rule, True, self._write, rule, state, values, first_column,
                                changed_from)

    async def drop(self, rule: str) -> None:
        await asyncio.to_thread(self._under_lock, rule, True, self._drop, rule)

    def _under_lock(self, rule: str, exclusive: bool, fn: Any, *args: Any) -> Any:
        with self._locked(rule, exclusive):
            return fn(*args)

    @contextmanager
    def _locked(self, rule: str, exclusive: bool) -> Iterator[None]:
        """Hold the rule's lock file: exclusive to write or drop, shared to read. Other processes wait for it."""
        path = self.dir / f"{rule_folder(rule)}.lock"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            descriptor = _lock(path, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        except OSError as e:
            raise HistoryError(f"{path}: could not lock the rule's history: {e}") from e
        try:
            yield
        finally:
            os.close(descriptor)  # releases the lock

    def _path(self, rule: str) -> Path:
        return self.dir / rule_folder(rule)

    # -- the blobs of a rule's folder: what a backend (this directory, an S3 prefix) provides --

    def _get(self, rule: str, name: str) -> bytes | None:
        try:
            return (self._path(rule) / name).read_bytes()
        except FileNotFoundError:
            return None

    def _put(self, rule: str, name: str, data: bytes) -> None:
        path = self._path(rule) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")  # this writer's own
        try:
            temporary.write_bytes(data)
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)

    def _delete(self, rule: str, name: str) -> None:
        (self._path(rule) / name).unlink(missing_ok=True)

    def _get_block(self, rule: str, name: str) -> np.ndarray | None:
        """A block read straight from its file into its array."""
        try:
            return np.load(self._path(rule) / name)
        except FileNotFoundError:
            return None

    def _put_block(self, rule: str, name: str, block: np.ndarray) -> None:
        """A block written straight from its array to a file of this writer's own, renamed into place (no copy
        of it in memory, and the interpreter free while the file is written)."""
        path = self._path(rule) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
        try:
            with temporary.open("wb") as file:
                np.save(file, block)
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)

    def _blocks(self, rule: str) -> dict[str, int]:
        """The rule's block names and their sizes in bytes."""
        return {path.name: path.stat().st_size for path in self._path(rule).glob("block-*.npy")}

    def _folders(self) -> dict[str, int]:
        """Bytes of blocks of every rule folder."""
        if not self.dir.exists():
            return {}
        return {d.name: sum(b.stat().st_size for b in d.glob("block-*.npy")) for d in self.dir.glob("*") if d.is_dir()}

    def _drop(self, rule: str) -> None:
        shutil.rmtree(self._path(rule), ignore_errors=True)
        (self.dir / f"{rule_folder(rule)}.lock").unlink(missing_ok=True)  # held: a waiter finds it gone, retries
        self._forget(rule)

    # -- the layout, over those blobs --

    def _forget(self, rule: str) -> None:
        if self._sizes is not None:
            self._sizes.pop(rule_folder(rule), None)

    def _json(self, rule: str, name: str) -> Any:
        data = self._get(rule, name)
        try:
            return None if data is None else orjson.loads(data)
        except orjson.JSONDecodeError as e:
            raise HistoryError(f"{rule_folder(rule)}: unreadable history {name}: {e}") from e

    def _generation(self, rule: str, state: HistoryState) -> None:
        """Raise HistoryChanged unless the stored history is still the one `state` was read from."""
        meta = self._json(rule, "meta.json")
        if meta is None or meta.get("generation", "") != state.generation:
            raise HistoryChanged(f"{rule_folder(rule)}: rewritten by another process while it was read")

    def _state(self, rule: str) -> HistoryState | None:
        meta = self._json(rule, "meta.json")
        table = None if meta is None else self._json(rule, "table.json")
        if meta is None or table is None:
            return None
        if table.get("generation", "") != meta.get("table", ""):  # S3 (no lock): a write came between the two
            raise HistoryChanged(f"{rule_folder(rule)}: its table was rewritten while it was read")
        keys = [key.encode() for key in table["keys"][: meta["rows"]]]
        return HistoryState(meta["fingerprint"], meta["step"], keys, table["labels"][: meta["rows"]],
                            meta["end_column"], meta["full_read_at"], meta["incomplete"], meta.get("generation", ""),
                            meta.get("start_column"))

    def _read(self, rule: str, state: HistoryState, out: np.ndarray, first_column: int) -> None:
        self._generation(rule, state)
        self._read_blocks(rule, out, first_column)
        self._generation(rule, state)  # S3 (no lock): no rewrite began while the blocks were read

    def _read_blocks(self, rule: str, out: np.ndarray, first_column: int) -> None:
        end = first_column + out.shape[1]
        for block in range(first_column // BLOCK, (end - 1) // BLOCK + 1):
            try:
                stored = self._get_block(rule, f"block-{block}.npy")
            except (ValueError, OSError, EOFError) as e:
                raise HistoryError(f"{rule_folder(rule)}: unreadable block {block}: {e}") from e
            if stored is None:
                continue
            low, high = max(block * BLOCK, first_column), min((block + 1) * BLOCK, end)
            rows, offset = min(len(stored), len(out)), block * BLOCK
            out[:rows, low - first_column : high - first_column] = stored[:rows, low - offset : high - offset]

    def _write(self, rule: str, state: HistoryState, values: np.ndarray, first_column: int, changed_from: int) -> None:
        last = first_column + values.shape[1] - 1
        blocks = range(first_column // BLOCK, last // BLOCK + 1)
        self._check_budget(rule, len(values) * BLOCK * 8 * len(blocks))
        current, generation = self._json(rule, "meta.json"), secrets.token_hex(8)
        if current is None or current.get("generation", "") != state.generation:
            changed_from = first_column  # another process wrote since `state` was read: all of it, ours
        if changed_from <= first_column and current is not None:
            self._delete(rule, "meta.json")  # a crash while every block is rewritten leaves no mix of two
        for block in blocks:
            if (block + 1) * BLOCK > changed_from:
                self._put_block(rule, f"block-{block}.npy", _block(values, first_column, block))
        stored = self._blocks(rule)
        for name in list(stored):
            if int(name.removeprefix("block-").removesuffix(".npy")) not in blocks:
                self._delete(rule, name)
                stored.pop(name)
        table_generation = current.get("table", "") if current else ""
        if changed_from <= first_column or current is None or current["rows"] != len(state.keys):
            table_generation = generation
            table = {"keys": [key.decode() for key in state.keys], "labels": state.labels, "generation": generation}
            self._put(rule, "table.json", orjson.dumps(table))
        meta = {"fingerprint": state.fingerprint, "step": state.step, "end_column": state.end_column,
                "full_read_at": state.full_read_at, "incomplete": state.incomplete, "rows": len(state.keys),
                "block": BLOCK, "generation": generation, "table": table_generation,
                "start_column": first_column}
        self._put(rule, "meta.json", orjson.dumps(meta))  # last: what it describes is in place
        assert self._sizes is not None
        self._sizes[rule_folder(rule)] = sum(stored.values())

    def _check_budget(self, rule: str, needed: int) -> None:
        if self._sizes is None:
            self._sizes = self._folders()
        others = sum(size for name, size in self._sizes.items() if name != rule_folder(rule))
        if others + needed > self.max_bytes:
            raise HistoryError(f"keeping {needed} bytes of history for rule {rule} would exceed "
                               f"--history.max-bytes {self.max_bytes} ({others} bytes kept for other rules)")


def rule_folder(rule: str) -> str:
    """A rule's folder name: readable, and unique however the rule is named."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", rule)[:64]
    return f"{safe}-{hashlib.sha256(rule.encode()).hexdigest()[:12]}"


def _lock(path: Path, operation: int) -> int:
    """A descriptor of `path` holding flock(operation); again if the file was replaced (dropped) meanwhile."""
    while True:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, operation)
            if os.fstat(descriptor).st_ino == os.stat(path).st_ino:
                return descriptor
        except FileNotFoundError:
            pass
        except BaseException:
            os.close(descriptor)
            raise
        os.close(descriptor)


def _block(values: np.ndarray, first_column: int, block: int) -> np.ndarray:
    out = np.full((len(values), BLOCK), np.nan)
    low, high = max(block * BLOCK, first_column), min((block + 1) * BLOCK, first_column + values.shape[1])
    out[:, low - block * BLOCK : high - block * BLOCK] = values[:, low - first_column : high - first_column]
    return out
