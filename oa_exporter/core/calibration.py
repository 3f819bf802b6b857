"""Per-series calibration (a rule's `calibrate`): a series that pages more often than the rule's budget
allows gets a wider band, until it does not.

A model's band claims a coverage (the rule's `level`), and whether that holds depends on the series: on one
whose residuals are heavier-tailed or wander more than the model captures, excursions come far more often,
and `score > 1` no longer means there what it means elsewhere. With `calibrate: B` (a duration, e.g. 1w:
one excursion per series per week), each series keeps a factor m >= 1 by which its band is widened,
learned from its own excursions as they happen (online and causal, in the scoring cycle):

    m <- m * (1 + STEP)                          after the first sample of each excursion
    m <- max(1, m * exp(-log(1 + STEP) * dt / B))     as time dt passes

so m stays 1 on a series that pages no more than once per B, and grows while it pages more often, until it
does not: each excursion beyond the budget widens the band by STEP, and each B without one narrows it back
by as much. The score and the exported band use the widened band, so the score contract holds:

    s = |y - yhat| / (m * width)        yhat_lower / yhat_upper = yhat -/+ m * width

The first excursion of a series pages at the model's own band (m starts at 1 and widens only after an
excursion), and a lasting one counts once. The factors live in the daemon's memory: a restart begins again
at 1. Not in the default preset: on NAB's development split it costs detections (see
docs/detection-quality.md); it is for rules whose noisy series page too often.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np

from .domain import SeriesKey
from .scoring import SeriesRows

STEP = 0.1  # each excursion beyond the budget widens the band by 10 %: a few noisy excursions move it
# by a fraction of the band, never by what a single one would need to stop paging


class Calibration(SeriesRows):
    """Per series, the factor m of its band (see module docstring), in an array by row, between cycles."""

    COLUMNS: ClassVar[dict[str, tuple[tuple[int, ...], Any]]] = {
        "factor": ((), 1.0),
        "paging": ((), False),  # the last sample scored above 1
        "seen": ((), np.nan),  # when the factor was last narrowed back
    }
    factor: np.ndarray
    paging: np.ndarray
    seen: np.ndarray

    def widen(self, keys: list[SeriesKey], timestamp: float, budget: float, yhat: np.ndarray, lower: np.ndarray,
              upper: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """This cycle's band of every series, widened by its factor, first narrowed back for the time since the
        last cycle (by STEP per `budget` seconds)."""
        rows = self.rows(keys)
        with np.errstate(invalid="ignore"):
            elapsed = np.where(np.isnan(self.seen[rows]), 0.0, np.maximum(timestamp - self.seen[rows], 0.0))
        self.factor[rows] = np.maximum(self.factor[rows] * np.exp(-math.log1p(STEP) * elapsed / budget), 1.0)
        self.seen[rows] = timestamp
        m = self.factor[rows]
        return yhat - m * (yhat - lower), yhat + m * (upper - yhat)

    def count(self, keys: list[SeriesKey], score: np.ndarray) -> None:
        """Note this cycle's scores: each excursion that begins widens its series' band for the next samples."""
        rows = self.rows(keys)
        paging = score > 1.0  # NaN: no
        onset = paging & ~self.paging[rows]
        self.factor[rows[onset]] *= 1.0 + STEP
        self.paging[rows] = paging
