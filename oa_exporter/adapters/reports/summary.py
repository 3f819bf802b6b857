"""A backtest's summary for people: one table per rule, rounded numbers, and what the warm-up was and why."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from ...core.domain import Rule
from ...core.durations import format_duration
from ...core.services.backtester import SeriesSummary
from ...core.services.runner import NEW_SERIES_REFIT

HEADER = ("series", "points", "scored", "warm-up", "anomalies", "band coverage")
SERIES_WIDTH = 48


@dataclass
class RuleRun:
    """One rule of a backtest: its series' summaries (with their file names) and what failed."""

    rule: Rule
    series: list[tuple[str, SeriesSummary]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def summaries(self) -> list[SeriesSummary]:
        return [s for _, s in self.series]


def percent(fraction: float, digits: int = 2) -> str:
    """0.99312 -> '99.31 %'; '-' when undefined."""
    return f"{fraction * 100:.{digits}f} %" if math.isfinite(fraction) else "-"


def level_text(level: float) -> str:
    """A band level as users write it: 99.99 -> '99.99 %' (no float noise)."""
    return f"{round(level, 6):g} %"


def duration_text(seconds: float) -> str:
    """A span rounded to the minute, in Prometheus's duration syntax: 259140 -> '2d23h59m'."""
    return format_duration(round(seconds / 60) * 60) if math.isfinite(seconds) else "-"


def heading(run: RuleRun) -> str:
    rule = run.rule
    return (f"rule {rule.name}: {len(run.series)} series, step {format_duration(rule.step)}, "
            f"band {level_text(rule.level)}, min_history {format_duration(rule.min_history)}")


def table_rows(run: RuleRun) -> list[tuple[str, ...]]:
    """The rule's table as text cells, the header first."""
    rows: list[tuple[str, ...]] = [HEADER]
    for name, s in run.series:
        rows.append((name, f"{s.points:,}", f"{s.scored:,}", f"{s.warmup:,}", f"{s.anomalies:,}", percent(s.coverage)))
    return rows


def warmup_note(run: RuleRun) -> str:
    """How many points were warm-up (not scored before a series' first score), and why."""
    summaries = run.summaries
    points = sum(s.points for s in summaries)
    warmup = sum(s.warmup for s in summaries)
    rule = run.rule
    if not warmup:
        return "warm-up: none; every series was scored from the start (its history before the range counted)"
    spans = sorted(s.warmup_seconds for s in summaries if math.isfinite(s.warmup_seconds))
    never = sum(1 for s in summaries if s.scored == 0)
    wait = min(rule.train_every, NEW_SERIES_REFIT)
    text = (f"warm-up: {warmup:,} of {points:,} points ({percent(warmup / max(points, 1), 1)}) were not scored"
            + (f", {duration_text(spans[len(spans) // 2])} per series" if spans else "")
            + f": a series is scored once it has min_history ({format_duration(rule.min_history)}) of its own "
            f"history and a model fitted on it (refit every {format_duration(wait)} while series wait)")
    if never:
        text += f"; {never:,} series never had enough history to be scored"
    if run.errors:
        text += f"; {len(run.errors):,} fits or band refreshes failed (first: {run.errors[0]})"
    return text + "."


def text_summary(runs: Sequence[RuleRun], out: str) -> str:
    """The summary printed at the end of a backtest: per rule a heading, a table and the warm-up note."""
    blocks = []
    for run in runs:
        rows = table_rows(run)
        width = min(max(len(r[0]) for r in rows), SERIES_WIDTH)
        lines = [heading(run)]
        for cells in rows:
            name = cells[0] if len(cells[0]) <= width else cells[0][:width - 1] + "…"
            lines.append("  " + f"{name:<{width}}" + "".join(f"  {c:>{max(len(h), 9)}}"
                                                              for c, h in zip(cells[1:], HEADER[1:])))
        lines.append("  " + warmup_note(run))
        blocks.append("\n".join(lines))
    series = sum(len(r.series) for r in runs)
    scored = sum(s.scored for r in runs for s in r.summaries)
    anomalies = sum(s.anomalies for r in runs for s in r.summaries)
    blocks.append(f"{len(runs)} rule{'s' * (len(runs) != 1)}, {series:,} series, {scored:,} points scored, "
                  f"{anomalies:,} anomalies (score > 1); results in {out}")
    return "\n\n".join(blocks) + "\n"
