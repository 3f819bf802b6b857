"""Remote-write encoding benchmark: one rule's cycle as snappy-compressed WriteRequests, against protobuf.

    python bench/remote_write.py --series 100000      # 5 families x 100k series = 500k samples

Times (a) the sink's path from RuleScores to compressed batches (encode + cut into requests + snappy), in the
steady state (series seen before: their records are cached) and on the first cycle (every series' labels
encoded); (b) the plain protobuf path on the same samples: build the WriteRequest messages of each batch with
the generated module (labels already sorted per series, not timed), serialise, snappy; (c) queueing the batches
on disk (diskcache), as flush() does for each destination. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import snappy

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import labels  # noqa: E402
from oa_exporter.adapters.sinks.exposition import FAMILIES, output_labels  # noqa: E402
from oa_exporter.adapters.sinks.remote_write_encoding import Encoder, batches, decode  # noqa: E402
from oa_exporter.adapters.sinks.remote_write_pb2 import WriteRequest  # noqa: E402
from oa_exporter.adapters.sinks.remote_write_queue import DiskQueue  # noqa: E402
from oa_exporter.core.domain import ModelSpec, Rule, RuleScores  # noqa: E402

BATCH = 2000
SHARDS = 4


def cycle_scores(rule: Rule, series: list[dict[str, str]], at: float, seed: int) -> RuleScores:
    rng = np.random.default_rng(seed)
    n = len(series)
    y = 100 + rng.normal(0, 1, n)
    yhat = 100 + rng.normal(0, 0.1, n)
    keys = [str(i).encode() for i in range(n)]
    return RuleScores(rule, keys, series, at, y, yhat, yhat - 3, yhat + 3, np.abs(y - yhat) / 3)


def ours(encoder: Encoder, scores: RuleScores) -> list:
    """What publish() + flush() do before the disk: encode, cut into requests, compress."""
    encoded = encoder.encode(scores)
    assert encoded is not None
    out, first = [], 0
    for shard, count in enumerate(encoded.per_shard):
        out.extend(batches([(encoded, first, first + count)], shard, BATCH))
        first += count
    return out


def protobuf_path(rule: Rule, pairs: list[list[tuple[str, str]]], scores: RuleScores) -> list[bytes]:
    """WriteRequests built message by message with the generated module, serialised and compressed."""
    timestamp = int(round(scores.timestamp * 1000))
    samples = [(name, i, float(v)) for name, attr, _ in FAMILIES for i, v in enumerate(getattr(scores, attr).tolist())]
    bodies = []
    for start in range(0, len(samples), BATCH):
        request = WriteRequest()
        for name, i, value in samples[start : start + BATCH]:
            series = request.timeseries.add()
            for k, v in sorted([*pairs[i], ("__name__", name)]):
                label = series.labels.add()
                label.name, label.value = k, v
            sample = series.samples.add()
            sample.value, sample.timestamp = value, timestamp
        bodies.append(snappy.compress(request.SerializeToString()))
    return bodies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--series", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    series = labels(args.series)
    rule = Rule("bench", "bench", "bench", 60.0, ModelSpec("statsforecast", "SeasonalProfile"), labels={"team": "b"})
    at = 1_700_000_000.0
    samples = 5 * args.series

    encoder = Encoder(SHARDS)
    started = time.perf_counter()
    first = ours(encoder, cycle_scores(rule, series, at, 0))
    first_s = time.perf_counter() - started
    steady = []
    for i in range(args.repeat):
        scores = cycle_scores(rule, series, at + 60 * (i + 1), i + 1)
        started = time.perf_counter()
        out = ours(encoder, scores)
        steady.append(time.perf_counter() - started)
    assert sum(b.samples for b in out) == samples == sum(b.samples for b in first)
    assert len(decode(out[0].body).timeseries) == BATCH

    pairs = [sorted((k, v) for k, v in output_labels(rule, s).items() if v) for s in series]
    baseline = []
    for _ in range(args.repeat):
        started = time.perf_counter()
        bodies = protobuf_path(rule, pairs, scores)
        baseline.append(time.perf_counter() - started)

    with tempfile.TemporaryDirectory() as tmp:
        queue = DiskQueue(Path(tmp), 1 << 40, SHARDS, lambda reason, n: None)
        started = time.perf_counter()
        queue.push(out)
        enqueue_s = time.perf_counter() - started
        queue.close()

    ours_s, base_s = statistics.median(steady), statistics.median(baseline)
    compressed = sum(len(b.body) for b in out)
    print(f"samples: {samples:,} in {len(out)} requests of <= {BATCH}, {compressed / 1e6:.1f} MB compressed "
          f"(protobuf path: {sum(map(len, bodies)) / 1e6:.1f} MB)")
    print(f"(a) encode + compress, steady state: {ours_s:.3f} s (median of {args.repeat}); first cycle, every "
          f"label encoded: {first_s:.3f} s")
    print(f"(b) protobuf messages + serialise + compress: {base_s:.3f} s  -> ratio {ours_s / base_s:.3f} "
          f"({base_s / ours_s:.0f}x faster)")
    print(f"(c) queueing the requests on disk: {enqueue_s:.3f} s")
    print(json.dumps({
        "samples": samples, "encode_compress_s": round(ours_s, 4), "first_cycle_s": round(first_s, 4),
        "protobuf_s": round(base_s, 4), "ratio": round(ours_s / base_s, 4), "enqueue_s": round(enqueue_s, 4),
        "requests": len(out), "compressed_mb": round(compressed / 1e6, 2),
    }))


if __name__ == "__main__":
    main()
