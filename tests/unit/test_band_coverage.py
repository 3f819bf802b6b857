"""oa_band_coverage_ratio: the share of a rule's scored samples inside their band over the last hour."""

from __future__ import annotations

import numpy as np

from oa_exporter.adapters.telemetry.coverage import BandCoverage
from tests.unit.fakes import DAY, FakeTsdb, seasonal_series, value
from tests.unit.harness import END, write_rules

RULES = """
groups:
  - name: web
    interval: 1m
    rules:
      - anomaly: requests
        expr: requests
      - anomaly: wide
        expr: requests
        forecast: {level: 50}
"""


def tsdb() -> FakeTsdb:
    return FakeTsdb({"requests": seasonal_series("requests", 20, END - 3 * DAY, END + 7200, seed=4)})


async def test_coverage_follows_the_rules_level(start_daemon):
    daemon = await start_daemon(RULES, tsdb())
    page = await daemon.trained()
    for minute in range(1, 61):
        page = await daemon.cycle(END + 60 * minute)
    at_99 = value(page, "oa_band_coverage_ratio", rule="requests")
    at_50 = value(page, "oa_band_coverage_ratio", rule="wide")
    assert 0.95 <= at_99 <= 1.0
    assert 0.3 <= at_50 <= 0.7


async def test_coverage_is_absent_before_a_model_and_drops_with_a_removed_rule(start_daemon, tmp_path):
    daemon = await start_daemon(RULES, tsdb())
    page = await daemon.cycle()
    assert value(page, "oa_band_coverage_ratio", rule="requests") is None  # nothing scored yet
    await daemon.trained()
    write_rules(tmp_path / "rules.yaml", RULES.split("      - anomaly: wide")[0])
    assert await daemon.load()
    page = await daemon.cycle(END + 60)
    assert value(page, "oa_band_coverage_ratio", rule="wide") is None
    assert value(page, "oa_band_coverage_ratio", rule="requests") is not None


def test_cycles_older_than_the_window_leave_the_ratio():
    coverage = BandCoverage(window=3600)
    coverage.add("r", 0, 10, at=0.0)  # a bad cycle...
    for minute in range(1, 60):
        coverage.add("r", 10, 10, at=60.0 * minute)
    assert _ratio(coverage) == np.float64(590 / 600)
    coverage.add("r", 10, 10, at=3600.0)  # ...an hour later it is out of the window
    assert _ratio(coverage) == 1.0


def _ratio(coverage: BandCoverage) -> float:
    [family] = coverage.collect()
    [sample] = family.samples
    return sample.value
