"""Remote write: the encoder checked against the protobuf module, the disk queue, and the sender against a
scripted receiver on loopback (503 and 429 retried, 400 dropped, outages and restarts lose nothing)."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import snappy
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest

from oa_exporter.adapters.config.remote_write import load_destinations
from oa_exporter.adapters.sinks.exposition import output_labels
from oa_exporter.adapters.sinks.fanout import FanOut
from oa_exporter.adapters.sinks.remote_write import (
    RemoteDestination,
    RemoteWriteOptions,
    RemoteWriteSink,
    parse_retry_after,
    queue_name,
    safe_url,
)
from oa_exporter.adapters.sinks.remote_write_encoding import Batch, Encoder, batches, decode, varint
from oa_exporter.adapters.sinks.remote_write_pb2 import Label, Sample, TimeSeries, WriteRequest
from oa_exporter.adapters.sinks.remote_write_queue import DiskQueue
from oa_exporter.adapters.stores.local import LocalArtifactStore
from oa_exporter.adapters.tsdb.prometheus import HttpAuth
from oa_exporter.bootstrap import App, bootstrap
from oa_exporter.core.domain import ModelSpec, Rule, RuleScores
from oa_exporter.core.errors import SinkError
from oa_exporter.settings import Settings
from tests.servers import free_port
from tests.unit.fakes import DAY, FakeClock, FakeTsdb, InlineDispatcher, seasonal_series, values
from tests.unit.fakes import value as page_value
from tests.unit.harness import END, write_rules

FAMILIES = ("oa_y", "oa_yhat", "oa_yhat_lower", "oa_yhat_upper", "oa_anomaly_score")
T0 = 1_700_000_000.0
FAST = RemoteWriteOptions(max_samples_per_send=7, shards=3, min_backoff=0.005, max_backoff=0.02, drain_timeout=2.0)


def rule(name: str = "latency", **labels: str) -> Rule:
    return Rule(name, "g", "up", 60.0, ModelSpec("statsforecast", "SeasonalProfile"), labels=labels)


def scores(r: Rule, n: int, at: float, seed: int = 0, labels: list[dict[str, str]] | None = None) -> RuleScores:
    rng = np.random.default_rng(seed)
    labels = labels or [{"__name__": "up", "instance": f"host-{i:02d}", "job": "api"} for i in range(n)]
    y = rng.normal(100, 5, n)
    yhat = np.full(n, 100.0)
    return RuleScores(r, [repr(sorted(s.items())).encode() for s in labels], labels, at, y, yhat, yhat - 10,
                      yhat + 10, np.abs(y - yhat) / 10)


def expected(s: RuleScores) -> set[tuple]:
    """Every (labels, value, timestamp) the spec says this cycle is, built from the scores by hand."""
    out = set()
    stamp = int(round(s.timestamp * 1000))
    for name, column in zip(FAMILIES, (s.y, s.yhat, s.lower, s.upper, s.score)):
        for labels, value in zip(s.labels, column.tolist()):
            if not math.isnan(value):
                pairs = {k: v for k, v in output_labels(s.rule, labels).items() if v} | {"__name__": name}
                out.add((tuple(sorted(pairs.items())), value, stamp))
    return out


def flatten(request: WriteRequest) -> list[tuple]:
    return [(tuple((lb.name, lb.value) for lb in ts.labels), ts.samples[0].value, ts.samples[0].timestamp)
            for ts in request.timeseries]


def encode_all(encoder: Encoder, s: RuleScores, limit: int = 1000) -> list[Batch]:
    encoded = encoder.encode(s)
    assert encoded is not None
    out, first = [], 0
    for shard, count in enumerate(encoded.per_shard):
        out.extend(batches([(encoded, first, first + count)], shard, limit))
        first += count
    return out


def received(found: list[Batch]) -> list[tuple]:
    return [sample for b in found for sample in flatten(decode(b.body))]


# -- encoding -------------------------------------------------------------------------------------------------

def test_the_encoding_is_what_the_protobuf_module_builds():
    s = scores(rule(team="web"), 3, T0 + 0.123)
    [batch] = encode_all(Encoder(1), s)
    request = WriteRequest()
    for name, column in zip(FAMILIES, (s.y, s.yhat, s.lower, s.upper, s.score)):
        for labels, value in zip(s.labels, column.tolist()):
            pairs = sorted({**output_labels(s.rule, labels), "__name__": name}.items())
            request.timeseries.append(TimeSeries(labels=[Label(name=k, value=v) for k, v in pairs],
                                                 samples=[Sample(value=value, timestamp=1_700_000_000_123)]))
    assert snappy.decompress(batch.body) == request.SerializeToString()


def test_labels_are_sorted_with_name_in_place_and_empty_values_left_out():
    labels = [{"__name__": "up", "Zone": "eu", "instance": "a", "empty": "", "rule": "theirs", "team": "db"}]
    [batch] = encode_all(Encoder(1), scores(rule("mine", team="web"), 1, T0, labels=labels))
    first = decode(batch.body).timeseries[0]
    assert [(lb.name, lb.value) for lb in first.labels] == [
        ("Zone", "eu"), ("__name__", "oa_y"), ("exported_rule", "theirs"), ("instance", "a"), ("rule", "mine"),
        ("team", "web")]  # upper case sorts before __name__; the rule's labels win; "" is no label


def test_every_present_sample_once_nan_left_out_special_values_exact():
    s = scores(rule(), 6, T0)
    s.y[:3] = [math.inf, -math.inf, -0.0]
    s.yhat[4] = s.lower[4] = s.upper[4] = s.score[4] = math.nan  # a series that is not ready: oa_y only
    found = received(encode_all(Encoder(3), s, limit=4))
    assert len(found) == len(set(found)) == 6 * 5 - 4
    assert set(found) == expected(s)
    zero = next(f for f in found if dict(f[0])["__name__"] == "oa_y" and dict(f[0])["instance"] == "host-02")
    assert math.copysign(1, zero[1]) == -1  # -0.0 travels bit for bit


def test_series_with_different_label_names_in_one_rule():
    labels = [{"instance": "a", "job": "x"}, {"instance": "b"}, {"job": "y", "instance": "c", "rule": "theirs"},
              {"instance": "d", "team": "db"}, {"job": "", "instance": "e"}, {"instance": "f", "job": "z"}]
    s = scores(rule(team="web", empty=""), 6, T0, labels=labels)
    assert set(received(encode_all(Encoder(2), s))) == expected(s)


def test_unicode_and_long_label_values_take_the_general_path():
    labels = [{"path": "/é/" + "x" * 300, "instance": "ü"}, {"path": "/short", "instance": "b"}]
    s = scores(rule(), 2, T0, labels=labels)
    assert set(received(encode_all(Encoder(2), s))) == expected(s)


def test_batches_hold_at_most_the_limit_and_each_series_stays_in_one_shard():
    encoder = Encoder(4)
    shard_of: dict[tuple, int] = {}
    for cycle in range(3):
        found = encode_all(encoder, scores(rule(), 40, T0 + 60 * cycle, seed=cycle), limit=9)
        assert all(b.samples <= 9 for b in found) and sum(b.samples for b in found) == 200
        for b in found:
            assert b.timestamp == int((T0 + 60 * cycle) * 1000)
            for labels, _, _ in flatten(decode(b.body)):
                assert shard_of.setdefault(labels, b.shard) == b.shard
    assert len(set(shard_of.values())) == 4


def test_cached_records_follow_new_series_and_changed_rule_labels():
    encoder = Encoder(2)
    encode_all(encoder, scores(rule(team="a"), 5, T0))
    labels = [{"instance": f"host-{i:02d}", "job": "api"} for i in (1, 2, 7)]
    changed = scores(rule(team="b"), 3, T0 + 60, labels=labels)
    assert set(received(encode_all(encoder, changed))) == expected(changed)
    wider = scores(rule(team="b"), 3, 4_200_000_000.0, labels=labels)  # the timestamp's varint grows a byte
    assert set(received(encode_all(encoder, wider))) == expected(wider)


def test_varint_matches_protobuf():
    for n in (1, 127, 128, 300, 2**35, 1_700_000_000_123, 2**63 - 1, -1):
        assert Sample(timestamp=n).SerializeToString() == b"\x10" + varint(n)


def test_retry_after_in_seconds_or_as_a_date():
    assert parse_retry_after("2", 0.0) == 2.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 1445412470.0) == pytest.approx(10.0)
    assert parse_retry_after("soon", 0.0) is None and parse_retry_after(None, 0.0) is None
    assert parse_retry_after("99999", 0.0) == 300.0


def test_urls_lose_credentials_in_labels_and_stay_apart_on_disk():
    assert safe_url("https://u:secret@mimir:443/api/v1/push?token=x") == "https://mimir:443/api/v1/push"
    assert queue_name("http://a:9090/api/v1/write") != queue_name("http://a:9090/other")
    assert "secret" not in queue_name("https://u:secret@mimir/push")


# -- the disk queue -------------------------------------------------------------------------------------------

def batch(shard: int, at: int, samples: int = 10, size: int = 100) -> Batch:
    return Batch(shard, at, samples, bytes([at % 256]) * size)


class Drops:
    def __init__(self) -> None:
        self.by_reason: dict[str, int] = {}

    def __call__(self, reason: str, samples: int) -> None:
        self.by_reason[reason] = self.by_reason.get(reason, 0) + samples


def drain(queue: DiskQueue, generation: int, shard: int) -> list[int]:
    out = []
    while (head := queue.head(generation, shard)) is not None:
        out.append(head[0].timestamp)
        queue.remove(head[0])
    return out


def test_queue_is_fifo_per_shard_and_survives_reopening(tmp_path):
    queue = DiskQueue(tmp_path, 1 << 20, 2, Drops())
    queue.push([batch(0, 1), batch(1, 2), batch(0, 3)])
    queue.push([batch(0, 4, size=50_000)])  # big enough to be stored as a file
    queue.close()
    again = DiskQueue(tmp_path, 1 << 20, 2, Drops())
    assert (again.samples, again.bytes) == (40, 50_300)
    assert again.oldest() == 1
    assert drain(again, 0, 0) == [1, 3, 4] and drain(again, 0, 1) == [2]
    assert (again.samples, again.bytes, again.oldest()) == (0, 0, None)
    again.close()


def test_one_process_per_queue_directory(tmp_path):
    queue = DiskQueue(tmp_path, 1 << 20, 2, Drops())
    with pytest.raises(SinkError, match="in use"):
        DiskQueue(tmp_path, 1 << 20, 2, Drops())
    queue.close()
    DiskQueue(tmp_path, 1 << 20, 2, Drops()).close()  # released on close (and by the kernel on SIGKILL)


def test_the_cap_drops_the_oldest_and_counts_them(tmp_path):
    drops = Drops()
    queue = DiskQueue(tmp_path, 350, 2, drops)
    queue.push([batch(0, 1), batch(1, 2), batch(0, 3)])
    queue.push([batch(1, 4), batch(0, 5, size=1000)])  # 4 evicts 1; 5 can never fit
    assert drops.by_reason == {"queue_full": 20}
    assert drain(queue, 0, 0) == [3] and drain(queue, 0, 1) == [2, 4]
    queue.close()


def test_a_new_shard_count_sends_the_old_layout_first(tmp_path):
    queue = DiskQueue(tmp_path, 1 << 20, 2, Drops())
    queue.push([batch(1, 1)])
    queue.close()
    queue = DiskQueue(tmp_path, 1 << 20, 3, Drops())
    queue.push([batch(2, 2)])
    assert queue.older_generations() == [(0, 2)] and queue.generation == 1
    assert drain(queue, 0, 1) == [1] and drain(queue, 1, 2) == [2]
    assert queue.older_generations() == []
    queue.close()


def test_a_failed_push_leaves_nothing_half_queued(tmp_path, monkeypatch):
    queue = DiskQueue(tmp_path, 1 << 20, 1, Drops())
    queue.push([batch(0, 1)])
    real, calls = queue._cache.set, []

    def full_disk(key, value):
        calls.append(key)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(key, value)

    monkeypatch.setattr(queue._cache, "set", full_disk)
    with pytest.raises(OSError):
        queue.push([batch(0, 2), batch(0, 3)])
    assert queue.samples == 10
    queue.close()
    again = DiskQueue(tmp_path, 1 << 20, 1, Drops())
    assert drain(again, 0, 0) == [1]  # the first of the failed push was rolled back on disk too
    again.close()


def test_an_unreadable_batch_is_counted_and_skipped(tmp_path):
    drops = Drops()
    queue = DiskQueue(tmp_path, 1 << 20, 1, drops)
    queue.push([batch(0, 1, size=40_000), batch(0, 2)])
    for path in (tmp_path / "batches").rglob("*.val"):
        path.unlink()  # the file of the first batch vanished (a disk problem)
    assert drain(queue, 0, 0) == [2]
    assert drops.by_reason == {"unreadable": 10}
    queue.close()


# -- sending, against a scripted receiver -----------------------------------------------------------------------

@dataclass
class Receiver:
    """A remote-write receiver on loopback: answers `script` statuses in order, then 204; keeps what it accepted."""

    port: int = field(default_factory=free_port)
    script: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    always: int = 204
    requests: list[tuple[int, dict[str, str]]] = field(default_factory=list)  # status answered, headers seen
    accepted: list[tuple] = field(default_factory=list)
    runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v1/write"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/api/v1/write", self._write)
        app.router.add_post("/other/write", self._write)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    async def _write(self, request: web.Request) -> web.Response:
        body = await request.read()
        status, headers = self.script.pop(0) if self.script else (self.always, {})
        self.requests.append((status, dict(request.headers) | {"path": request.path}))
        if status == 204:
            self.accepted.extend(flatten(decode(body)))
        return web.Response(status=status, headers=headers, text="" if status == 204 else "out of bounds")


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    found = Receiver()
    await found.start()
    yield found
    await found.stop()


async def eventually(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def metric(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


async def started_sink(tmp_path: Path, urls: list[str], options: RemoteWriteOptions = FAST,
                       auth: HttpAuth | None = None) -> tuple[RemoteWriteSink, CollectorRegistry]:
    registry = CollectorRegistry()
    destinations = [RemoteDestination(url, auth or HttpAuth()) for url in urls]
    sink = RemoteWriteSink(destinations, tmp_path / "queue", options, registry)
    await sink.start()
    return sink, registry


def publish(sink: RemoteWriteSink, *cycles: RuleScores) -> set[tuple]:
    for s in cycles:
        sink.publish(s)
        sink.flush()
    return set().union(*(expected(s) for s in cycles))


async def test_results_arrive_with_the_protocol_headers_and_each_destinations_credentials(tmp_path, receiver):
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    registry = CollectorRegistry()
    destinations = [
        RemoteDestination(receiver.url, HttpAuth(bearer_token_file=str(token), headers={"X-Scope-OrgID": "team-a"})),
        RemoteDestination(receiver.url.replace("api/v1", "other"), HttpAuth(basic_user="oa", basic_password="pw")),
    ]
    sink = RemoteWriteSink(destinations, tmp_path / "queue", FAST, registry)
    await sink.start()
    try:
        want = publish(sink, scores(rule(), 4, T0))
        await eventually(lambda: len(receiver.accepted) == 2 * len(want))
    finally:
        await sink.close()
    assert set(receiver.accepted) == want
    by_path = {h["path"]: h for _, h in receiver.requests}
    for headers in by_path.values():
        assert headers["Content-Encoding"] == "snappy"
        assert headers["Content-Type"] == "application/x-protobuf"
        assert headers["X-Prometheus-Remote-Write-Version"] == "0.1.0"
    assert by_path["/api/v1/write"]["Authorization"] == "Bearer s3cret"
    assert by_path["/api/v1/write"]["X-Scope-OrgID"] == "team-a"
    assert by_path["/other/write"]["Authorization"] == "Basic b2E6cHc="
    assert metric(registry, "oa_remote_write_samples_sent_total", url=receiver.url) == 20
    assert metric(registry, "oa_remote_write_last_success_timestamp_seconds", url=receiver.url) > T0


async def test_a_503_is_retried_until_accepted(tmp_path, receiver):
    receiver.script = [(503, {})] * 3
    sink, registry = await started_sink(tmp_path, [receiver.url], RemoteWriteOptions(
        shards=1, min_backoff=0.005, max_backoff=0.02))
    try:
        want = publish(sink, scores(rule(), 2, T0))  # 10 samples: one request
        await eventually(lambda: len(receiver.accepted) == 10)
    finally:
        await sink.close()
    assert [status for status, _ in receiver.requests] == [503, 503, 503, 204]
    assert sorted(receiver.accepted) == sorted(want)  # once each
    assert metric(registry, "oa_remote_write_samples_retried_total", url=receiver.url) == 30
    assert metric(registry, "oa_remote_write_samples_sent_total", url=receiver.url) == 10
    assert metric(registry, "oa_remote_write_request_duration_seconds_count", url=receiver.url) == 4


async def test_a_429_waits_as_long_as_retry_after_says(tmp_path, receiver):
    receiver.script = [(429, {"Retry-After": "1"})]
    sink, registry = await started_sink(tmp_path, [receiver.url], RemoteWriteOptions(shards=1, min_backoff=0.001))
    try:
        started = time.monotonic()
        publish(sink, scores(rule(), 1, T0))
        await eventually(lambda: len(receiver.accepted) == 5)
        assert time.monotonic() - started >= 0.95
    finally:
        await sink.close()


async def test_a_400_is_dropped_counted_and_logged_once_not_retried(tmp_path, receiver, caplog):
    receiver.always = 400
    sink, registry = await started_sink(tmp_path, [receiver.url])
    try:
        cycles = [scores(rule(), 4, T0), scores(rule(), 4, T0 + 1)]
        publish(sink, *cycles)
        dropped = lambda: metric(registry, "oa_remote_write_samples_dropped_total", url=receiver.url,  # noqa: E731
                                 reason="http_400")
        await eventually(lambda: dropped() == 40)
        await asyncio.sleep(0.3)
        requests = len(receiver.requests)
        assert requests == sum(len(encode_all(Encoder(3), c, limit=7)) for c in cycles)  # one per batch
        assert metric(registry, "oa_remote_write_queue_samples", url=receiver.url) == 0
        assert metric(registry, "oa_remote_write_samples_retried_total", url=receiver.url) == 0
    finally:
        await sink.close()
    assert len(receiver.requests) == requests and dropped() == 40  # nothing was sent again
    refused = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refused) == 1 and "HTTP 400: out of bounds" in refused[0].getMessage()
    assert refused[0].levelno == logging.ERROR


async def test_an_outage_then_a_restart_lose_nothing_and_keep_every_series_in_order(tmp_path):
    receiver = Receiver()  # not started: the receiver is down
    sink, registry = await started_sink(tmp_path, [receiver.url])
    cycles = [scores(rule(), 6, T0 + i, seed=i) for i in range(4)]
    want = publish(sink, *cycles[:2])
    await eventually(lambda: metric(registry, "oa_remote_write_samples_retried_total", url=receiver.url) > 0)
    assert metric(registry, "oa_remote_write_queue_samples", url=receiver.url) == 60
    assert metric(registry, "oa_remote_write_oldest_sample_age_seconds", url=receiver.url) > 0
    await sink.close()  # the daemon stops with the receiver still down: the queue stays on disk

    receiver.script = [(503, {})] * 5  # it comes back, stumbling
    await receiver.start()
    sink, registry = await started_sink(tmp_path, [receiver.url])
    try:
        want |= publish(sink, *cycles[2:])
        await eventually(lambda: len(receiver.accepted) >= len(want))
        await eventually(lambda: metric(registry, "oa_remote_write_queue_samples", url=receiver.url) == 0)
    finally:
        await sink.close()
        await receiver.stop()
    assert sorted(receiver.accepted) == sorted(want)
    seen: dict[tuple, list[int]] = {}
    for labels, _, stamp in receiver.accepted:
        seen.setdefault(labels, []).append(stamp)
    assert all(stamps == sorted(stamps) and len(stamps) == 4 for stamps in seen.values())
    assert metric(registry, "oa_remote_write_oldest_sample_age_seconds", url=receiver.url) == 0


async def test_a_full_queue_drops_the_oldest_counted(tmp_path):
    receiver = Receiver()
    one_cycle = sum(len(b.body) for b in encode_all(Encoder(1), scores(rule(), 20, T0), limit=1000))
    options = RemoteWriteOptions(shards=1, max_samples_per_send=1000, queue_max_bytes=int(2.5 * one_cycle),
                                 min_backoff=0.005, max_backoff=0.01)
    sink, registry = await started_sink(tmp_path, [receiver.url], options)
    cycles = [scores(rule(), 20, T0 + i, seed=i) for i in range(5)]
    publish(sink, *cycles)
    url = receiver.url
    assert metric(registry, "oa_remote_write_samples_dropped_total", url=url, reason="queue_full") == 300
    assert metric(registry, "oa_remote_write_samples_queued_total", url=url) == 500
    assert metric(registry, "oa_remote_write_queue_samples", url=url) == 200
    await receiver.start()
    try:
        await eventually(lambda: len(receiver.accepted) == 200)
    finally:
        await sink.close()
        await receiver.stop()
    assert {stamp for _, _, stamp in receiver.accepted} == {int((T0 + i) * 1000) for i in (3, 4)}  # the newest


async def test_self_metrics_are_named_as_documented(tmp_path, receiver):
    sink, registry = await started_sink(tmp_path, [receiver.url])
    try:
        publish(sink, scores(rule(), 1, T0))
        await eventually(lambda: len(receiver.accepted) == 5)
    finally:
        await sink.close()
    page = generate_latest(registry).decode()
    for name in ("oa_remote_write_samples_sent_total", "oa_remote_write_samples_retried_total",
                 "oa_remote_write_samples_queued_total", "oa_remote_write_queue_bytes", "oa_remote_write_queue_samples",
                 "oa_remote_write_oldest_sample_age_seconds", "oa_remote_write_request_duration_seconds_bucket",
                 "oa_remote_write_last_success_timestamp_seconds"):
        assert f'{name}{{' in page, name


async def test_close_queues_what_was_published_even_without_a_start(tmp_path, receiver):
    registry = CollectorRegistry()
    sink = RemoteWriteSink([RemoteDestination(receiver.url)], tmp_path / "queue", FAST, registry)
    sink.publish(scores(rule(), 2, T0))  # published, never flushed
    await sink.close()
    await sink.close()  # twice is fine
    sink, _ = await started_sink(tmp_path, [receiver.url])
    try:
        await eventually(lambda: len(receiver.accepted) == 10)
    finally:
        await sink.close()


def test_two_destinations_with_one_url_are_refused(tmp_path):
    with pytest.raises(ValueError, match="twice"):
        RemoteWriteSink([RemoteDestination("http://a/w"), RemoteDestination("http://a/w")], tmp_path)


# -- fan-out and configuration ----------------------------------------------------------------------------------

class Recording:
    def __init__(self, fail: bool = False):
        self.fail, self.published, self.flushed = fail, [], 0

    def publish(self, s: RuleScores) -> None:
        if self.fail:
            raise RuntimeError("broken sink")
        self.published.append(s.rule.name)

    def flush(self) -> None:
        self.flushed += 1

    def forget(self, rule: str) -> None:
        pass


def test_one_failing_sink_does_not_keep_results_from_the_others(caplog):
    broken, working = Recording(fail=True), Recording()
    fan = FanOut([broken, working])
    fan.publish(scores(rule(), 1, T0))
    fan.flush()
    assert working.published == ["latency"] and working.flushed == 1
    assert "broken sink" in caplog.text


def test_destinations_file_in_prometheus_shape(tmp_path):
    path, password = tmp_path / "rw.yaml", tmp_path / "pw"
    password.write_text("pw\n")
    path.write_text(f"""
remote_write:
  - url: https://mimir.example/api/v1/push
    headers: {{X-Scope-OrgID: team-a}}
    basic_auth: {{username: oa, password_file: {password}}}
    tls_config: {{ca_file: /etc/ca.pem, insecure_skip_verify: true}}
  - url: http://vm:8428/api/v1/write
    authorization: {{credentials_file: /run/token}}
""")
    first, second = load_destinations(path)
    assert first.url == "https://mimir.example/api/v1/push"
    assert HttpAuth(**first.auth).request_headers() == {"X-Scope-OrgID": "team-a", "Authorization": "Basic b2E6cHc="}
    assert first.auth["ca_file"] == "/etc/ca.pem" and first.auth["insecure_skip_verify"] is True
    assert second.auth["bearer_token_file"] == "/run/token"


@pytest.mark.parametrize(("text", "message"), [
    ("remote_write:\n  - url: http://a/w\n    queue_config: {}\n", r"write\[0\]: unknown keys \['queue_config'\]"),
    ("remote_write:\n  - url: ftp://a/w\n", "http:// or https://"),
    ("remote_write:\n  - url: http://a/w\n    tls_config: {ca: x}\n", r"tls_config: unknown keys \['ca'\]"),
    ("url: http://a/w\n", "`remote_write:` list"),
])
def test_destinations_file_mistakes_are_named(tmp_path, text, message):
    path = tmp_path / "rw.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_destinations(path)


# -- wiring: the output modes, through bootstrap() --------------------------------------------------------------

WIRED_RULES = """
groups:
  - name: g
    interval: 1m
    rules:
      - anomaly: requests
        expr: requests
"""


async def wired(tmp_path: Path, mode: str, urls: tuple[str, ...]) -> App:
    rules = write_rules(tmp_path / "rules.yaml", WIRED_RULES)
    settings = Settings(rules=(str(rules),), output_mode=mode, remote_write_urls=urls,
                        remote_write_queue_dir=str(tmp_path / "queue"), remote_write_min_backoff=0.005)
    tsdb = FakeTsdb({"requests": seasonal_series("requests", 3, END - DAY, END)})
    app = bootstrap(settings, tsdb=tsdb, store=LocalArtifactStore(tmp_path / "models"),
                    dispatcher=InlineDispatcher(), clock=FakeClock(END))
    assert await app.load_rules()
    await app.runner.pause()
    for group in app.rules.groups:
        await app.runner.cycle(group, END)
    return app


def queued_now(app, url: str) -> float:
    app.page.flush()
    return page_value(app.page.page(), "oa_remote_write_queue_samples", url=url)


@pytest.mark.parametrize("mode", ["both", "remote-write"])
async def test_remote_write_modes_send_the_results_at_the_scoring_time(tmp_path, receiver, mode):
    app = await wired(tmp_path, mode, (receiver.url,))
    try:
        await eventually(lambda: len(receiver.accepted) == 3)
        assert {dict(labels)["instance"] for labels, _, _ in receiver.accepted} == {"host-00", "host-01", "host-02"}
        assert {(dict(lb)["__name__"], stamp) for lb, _, stamp in receiver.accepted} == {("oa_y", END * 1000)}
        await eventually(lambda: queued_now(app, receiver.url) == 0)  # acknowledged and off the disk queue
        await app.runner.cycle(app.rules.groups[0], END + 60)  # maybe with forecasts: the first fit may be done
        await eventually(lambda: sum(s == (END + 60) * 1000 and dict(lb)["__name__"] == "oa_y"
                                     for lb, _, s in receiver.accepted) == 3)
        page = app.page.page()
    finally:
        await app.close()
    assert {stamp for _, _, stamp in receiver.accepted} == {END * 1000, (END + 60) * 1000}
    assert len(values(page, "oa_y", rule="requests")) == (3 if mode == "both" else 0)
    # self-monitoring stays on /metrics, rendered before the cycle's own batches are queued
    assert page_value(page, "oa_remote_write_samples_queued_total", url=receiver.url) == 3
    assert page_value(page, "oa_remote_write_samples_sent_total", url=receiver.url) == 3
    assert page_value(page, "oa_remote_write_queue_samples", url=receiver.url) == 0


async def test_metrics_mode_writes_nowhere_and_says_so(tmp_path, receiver, caplog):
    app = await wired(tmp_path, "metrics", (receiver.url,))
    await app.close()
    assert len(values(app.page.page(), "oa_y", rule="requests")) == 3
    assert receiver.requests == [] and "nothing is written" in caplog.text


def test_the_default_output_mode_follows_the_configuration():
    assert Settings().outputs == "metrics"
    assert Settings(remote_write_urls=("http://a/api/v1/write",)).outputs == "both"
    assert Settings(remote_write_config_file="rw.yaml").outputs == "both"
    assert Settings(remote_write_urls=("http://a/api/v1/write",), output_mode="metrics").outputs == "metrics"
    assert Settings.from_env({"OA_REMOTE_WRITE_URL": "http://a/api/v1/write"}).outputs == "both"


async def test_a_receiver_given_without_a_mode_gets_the_results_and_the_page_keeps_them(tmp_path, receiver, caplog):
    app = await wired(tmp_path, "", (receiver.url,))
    try:
        await eventually(lambda: len(receiver.accepted) == 3)
    finally:
        await app.close()
    assert len(values(app.page.page(), "oa_y", rule="requests")) == 3
    assert "nothing is written" not in caplog.text


async def test_remote_write_mode_needs_a_destination(tmp_path):
    with pytest.raises(ValueError, match="needs a destination"):
        await wired(tmp_path, "remote-write", ())


def test_remote_write_settings_from_the_environment():
    settings = Settings.from_env({
        "OA_OUTPUT_MODE": "both", "OA_REMOTE_WRITE_URL": "http://a:9090/api/v1/write, http://b:8428/api/v1/write",
        "OA_REMOTE_WRITE_HEADERS": "X-Scope-OrgID: team-a", "OA_REMOTE_WRITE_QUEUE_MAX_BYTES": "1048576",
        "OA_REMOTE_WRITE_SHARDS": "2", "OA_REMOTE_WRITE_MAX_BACKOFF": "1.5",
    })
    assert settings.output_mode == "both"
    assert settings.remote_write_urls == ("http://a:9090/api/v1/write", "http://b:8428/api/v1/write")
    assert settings.remote_write_headers == ("X-Scope-OrgID: team-a",)
    assert (settings.remote_write_queue_max_bytes, settings.remote_write_shards) == (1 << 20, 2)
    assert settings.remote_write_max_backoff == 1.5
    assert Settings().outputs == "metrics" and Settings().remote_write_queue_max_bytes == 1 << 30
    with pytest.raises(ValueError, match="OA_OUTPUT_MODE"):
        Settings.from_env({"OA_OUTPUT_MODE": "kafka"})
