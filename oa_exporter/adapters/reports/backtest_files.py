"""A backtest's results as files: per series a CSV and an SVG plot, and per run a summary and an HTML index.

    <out>/<rule>/<series>.csv     timestamp,y,yhat,yhat_lower,yhat_upper,anomaly_score (empty: not scored)
    <out>/<rule>/<series>.svg     y, the band, the forecast, the anomalies; the score and its threshold below
    <out>/summary.csv             rule,series,points,scored,warmup,anomalies,coverage,level,first_scored
    <out>/index.html              per rule its table and warm-up note, and every series' chart, in one file
"""

from __future__ import annotations

import csv
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from ...core.services.backtester import Replay, SeriesSummary
from . import html_report
from .plot_data import reduce
from .summary import RuleRun, text_summary
from .svg_plot import svg
from .units import expr_unit

COLUMNS = ("timestamp", "y", "yhat", "yhat_lower", "yhat_upper", "anomaly_score")


@dataclass
class Row:
    """One series' line of the summary."""

    rule: str
    series: str
    summary: SeriesSummary
    level: float
    csv: str
    plot: str


@dataclass
class BacktestReport:
    """Writes replays as they come, then the summary and the index."""

    out: Path
    rows: list[Row] = field(default_factory=list)
    runs: dict[str, RuleRun] = field(default_factory=dict)
    _charts: dict[str, list[str]] = field(default_factory=dict)  # per rule, its series' chart data
    _names: set[tuple[str, str]] = field(default_factory=set)
    _ends: list[float] = field(default_factory=list)  # first and last cycle of every replay

    def add(self, replay: Replay, stamps: Sequence[str] | None = None) -> list[Row]:
        """Write every series of a replay; `stamps` replaces the timestamps column (e.g. a CSV's own text)."""
        folder = self.out / _slug(replay.rule.name)
        folder.mkdir(parents=True, exist_ok=True)
        rule = replay.rule
        run = self.runs.setdefault(rule.name, RuleRun(rule))
        run.errors.extend(replay.fit_errors)
        charts = self._charts.setdefault(rule.name, [])
        if len(replay.times):
            self._ends += [float(replay.times[0]), float(replay.times[-1])]
        added = []
        for i, summary in enumerate(replay.summary()):
            name = self._unique(rule.name, series_name(summary.labels))
            csv_path, svg_path = folder / f"{name}.csv", folder / f"{name}.svg"
            _write_csv(csv_path, replay, i, stamps)
            plot = reduce(replay.times, replay.y[i], replay.yhat[i], replay.lower[i], replay.upper[i], replay.score[i])
            unit, title = expr_unit(rule.expr, summary.labels), f"{rule.name} / {name}"
            svg_path.write_text(svg(title, plot, rule.level, unit, rule.min_history))
            charts.append(html_report.chart_data(title, plot, rule.level, unit, rule.min_history))
            run.series.append((name, summary))
            row = Row(replay.rule.name, name, summary, replay.rule.level, str(csv_path.relative_to(self.out)),
                      str(svg_path.relative_to(self.out)))
            self.rows.append(row)
            added.append(row)
        return added

    def finish(self) -> None:
        """Write summary.csv and index.html."""
        self.out.mkdir(parents=True, exist_ok=True)
        with (self.out / "summary.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(("rule", "series", "points", "scored", "warmup", "anomalies", "coverage", "level",
                             "first_scored"))
            for r in self.rows:
                s = r.summary
                first = iso(s.first_scored) if np.isfinite(s.first_scored) else ""
                writer.writerow((r.rule, r.series, s.points, s.scored, s.warmup, s.anomalies, _round(s.coverage),
                                 _round(r.level / 100), first))
        runs = list(self.runs.values())
        page = html_report.render(runs, [self._charts[r.rule.name] for r in runs], self._span())
        (self.out / "index.html").write_text(page, encoding="utf-8")

    def text(self) -> str:
        """The summary for a terminal: one table per rule, and its warm-up note."""
        return text_summary(list(self.runs.values()), str(self.out))

    def _span(self) -> tuple[float, float] | None:
        return (min(self._ends[0::2]), max(self._ends[1::2])) if self._ends else None

    def _unique(self, rule: str, name: str) -> str:
        candidate, n = name, 1
        while (rule, candidate) in self._names:
            n += 1
            candidate = f"{name}-{n}"
        self._names.add((rule, candidate))
        return candidate


def series_name(labels: Mapping[str, str]) -> str:
    """A file name for a series: its labels as name=value pairs (without __name__), shortened if long."""
    pairs = sorted((k, v) for k, v in labels.items() if k != "__name__")
    text = ",".join(f"{k}={v}" for k, v in pairs) or "series"
    slug = _slug(text)
    if len(slug) > 120:
        slug = slug[:100] + "-" + hashlib.sha256(text.encode()).hexdigest()[:12]
    return slug


def iso(seconds: float) -> str:
    """RFC 3339 UTC timestamp of unix seconds."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _write_csv(path: Path, replay: Replay, row: int, stamps: Sequence[str] | None) -> None:
    stamps = stamps if stamps is not None else [iso(t) for t in replay.times.tolist()]
    columns = [replay.y[row], replay.yhat[row], replay.lower[row], replay.upper[row], replay.score[row]]
    text = [[_fmt(v) for v in column.tolist()] for column in columns]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        writer.writerows(zip(stamps, *text))


def _fmt(value: float) -> str:
    return "" if not np.isfinite(value) else repr(float(value))


def _round(value: float) -> str:
    return "" if not np.isfinite(value) else f"{round(float(value), 6):g}"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=,-]+", "_", text).strip("_.") or "series"
