"""The history store in a real S3 server (SeaweedFS): refits read what is new, and another process sharing the
bucket (a Celery worker fitting the rule next) resumes from the same history, matrix for matrix."""

from __future__ import annotations

import numpy as np
import pytest

from oa_exporter.adapters.stores.history_s3 import S3HistoryStore
from oa_exporter.core.services.history import HistoryReader
from tests.unit.fakes import FakeClock, FakeTsdb, seasonal_series
from tests.unit.test_history import DAY, RULE, STEP, T0, Counting, by_key, window

pytestmark = pytest.mark.integration


async def test_refits_through_s3_read_what_arrived_and_another_worker_resumes(seaweed, s3_bucket, s3_env):
    tsdb = FakeTsdb({"load": seasonal_series("load", 20, T0 - 4 * DAY, T0 + DAY, STEP)})
    counting, clock = Counting(tsdb), FakeClock(T0)

    def store() -> S3HistoryStore:
        return S3HistoryStore(s3_bucket, "prod/oa", seaweed.url, "us-east-1", 2**30)

    one, other = HistoryReader(counting, store(), 120.0, clock), HistoryReader(counting, store(), 120.0, clock)
    await one.read(RULE, *window(T0))
    await one.settle()
    assert counting.samples == 20 * 4320
    for refit in range(1, 7):  # the two take turns, as two workers would
        clock.now = T0 + 120 * refit
        counting.samples = 0
        reader = one if refit % 2 else other
        kept = await reader.read(RULE, *window(clock.now))
        await reader.settle()
        assert counting.samples == 20 * 4  # two new columns and two of overlap, whichever worker read
        full = by_key(await tsdb.query_range("load", *window(clock.now), STEP))
        for key, row in by_key(kept).items():
            np.testing.assert_array_equal(row, full[key])
    keys = {o["Key"] for o in seaweed.client().list_objects_v2(Bucket=s3_bucket)["Contents"]}
    assert all(key.startswith("prod/oa/history/load-") for key in keys)
    assert {key.rsplit("/", 1)[1] for key in keys} >= {"meta.json", "table.json"}
    await one.forget(RULE.name)
    assert "Contents" not in seaweed.client().list_objects_v2(Bucket=s3_bucket)
