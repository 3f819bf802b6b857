"""Prometheus remote write 1.0, the wire format: a rule's samples as WriteRequest `TimeSeries` records, written
by hand with numpy.

A series' records are built once (labels as `output_labels` gives them plus `__name__`, sorted,
protobuf-encoded, with a hole where the sample goes) and reused while the rule's series do not change; each
cycle joins them into one buffer and writes every sample (value and timestamp) into the holes with one numpy
scatter. A WriteRequest is nothing but its TimeSeries records one after the other, so `batches` cuts the
buffer into requests of at most a given number of records and snappy-compresses each.
"""

from __future__ import annotations

import operator
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import compress, repeat
from typing import Any, NamedTuple

import numpy as np
import snappy

from ...core.domain import Rule, RuleScores, SeriesKey
from .exposition import FAMILIES, output_labels

SCATTER_ROWS = 65536  # samples written per numpy scatter: bounds its index array to 8-16 MB
SLICE = 16384  # records joined per C call


def varint(n: int) -> bytes:
    """Protobuf base-128 varint of an int64 (negative numbers take ten bytes, as protobuf writes them)."""
    n &= 0xFFFFFFFFFFFFFFFF
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_VARINTS = [varint(n) for n in range(1 << 14)]  # every record and label length in practice


def _length(n: int) -> bytes:
    return _VARINTS[n] if n < 1 << 14 else varint(n)


def _field(tag: int, payload: bytes) -> bytes:
    """A length-delimited field: tag byte, varint length, payload."""
    return bytes((tag,)) + _length(len(payload)) + payload


def _label(name: str, value: str) -> bytes:
    """One `TimeSeries.labels` entry (field 1): a Label of name (field 1) and value (field 2)."""
    return _field(0x0A, _field(0x0A, name.encode()) + _field(0x12, value.encode()))


NAME_LABELS = [_label("__name__", name) for name, _, _ in FAMILIES]
_HEADS = [b"\x0a" + _length(n) for n in range(1 << 14)]  # a length-delimited field 1 of n bytes: its tag and length


def _head(n: int) -> bytes:
    return _HEADS[n] if n < 1 << 14 else b"\x0a" + varint(n)


class _Input(str):
    """Stands for the value of the input label it names, when output_labels maps a group's label names."""


def series_labels(rule: Rule, label_sets: Sequence[Mapping[str, str]]) -> list[tuple[bytes, bytes]]:
    """Each series' encoded output labels (`output_labels`, as on /metrics), sorted by name as the spec
    requires and split where `__name__` sorts in; empty values left out (the spec forbids them; to Prometheus
    an empty label is no label).

    Series of one rule nearly always share their label names: output_labels maps the names of each such group
    once, then every label is encoded a column at a time, over all the group's series, with C-level maps."""
    groups: dict[tuple[str, ...], list[int]] = {}
    for i, labels in enumerate(label_sets):
        groups.setdefault(tuple(labels), []).append(i)
    found: list[tuple[bytes, bytes]] = [(b"", b"")] * len(label_sets)
    for names, rows in groups.items():
        members = [label_sets[i] for i in rows]
        columns: dict[str, list[bytes]] = {}
        for name, value in output_labels(rule, {n: _Input(n) for n in names}).items():
            if isinstance(value, _Input):
                columns[name] = _label_column(name, list(map(operator.itemgetter(value), members)))
            elif value:  # the rule's own: the same for every series
                columns[name] = [_label(name, value)] * len(rows)
        before = [columns[n] for n in sorted(columns) if n < "__name__"]
        after = [columns[n] for n in sorted(columns) if n > "__name__"]
        empty = [b""] * len(rows)
        pairs = zip(map(b"".join, zip(*before)) if before else empty, map(b"".join, zip(*after)) if after else empty)
        for row, pair in zip(rows, pairs):
            found[row] = pair
    return found


def _label_column(name: str, values: list[str]) -> list[bytes]:
    """One label's `TimeSeries.labels` entry for many series ("" for an empty value)."""
    encoded = list(map(str.encode, values))
    sizes = list(map(len, encoded))
    key = _field(0x0A, name.encode()) + b"\x12"  # Label.name, then the tag of Label.value
    longest = max(sizes, default=0)
    if len(key) + 1 + longest >= 128:  # a length past one varint byte: the general path
        return [_label(name, v) if v else b"" for v in values]
    heads = [b"\x0a" + bytes((len(key) + 1 + n,)) + key + bytes((n,)) for n in range(longest + 1)]
    column = list(map(bytes.__add__, map(heads.__getitem__, sizes), encoded))
    if 0 in sizes:
        column = [c if n else b"" for c, n in zip(column, sizes)]
    return column


@dataclass
class _Layout:
    """One rule's output series as records without their samples, shard by shard; rebuilt when its series
    (or the rule's labels, or the timestamp's encoded width) change."""

    rule: Rule
    keys: list[SeriesKey]
    sample_len: int
    known: dict[SeriesKey, tuple[bytes, bytes, int]]  # labels before and after __name__, shard
    order: np.ndarray  # series index at each position, shard by shard
    bounds: list[int]  # where each shard's positions start, then the end
    records: list[list[bytes]]  # per family, in `order`: the record with a hole of sample_len bytes at its end
    lengths: list[np.ndarray]  # per family, in `order`: the records' lengths


@dataclass(frozen=True)
class Encoded:
    """One rule's samples of one cycle as TimeSeries records, shard by shard: `ends[i]` is where record i ends."""

    buffer: bytearray
    ends: np.ndarray
    per_shard: list[int]
    timestamp: int  # milliseconds


class Batch(NamedTuple):
    """One WriteRequest of one shard, snappy-compressed, ready to send."""

    shard: int
    timestamp: int  # of its oldest sample, in milliseconds
    samples: int
    body: bytes


class Encoder:
    """Turns RuleScores into remote-write records; thread-safe across rules (one rule is encoded at a time)."""

    def __init__(self, shards: int):
        self.shards = shards
        self._layouts: dict[str, _Layout] = {}

    def encode(self, scores: RuleScores) -> Encoded | None:
        """The rule's present (non-NaN) samples of every family at the scoring time; None when there are none."""
        timestamp = int(round(scores.timestamp * 1000))
        stamp = varint(timestamp)
        layout = self._layout(scores, 10 + len(stamp))
        columns = [np.asarray(getattr(scores, attr), dtype=np.float64)[layout.order] for _, attr, _ in FAMILIES]
        pieces: list[bytes] = []
        lengths: list[np.ndarray] = []
        values: list[np.ndarray] = []
        per_shard = []
        for lo, hi in zip(layout.bounds[:-1], layout.bounds[1:]):
            count = 0
            for family, column in enumerate(columns):
                kept, records, sizes = column[lo:hi], layout.records[family][lo:hi], layout.lengths[family][lo:hi]
                present = ~np.isnan(kept)
                if not present.all():
                    records, sizes, kept = list(compress(records, present.tolist())), sizes[present], kept[present]
                pieces.extend(records)
                lengths.append(sizes)
                values.append(kept)
                count += len(kept)
            per_shard.append(count)
        if not pieces:
            return None
        ends = np.cumsum(np.concatenate(lengths))
        buffer = _join(pieces, int(ends[-1]))
        _write_samples(buffer, ends - layout.sample_len, np.concatenate(values), stamp)
        return Encoded(buffer, ends, per_shard, timestamp)

    def forget(self, rule: str) -> None:
        """Drop a rule's cached records."""
        self._layouts.pop(rule, None)

    def _layout(self, scores: RuleScores, sample_len: int) -> _Layout:
        old = self._layouts.get(scores.rule.name)
        if old is not None and old.rule == scores.rule and old.sample_len == sample_len and (
                old.keys is scores.keys or old.keys == scores.keys):
            return old
        known = old.known if old is not None and old.rule == scores.rule else {}
        fresh = [i for i, key in enumerate(scores.keys) if key not in known]
        if fresh:  # labels are read (maybe parsed) only for series not seen before
            encoded = series_labels(scores.rule, [scores.labels[i] for i in fresh])
            known = dict(known)
            for i, (before, after) in zip(fresh, encoded):
                known[scores.keys[i]] = (before, after, zlib.crc32(after, zlib.crc32(before)) % self.shards)
        entries = [known[key] for key in scores.keys]
        shards = np.fromiter((e[2] for e in entries), np.int64, len(entries))
        order = np.argsort(shards, kind="stable")
        bounds = np.searchsorted(shards[order], np.arange(self.shards + 1)).tolist()
        ordered = [entries[i] for i in order.tolist()]
        befores, afters = [e[0] for e in ordered], [e[1] for e in ordered]
        label_sizes = np.fromiter(map(len, befores), np.int64, len(ordered)) + np.fromiter(
            map(len, afters), np.int64, len(ordered))
        hole = b"\x12" + bytes((sample_len,)) + bytes(sample_len)  # TimeSeries.samples: one Sample, zeroed
        records, lengths = [], []
        for name in NAME_LABELS:
            sizes = (label_sizes + len(name) + len(hole)).tolist()
            heads = list(map(_head, sizes))
            records.append(list(map(b"".join, zip(heads, befores, repeat(name), afters, repeat(hole)))))
            lengths.append(np.fromiter(map(len, records[-1]), np.int64, len(ordered)))
        layout = _Layout(scores.rule, scores.keys, sample_len, {k: known[k] for k in scores.keys}, order, bounds,
                         records, lengths)
        self._layouts[scores.rule.name] = layout
        return layout


def _join(pieces: list[bytes], size: int) -> bytearray:
    """The records in one buffer, joined a slice at a time: no single C call holds the GIL for long (the event
    loop serving scrapes waits for it)."""
    buffer = bytearray(size)
    view, at = memoryview(buffer), 0
    for i in range(0, len(pieces), SLICE):
        part = b"".join(pieces[i : i + SLICE])
        view[at : at + len(part)] = part
        at += len(part)
    return buffer


def _write_samples(buffer: bytearray, starts: np.ndarray, values: np.ndarray, stamp: bytes) -> None:
    """Write each Sample (value: field 1, fixed64; timestamp: field 2, varint) at its start, all at once."""
    width = 10 + len(stamp)
    block = np.empty((len(values), width), np.uint8)
    block[:, 0] = 0x09
    block[:, 1:9] = np.ascontiguousarray(values, dtype="<f8").view(np.uint8).reshape(-1, 8)
    block[:, 9] = 0x10
    block[:, 10:] = np.frombuffer(stamp, np.uint8)
    target = np.frombuffer(buffer, np.uint8)
    offsets = np.arange(width)
    for i in range(0, len(values), SCATTER_ROWS):
        target[starts[i : i + SCATTER_ROWS, None] + offsets] = block[i : i + SCATTER_ROWS]


def batches(parts: Sequence[tuple[Encoded, int, int]], shard: int, limit: int) -> Iterator[Batch]:
    """Cut one shard's records (record ranges of encoded cycles, in order) into compressed WriteRequests of at
    most `limit` samples."""
    chunk: list[memoryview] = []
    count, oldest = 0, 0
    for encoded, first, last in parts:
        view = memoryview(encoded.buffer)
        while first < last:
            take = min(limit - count, last - first)
            start = int(encoded.ends[first - 1]) if first else 0
            chunk.append(view[start : int(encoded.ends[first + take - 1])])
            oldest = min(oldest, encoded.timestamp) if count else encoded.timestamp
            count += take
            first += take
            if count == limit:
                yield Batch(shard, oldest, count, snappy.compress(b"".join(chunk)))
                chunk, count = [], 0
    if count:
        yield Batch(shard, oldest, count, snappy.compress(b"".join(chunk)))


def decode(body: bytes) -> Any:
    """A compressed WriteRequest as the protobuf module reads it (tests, debugging)."""
    from .remote_write_pb2 import WriteRequest

    request = WriteRequest()
    request.ParseFromString(snappy.decompress(body))
    return request
