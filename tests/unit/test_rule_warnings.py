"""What a user sees of a rule beyond its scores: an expr that selects nothing is flagged, annotations are shown."""

from __future__ import annotations

from tests.unit.fakes import DAY, FakeTsdb, seasonal_series, value
from tests.unit.harness import END

RULES = """
groups:
  - name: web
    interval: 1m
    rules:
      - anomaly: typo
        expr: sum by (instance) (rate(requets_total[5m]))
      - anomaly: requests
        expr: requests
        labels: {team: web}
        annotations: {summary: "Request rate is unusual", runbook: "https://runbooks.example/requests"}
"""


async def test_a_rule_that_selects_nothing_is_flagged_after_five_minutes(start_daemon, caplog):
    daemon = await start_daemon(RULES, FakeTsdb({"requests": seasonal_series("requests", 3, END - 4 * DAY, END + DAY)}))
    await daemon.trained()
    assert daemon.api()["typo"].state == "ok"  # not yet: a new target may take a scrape or two
    assert value(daemon.page, "oa_rule_warning", rule="typo", reason="no-series") == 0
    for minute in range(1, 6):
        page = await daemon.cycle(END + 60 * minute)
    typo = daemon.api()["typo"]
    assert typo.state == "no-series" and "selected no series for 5 minutes" in typo.warning
    assert value(page, "oa_rule_warning", rule="typo", reason="no-series") == 1
    assert value(page, "oa_rule_series", rule="typo", state="ready") == 0
    assert value(page, "oa_rule_warning", rule="requests", reason="no-series") == 0
    assert daemon.api()["requests"].state == "ok" and daemon.api()["requests"].warning is None
    [line] = [r for r in caplog.records if "selected no series" in r.getMessage()]  # once, not every cycle
    assert line.levelname == "WARNING" and "requets_total" in line.getMessage()


async def test_the_flag_goes_once_the_expr_selects_series(start_daemon):
    tsdb = FakeTsdb({"requests": seasonal_series("requests", 3, END - 4 * DAY, END + DAY)})
    daemon = await start_daemon(RULES, tsdb)
    await daemon.trained()
    await daemon.cycle(END + 600)
    assert daemon.api()["typo"].state == "no-series"
    tsdb.data["sum by (instance) (rate(requets_total[5m]))"] = seasonal_series("x", 1, END - DAY, END + DAY)
    page = await daemon.cycle(END + 660)
    assert daemon.api()["typo"].warning is None
    assert value(page, "oa_rule_warning", rule="typo", reason="no-series") == 0


async def test_the_rules_api_carries_labels_and_annotations(start_daemon):
    daemon = await start_daemon(RULES, FakeTsdb({"requests": seasonal_series("requests", 3, END - 4 * DAY, END)}))
    requests = daemon.api()["requests"]
    assert requests.annotations == {"summary": "Request rate is unusual", "runbook": "https://runbooks.example/requests"}
    assert requests.labels == {"team": "web"}
    assert daemon.api()["typo"].annotations == {}
