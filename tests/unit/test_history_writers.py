"""Writers sharing a history directory (two daemons, a daemon and a Celery worker on one volume): each read is
the matrix a full-window read returns, whoever wrote the rule's blocks last, and the history stays usable."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
from dataclasses import replace

import numpy as np
import pytest

from oa_exporter.adapters.stores.history_local import LocalHistoryStore
from oa_exporter.core.domain import HistoryState
from oa_exporter.core.errors import HistoryChanged
from oa_exporter.core.services.history import HistoryReader
from tests.unit.fakes import FakeClock
from tests.unit.test_history import RULE, STEP, T0, Counting, by_key, churning_tsdb, window

REFITS = 30  # every 2 minutes for an hour: a series ages out (its rows move), another is born


class FailuresSeen(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def refit_beside_another(directory: str, offset: float, start: multiprocessing.synchronize.Event,
                         results: multiprocessing.Queue) -> None:
    """One process refitting the rule every 2 minutes (shifted by `offset`) over the shared directory."""
    failures = FailuresSeen()
    logging.getLogger("oa_exporter").addHandler(failures)
    start.wait(60)
    mismatches = asyncio.run(refits(directory, offset))
    results.put({"offset": offset, "mismatches": mismatches, "failures": failures.messages})


async def refits(directory: str, offset: float) -> list[int]:
    tsdb, clock = churning_tsdb(), FakeClock(T0 + offset)
    reader = HistoryReader(tsdb, LocalHistoryStore(directory, 2**30), 120.0, clock)
    mismatches = []
    for refit in range(REFITS):
        clock.now = T0 + offset + 120 * refit
        kept = await reader.read(RULE, *window(clock.now))
        full = by_key(await tsdb.query_range("load", *window(clock.now), STEP))
        if by_key(kept).keys() != full.keys() or any(not np.array_equal(row, full[key], equal_nan=True)
                                                     for key, row in by_key(kept).items()):
            mismatches.append(refit)
    await reader.settle()
    return mismatches


def test_two_processes_refitting_one_rule_over_one_directory_each_read_the_full_window_matrix(tmp_path):
    context = multiprocessing.get_context("spawn")
    start, results = context.Event(), context.Queue()
    writers = [context.Process(target=refit_beside_another, args=(str(tmp_path), offset, start, results))
               for offset in (0.0, 60.0)]
    for writer in writers:
        writer.start()
    start.set()
    reports = [results.get(timeout=300) for _ in writers]
    for writer in writers:
        writer.join(60)
        assert writer.exitcode == 0
    for report in reports:
        assert report["mismatches"] == [], report
        assert report["failures"] == [], report  # no store read or write failed (nor fell back to a full read)
    assert not list(tmp_path.rglob("*.tmp"))
    # what they left is one consistent state: a restart resumes from it, reading only what is new
    tsdb, clock = churning_tsdb(), FakeClock(T0 + 120 * REFITS + 60)
    counting = Counting(tsdb)
    kept = await_read(HistoryReader(counting, LocalHistoryStore(tmp_path, 2**30), 120.0, clock), clock.now)
    full = by_key(asyncio.run(tsdb.query_range("load", *window(clock.now), STEP)))
    assert by_key(kept).keys() == full.keys()
    for key, row in by_key(kept).items():
        np.testing.assert_array_equal(row, full[key])
    assert counting.samples < 10 * len(full)  # a few columns a series, not the window


def await_read(reader: HistoryReader, now: float):
    async def read():
        matrix = await reader.read(RULE, *window(now))
        await reader.settle()
        return matrix
    return asyncio.run(read())


def state_of(values: np.ndarray, keys: list[bytes], end_column: int) -> HistoryState:
    return HistoryState("f", STEP, keys, [{"k": key.decode()} for key in keys], end_column, T0)


async def test_a_read_or_write_from_a_state_another_process_replaced_never_mixes_the_two(tmp_path):
    first, columns = 1000, 600  # blocks 3 to 6
    keys = [b"a", b"b", b"c"]
    values = np.arange(3 * columns, dtype=np.float64).reshape(3, columns)
    one, other = LocalHistoryStore(tmp_path, 2**30), LocalHistoryStore(tmp_path, 2**30)
    await one.write("r", state_of(values, keys, first + columns - 1), values, first, first)
    seen = await one.state("r")
    # the other process drops series "a": every row moves up, every block is rewritten
    await other.write("r", replace(state_of(values[1:], keys[1:], first + columns - 1), generation=seen.generation),
                      values[1:], first, first)
    with pytest.raises(HistoryChanged):  # reading blocks laid out for another table is refused
        await one.read("r", seen, np.empty((3, columns)), first)
    # a write derived from the replaced state appends two columns: it stores its whole window, not a mix
    grown = np.hstack([values, np.full((3, 2), -1.0)])
    await one.write("r", replace(seen, end_column=first + columns + 1), grown, first, first + columns)
    now = await one.state("r")
    assert now.keys == keys and now.end_column == first + columns + 1
    out = np.empty((3, columns + 2))
    await other.read("r", now, out, first)
    np.testing.assert_array_equal(out, grown)


async def test_a_write_that_rewrites_every_block_removes_the_meta_first(tmp_path, monkeypatch):
    keys, first, columns = [b"a", b"b"], 1000, 600
    values = np.ones((2, columns))
    store = LocalHistoryStore(tmp_path, 2**30)
    await store.write("r", state_of(values, keys, first + columns - 1), values, first, first)
    seen = await store.state("r")
    puts = []

    def crash_on_second_block(rule, name, block):
        puts.append(name)
        if len(puts) == 2:
            raise OSError("disk gone")
        LocalHistoryStore._put_block(store, rule, name, block)

    monkeypatch.setattr(store, "_put_block", crash_on_second_block)
    with pytest.raises(OSError):  # the rows move (series "a" dropped): a crash half-way through
        await store.write("r", replace(seen, keys=keys[1:], labels=seen.labels[1:]), values[1:], first, first)
    assert await LocalHistoryStore(tmp_path, 2**30).state("r") is None  # no mix of old table and new blocks
