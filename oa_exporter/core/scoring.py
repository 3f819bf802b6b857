"""The anomaly-score contract, vectorised over every series of a rule.

    s = (y - yhat) / (yhat_upper - yhat)   when y >= yhat
    s = (yhat - y) / (yhat - yhat_lower)   when y <  yhat

0 at the forecast, 1 on the band's edge, > 1 outside it. `direction` zeroes the side that may not alarm.
A band side of zero width (a constant series) is floored at MIN_WIDTH_RELATIVE * max(|yhat|, 1), so the
score stays finite: 0 when y equals the forecast, very large when it does not.
A series without a forecast (not ready) or without a sample scores NaN, and NaN is never exported.
"""

from __future__ import annotations

import numpy as np

from .domain import Direction

MIN_WIDTH_RELATIVE = 1e-9


def anomaly_score(
    y: np.ndarray,
    yhat: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    direction: Direction = Direction.BOTH,
) -> np.ndarray:
    """Score every sample against its band (see module docstring)."""
    above = y >= yhat
    width = np.where(above, upper - yhat, yhat - lower)
    floor = MIN_WIDTH_RELATIVE * np.maximum(np.abs(yhat), 1.0)
    with np.errstate(invalid="ignore"):
        score = np.abs(y - yhat) / np.maximum(width, floor)
    if direction is Direction.ABOVE:
        score = np.where(above | np.isnan(score), score, 0.0)
    elif direction is Direction.BELOW:
        score = np.where(~above | np.isnan(score), score, 0.0)
    return score
