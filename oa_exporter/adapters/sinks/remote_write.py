"""Prometheus remote write 1.0: every result into any Prometheus-compatible TSDB, through a disk queue.

publish() runs in the runner's worker thread and never touches the network: it encodes the rule's samples
as WriteRequest `TimeSeries` records. A series' records are built once (labels as `output_labels` gives them
plus `__name__`, sorted, protobuf-encoded, with a hole where the sample goes) and reused while the rule's
series do not change; each cycle joins them into one buffer and writes every sample (value and timestamp)
into the holes with one numpy scatter. A WriteRequest is nothing but its TimeSeries records one after the
other, so flush() cuts the buffer into batches of at most `max_samples_per_send` records, snappy-compresses
each and appends it to every destination's disk queue.

Sending is Prometheus's: series are spread over a few shards by a hash of their labels, and each shard sends
its queue in order, one request at a time, so the samples of a series arrive in timestamp order. 5xx, 429 and
network errors are retried with exponential backoff and jitter (`Retry-After` honoured) for as long as the
batch stays queued; any other 4xx drops the batch, counted by reason and logged at most once a minute per
reason. The queue lives on disk (diskcache, one per destination): an outage fills it up to a byte cap beyond
which the oldest batches are dropped and counted; a restart, even after SIGKILL, resumes from it. Delivery
is at least once: a batch whose request succeeded just before a crash is sent again (Prometheus ignores an
identical sample; VictoriaMetrics keeps it unless deduplication is on).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import fcntl
import hashlib
import logging
import operator
import random
import re
import ssl
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import compress, repeat
from pathlib import Path
from typing import IO, Any, NamedTuple, Protocol
from urllib.parse import urlsplit

import aiohttp
import diskcache
import numpy as np
import snappy
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ... import __version__
from ...core.domain import Rule, RuleScores, SeriesKey
from ...core.errors import SinkError
from .exposition import FAMILIES, output_labels

log = logging.getLogger(__name__)

HEADERS = {
    "Content-Encoding": "snappy",
    "Content-Type": "application/x-protobuf",
    "X-Prometheus-Remote-Write-Version": "0.1.0",
    "User-Agent": f"oa-exporter/{__version__}",
}
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
MAX_RETRY_AFTER = 300.0  # a Retry-After beyond this is taken as this
LOG_EVERY = 60.0  # one log line per reason per destination per minute
SCATTER_ROWS = 65536  # samples written per numpy scatter: bounds its index array to 8-16 MB
SLICE = 16384  # records joined per C call


class Auth(Protocol):
    """Credentials, TLS and extra headers of one destination (the TSDB reader's HttpAuth fits)."""

    def request_headers(self) -> dict[str, str]:
        """Headers for one request (token files re-read)."""

    @property
    def ssl_context(self) -> ssl.SSLContext | bool:
        """TLS settings for aiohttp: True for the defaults."""


class NoAuth:
    """No credentials, default TLS."""

    ssl_context = True

    def request_headers(self) -> dict[str, str]:
        return {}


@dataclass(frozen=True)
class RemoteDestination:
    """One remote-write receiver: its URL and how to authenticate to it."""

    url: str
    auth: Auth = field(default_factory=NoAuth)


@dataclass(frozen=True)
class RemoteWriteOptions:
    """How to send: batch size, shards, queue cap, timeouts, backoff."""

    max_samples_per_send: int = 2000
    shards: int = 4
    queue_max_bytes: int = 1 << 30  # per destination
    timeout: float = 30.0
    min_backoff: float = 0.03
    max_backoff: float = 5.0
    drain_timeout: float = 5.0  # on close, how long a healthy receiver gets to empty the queue


# -- encoding -------------------------------------------------------------------------------------------------

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


# -- the disk queue -------------------------------------------------------------------------------------------

_KEY = re.compile(r"^(\d+)\.(\d+)\.(\d+)\.(\d+)\.(-?\d+)\.(\d+)\.(\d+)$")


class _Entry:
    """A queued batch as the in-memory index knows it; the key on disk carries the same fields."""

    __slots__ = ("key", "generation", "shards", "shard", "seq", "timestamp", "samples", "size", "gone")

    def __init__(self, generation: int, shards: int, shard: int, seq: int, timestamp: int, samples: int, size: int):
        self.generation, self.shards, self.shard, self.seq = generation, shards, shard, seq
        self.timestamp, self.samples, self.size = timestamp, samples, size
        self.key = f"{generation:06d}.{shards:03d}.{shard:03d}.{seq:016d}.{timestamp}.{samples}.{size}"
        self.gone = False  # sent, or dropped

    @classmethod
    def parse(cls, key: object) -> _Entry | None:
        match = _KEY.match(key) if isinstance(key, str) else None
        return cls(*map(int, match.groups())) if match else None


class DiskQueue:
    """One destination's batches on disk, first in first out per shard, with an in-memory index of them.

    The shard count is part of the queue's layout: when the daemon restarts with another count while batches
    are queued, those form an older generation that is sent, whole, before anything newer, so that no series
    gets out of order. One process at a time may use a queue directory (an flock guards it).
    """

    def __init__(self, directory: Path, max_bytes: int, shards: int, on_drop: Callable[[str, int], None]):
        self.directory = directory
        self.max_bytes = max_bytes
        self._on_drop = on_drop
        self._lock = threading.Lock()
        try:
            directory.mkdir(parents=True, exist_ok=True)
            self._lockfile: IO[str] | None = _hold(directory / "lock")
        except OSError as e:
            raise SinkError(f"cannot open the remote-write queue {directory}: {e}") from e
        try:
            self._cache = diskcache.Cache(str(directory / "batches"), eviction_policy="none")
        except Exception as e:
            self._lockfile.close()
            raise SinkError(f"cannot open the remote-write queue {directory}: {e}") from e
        self._index: dict[tuple[int, int], deque[_Entry]] = {}
        self.bytes = self.samples = 0
        found = sorted((e for e in map(_Entry.parse, self._cache.iterkeys()) if e is not None),
                       key=lambda e: (e.generation, e.shard, e.seq))
        for entry in found:
            self._append(entry)
        latest = found[-1] if found else None
        self.generation = 0 if latest is None else latest.generation + (latest.shards != shards)
        self.shards = shards
        self._seq = max((e.seq for e in found), default=0)
        if found:
            log.info("remote-write queue %s: %d samples in %d batches waiting from before the restart", directory,
                     self.samples, len(found))

    def push(self, batches: Sequence[Batch]) -> None:
        """Append batches to their shards, dropping the oldest queued batches to stay under the byte cap; one
        SQLite transaction for them all."""
        with self._lock:
            added: list[_Entry] = []
            try:
                with self._cache.transact():
                    for batch in batches:
                        size = len(batch.body)
                        if size > self.max_bytes:
                            self._on_drop("queue_full", batch.samples)
                            continue
                        while self.bytes + size > self.max_bytes:
                            self._drop_oldest()
                        self._seq += 1
                        entry = _Entry(self.generation, self.shards, batch.shard, self._seq, batch.timestamp,
                                       batch.samples, size)
                        self._cache.set(entry.key, batch.body)
                        self._append(entry)
                        added.append(entry)
            except BaseException:  # rolled back on disk: out of the index too
                for entry in added:
                    if not entry.gone:
                        self._unindex(entry)
                raise

    def head(self, generation: int, shard: int) -> tuple[_Entry, bytes] | None:
        """The oldest batch of a shard and its body; None when the shard is empty."""
        with self._lock:
            while queue := self._index.get((generation, shard)):
                entry = queue[0]
                body = self._cache.get(entry.key)
                if isinstance(body, bytes):
                    return entry, body
                self._remove(entry)  # its file is gone or damaged: count it, never stall on it
                self._on_drop("unreadable", entry.samples)
            return None

    def remove(self, entry: _Entry) -> None:
        """Forget a batch that was sent or refused (a batch the cap dropped meanwhile is already gone)."""
        with self._lock:
            if not entry.gone:
                self._remove(entry)

    def older_generations(self) -> list[tuple[int, int]]:
        """(generation, shard count) of batches queued under another shard count, oldest first."""
        with self._lock:
            return sorted({(g, q[0].shards) for (g, _), q in self._index.items() if g != self.generation and q})

    def oldest(self) -> int | None:
        """Timestamp (ms) of the oldest queued sample."""
        with self._lock:
            return min((q[0].timestamp for q in self._index.values() if q), default=None)

    def close(self) -> None:
        """Close the cache and release the directory; safe to call twice."""
        self._cache.close()
        if self._lockfile is not None:
            self._lockfile.close()  # releases the flock
            self._lockfile = None

    def _append(self, entry: _Entry) -> None:
        self._index.setdefault((entry.generation, entry.shard), deque()).append(entry)
        self.bytes += entry.size
        self.samples += entry.samples

    def _remove(self, entry: _Entry) -> None:
        self._unindex(entry)
        self._cache.delete(entry.key)

    def _unindex(self, entry: _Entry) -> None:
        queue = self._index[(entry.generation, entry.shard)]
        if queue[0] is entry:
            queue.popleft()
        else:  # a push that failed takes its entries back from the tail
            queue.remove(entry)
        entry.gone = True
        self.bytes -= entry.size
        self.samples -= entry.samples

    def _drop_oldest(self) -> None:
        entry = min((q[0] for q in self._index.values() if q), key=lambda e: (e.timestamp, e.generation, e.seq))
        self._remove(entry)
        self._on_drop("queue_full", entry.samples)


def _hold(path: Path) -> IO[str]:
    handle = open(path, "a+")  # noqa: SIM115 - held open for the queue's life: the flock lives with it
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as e:
        handle.close()
        raise SinkError(f"the remote-write queue {path.parent} is in use by another process") from e
    return handle


# -- sending --------------------------------------------------------------------------------------------------

class _Metrics:
    """The sink's self-monitoring, in the registry it is given (the daemon's, beside every other oa_* metric)."""

    def __init__(self, registry: CollectorRegistry):
        r = registry
        self.queued = Counter("oa_remote_write_samples_queued", "Samples accepted into the remote-write queue.",
                              ["url"], registry=r)
        self.sent = Counter("oa_remote_write_samples_sent", "Samples the receiver accepted.", ["url"], registry=r)
        self.retried = Counter("oa_remote_write_samples_retried", "Samples of requests that failed and are retried "
                               "(5xx, 429, network errors).", ["url"], registry=r)
        self.dropped = Counter("oa_remote_write_samples_dropped", "Samples given up, by reason: http_<status> "
                               "(refused by the receiver), queue_full (oldest dropped at the cap), unreadable, "
                               "queue_error.", ["url", "reason"], registry=r)
        self.queue_bytes = Gauge("oa_remote_write_queue_bytes", "Compressed bytes waiting in the disk queue.",
                                 ["url"], registry=r)
        self.queue_samples = Gauge("oa_remote_write_queue_samples", "Samples waiting in the disk queue.", ["url"],
                                   registry=r)
        self.oldest = Gauge("oa_remote_write_oldest_sample_age_seconds", "Age of the oldest queued sample "
                            "(0 when the queue is empty).", ["url"], registry=r)
        self.duration = Histogram("oa_remote_write_request_duration_seconds", "Remote-write request duration, "
                                  "failed attempts included.", ["url"], buckets=DURATION_BUCKETS, registry=r)
        self.last_success = Gauge("oa_remote_write_last_success_timestamp_seconds", "Time of the last request the "
                                  "receiver accepted.", ["url"], registry=r)


class _Outcome(NamedTuple):
    ok: bool
    retry: bool = False
    reason: str = ""
    message: str = ""
    wait: float | None = None  # the receiver's Retry-After, in seconds


class _Throttle:
    """Logs a message at most once a minute per reason, and says how many like it were held back."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def log(self, level: int, reason: str, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last.get(reason, -LOG_EVERY) < LOG_EVERY:
            self._held[reason] = self._held.get(reason, 0) + 1
            return
        self._last[reason] = now
        held = self._held.pop(reason, 0)
        log.log(level, message + (f" ({held} more like it in the last minute)" if held else ""), *args)


class _Destination:
    """One receiver: its disk queue and the asyncio tasks that send each shard of it in order."""

    def __init__(self, destination: RemoteDestination, queue_dir: Path, options: RemoteWriteOptions,
                 metrics: _Metrics, clock: Callable[[], float]):
        self.url = destination.url
        self.auth = destination.auth
        self.label = safe_url(destination.url)
        self.options = options
        self.metrics = metrics
        self.clock = clock
        self.throttle = _Throttle()
        self.queue = DiskQueue(queue_dir / queue_name(destination.url), options.queue_max_bytes, options.shards,
                               self._dropped)
        self.failing = False  # the last request failed and is being retried
        self._wakes = [asyncio.Event() for _ in range(options.shards)]
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        label = self.label
        metrics.queued.labels(label)
        metrics.sent.labels(label)
        metrics.retried.labels(label)
        metrics.queue_bytes.labels(label).set_function(lambda: self.queue.bytes)
        metrics.queue_samples.labels(label).set_function(lambda: self.queue.samples)
        metrics.oldest.labels(label).set_function(self._oldest_age)

    def enqueue(self, batches: Sequence[Batch]) -> None:
        """Queue batches on disk (called from the flushing thread) and wake the senders."""
        samples = sum(b.samples for b in batches)
        try:
            self.queue.push(batches)
        except Exception as e:  # a full or broken disk: the samples are lost, loudly
            self._dropped("queue_error", samples)
            self.throttle.log(logging.ERROR, "queue_error", "remote write %s: cannot queue %d samples on disk: %s",
                              self.label, samples, e)
            return
        self.metrics.queued.labels(self.label).inc(samples)
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: the batches wait on disk
                loop.call_soon_threadsafe(self._wake)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.options.timeout))

    async def run(self) -> None:
        """Send older generations whole, then keep sending the current one."""
        for generation, shards in self.queue.older_generations():
            log.info("remote write %s: sending batches queued under %d shards first", self.label, shards)
            await asyncio.gather(*(self._send_shard(generation, s, None) for s in range(shards)))
        generation = self.queue.generation
        await asyncio.gather(*(self._send_shard(generation, s, self._wakes[s]) for s in range(self.queue.shards)))

    @property
    def busy(self) -> bool:
        """Whether there is something to send to a receiver that is answering."""
        return self.queue.samples > 0 and not self.failing

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        self._loop = None
        self.queue.close()

    def _wake(self) -> None:
        for event in self._wakes:
            event.set()

    async def _send_shard(self, generation: int, shard: int, wake: asyncio.Event | None) -> None:
        """Send one shard's batches in order; with no `wake` return once it is empty (an older generation)."""
        while True:
            if wake is not None:
                wake.clear()
            try:
                head = await asyncio.to_thread(self.queue.head, generation, shard)
                if head is None:
                    if wake is None:
                        return
                    await wake.wait()
                    continue
                entry, body = head
                await self._deliver(entry, body)
                await asyncio.to_thread(self.queue.remove, entry)
            except Exception:  # a bug or a disk error must not stop the shard: logged, then tried again
                log.exception("remote write %s: shard %d failed; retrying in 1s", self.label, shard)
                await asyncio.sleep(1.0)

    async def _deliver(self, entry: _Entry, body: bytes) -> None:
        """Send one batch until the receiver accepts or refuses it, or the queue cap drops it."""
        attempt = 0
        while not entry.gone:
            outcome = await self._post(body)
            if outcome.ok and self.failing:
                log.info("remote write %s: the receiver accepts requests again", self.label)
            self.failing = not outcome.ok and outcome.retry
            if outcome.ok:
                self.metrics.sent.labels(self.label).inc(entry.samples)
                self.metrics.last_success.labels(self.label).set(self.clock())
                return
            if not outcome.retry:
                self._dropped(outcome.reason, entry.samples)
                self.throttle.log(logging.ERROR, outcome.reason, "remote write %s: %d samples dropped, the receiver "
                                  "refused them: %s", self.label, entry.samples, outcome.message)
                return
            self.metrics.retried.labels(self.label).inc(entry.samples)
            delay = outcome.wait if outcome.wait is not None else self._backoff(attempt)
            self.throttle.log(logging.WARNING, outcome.reason, "remote write %s: request failed, retrying in %.2fs: "
                              "%s", self.label, delay, outcome.message)
            attempt += 1
            await asyncio.sleep(delay)

    async def _post(self, body: bytes) -> _Outcome:
        assert self._session is not None, "start() first"
        started = time.perf_counter()
        try:
            headers = {**self.auth.request_headers(), **HEADERS}
            async with self._session.post(self.url, data=body, headers=headers, ssl=self.auth.ssl_context) as reply:
                text = await reply.read()
                status, retry_after = reply.status, reply.headers.get("Retry-After")
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            reason = "timeout" if isinstance(e, TimeoutError) else "connection"
            return _Outcome(False, True, reason, f"{type(e).__name__}: {e}")
        finally:
            self.metrics.duration.labels(self.label).observe(time.perf_counter() - started)
        if 200 <= status < 300:
            return _Outcome(True)
        message = f"HTTP {status}: {text[:300].decode(errors='replace').strip()}"
        if status == 429 or status >= 500:
            return _Outcome(False, True, f"http_{status}", message, parse_retry_after(retry_after, self.clock()))
        return _Outcome(False, False, f"http_{status}", message)

    def _backoff(self, attempt: int) -> float:
        delay = min(self.options.max_backoff, self.options.min_backoff * 2 ** min(attempt, 32))
        return delay / 2 + random.uniform(0, delay / 2)

    def _dropped(self, reason: str, samples: int) -> None:
        self.metrics.dropped.labels(self.label, reason).inc(samples)
        if reason in ("queue_full", "unreadable"):
            self.throttle.log(logging.ERROR, reason, "remote write %s: %d samples dropped from the queue (%s)",
                              self.label, samples, reason)

    def _oldest_age(self) -> float:
        oldest = self.queue.oldest()
        return 0.0 if oldest is None else max(self.clock() - oldest / 1000, 0.0)


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (seconds or an HTTP date), capped; None if absent or unreadable."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - now
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def safe_url(url: str) -> str:
    """The URL without credentials, query or fragment: the `url` label and what logs show."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"


def queue_name(url: str) -> str:
    """The queue directory of a destination: readable, and unique per URL."""
    readable = re.sub(r"[^A-Za-z0-9.-]+", "_", urlsplit(url).netloc.rpartition("@")[2])[:60]
    return f"{readable}-{hashlib.sha256(url.encode()).hexdigest()[:12]}"


# -- the sink -------------------------------------------------------------------------------------------------

class RemoteWriteSink:
    """ResultSink writing every result to Prometheus remote-write receivers, through a disk queue per receiver."""

    def __init__(
        self,
        destinations: Sequence[RemoteDestination],
        queue_dir: str | Path,
        options: RemoteWriteOptions | None = None,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.options = options = options or RemoteWriteOptions()
        if options.shards < 1 or options.max_samples_per_send < 1 or options.queue_max_bytes < 1:
            raise ValueError("remote write needs at least 1 shard, 1 sample per send and a positive queue size")
        urls = [d.url for d in destinations]
        if len(set(urls)) != len(urls):
            raise ValueError(f"a remote-write URL is given twice: {urls}")
        self._encoder = Encoder(options.shards)
        self._metrics = _Metrics(registry or CollectorRegistry(auto_describe=True))
        self._pending: list[list[tuple[Encoded, int, int]]] = [[] for _ in range(options.shards)]
        self._lock = threading.Lock()  # publish threads append to _pending
        self._flushing = threading.Lock()  # one flush at a time, so batches reach the queues in cycle order
        self._tasks: list[asyncio.Task] = []
        self._started = self._closed = False
        self.destinations: list[_Destination] = []
        try:
            for destination in destinations:
                self.destinations.append(_Destination(destination, Path(queue_dir), options, self._metrics, clock))
        except BaseException:
            for opened in self.destinations:
                opened.queue.close()
            raise

    def publish(self, scores: RuleScores) -> None:
        encoded = self._encoder.encode(scores)
        if encoded is None:
            return
        with self._lock:
            first = 0
            for shard, count in enumerate(encoded.per_shard):
                if count:
                    self._pending[shard].append((encoded, first, first + count))
                first += count

    def flush(self) -> None:
        """Compress what was published into batches and queue them on disk for every destination."""
        with self._flushing:
            with self._lock:
                pending, self._pending = self._pending, [[] for _ in range(self.options.shards)]
            limit = self.options.max_samples_per_send
            ready = [batch for shard, parts in enumerate(pending) for batch in batches(parts, shard, limit)]
            if ready:
                for destination in self.destinations:
                    destination.enqueue(ready)

    def forget(self, rule: str) -> None:
        self._encoder.forget(rule)

    async def start(self) -> None:
        """Start one sending task per destination; safe to call again."""
        if self._started or self._closed:
            return
        self._started = True
        for destination in self.destinations:
            destination.start()
            self._tasks.append(asyncio.create_task(destination.run(), name=f"remote-write:{destination.label}"))

    async def close(self) -> None:
        """Queue what is published, give answering receivers `drain_timeout` to take the queue, stop; the rest
        waits on disk for the next start. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        await asyncio.to_thread(self.flush)
        deadline = time.monotonic() + self.options.drain_timeout
        while self._tasks and time.monotonic() < deadline and any(d.busy for d in self.destinations):
            await asyncio.sleep(0.05)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for destination in self.destinations:
            await destination.close()
