"""The daemon end to end, wired through bootstrap() with fakes, judged by its /metrics page."""

from __future__ import annotations

import pickle
from dataclasses import replace

import numpy as np
import pytest

from oa_exporter.adapters.stores.local import LocalArtifactStore
from tests.unit.fakes import DAY, FakeSeries, FakeTsdb, result_names, seasonal_series, spike, value, values
from tests.unit.harness import END, write_rules

REQUESTS = "sum by (instance, job) (rate(requests_total[5m]))"
ERRORS = "sum by (instance, job) (rate(errors_total[5m]))"
RULES = f"""
groups:
  - name: web
    interval: 1m
    rules:
      - anomaly: requests
        expr: {REQUESTS}
        preset: none  # the plain defaults: a 99 % band, a daily refit
      - anomaly: errors
        expr: {ERRORS}
        preset: none
        labels: {{team: web}}
"""
SPIKED = ("host-00", "host-01")


def requests_data() -> list[FakeSeries]:
    """Three days of a daily cycle, two hours past END too; host-00 and host-01 jump by 30 at END."""
    series = seasonal_series("requests", 10, END - 3 * DAY + 60, END + 7200, seed=11)
    for s in series[:2]:
        spike(s, END, 30.0)
    return series


def short_series() -> FakeSeries:
    """A series that started six hours ago: less than min_history (1d)."""
    [series] = seasonal_series("requests", 1, END - 6 * 3600, END + 7200, seed=12)
    series.labels["instance"] = "new-host"
    return series


def fake_tsdb() -> FakeTsdb:
    """Ten request series (two spiked at END) and three error series."""
    errors = seasonal_series("errors", 3, END - 3 * DAY, END + 7200)
    return FakeTsdb({REQUESTS: requests_data(), ERRORS: errors})


def stored_models(tmp_path):
    return sorted((tmp_path / "models").rglob("*.oamodel"))


async def test_before_the_first_fit_the_values_are_exported_without_forecasts(start_daemon):
    daemon = await start_daemon(RULES, fake_tsdb())
    page = await daemon.cycle()
    assert result_names(page, "requests") == {"oa_y"}
    assert len(values(page, "oa_y", rule="requests")) == 10
    assert daemon.states("requests") == {"ready": 0, "not-ready": 10, "failed": 0}


async def test_a_spike_scores_above_one_and_normal_series_below(start_daemon):
    daemon = await start_daemon(RULES, fake_tsdb())
    await daemon.trained()
    scores = daemon.scores("requests")
    assert len(scores) == 10
    assert {host for host, s in scores.items() if s > 1} == set(SPIKED)
    assert min(scores[h] for h in SPIKED) > 3
    assert daemon.states("requests") == {"ready": 10, "not-ready": 0, "failed": 0}
    assert daemon.healthy("requests") == 1
    assert daemon.fits("requests") == 1


async def test_the_score_is_above_one_exactly_outside_the_band(start_daemon):
    daemon = await start_daemon(RULES, fake_tsdb())
    page = await daemon.trained()
    y, yhat = values(page, "oa_y", rule="requests"), values(page, "oa_yhat", rule="requests")
    lower = values(page, "oa_yhat_lower", rule="requests")
    upper = values(page, "oa_yhat_upper", rule="requests")
    for host, score in daemon.scores("requests").items():
        assert lower[host] <= yhat[host] <= upper[host]
        inside = lower[host] <= y[host] <= upper[host]
        assert inside == (score <= 1), host


async def test_rule_labels_and_self_metrics_are_on_the_page(start_daemon):
    daemon = await start_daemon(RULES, fake_tsdb())
    page = await daemon.trained()
    assert set(values(page, "oa_y", by="team", rule="errors")) == {"web"}
    assert value(page, "oa_rules_loaded") == 2
    assert value(page, "oa_rules_last_reload_successful") == 1
    assert value(page, "oa_model_last_fit_timestamp_seconds", rule="requests") == END
    assert value(page, "oa_model_age_seconds", rule="requests") == 0


async def test_the_scores_go_on_as_time_passes(start_daemon):
    daemon = await start_daemon(RULES, fake_tsdb())
    await daemon.trained()
    scores = []
    for minute in range(1, 91):  # past the first horizon (1h): the bands are refreshed on the way
        await daemon.cycle(END + 60 * minute)
        scores.append(daemon.scores("requests"))
    assert all(len(s) == 10 for s in scores)
    assert all(scores[0][host] < 1 for host in SPIKED)  # the spike is over
    above = np.mean([v > 1 for s in scores for v in s.values()])
    assert above < 0.03  # a 99% band: about 1% of normal samples fall outside it
    assert daemon.fits("requests") == 1


async def test_a_series_with_short_history_is_exported_as_y_only_and_not_ready(start_daemon):
    daemon = await start_daemon(RULES, fake_tsdb())
    daemon.tsdb.data[REQUESTS].append(short_series())
    page = await daemon.trained()
    assert "new-host" in values(page, "oa_y", rule="requests")
    assert "new-host" not in values(page, "oa_yhat", rule="requests")
    assert "new-host" not in daemon.scores("requests")
    assert len(daemon.scores("requests")) == 10
    assert daemon.states("requests") == {"ready": 10, "not-ready": 1, "failed": 0}


async def test_a_direction_silences_the_other_side(start_daemon):
    rules = f"""
        groups:
          - name: web
            rules:
              - anomaly: drops
                expr: {REQUESTS}
                direction: below
        """
    daemon = await start_daemon(rules, fake_tsdb())
    await daemon.trained()
    scores = daemon.scores("drops")
    assert scores["host-00"] == 0 and scores["host-01"] == 0
    assert all(s < 1 for s in scores.values())


async def test_an_unreachable_tsdb_fails_one_rule_while_the_other_serves(start_daemon):
    daemon = await start_daemon(RULES, fake_tsdb())
    await daemon.trained()
    daemon.tsdb.failing.add(ERRORS)
    page = await daemon.cycle(END + 60)
    assert daemon.healthy("errors") == 0
    assert result_names(page, "errors") == set()
    assert daemon.healthy("requests") == 1
    assert len(daemon.scores("requests")) == 10
    assert value(page, "oa_query_failures_total", rule="errors", kind="instant") == 1

    daemon.tsdb.failing.clear()
    await daemon.cycle(END + 120)
    assert daemon.healthy("errors") == 1
    assert len(daemon.scores("errors")) == 3


async def test_a_tsdb_down_at_training_time_is_retried(start_daemon):
    daemon = await start_daemon(RULES, fake_tsdb())
    daemon.tsdb.failing.add(ERRORS)
    await daemon.trained()
    assert daemon.healthy("errors") == 0
    assert daemon.healthy("requests") == 1
    daemon.tsdb.failing.clear()
    await daemon.trained(END + 120)  # the retry waits 2 intervals after the first failure
    assert daemon.healthy("errors") == 1
    assert daemon.states("errors")["ready"] == 3


async def test_a_rule_over_max_series_is_unhealthy_and_the_others_continue(start_daemon):
    rules = f"""
        groups:
          - name: web
            rules:
              - anomaly: capped
                expr: {REQUESTS}
                max_series: 5
              - anomaly: errors
                expr: {ERRORS}
        """
    daemon = await start_daemon(rules, fake_tsdb())
    page = await daemon.trained()
    assert daemon.healthy("capped") == 0
    assert result_names(page, "capped") == set()
    assert daemon.fits("capped") == 0
    assert daemon.healthy("errors") == 1
    assert len(daemon.scores("errors")) == 3


async def test_a_failing_fit_leaves_the_values_without_forecasts(start_daemon):
    daemon = await start_daemon(RULES, fake_tsdb())
    daemon.dispatcher.fail = True
    page = await daemon.trained()
    assert daemon.healthy("requests") == 0
    assert value(page, "oa_fit_failures_total", rule="requests") == 1
    assert result_names(page, "requests") == {"oa_y"}
    assert daemon.states("requests")["not-ready"] == 10


async def test_a_vanished_series_leaves_the_page(start_daemon):
    daemon = await start_daemon(RULES, fake_tsdb())
    await daemon.trained()
    daemon.tsdb.data[REQUESTS] = [s for s in daemon.tsdb.data[REQUESTS] if s.labels["instance"] != "host-05"]
    page = await daemon.cycle(END + 60)
    for name in result_names(page, "requests"):
        assert "host-05" not in values(page, name, rule="requests")
    assert len(daemon.scores("requests")) == 9
    assert daemon.states("requests")["ready"] == 9


async def test_a_series_gone_stale_leaves_the_page(start_daemon):
    daemon = await start_daemon(RULES, fake_tsdb())
    await daemon.trained()
    host = daemon.tsdb.data[REQUESTS][3]
    host.values[host.times > END] = np.nan  # the target stopped reporting at END
    await daemon.cycle(END + 240)
    assert "host-03" in daemon.scores("requests")  # within the five-minute lookback
    await daemon.cycle(END + 360)
    assert "host-03" not in values(daemon.page, "oa_y", rule="requests")


async def test_a_stored_model_is_loaded_by_the_next_daemon_instead_of_refitting(start_daemon, tmp_path):
    first = await start_daemon(RULES, fake_tsdb())
    await first.trained()
    assert len(stored_models(tmp_path)) == 2
    await first.close()

    second = await start_daemon(RULES, fake_tsdb())
    await second.cycle()  # scores at once with the stored models
    assert {h for h, s in second.scores("requests").items() if s > 1} == set(SPIKED)
    await second.fits_done()
    await second.cycle(END + 60)
    assert second.dispatcher.jobs == 0
    assert second.fits("requests") == 0
    assert value(second.page, "oa_model_last_fit_timestamp_seconds", rule="requests") == END


async def test_a_stored_model_older_than_train_every_is_refit(start_daemon):
    first = await start_daemon(RULES, fake_tsdb())
    await first.trained()
    second = await start_daemon(RULES, fake_tsdb(), now=END + DAY)
    await second.trained()
    assert second.dispatcher.jobs == 2


async def test_a_restart_does_not_refit_at_once_because_of_a_young_series(start_daemon):
    """Series without a model trigger a refit at most hourly, counted from the model's training."""
    first = await start_daemon(RULES, fake_tsdb())
    first.tsdb.data[REQUESTS].append(short_series())
    await first.trained()
    await first.close()

    second = await start_daemon(RULES, fake_tsdb())
    second.tsdb.data[REQUESTS].append(short_series())
    await second.trained(END + 600)
    await second.trained(END + 1200)
    assert second.dispatcher.jobs == 0
    await second.trained(END + 3600)
    assert second.fits("requests") == 1
    assert second.fits("errors") == 0


@pytest.mark.parametrize("where", ["start", "middle", "end"])
async def test_a_corrupted_stored_model_is_refit_not_a_crash(start_daemon, tmp_path, where):
    first = await start_daemon(RULES, fake_tsdb())
    await first.trained()
    for path in stored_models(tmp_path):
        blob = bytearray(path.read_bytes())
        at = {"start": 0, "middle": len(blob) // 2, "end": len(blob) - 1}[where]
        blob[at] ^= 0xFF
        path.write_bytes(bytes(blob))

    second = await start_daemon(RULES, fake_tsdb())
    await second.trained()
    assert second.fits("requests") == 1 and second.fits("errors") == 1
    assert {h for h, s in second.scores("requests").items() if s > 1} == set(SPIKED)
    assert second.healthy("requests") == 1


async def test_a_truncated_stored_model_is_refit(start_daemon, tmp_path):
    first = await start_daemon(RULES, fake_tsdb())
    await first.trained()
    for path in stored_models(tmp_path):
        path.write_bytes(path.read_bytes()[:100])
    second = await start_daemon(RULES, fake_tsdb())
    await second.trained()
    assert second.fits("requests") == 1
    assert len(second.scores("requests")) == 10


async def test_changing_one_rule_refits_only_that_rule(start_daemon, tmp_path):
    daemon = await start_daemon(RULES, fake_tsdb())
    await daemon.trained()
    kept = daemon.app.runner.slots["errors"].forecasts.model
    replaced = daemon.app.runner.slots["requests"].forecasts.model
    changed = REQUESTS.replace("rate(", "irate(")
    daemon.tsdb.data[changed] = daemon.tsdb.data[REQUESTS]
    write_rules(tmp_path / "rules.yaml", RULES.replace(REQUESTS, changed).replace("team: web", "team: api"))

    assert await daemon.load()
    await daemon.trained(END + 60)
    assert daemon.fits("requests") == 2
    assert daemon.fits("errors") == 1
    assert daemon.app.runner.slots["errors"].forecasts.model is kept
    assert daemon.app.runner.slots["requests"].forecasts.model is not replaced
    assert set(values(daemon.page, "oa_y", by="team", rule="errors")) == {"api"}  # relabelled, not refit
    assert len(daemon.scores("requests")) == 10


async def test_a_removed_rule_leaves_the_page_with_its_self_metrics(start_daemon, tmp_path):
    daemon = await start_daemon(RULES, fake_tsdb())
    await daemon.trained()
    write_rules(tmp_path / "rules.yaml", RULES.split("      - anomaly: errors")[0])
    assert await daemon.load()
    page = await daemon.cycle(END + 60)
    assert result_names(page, "errors") == set()
    assert daemon.healthy("errors") is None
    assert daemon.states("errors") == {}
    assert value(page, "oa_rules_loaded") == 1
    assert len(daemon.scores("requests")) == 10


async def test_a_failed_reload_keeps_the_rules_and_says_so(start_daemon, tmp_path):
    daemon = await start_daemon(RULES, fake_tsdb())
    await daemon.trained()
    write_rules(tmp_path / "rules.yaml", RULES + "        oops: 1\n")
    assert not await daemon.load()
    assert value(daemon.page, "oa_rules_last_reload_successful") == 0
    assert value(daemon.page, "oa_rules_reload_failures_total") == 1
    await daemon.cycle(END + 60)
    assert len(daemon.scores("requests")) == 10
    assert len(daemon.scores("errors")) == 3
    assert value(daemon.page, "oa_rules_loaded") == 2


async def test_close_is_safe_twice(start_daemon):
    daemon = await start_daemon(RULES, fake_tsdb())
    await daemon.cycle()
    await daemon.close()
    await daemon.close()
    assert daemon.tsdb.closed
    assert daemon.dispatcher.closed == 2


@pytest.mark.parametrize("payload", [b"not a pickle", pickle.dumps({"a": "dict"})])
async def test_a_stored_model_the_engine_cannot_read_is_refit(start_daemon, tmp_path, payload):
    """E.g. written by another version: intact on disk (the checksum holds) but not this engine's model."""
    first = await start_daemon(RULES, fake_tsdb())
    await first.trained()
    store = LocalArtifactStore(tmp_path / "models")
    for rule in first.app.rules.rules:
        [newest, *_] = await store.list(rule.name)
        stored, _ = await store.get(newest.id)
        await store.put(replace(stored, trained_at=stored.trained_at + 1), payload)
    await store.close()

    second = await start_daemon(RULES, fake_tsdb())
    await second.trained(END + 60)
    assert second.fits("requests") == 1
    assert len(second.scores("requests")) == 10
    assert second.healthy("requests") == 1
