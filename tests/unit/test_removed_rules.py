"""Models of rules that were removed leave the store once the grace period has passed (their history too); restart
logs read well, and a restarted daemon refits from the stored history."""

from __future__ import annotations

import logging

from oa_exporter.core.services.trainer import REMOVED_RULE_GRACE
from tests.unit.fakes import DAY, FakeTsdb, seasonal_series
from tests.unit.harness import END, write_rules

RULES = """
groups:
  - name: web
    interval: 1m
    rules:
      - {anomaly: requests, expr: requests, preset: none}
      - {anomaly: errors, expr: errors, preset: none}
"""


def tsdb() -> FakeTsdb:
    return FakeTsdb({name: seasonal_series(name, 2, END - 3 * DAY, END + 10 * DAY) for name in ("requests", "errors")})


async def test_the_models_of_a_removed_rule_are_deleted_after_the_grace_period(start_daemon, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    daemon = await start_daemon(RULES, tsdb())
    await daemon.trained()
    assert len(list((tmp_path / "models").rglob("*.oamodel"))) == 2
    write_rules(tmp_path / "rules.yaml", RULES.split("      - {anomaly: errors")[0])
    assert await daemon.load()
    await daemon.trained(END + 3 * DAY)  # a refit of the rule in force: within the grace period, kept
    assert len(list((tmp_path / "models").rglob("*.oamodel"))) == 3
    await daemon.trained(END + REMOVED_RULE_GRACE + DAY)
    assert {info.rule for info in await daemon.app.store.list()} == {"requests"}
    assert any("deleted the stored models of 1 removed rules (errors)" in r.getMessage() for r in caplog.records)


async def test_the_history_of_a_removed_rule_goes_with_its_models(start_daemon, tmp_path):
    daemon = await start_daemon(RULES, tsdb(), history_dir=str(tmp_path / "history"), history_max_bytes=2**30)
    await daemon.trained()
    assert kept_histories(tmp_path / "history") == ["errors", "requests"]
    write_rules(tmp_path / "rules.yaml", RULES.split("      - {anomaly: errors")[0])
    assert await daemon.load()
    await daemon.trained(END + 3 * DAY)
    assert kept_histories(tmp_path / "history") == ["errors", "requests"]  # within the grace period: kept
    await daemon.trained(END + REMOVED_RULE_GRACE + DAY)
    assert kept_histories(tmp_path / "history") == ["requests"]
    assert not list((tmp_path / "history").glob("errors-*"))  # its lock file went too


def kept_histories(directory) -> list[str]:
    """The rules with a history folder (beside each, its lock file)."""
    return sorted(p.name.split("-")[0] for p in directory.iterdir() if p.is_dir())


async def test_a_rule_put_back_within_the_grace_period_keeps_its_model(start_daemon, tmp_path):
    daemon = await start_daemon(RULES, tsdb())
    await daemon.trained()
    write_rules(tmp_path / "rules.yaml", RULES.split("      - {anomaly: errors")[0])
    assert await daemon.load()
    await daemon.trained(END + 2 * DAY)
    assert {info.rule for info in await daemon.app.store.list()} == {"requests", "errors"}


async def test_a_restart_logs_when_the_stored_model_was_trained_as_an_iso_time(start_daemon, caplog):
    caplog.set_level(logging.INFO)
    first = await start_daemon(RULES, tsdb())
    await first.trained()
    restarted = await start_daemon(RULES, tsdb(), now=END + 600)  # shares the first one's store
    await restarted.cycle()  # loads the stored models instead of refitting
    assert any("loaded the stored model trained at 2023-11-15T00:00:00Z" in r.getMessage() for r in caplog.records)


class CountingTsdb(FakeTsdb):
    """The fake TSDB, counting the samples (series × points) its range reads return."""

    samples: int = 0

    async def query_range(self, expr, start, end, step):
        matrix = await super().query_range(expr, start, end, step)
        self.samples += matrix.values.size
        return matrix


async def test_a_restarted_daemon_refits_from_the_stored_history_reading_only_what_arrived(start_daemon, tmp_path):
    source = CountingTsdb(tsdb().data)
    first = await start_daemon(RULES, source, history_dir=str(tmp_path / "history"), history_max_bytes=2**30)
    await first.trained()
    whole = source.samples
    assert whole >= 2 * 2 * 14 * 1440 * 0.2  # both rules read their window (3 of its 14 days have samples)
    await first.close()  # its stored windows are complete once it has stopped
    source.samples = 0
    restarted = await start_daemon(RULES, source, now=END + DAY, history_dir=str(tmp_path / "history"),
                                   history_max_bytes=2**30)
    await restarted.trained()  # a day later: the stored models are older than train.every, both rules refit
    assert sorted(info.rule for info in await restarted.app.store.list()) == ["errors"] * 2 + ["requests"] * 2
    assert 0 < source.samples <= 2 * 2 * (1440 + 3), (source.samples, whole)  # the day that arrived, per series
