"""Shards: rendezvous hashing of the series, and replicas wired through bootstrap() that split a rule's series."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from oa_exporter.bootstrap import shard_layout
from oa_exporter.core.sharding import Shard, key_hashes, owned_rows, owners
from oa_exporter.settings import Settings
from tests.unit.fakes import DAY, FakeTsdb, seasonal_series, value, values
from tests.unit.harness import END

EXPR = "sum by (instance) (rate(requests_total[5m]))"
RULES = f"""
groups:
  - name: web
    interval: 1m
    rules:
      - anomaly: requests
        expr: {EXPR}
"""
KEYS = [f'{{"instance":"host-{i:05d}","job":"web"}}'.encode() for i in range(20_000)]


def test_the_hash_is_stable_across_processes_and_versions():
    # BLAKE2b of the key bytes: a value fixed by the algorithm, not by this process's hash() salt
    assert int(key_hashes([b'{"instance":"a"}'])[0]) == int.from_bytes(
        __import__("hashlib").blake2b(b'{"instance":"a"}', digest_size=8).digest(), "little")


def test_every_series_has_exactly_one_shard_and_the_shards_are_even():
    owner = owners(key_hashes(KEYS), 3)
    assert set(np.unique(owner)) == {0, 1, 2}
    counts = np.bincount(owner)
    assert counts.min() > 0.3 * len(KEYS) and counts.max() < 0.37 * len(KEYS)
    parts = [set(owned_rows(KEYS, Shard(i, 3))) for i in range(3)]
    assert sum(len(p) for p in parts) == len(KEYS) and set().union(*parts) == set(range(len(KEYS)))


@given(st.integers(min_value=1, max_value=9))
def test_adding_a_shard_moves_only_the_series_it_wins(count):
    hashes = key_hashes(KEYS[:3000])
    before, after = owners(hashes, count), owners(hashes, count + 1)
    moved = before != after
    assert np.all(after[moved] == count)  # nothing moves between the shards that were there
    assert moved.mean() < 1.4 / (count + 1)


def test_the_layout_comes_from_the_count_file_and_the_hostname(tmp_path):
    count_file = tmp_path / "count"
    count_file.write_text("4\n")
    settings = Settings.from_env({"OA_SHARD_COUNT_FILE": str(count_file), "HOSTNAME": "openanomaly-2"})
    assert shard_layout(settings) == Shard(2, 4)
    assert shard_layout(Settings.from_env({"HOSTNAME": "openanomaly-2"})) == Shard(0, 1)  # not sharded
    assert shard_layout(Settings.from_env({"OA_SHARD_COUNT": "3", "OA_SHARD_INDEX": "1"})) == Shard(1, 3)
    with pytest.raises(ValueError, match="--shard.index"):
        shard_layout(Settings.from_env({"OA_SHARD_COUNT": "3", "HOSTNAME": "laptop"}))
    with pytest.raises(ValueError, match="count-file"):
        shard_layout(Settings.from_env({"OA_SHARD_COUNT_FILE": str(tmp_path / "missing"), "OA_SHARD_INDEX": "0"}))
    with pytest.raises(ValueError, match="outside"):
        shard_layout(Settings.from_env({"OA_SHARD_COUNT": "3", "OA_SHARD_INDEX": "3"}))


def many_series() -> FakeTsdb:
    return FakeTsdb({EXPR: seasonal_series("requests", 60, END - 3 * DAY + 60, END + 7200, seed=5)})


async def test_replicas_export_every_series_once_and_a_new_shard_takes_only_its_own(start_daemon, tmp_path):
    count_file = tmp_path / "count"
    count_file.write_text("3")
    tsdb = many_series()
    replicas = [await start_daemon(RULES, tsdb, shard_count_file=str(count_file), shard_index=i) for i in range(3)]
    pages = [await replica.trained() for replica in replicas]
    owned = [set(values(page, "oa_anomaly_score", rule="requests")) for page in pages]
    assert sum(len(o) for o in owned) == 60 and len(set().union(*owned)) == 60
    status = replicas[1].api()["requests"]
    assert status.shard == {"index": 1, "count": 3, "series": len(owned[1]), "of": 60}
    assert values(pages[1], "oa_shard_series", by="rule") == {"requests": len(owned[1])}

    count_file.write_text("4")
    for replica in replicas:
        assert await replica.load()
    fourth = await start_daemon(RULES, tsdb, shard_count_file=str(count_file), shard_index=3)
    pages = [await replica.cycle() for replica in replicas] + [await fourth.trained()]
    await replicas[0].fits_done()
    now = [set(values(page, "oa_anomaly_score", rule="requests")) for page in pages]
    assert sum(len(o) for o in now) == 60 and len(set().union(*now)) == 60
    assert all(now[i] <= owned[i] for i in range(3))  # the old shards only lost series ...
    assert [replica.fits("requests") for replica in replicas] == [1, 1, 1]  # ... and kept their models
    assert value(pages[3], "oa_shard_count") == 4 and value(pages[3], "oa_shard_index") == 3
    assert value(pages[0], "oa_shard_count") == 4
    folders = sorted(p.name for p in (tmp_path / "models").iterdir() if p.is_dir() and not p.name.startswith("."))
    assert folders == ["requests", "requests%40shard-1", "requests%40shard-2", "requests%40shard-3"]


async def test_a_shard_that_gains_series_fits_them_at_once(start_daemon, tmp_path):
    count_file = tmp_path / "count"
    count_file.write_text("2")
    replica = await start_daemon(RULES, many_series(), shard_count_file=str(count_file), shard_index=0)
    before = set(values(await replica.trained(), "oa_anomaly_score", rule="requests"))
    count_file.write_text("1")
    assert await replica.load()
    page = await replica.cycle()
    assert len(values(page, "oa_y", rule="requests")) == 60
    assert set(values(page, "oa_anomaly_score", rule="requests")) == before  # the rest wait for their model
    page = await replica.trained()
    assert replica.fits("requests") == 2
    assert len(values(page, "oa_anomaly_score", rule="requests")) == 60


async def test_a_count_that_leaves_this_replica_out_fails_the_reload_and_keeps_the_layout(start_daemon, tmp_path):
    count_file = tmp_path / "count"
    count_file.write_text("3")
    replica = await start_daemon(RULES, many_series(), shard_count_file=str(count_file), shard_index=2)
    owned = set(values(await replica.trained(), "oa_y", rule="requests"))
    count_file.write_text("2")  # shard 2 of 2 does not exist
    assert not await replica.load()
    assert any("outside" in problem for problem in map(str, replica.app.reload_problems))
    page = await replica.cycle()
    assert value(page, "oa_rules_last_reload_successful") == 0 and value(page, "oa_shard_count") == 3
    assert set(values(page, "oa_y", rule="requests")) == owned
