"""The backtest: the daemon's Trainer, Inferencer and refit schedule replayed over the past, causally."""

from __future__ import annotations

import asyncio
import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from oa_exporter.adapters.tsdb.csv_files import read_csv
from oa_exporter.bootstrap import backtester
from oa_exporter.core.domain import ModelSpec, Rule, SeriesMatrix
from oa_exporter.core.errors import EngineError
from oa_exporter.core.services.backtester import Replay, Samples
from oa_exporter.entrypoints.cli import main
from tests.unit.harness import write_rules

DAY, STEP = 86400.0, 300.0
START = 1_700_006_400.0  # a midnight (UTC)
RULE = Rule(name="requests", group="g", expr="requests", step=STEP,
            model=ModelSpec("statsforecast", "SeasonalProfile", {}), train_window=7 * DAY, train_every=6 * 3600.0,
            horizon=3600.0, level=99.0, min_history=DAY)


def generated(days: float = 8.0, series: int = 3, seed: int = 5) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Series with a daily cycle and noise on a 5-minute grid; known spikes in the last days (their columns)."""
    rng = np.random.default_rng(seed)
    times = START + STEP * np.arange(int(days * DAY / STEP))
    values = 100 + 30 * np.sin(2 * np.pi * times / DAY + np.arange(series)[:, None]) + rng.normal(0, 1.0, (series,
                                                                                                         len(times)))
    spikes = [int(k * DAY / STEP) + offset for k, offset in ((3, 40), (5, 150), (6, 200)) if k < days]
    values[:, spikes] += 25.0
    return times, values, spikes


def replay(times: np.ndarray, values: np.ndarray, rule: Rule = RULE) -> Replay:
    keys = [json.dumps({"instance": str(i)}).encode() for i in range(len(values))]
    labels = [{"instance": str(i)} for i in range(len(values))]
    history = SeriesMatrix(keys, labels, float(times[0]), STEP, values)
    samples = Samples(keys, labels, times, values)
    return asyncio.run(backtester(history).replay(rule, samples))


def test_flags_the_known_anomalies_and_little_else():
    times, values, spikes = generated()
    result = replay(times, values)
    scored = ~np.isnan(result.score)
    assert not scored[:, : int(DAY / STEP)].any()  # min_history: nothing is scored in the first day
    assert scored[:, int(1.5 * DAY / STEP):].all()
    assert (result.score[:, spikes] > 3).all()
    normal = np.ones(len(times), bool)
    normal[spikes] = False
    normal[: int(4 * DAY / STEP)] = False  # a model with days of history behind it
    assert np.count_nonzero(result.score[:, normal] > 3) == 0
    assert np.count_nonzero(result.score[:, normal] > 1) / normal.sum() / len(values) < 0.05
    summary = result.summary()
    assert all(s.points == len(times) and s.anomalies >= len(spikes) and 0.5 < s.coverage < 1 for s in summary)


def test_the_score_at_t_never_depends_on_samples_after_t():
    times, values, _ = generated(days=4, series=2)
    before = replay(times, values)
    cut = int(2.6 * DAY / STEP)
    changed = values.copy()
    changed[:, cut:] = np.random.default_rng(9).normal(500, 50, changed[:, cut:].shape)  # a different future
    after = replay(times, changed)
    np.testing.assert_array_equal(before.score[:, :cut], after.score[:, :cut])
    for band in ("yhat", "lower", "upper"):  # the forecast for t itself uses nothing from t on
        np.testing.assert_array_equal(getattr(before, band)[:, : cut + 1], getattr(after, band)[:, : cut + 1])
    assert not np.allclose(before.yhat[:, cut + 1 :], after.yhat[:, cut + 1 :], equal_nan=True)


def test_refits_follow_the_rules_schedule():
    times, values, _ = generated(days=4, series=1)
    daily = replay(times, values, replace(RULE, train_every=DAY))
    hourly = replay(times, values, replace(RULE, train_every=3600.0))
    # at the start no series has a day of history: fits hourly until one has (t0 + 24h), then train.every
    assert daily.fits == 25 + 2
    assert hourly.fits == 4 * 24
    assert not daily.fit_errors and not hourly.fit_errors


def test_a_band_refresh_that_fails_leaves_its_cycles_unscored_and_the_replay_goes_on():
    times, values, _ = generated(days=3, series=2)
    keys = [json.dumps({"instance": str(i)}).encode() for i in range(len(values))]
    labels = [{"instance": str(i)} for i in range(len(values))]
    tool = backtester(SeriesMatrix(keys, labels, float(times[0]), STEP, values))
    refresh, failed = tool.inferencer.bands, []

    async def flaky(rule, model, now):
        if now >= START + 2 * DAY + 1800 and not failed:  # one refresh, once the series score
            failed.append(now)
            raise EngineError("forecast refused")
        return await refresh(rule, model, now)

    tool.inferencer.bands = flaky
    result = asyncio.run(tool.replay(RULE, Samples(keys, labels, times, values)))
    clean = replay(times, values)
    assert len([e for e in result.fit_errors if "forecast refused" in e]) == 1
    lost = np.flatnonzero(np.isnan(result.score).all(axis=0) & ~np.isnan(clean.score).all(axis=0))
    assert len(lost) == 1  # that cycle only: the next one refreshes the bands and scores again
    kept = np.ones(len(times), bool)
    kept[lost] = False
    np.testing.assert_array_equal(result.score[:, kept], clean.score[:, kept])


def test_csv_files_replay_at_their_own_timestamps(tmp_path: Path):
    times, values, spikes = generated(days=4, series=1)
    path = tmp_path / "cpu.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(("timestamp", "value"))
        for t, v in zip((times + 17.0).tolist(), values[0].tolist()):  # off the step grid, like a real scrape
            writer.writerow((f"{t:.0f}", repr(v)))
    series = read_csv(path)
    samples = Samples([series.key], [series.labels], series.times, series.values[None, :])
    result = asyncio.run(backtester(series.history(STEP)).replay(RULE, samples))
    assert result.score.shape == (1, len(times))
    assert result.score[0, spikes[0]] > 1
    np.testing.assert_array_equal(result.times, times + 17.0)


def test_backtest_command_writes_csvs_plots_and_a_summary(tmp_path: Path, capsys):
    times, values, spikes = generated(days=4, series=1)
    data = tmp_path / "api_latency.csv"
    stamps = [np.datetime_as_string(np.datetime64(int(t), "s")).replace("T", " ") for t in times]
    data.write_text("timestamp,value\n" + "".join(f"{s},{v!r}\n" for s, v in zip(stamps, values[0].tolist())))
    rules = write_rules(tmp_path / "rules.yaml", """
        groups:
          - name: g
            rules:
              - anomaly: latency
                expr: api_latency
                step: 5m
                train: {window: 7d, every: 6h}
              - anomaly: other
                expr: other
    """)
    out = tmp_path / "out"
    code = main(["backtest", "--rules", str(rules), "--rule", "latency", "--csv", str(data), "--out", str(out),
                 "--jobs", "1", "--no-progress"])
    assert code == 0
    with (out / "latency" / "file=api_latency.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["timestamp", "y", "yhat", "yhat_lower", "yhat_upper", "anomaly_score"]
    assert [r["timestamp"] for r in rows] == stamps  # the file's own timestamps, as written
    assert rows[0]["anomaly_score"] == ""  # not ready: not scored
    assert float(rows[spikes[0]]["anomaly_score"]) > 1
    assert (out / "latency" / "file=api_latency.svg").read_text().startswith("<svg")
    summary = list(csv.DictReader((out / "summary.csv").open()))
    assert [(s["rule"], s["series"]) for s in summary] == [("latency", "file=api_latency")]
    assert int(summary[0]["anomalies"]) >= 1 and 0 < float(summary[0]["coverage"]) <= 1
    assert "uPlot" in (out / "index.html").read_text()
    assert "rule latency:" in capsys.readouterr().out


def test_backtest_command_runs_series_in_parallel_processes(tmp_path: Path):
    times, values, _ = generated(days=2.5, series=2)
    paths = []
    for i, row in enumerate(values):
        path = tmp_path / f"s{i}.csv"
        path.write_text("timestamp,value\n" + "".join(f"{t:.0f},{v!r}\n" for t, v in zip(times, row.tolist())))
        paths.append(str(path))
    rules = write_rules(tmp_path / "rules.yaml", """
        groups:
          - name: g
            rules:
              - {anomaly: r, expr: x, step: 5m, train: {window: 7d, every: 6h}}
    """)
    assert main(["backtest", "--rules", str(rules), "--csv", *paths, "--out", str(tmp_path / "out"),
                 "--jobs", "2", "--no-progress"]) == 0
    assert sorted(p.name for p in (tmp_path / "out" / "r").glob("*.csv")) == ["file=s0.csv", "file=s1.csv"]


@pytest.mark.parametrize("args, message", [
    (["--from", "now-1d"], "no rule named nope"),
    ([], "--from is required"),
])
def test_backtest_command_fails_clearly(tmp_path: Path, capsys, args, message):
    rules = write_rules(tmp_path / "rules.yaml", """
        groups:
          - name: g
            rules:
              - {anomaly: r, expr: x}
    """)
    extra = ["--rule", "nope"] if "now-1d" in args else []
    assert main(["backtest", "--rules", str(rules), *args, *extra, "--out", str(tmp_path / "o")]) == 1
    assert message in capsys.readouterr().err


def test_from_and_to_narrow_the_csv_rows_scored_not_the_history_trained_on(tmp_path: Path):
    times, values, spikes = generated(days=4, series=1)
    data = tmp_path / "x.csv"
    data.write_text("timestamp,value\n" + "".join(f"{t:.0f},{v!r}\n" for t, v in zip(times, values[0].tolist())))
    rules = write_rules(tmp_path / "rules.yaml", """
        groups:
          - name: g
            rules:
              - {anomaly: r, expr: x, step: 5m, train: {window: 7d, every: 6h}}
    """)
    start, end = times[spikes[0] - 10], times[spikes[0] + 10]
    assert main(["backtest", "--rules", str(rules), "--csv", str(data), "--from", f"{start:.0f}", "--to",
                 f"{end:.0f}", "--out", str(tmp_path / "out"), "--jobs", "1", "--no-progress"]) == 0
    rows = list(csv.DictReader((tmp_path / "out" / "r" / "file=x.csv").open()))
    assert [float(r["timestamp"]) for r in rows] == times[spikes[0] - 10 : spikes[0] + 11].tolist()
    assert rows[0]["anomaly_score"] == ""  # the first cycle fits (on the three days before it)...
    assert all(r["anomaly_score"] for r in rows[1:]) and float(rows[10]["anomaly_score"]) > 1  # ...then scores
