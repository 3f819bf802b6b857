"""What the library-backed engines share: a rule's grid as a long frame, bands back as arrays, the safety net.

Not an adapter of its own (numpy and pandas at import): libraries are imported inside functions, so that
importing an engine module costs nothing until a rule uses its engine.

Every library-backed fit keeps SeasonalProfile beside the library's model. A series the library cannot take
(too little history) or a library fit that fails as a whole falls back to it, counted in `Fitted.errors`;
the bands of those series come from SeasonalProfile and the daemon keeps scoring them.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from importlib import metadata
from typing import Any

import numpy as np
import pandas as pd

from ... import __version__
from ...core import seasonal
from ...core.domain import Bands, Fitted, SeriesMatrix
from ...core.durations import parse_duration

log = logging.getLogger(__name__)

# (yhat, lower, upper) of the covered series, each (covered series, h): what an adapter's forecast returns
Forecast = tuple[np.ndarray, np.ndarray, np.ndarray]


def versions(*distributions: str) -> dict[str, str]:
    """Installed versions (read from metadata, nothing imported) of what a pickled model depends on."""
    return {"oa-exporter": __version__, **{name: _installed(name) for name in (*distributions, "numpy", "pandas")}}


def _installed(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "absent"


def steps_of(value: Any, step: float, what: str) -> int:
    """A lag or length given as a number of steps (int) or a duration ("1h"), in steps of the rule's grid."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"{what} must be a number of steps or a duration such as 1h, not {value!r}")
    steps = value if isinstance(value, int) else int(round(parse_duration(value) / step))
    if steps < 1:
        raise ValueError(f"{what} {value!r} is shorter than one step")
    return steps


def check_lags(values: Any, what: str) -> None:
    """ValueError unless `values` is a list of positive step counts or durations (validate knows no step yet)."""
    if not isinstance(values, list | tuple) or not values:
        raise ValueError(f"{what} must be a non-empty list of step counts or durations such as [1, 1h, 1d]")
    for value in values:
        steps_of(value, 1e-9, what)


SKLEARN_MODULES = ("linear_model", "ensemble", "neighbors", "tree", "svm", "kernel_ridge", "neural_network",
                   "gaussian_process", "cross_decomposition", "dummy", "covariance")


def sklearn_class(name: str, kind: str) -> type:
    """The scikit-learn estimator class `name`, of `kind` "regressor" or "outlier"; ValueError otherwise.

    Looked up module by module (each imported only if needed): sklearn's all_estimators() imports all of
    scikit-learn, about 3 s, too slow for `oa-exporter check`.
    """
    import importlib

    from sklearn.base import OutlierMixin, RegressorMixin

    mixin = RegressorMixin if kind == "regressor" else OutlierMixin
    if not name.startswith("_"):
        for module in SKLEARN_MODULES:
            found = getattr(importlib.import_module(f"sklearn.{module}"), name, None)
            if isinstance(found, type) and issubclass(found, mixin):
                return found
    examples = "Ridge, HistGradientBoostingRegressor" if kind == "regressor" else "IsolationForest, LocalOutlierFactor"
    raise ValueError(f"scikit-learn has no {kind} {name!r} (e.g. {examples})")


def bind(cls: type, params: dict[str, Any], what: str) -> None:
    """ValueError unless `params` are constructor parameters of `cls`."""
    import inspect

    try:
        inspect.signature(cls).bind(**params)
    except TypeError as e:
        raise ValueError(f"bad params for {what}: {e}") from e


def seeded(cls: type, params: dict[str, Any], seed: int) -> dict[str, Any]:
    """`params` with random_state=seed where the class takes one and the rule set none: fits are reproducible."""
    import inspect

    if "random_state" in inspect.signature(cls).parameters and params.get("random_state") is None:
        return {**params, "random_state": seed}
    return params


def freq(step: float) -> str:
    """The pandas frequency string of the grid (e.g. "5min")."""
    return pd.tseries.frequencies.to_offset(pd.Timedelta(seconds=step)).freqstr


def to_datetime(seconds: np.ndarray) -> pd.DatetimeIndex:
    return pd.to_datetime(np.asarray(seconds, dtype=np.float64) * 1e9, unit="ns")


@dataclass(frozen=True)
class Frame:
    """Series of a batch in Nixtla's long format: unique_id (the batch row), ds (datetime64), y; rows ascending."""

    data: pd.DataFrame
    rows: np.ndarray
    lengths: np.ndarray  # samples per row, in rows order

    def tail(self, points: int) -> Frame:
        """The last `points` samples of every series (what a forecast continues from)."""
        lengths = np.minimum(self.lengths, points)
        keep = np.concatenate([np.arange(n - k, n) for n, k in zip(self.lengths, lengths, strict=True)])
        offsets = np.repeat(np.concatenate([[0], np.cumsum(self.lengths)[:-1]]), lengths)
        return Frame(self.data.iloc[offsets + keep].reset_index(drop=True), self.rows, lengths)

    def values(self) -> list[np.ndarray]:
        """Each series' samples, in rows order."""
        return np.split(self.data["y"].to_numpy(), np.cumsum(self.lengths)[:-1])


def long_frame(history: SeriesMatrix, min_points: int) -> tuple[Frame, dict[int, str]]:
    """Rows with at least `min_points` samples (leading gaps dropped, inner gaps interpolated, trailing gaps
    carry the last value so every series ends on the window's last grid point), and why the others are left out."""
    ids, stamps, values, rows, lengths = [], [], [], [], []
    errors: dict[int, str] = {}
    timestamps = history.timestamps
    for i, row in enumerate(history.values):
        present = np.flatnonzero(~np.isnan(row))
        if len(present) < 3 or len(row) - present[0] < min_points:
            errors[i] = f"{len(present)} samples over {len(row) - (present[0] if len(present) else len(row))} " \
                        f"steps: the model needs {min_points} steps"
            continue
        inner = row[present[0] :]
        index = np.arange(len(inner))
        valid = ~np.isnan(inner)
        ids.append(np.full(len(inner), i))
        stamps.append(timestamps[present[0] :])
        values.append(np.interp(index, index[valid], inner[valid]))
        rows.append(i)
        lengths.append(len(inner))
    if not rows:
        empty = pd.DataFrame({"unique_id": np.empty(0, np.int64), "ds": to_datetime(np.empty(0)), "y": np.empty(0)})
        return Frame(empty, np.empty(0, np.int64), np.empty(0, np.int64)), errors
    data = pd.DataFrame({"unique_id": np.concatenate(ids), "ds": to_datetime(np.concatenate(stamps)),
                         "y": np.concatenate(values)})
    return Frame(data, np.array(rows, np.int64), np.array(lengths, np.int64)), errors


def wide(frame: pd.DataFrame, columns: Iterable[str], series: int, h: int) -> list[np.ndarray]:
    """Columns of a library's long forecast frame (`series` ids × h steps) as (series, h) arrays, ids ascending."""
    ordered = frame.sort_values(["unique_id", "ds"], kind="stable")
    return [ordered[c].to_numpy(np.float64).reshape(series, h) for c in columns]


@dataclass(frozen=True)
class Payload:
    """A library model with its safety net: `state` forecasts `rows` of the batch, SeasonalProfile all of them."""

    fallback: seasonal.SeasonalProfile
    rows: np.ndarray  # batch rows the library model covers
    state: Any  # the library's fitted object(s); None when its fit failed
    context: Frame | None  # the history its forecasts continue from (None: the library keeps its own)
    end: float  # time of the last grid point of that history
    level: float  # the level it was fitted for (interval losses are trained for one)
    params: dict[str, Any]  # the engine's resolved settings


def fit(history: SeriesMatrix, min_points: int, train: Callable[[Frame], Any], level: float,
        params: dict[str, Any], context_points: int | None = None) -> Fitted:
    """Fit the library on the series with enough history, SeasonalProfile on all; a failing fit falls back."""
    fallback = seasonal.fit(history.values, history.start, history.step, {})
    frame, errors = long_frame(history, min_points)
    state = None
    if frame.rows.size:
        try:
            state = train(frame)
        except Exception as e:  # any library failure: every series falls back, counted, the rule keeps scoring
            log.warning("library fit failed, %d series fall back to SeasonalProfile: %s", frame.rows.size, e)
            errors.update({int(i): f"{type(e).__name__}: {e}" for i in frame.rows})
    rows = frame.rows if state is not None else np.empty(0, np.int64)
    context = frame.tail(context_points) if context_points and state is not None else None
    payload = Payload(fallback, rows, state, context, float(history.timestamps[-1]), level, params)
    return Fitted(payload, _ok(fallback, rows), dict(sorted(errors.items())))


def update(fitted: Fitted, history: SeriesMatrix, min_points: int, context_points: int) -> Fitted:
    """A global model's payload continuing from newer history (new series included); its weights stay as they are."""
    payload = payload_of(fitted)
    fallback = seasonal.fit(history.values, history.start, history.step, {})
    frame, errors = long_frame(history, min_points)
    if payload.state is None:  # nothing to condition: the fit had failed, the fallback answers for all
        errors.update({int(i): "the library model's fit had failed" for i in frame.rows})
        frame = Frame(frame.data.iloc[:0], np.empty(0, np.int64), np.empty(0, np.int64))
    fresh = replace(payload, fallback=fallback, rows=frame.rows, context=frame.tail(context_points),
                    end=float(history.timestamps[-1]))
    return Fitted(fresh, _ok(fallback, frame.rows), dict(sorted(errors.items())))


def _ok(fallback: seasonal.SeasonalProfile, rows: np.ndarray) -> np.ndarray:
    ok = fallback.ok.copy()
    ok[rows] = True
    return ok


def predict(fitted: Fitted, start: float, step: float, steps: int, level: float,
            forecast: Callable[[Payload, int, float], Forecast]) -> Bands:
    """SeasonalProfile's bands for every series, the library's over the series it covers.

    The library forecasts h = offset + steps points from the end of its history and the last `steps` are kept,
    so bands may start any number of steps after the fit. Bands are ordered: lower <= yhat <= upper. When the
    library refuses to forecast (a conformal model whose shortest series cannot be calibrated that far ahead,
    say), its series get SeasonalProfile's bands this time, as a series it could not fit does: the rule keeps
    scoring.
    """
    payload = payload_of(fitted)
    yhat, lower, upper = payload.fallback.predict(start + step * np.arange(steps), level)
    if payload.state is not None and payload.rows.size:
        offset = max(int(round((start - payload.end) / step)) - 1, 0)
        try:
            mean, lo, hi = forecast(payload, offset + steps, level)
        except Exception as e:  # any library failure: these bands fall back, the next refresh tries again
            log.warning("library forecast of %d steps failed, %d series use SeasonalProfile's bands: %s: %s",
                        offset + steps, payload.rows.size, type(e).__name__, e)
        else:
            yhat[payload.rows], lower[payload.rows], upper[payload.rows] = (a[:, offset:] for a in (mean, lo, hi))
    return Bands(start, step, yhat, np.minimum(lower, yhat), np.maximum(upper, yhat))


def payload_of(fitted: Fitted) -> Payload:
    if not isinstance(fitted.payload, Payload):
        raise ValueError("not a model of a library-backed engine")
    return fitted.payload


def dumps(fitted: Fitted) -> bytes:
    return pickle.dumps(fitted, protocol=pickle.HIGHEST_PROTOCOL)


def loads(data: bytes, engine: str, state_type: Callable[[Any], bool]) -> Fitted:
    """Unpickle a Fitted of `engine`; ValueError (never another error) when it is not one."""
    try:
        fitted = pickle.loads(data)
    except Exception as e:  # noqa: BLE001 - truncated, foreign or from another version: unreadable alike
        raise ValueError(f"artifact payload is unreadable: {type(e).__name__}: {e}") from e
    if not isinstance(fitted, Fitted) or not isinstance(fitted.payload, Payload) or not (
        fitted.payload.state is None or state_type(fitted.payload.state)
    ):
        raise ValueError(f"artifact payload is not a {engine} engine model")
    return fitted


def quantile_levels(level: float) -> tuple[float, float]:
    """The lower and upper quantile probabilities of a central `level` % interval."""
    tail = (1 - level / 100) / 2
    return tail, 1 - tail


def level_key(level: float) -> int | float:
    """How Nixtla's libraries spell a level in column names ("lo-99", "hi-99.5")."""
    return int(level) if float(level).is_integer() else level
