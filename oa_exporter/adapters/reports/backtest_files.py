"""A backtest's results as files: per series a CSV and an SVG plot, and per run a summary and an HTML index.

    <out>/<rule>/<series>.csv     timestamp,y,yhat,yhat_lower,yhat_upper,anomaly_score (empty: not scored)
    <out>/<rule>/<series>.svg     y, the band, the forecast and the points that scored above 1
    <out>/summary.csv             rule,series,points,scored,anomalies,coverage,level
    <out>/index.html              the summary, and the plots of the most anomalous series, in one file
"""

from __future__ import annotations

import csv
import hashlib
import html
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from ...core.services.backtester import Replay, SeriesSummary
from .svg_plot import svg

INDEX_PLOTS = 50  # index.html embeds the plots of this many series, most anomalous first
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
    _names: set[tuple[str, str]] = field(default_factory=set)

    def add(self, replay: Replay, stamps: Sequence[str] | None = None) -> list[Row]:
        """Write every series of a replay; `stamps` replaces the timestamps column (e.g. a CSV's own text)."""
        folder = self.out / _slug(replay.rule.name)
        folder.mkdir(parents=True, exist_ok=True)
        added = []
        for i, summary in enumerate(replay.summary()):
            name = self._unique(replay.rule.name, series_name(summary.labels))
            csv_path, svg_path = folder / f"{name}.csv", folder / f"{name}.svg"
            _write_csv(csv_path, replay, i, stamps)
            svg_path.write_text(svg(f"{replay.rule.name} {name}", replay.times, replay.y[i], replay.yhat[i],
                                    replay.lower[i], replay.upper[i], replay.score[i] > 1.0))
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
            writer.writerow(("rule", "series", "points", "scored", "anomalies", "coverage", "level"))
            for r in self.rows:
                s = r.summary
                writer.writerow((r.rule, r.series, s.points, s.scored, s.anomalies, _fmt(s.coverage), r.level / 100))
        (self.out / "index.html").write_text(self._index())

    def _unique(self, rule: str, name: str) -> str:
        candidate, n = name, 1
        while (rule, candidate) in self._names:
            n += 1
            candidate = f"{name}-{n}"
        self._names.add((rule, candidate))
        return candidate

    def _index(self) -> str:
        lines = ["<!doctype html><html><head><meta charset='utf-8'><title>oa-exporter backtest</title>",
                 "<style>body{font-family:sans-serif;margin:1em}td,th{padding:2px 8px;text-align:right}"
                 "td:nth-child(-n+2),th:nth-child(-n+2){text-align:left}</style></head><body>",
                 "<h1>oa-exporter backtest</h1><table><tr><th>rule</th><th>series</th><th>points</th>"
                 "<th>scored</th><th>anomalies (score &gt; 1)</th><th>band coverage</th><th>level</th></tr>"]
        for r in self.rows:
            s = r.summary
            lines.append(f"<tr><td>{html.escape(r.rule)}</td><td><a href='{html.escape(r.csv)}'>"
                         f"{html.escape(r.series)}</a></td><td>{s.points}</td><td>{s.scored}</td>"
                         f"<td>{s.anomalies}</td><td>{_fmt(s.coverage)}</td><td>{r.level / 100:g}</td></tr>")
        lines.append("</table>")
        shown = sorted(self.rows, key=lambda r: -r.summary.anomalies)[:INDEX_PLOTS]
        for r in shown:
            lines.append(f"<h3>{html.escape(r.rule)} / {html.escape(r.series)}</h3>")
            lines.append((self.out / r.plot).read_text())
        if len(self.rows) > len(shown):
            lines.append(f"<p>{len(self.rows) - len(shown)} more plots beside their CSV files.</p>")
        lines.append("</body></html>")
        return "\n".join(lines)


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


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=,-]+", "_", text).strip("_.") or "series"
