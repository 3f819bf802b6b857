"""Shards of the daemon: which replica fits, scores and exports which series of every rule.

Rendezvous (highest-random-weight) hashing: a series belongs to the shard whose weight, a hash of the series'
key and the shard number, is the highest. Adding a shard moves only the series it wins (about 1/N of them) and
nothing between the others; removing one spreads only its own series. The hash is BLAKE2b of the series key (its
canonical label set), then a splitmix64 mix per shard in numpy: stable across processes, machines and Python
versions, unlike the salted built-in hash().
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import overload

import numpy as np

from .domain import InstantVector, SeriesKey, SeriesMatrix


@dataclass(frozen=True)
class Shard:
    """This replica's place in the layout: shard `index` of `count` (0-based)."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError(f"--shard.count must be at least 1, not {self.count}")
        if not 0 <= self.index < self.count:
            raise ValueError(f"--shard.index {self.index} is outside 0..{self.count - 1} (--shard.count {self.count})")

    @property
    def whole(self) -> bool:
        """One shard: this replica owns every series."""
        return self.count == 1


_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, elementwise (uint64 arithmetic wraps, as the algorithm wants)."""
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def key_hashes(keys: Sequence[SeriesKey]) -> np.ndarray:
    """A stable 64-bit hash of every series key."""
    digests = b"".join(hashlib.blake2b(key, digest_size=8).digest() for key in keys)
    return np.frombuffer(digests, dtype="<u8").astype(np.uint64)


def owners(hashes: np.ndarray, count: int) -> np.ndarray:
    """The shard of every hashed series among `count` shards: one pass per shard, vectorised over series."""
    best = np.zeros(hashes.shape, np.uint64)
    owner = np.zeros(hashes.shape, np.int64)
    for shard in range(count):
        weight = _mix(hashes ^ _mix(np.full(1, shard + 1, np.uint64)))
        wins = weight > best if shard else np.ones(hashes.shape, bool)
        best[wins], owner[wins] = weight[wins], shard
    return owner


def owned_rows(keys: Sequence[SeriesKey], shard: Shard) -> np.ndarray:
    """Indices of the keys this shard owns."""
    if shard.whole:
        return np.arange(len(keys))
    return np.flatnonzero(owners(key_hashes(keys), shard.count) == shard.index)


@dataclass
class Ownership:
    """The rows of a rule's instant vector this shard owns, recomputed only when the series or the layout change."""

    _keys: list[SeriesKey] = field(default_factory=list)
    _shard: Shard = field(default_factory=Shard)
    _rows: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))

    def rows(self, keys: list[SeriesKey], shard: Shard) -> np.ndarray:
        if keys is not self._keys and keys != self._keys or shard != self._shard:
            self._rows, self._keys, self._shard = owned_rows(keys, shard), keys, shard
        return self._rows

    def select(self, vector: InstantVector, shard: Shard) -> InstantVector:
        """The vector restricted to this shard's series (the vector itself when it owns them all)."""
        if shard.whole:
            return vector
        rows = self.rows(vector.keys, shard)
        return InstantVector([vector.keys[i] for i in rows], _Picked(vector.labels, rows), vector.values[rows],
                             vector.timestamp)


def select_history(history: SeriesMatrix, shard: Shard) -> SeriesMatrix:
    """The training history restricted to this shard's series."""
    return history if shard.whole else history.select(owned_rows(history.keys, shard))


class _Picked(Sequence[Mapping[str, str]]):
    """Some rows of a (possibly lazy) label sequence, still read only on demand."""

    def __init__(self, labels: Sequence[Mapping[str, str]], rows: np.ndarray):
        self._labels, self._rows = labels, rows

    def __len__(self) -> int:
        return len(self._rows)

    @overload
    def __getitem__(self, index: int) -> Mapping[str, str]: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[Mapping[str, str]]: ...

    def __getitem__(self, index: int | slice) -> Mapping[str, str] | Sequence[Mapping[str, str]]:
        if isinstance(index, slice):
            return [self._labels[int(i)] for i in self._rows[index]]
        return self._labels[int(self._rows[index])]
