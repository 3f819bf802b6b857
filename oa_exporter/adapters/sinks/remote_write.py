"""Prometheus remote write 1.0: every result into any Prometheus-compatible TSDB, through a disk queue.

publish() runs in the runner's worker thread and never touches the network: it encodes the rule's samples
as WriteRequest `TimeSeries` records (`remote_write_encoding`); flush() cuts them into batches of at most
`max_samples_per_send` records, snappy-compressed, and appends them to every destination's disk queue
(`remote_write_queue`). This module sends them and holds the sink's self-monitoring.

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
import hashlib
import logging
import random
import re
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Protocol
from urllib.parse import urlsplit

import aiohttp
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ... import __version__
from ...core.domain import RuleScores
from .remote_write_encoding import Batch, Encoded, Encoder, batches
from .remote_write_queue import DiskQueue, QueuedBatch

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

    async def _deliver(self, entry: QueuedBatch, body: bytes) -> None:
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
