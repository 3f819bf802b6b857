"""What a user reads after a backtest: the printed summary, summary.csv, the SVG plots and index.html."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from oa_exporter.adapters.reports.plot_data import reduce
from oa_exporter.adapters.reports.units import expr_unit, si
from oa_exporter.entrypoints.cli import main
from tests.unit.harness import write_rules

DAY, STEP = 86400, 300
START = 1_700_006_400  # a midnight (UTC)
SVG = "{http://www.w3.org/2000/svg}"


def write_series(path: Path, days: float, seed: int, spike_day: float) -> None:
    rng = np.random.default_rng(seed)
    times = START + STEP * np.arange(int(days * DAY / STEP))
    values = 0.12 + 0.03 * np.sin(2 * np.pi * times / DAY) + rng.normal(0, 0.002, len(times))
    values[int(spike_day * DAY / STEP)] += 0.2
    path.write_text("timestamp,value\n" + "".join(f"{t},{v!r}\n" for t, v in zip(times.tolist(), values.tolist())))


@pytest.fixture(scope="module")
def backtest(tmp_path_factory) -> tuple[Path, str]:
    """Two rules over two files: 4 days at 5 minutes, a spike on day 3, min_history 1d (one rule) and 2d."""
    folder = tmp_path_factory.mktemp("backtest")
    for name, seed in (("a", 1), ("b", 2)):
        write_series(folder / f"{name}.csv", 4, seed, 3.2)
    rules = write_rules(folder / "rules.yaml", """
        groups:
          - name: g
            rules:
              - anomaly: latency
                expr: histogram_quantile(0.99, sum by (le) (rate(http_request_duration_seconds_bucket[5m])))
                step: 5m
                train: {window: 7d, every: 6h}
                forecast: {horizon: 1h, level: 99.99}
                min_history: 1d
              - anomaly: slow_start
                expr: x
                step: 5m
                min_history: 2d
                train: {window: 7d, every: 6h}
    """)
    out = folder / "out"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["backtest", "--rules", str(rules), "--csv", str(folder / "a.csv"), str(folder / "b.csv"),
                     "--out", str(out), "--jobs", "1", "--no-progress"])
    assert code == 0
    return out, printed.getvalue()


def test_the_printed_summary_has_one_table_per_rule_with_rounded_numbers(backtest):
    _, printed = backtest
    blocks = printed.strip().split("\n\n")
    assert [b.splitlines()[0].split(":")[0] for b in blocks[:2]] == ["rule latency", "rule slow_start"]
    latency, slow = blocks[0].splitlines(), blocks[1].splitlines()
    assert "band 99.99 %" in latency[0] and "min_history 2d" in slow[0]
    assert latency[1].split() == ["series", "points", "scored", "warm-up", "anomalies", "band", "coverage"]
    assert [line.split()[0] for line in latency[2:4]] == ["file=a", "file=b"]  # its own series only
    assert not re.search(r"\d\.\d{5,}", printed), printed  # no unrounded floats
    assert re.fullmatch(r"\d+\.\d\d %", " ".join(latency[2].split()[-2:]))


def test_the_summary_says_how_much_was_warmup_and_why(backtest):
    out, printed = backtest
    rows = {(r["rule"], r["series"]): r for r in csv.DictReader((out / "summary.csv").open())}
    day_of_points = DAY // STEP
    for rule, days in (("latency", 1), ("slow_start", 2)):
        for series in ("file=a", "file=b"):
            row = rows[(rule, series)]
            warmup = int(row["warmup"])
            assert days * day_of_points <= warmup <= days * day_of_points + 3600 // STEP  # min_history, then a fit
            assert int(row["scored"]) == int(row["points"]) - warmup
        block = next(b for b in printed.split("\n\n") if b.startswith(f"rule {rule}:"))
        total = sum(int(rows[(rule, s)]["warmup"]) for s in ("file=a", "file=b"))
        note = block.splitlines()[-1].strip()
        assert note.startswith(f"warm-up: {total:,} of {2 * 4 * day_of_points:,} points")
        assert f"min_history ({days}d)" in note
    assert rows[("latency", "file=a")]["level"] == "0.9999"  # not 0.9998999999999999


def test_the_svg_plot_has_a_title_a_legend_two_panels_the_threshold_and_the_warmup(backtest):
    out, _ = backtest
    root = ET.parse(out / "latency" / "file=a.svg").getroot()
    texts = [t.text or "" for t in root.iter(f"{SVG}text")]
    assert root.find(f"{SVG}title").text == "latency / file=a"
    legend = [t.text for t in root.find(f"{SVG}g[@class='legend']").iter(f"{SVG}text")]
    assert legend == ["y (the series)", "forecast (yhat)", "band (99.99 %)", "anomaly (score > 1)",
                      "anomaly score", "threshold 1", "warm-up (not scored)"]
    assert len(root.findall(f"{SVG}rect[@class='warmup']")) == 2  # shaded on both panels
    assert "warm-up: min_history 1d" in texts  # and why
    assert root.findall(f"{SVG}line[@class='threshold']")
    assert root.findall(f"{SVG}polyline[@class='score']") and root.findall(f"{SVG}polygon[@class='band']")
    assert "value (s)" in texts and "anomaly score" in texts
    assert any(re.fullmatch(r"\d+(\.\d+)? ms", t) for t in texts)  # values with their unit
    assert {"Nov 15", "Nov 16", "Nov 17"} <= set(texts)  # times as dates
    assert root.findall(f"{SVG}circle[@class='anomaly']")  # the spike


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: dict[str, list[str]] = {}
        self._open: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._open.append(tag)

    def handle_endtag(self, tag):
        if self._open and self._open[-1] == tag:
            self._open.pop()

    def handle_data(self, data):
        if self._open:
            self.text.setdefault(self._open[-1], []).append(data)


def test_index_html_is_one_self_contained_page_with_every_series(backtest):
    out, printed = backtest
    page = _Page()
    page.feed((out / "index.html").read_text())
    assert not [a for _, a in page.tags for k in ("src", "href") if (a.get(k) or "#").split("#")[0]]  # no files
    data = json.loads(next(s for s in page.text["script"] if s.lstrip().startswith("[")).replace("<\\/", "</"))
    assert [d["title"] for d in data] == ["latency / file=a", "latency / file=b", "slow_start / file=a",
                                          "slow_start / file=b"]
    assert all(d["warmup"] and d["warmup"][1] > d["warmup"][0] for d in data)
    assert data[0]["unit"] == "s" and data[0]["level"] == "99.99"
    assert [d["warmup_reason"] for d in data] == ["min_history 1d"] * 2 + ["min_history 2d"] * 2
    assert any("uPlot" in s for s in page.text["script"])
    assert [t for t in page.text["h2"]] == [b.splitlines()[0] for b in printed.split("\n\n")[:2]]
    assert sum(1 for tag, _ in page.tags if tag == "table") == 2  # one table per rule
    notes = [t for t in page.text["p"] if t.startswith("warm-up:")]
    assert notes == [b.splitlines()[-1].strip() for b in printed.split("\n\n")[:2]]


def test_long_series_are_reduced_to_their_envelope_without_losing_a_spike():
    n = 30 * 1440
    times = START + 60.0 * np.arange(n)
    y = np.sin(np.arange(n) / 500.0)
    y[20_000] = 9.0
    score = np.where(np.arange(n) >= 1440, np.abs(y), np.nan)
    plot = reduce(times, y, y * 0, y - 1, y + 1, score, buckets=1000)
    assert len(plot.times) <= 2000
    assert plot.y.max() == 9.0 and np.nanmax(plot.score) == 9.0
    assert np.isfinite(plot.flagged).sum() == 1 and np.nanmax(plot.flagged) == 9.0
    assert plot.warmup == (times[0], times[1440])
    assert (np.diff(plot.times) > 0).all()


@pytest.mark.parametrize("expr, unit", [
    ('sum by (instance) (rate(node_cpu_seconds_total{mode!="idle"}[5m]))', "s/s"),
    ("histogram_quantile(0.99, sum by (le) (rate(http_request_duration_seconds_bucket[5m])))", "s"),
    ("node_memory_MemAvailable_bytes", "B"),
    ("rate(http_requests_total[5m])", "/s"),
    ("node_filesystem_avail_bytes / node_filesystem_size_bytes", ""),
    ("sum(rate(x_bytes_total[1m])) * 8", None),
    ("up", None),
])
def test_the_unit_comes_from_the_metric_names(expr, unit):
    assert expr_unit(expr) == unit


def test_values_are_shown_with_si_prefixes_and_units():
    assert [si(1234.5, "B"), si(0.0042, "s"), si(0.5, ""), si(2_500_000, "/s"), si(float("nan"), "s")] == [
        "1.23 kB", "4.2 ms", "0.5", "2.5 M/s", "-"]
