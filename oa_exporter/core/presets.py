"""Presets: named defaults for a rule's model, training, forecast and warm-up, for a kind of data.

A rule that says `preset: default` takes these values for every key it does not set itself; a `model`
section of its own replaces the preset's model whole. The values of `default` were chosen on the NAB
development split (bench/nab: real ad-exchange, traffic and tweet-volume series and artificial ones),
for the kind of data, not for its files: nothing in a preset names a file, a series or a date.
"""

from __future__ import annotations

from dataclasses import dataclass

from .domain import ModelSpec
from .durations import parse_duration
from .excursions import NEW_NORMAL_AFTER


@dataclass(frozen=True)
class Preset:
    """Defaults a rule inherits by naming the preset."""

    model: ModelSpec
    train_window: float
    train_every: float
    horizon: float
    level: float
    min_history: float
    repeat_window: float = 0.0
    new_normal_after: float = NEW_NORMAL_AFTER  # see excursions.py
    calibrate: float = 0.0  # see calibration.py; 0: off
    settle_after: float = 0.0  # see scoring.py; 0: off


PRESETS: dict[str, Preset] = {
    # Typical infrastructure metrics: request rates, latencies, traffic, volumes with daily cycles,
    # spikes and level shifts. 15-minute buckets on 5-minute data (96 a day) give each profile point a
    # few samples per day instead of one; one noise level per series (per-bucket spreads from a few
    # samples each were noise themselves); residuals measured as a forecast half an hourly refit old
    # would meet them, against a reference that leaves excursions out (`robust_reference`): one outage
    # or spike does not widen the band for the 8 weeks it stays in the window; the band is one step of
    # the series' resolution wider (`resolution`): a counter reading 0 where 1 was forecast is no news.
    # Until a series has two weeks of history its residuals are taken against profiles fitted without the
    # cycle they fall in (`cross_fit`): a profile made of a few days fits their noise, and a band from its
    # in-sample residuals is narrower than the errors its forecast makes (by two weeks the daily profile rests
    # on 14 cycles and the weekly one is about to start; NAB, left out category by category: 70.50 against
    # 69.16 without, every category at least as good).
    # The 99.99 % band extrapolates the tails beyond 99 % and is capped at the window's own range widened
    # by 5 % (`range_margin`): a sample pages when it is beyond the extrapolated tail or further off than
    # anything of the last 8 weeks. No score before 3 days of history: a range seen over a day or two is
    # too narrow to page on (scoring from the first day, with or without a band widened for the history a
    # series lacks, `range_history`, cost 1.2-1.6 points of the per-category mean on NAB's split). An
    # excursion no larger than one on the same side within the last 6 hours does not page again
    # (`repeat_window`, see scoring.py): bursts of spikes page once.
    "default": Preset(
        model=ModelSpec("statsforecast", "SeasonalProfile", {
            "seasons": ["1d", "1w"], "buckets": 96, "level_window": "3h", "scale_buckets": 1, "tail": 99,
            "range_margin": 1.05, "residual_lag": "30m", "robust_reference": True,
            "resolution": True, "cross_fit": "14d",
        }),
        train_window=parse_duration("56d"),
        train_every=parse_duration("1h"),
        horizon=parse_duration("1h"),
        level=99.99,
        min_history=parse_duration("3d"),
        repeat_window=parse_duration("6h"),
        # SeasonalProfile's level is the median of its last 3 hours: a fit minutes into a jump does not learn
        # it, and held back a lasting shift only pages longer (NAB, left out category by category, chooses
        # off over 1h, 3h and 6h in all four folds: frozen 69.8 / 69.2 / 68.6 / 68.6 on all files)
        new_normal_after=0.0,
        # A change that lasts is the new normal unless it keeps growing: after an hour of one excursion only a
        # new extreme of it pages (scoring.Settling). An hour, so that a lasting shift pages through its first
        # hour (long enough for a `for:` and a person to look); a slow drift to values the window never held
        # would otherwise page for as long as it wanders (hours on end on sensor-like and random-walk series).
        settle_after=parse_duration("1h"),
    ),
}
