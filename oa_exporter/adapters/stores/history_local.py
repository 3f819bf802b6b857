"""HistoryStore in a local directory: per rule, columnar blocks of float64 (.npy), a table of its series, a meta file.

    <dir>/<rule>-<hash>/meta.json        fingerprint, step, newest column, last full read, incomplete
                        table.json       the series (keys and labels): row i of every block
                        block-<b>.npy    rows × 256 columns: absolute grid columns 256·b ... 256·b + 255

The layout sits on five blob operations (get, put, delete, list a rule's blocks, sizes of every rule's), which
the S3 store provides over a bucket prefix. Each blob is written whole (here: a temporary file, renamed);
meta.json is written last, so a crash leaves the previous state readable. A refit rewrites only the blocks
its new columns fall in, and deletes those that left the window. The disk budget covers every rule's
blocks; a write that would exceed it is refused.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import re
import shutil
from pathlib import Path

import numpy as np
import orjson

from ...core.domain import HistoryState
from ...core.errors import HistoryError

BLOCK = 256  # columns per block: a day of 5-minute steps, ~4 hours of 1-minute steps


class LocalHistoryStore:
    """Each rule's training-window history under one directory, within `max_bytes` of blocks in all."""

    def __init__(self, directory: str | os.PathLike[str], max_bytes: int):
        self.dir = Path(directory)
        self.max_bytes = max_bytes
        self._sizes: dict[str, int] | None = None  # bytes of blocks per rule directory, scanned on first write
        self._tables: dict[str, int] = {}  # rows of the table last written per rule

    async def state(self, rule: str) -> HistoryState | None:
        return await asyncio.to_thread(self._state, rule)

    async def read(self, rule: str, state: HistoryState, out: np.ndarray, first_column: int) -> None:
        await asyncio.to_thread(self._read, rule, out, first_column)

    async def write(self, rule: str, state: HistoryState, values: np.ndarray, first_column: int,
                    changed_from: int) -> None:
        await asyncio.to_thread(self._write, rule, state, values, first_column, changed_from)

    async def drop(self, rule: str) -> None:
        await asyncio.to_thread(self._drop, rule)

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
        temporary = path.with_suffix(".tmp")
        temporary.write_bytes(data)
        os.replace(temporary, path)

    def _delete(self, rule: str, name: str) -> None:
        (self._path(rule) / name).unlink(missing_ok=True)

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
        self._forget(rule)

    # -- the layout, over those blobs --

    def _forget(self, rule: str) -> None:
        self._tables.pop(rule, None)
        if self._sizes is not None:
            self._sizes.pop(rule_folder(rule), None)

    def _state(self, rule: str) -> HistoryState | None:
        meta_bytes, table_bytes = self._get(rule, "meta.json"), self._get(rule, "table.json")
        if meta_bytes is None or table_bytes is None:
            return None
        try:
            meta, table = orjson.loads(meta_bytes), orjson.loads(table_bytes)
        except orjson.JSONDecodeError as e:
            raise HistoryError(f"{rule_folder(rule)}: unreadable history: {e}") from e
        keys = [key.encode() for key in table["keys"][: meta["rows"]]]
        self._tables[rule] = len(keys)
        return HistoryState(meta["fingerprint"], meta["step"], keys, table["labels"][: meta["rows"]],
                            meta["end_column"], meta["full_read_at"], meta["incomplete"])

    def _read(self, rule: str, out: np.ndarray, first_column: int) -> None:
        end = first_column + out.shape[1]
        for block in range(first_column // BLOCK, (end - 1) // BLOCK + 1):
            data = self._get(rule, f"block-{block}.npy")
            if data is None:
                continue
            try:
                stored = np.load(io.BytesIO(data))
            except (ValueError, OSError) as e:
                raise HistoryError(f"{rule_folder(rule)}: unreadable block {block}: {e}") from e
            low, high = max(block * BLOCK, first_column), min((block + 1) * BLOCK, end)
            rows, offset = min(len(stored), len(out)), block * BLOCK
            out[:rows, low - first_column : high - first_column] = stored[:rows, low - offset : high - offset]

    def _write(self, rule: str, state: HistoryState, values: np.ndarray, first_column: int, changed_from: int) -> None:
        last = first_column + values.shape[1] - 1
        blocks = range(first_column // BLOCK, last // BLOCK + 1)
        self._check_budget(rule, len(values) * BLOCK * 8 * len(blocks))
        for block in blocks:
            if (block + 1) * BLOCK > changed_from:
                buffer = io.BytesIO()
                np.save(buffer, _block(values, first_column, block))
                self._put(rule, f"block-{block}.npy", buffer.getvalue())
        stored = self._blocks(rule)
        for name in list(stored):
            if int(name.removeprefix("block-").removesuffix(".npy")) < blocks.start:
                self._delete(rule, name)
                stored.pop(name)
        if self._tables.get(rule) != len(state.keys) or changed_from <= first_column:
            table = {"keys": [key.decode() for key in state.keys], "labels": state.labels}
            self._put(rule, "table.json", orjson.dumps(table))
            self._tables[rule] = len(state.keys)
        meta = {"fingerprint": state.fingerprint, "step": state.step, "end_column": state.end_column,
                "full_read_at": state.full_read_at, "incomplete": state.incomplete, "rows": len(state.keys),
                "block": BLOCK}
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


def _block(values: np.ndarray, first_column: int, block: int) -> np.ndarray:
    out = np.full((len(values), BLOCK), np.nan)
    low, high = max(block * BLOCK, first_column), min((block + 1) * BLOCK, first_column + values.shape[1])
    out[:, low - block * BLOCK : high - block * BLOCK] = values[:, low - first_column : high - first_column]
    return out
