"""What the engines do on a Dask cluster when a rule is too large for one worker: fits spread over the cluster.

A fit the dask dispatcher runs lands on a Dask worker. There, an engine given at least `distributed_from`
series takes a client to the same cluster (`worker_client`: the task steps aside while the pieces run) and
spreads the work: StatsForecast models through Fugue (`StatsForecast.forecast(df=<dask frame>)`, their
SeasonalProfile fallback in row blocks as tasks), MLForecast's linear regressors through `DistributedMLForecast`
on a Dask frame. Anywhere else (the local pool, a backtest) nothing changes. SeasonalProfile rules themselves
never arrive whole: they are separable, and the trainer sends them in row blocks from the daemon (see
adapters/dispatch/dask.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from ...core.domain import SeriesMatrix


@contextlib.contextmanager
def cluster_client(series: int, distributed_from: int) -> Iterator[Any | None]:
    """A client of the cluster this code runs on, if it runs on a Dask worker and the rule is large; else None."""
    if series < distributed_from:
        yield None
        return
    try:
        from distributed import get_worker, worker_client

        get_worker()
    except (ImportError, ValueError):  # not installed, or not on a worker
        yield None
        return
    with worker_client() as client:
        yield client


def block_mapper(client: Any) -> Callable[[Callable[[np.ndarray], Any], list[np.ndarray]], list[Any]]:
    """seasonal.fit's mapper: each row block a task on the cluster, results in block order."""

    def run(fit_block: Callable[[np.ndarray], Any], blocks: list[np.ndarray]) -> list[Any]:
        return client.gather(client.map(fit_block, client.scatter(blocks), pure=False))

    return run


def forecast_on_cluster(client: Any, history: SeriesMatrix, model: Any, level: float, steps: int,
                        fill: Callable[[np.ndarray], np.ndarray]) -> tuple[np.ndarray, dict[int, str]]:
    """StatsForecast through Fugue on the cluster: (3, series, steps) float32 of yhat, lower, upper from the
    step after the window's end (NaN where a series has no forecast), and why each such series has none."""
    import dask.dataframe as dd
    import pandas as pd
    from statsforecast import StatsForecast

    frames, errors = [], {}
    for row, values in enumerate(history.values):
        try:
            y = fill(values)
        except ValueError as e:
            errors[row] = str(e)
            continue
        last = history.values.shape[1]
        frames.append(pd.DataFrame({"unique_id": row, "ds": np.arange(last - len(y), last), "y": y}))
    out = np.full((3, history.values.shape[0], steps), np.nan, np.float32)
    if not frames:
        return out, errors
    frame = pd.concat(frames, ignore_index=True)
    partitions = max(len(client.scheduler_info()["workers"]), 1) * 2
    key = int(level) if float(level).is_integer() else level
    levels: list[Any] = [key]
    result = StatsForecast(models=[model], freq=1).forecast(
        df=dd.from_pandas(frame, npartitions=partitions), h=steps, level=levels).compute()
    name = repr(model)
    rows = pd.to_numeric(result["unique_id"]).to_numpy(np.int64)
    cols = pd.to_numeric(result["ds"]).to_numpy(np.int64) - history.values.shape[1]
    for k, column in enumerate((name, f"{name}-lo-{key}", f"{name}-hi-{key}")):
        out[k, rows, cols] = result[column].to_numpy(np.float32, na_value=np.nan)
    return out, errors


# scikit-learn regressors whose fit is a least-squares solve: exact from the moments of the data's partitions
LINEAR_ON_MOMENTS = ("Ridge", "LinearRegression")


def solvable_on_moments(name: str, params: dict[str, Any]) -> bool:
    """Whether DistributedMLForecast can fit this regressor on the cluster (and give the one-process model)."""
    return name in LINEAR_ON_MOMENTS and not params.get("positive", False) and np.ndim(params.get("alpha", 1.0)) == 0


def mlforecast_on_cluster(client: Any, data: Any, pipeline: dict[str, Any], regressor: Any, windows: int,
                          horizon: int) -> Any:
    """MLForecast's fit with conformal intervals (`windows` windows of `horizon` steps), done by DistributedMLForecast
    on a Dask frame of the series: features per partition on the workers, the regressor from their moments.

    Returns the local MLForecast the one-process fit would have made (`to_local`, with the calibration scores set
    as MLForecast.load sets them): the daemon forecasts, updates and stores it as any other.
    """
    from mlforecast.distributed import DistributedMLForecast
    from mlforecast.utils import PredictionIntervals

    frame = series_partitions(client, data)

    def forecaster() -> Any:
        return DistributedMLForecast(models={"model": MomentsRegressor(regressor)}, engine=client, **pipeline)

    scores = calibration_scores(forecaster(), frame, data, pipeline["freq"], windows, horizon)
    local = forecaster().fit(frame).to_local()
    local.ts.lag_transforms_namer = None  # MLForecast's default; DistributedMLForecast's is a closure (unpicklable)
    local.prediction_intervals = PredictionIntervals(n_windows=windows, h=horizon)
    local._cs_df = scores
    return local


def calibration_scores(forecaster: Any, frame: Any, data: Any, freq: str, windows: int, horizon: int) -> Any:
    """MLForecast's conformity scores (its `cross_validation(refit=False)` over the last `windows` windows of
    `horizon` steps), window by window: the regressor fitted once before the first window, then each window
    forecast from the series up to its cutoff (`predict(new_df=...)`, no feature matrix built) and scored against
    what followed. DistributedMLForecast.cross_validation keeps every window's feature matrix on the cluster until
    the end (20 of them by default); this builds one, for the fit."""
    import pandas as pd
    from mlforecast.conformal_prediction import compute_conformity_scores

    last = data["ds"].max()
    step = pd.Timedelta(pd.tseries.frequencies.to_offset(freq))
    cutoffs = [last - (windows - i) * horizon * step for i in range(windows)]
    forecaster.fit(frame[frame["ds"] <= cutoffs[0]])
    checks = []
    for cutoff in cutoffs:
        predicted = forecaster.predict(horizon, new_df=frame[frame["ds"] <= cutoff]).compute()
        for column in ("unique_id", "ds"):  # its schema makes them str and an arrow timestamp
            predicted[column] = predicted[column].astype(data[column].dtype)
        actual = data[(data["ds"] > cutoff) & (data["ds"] <= cutoff + horizon * step)]
        checks.append(predicted.merge(actual, on=["unique_id", "ds"]).assign(cutoff=cutoff))
    ordered = pd.concat(checks).sort_values(["cutoff", "unique_id", "ds"], kind="stable").reset_index(drop=True)
    return compute_conformity_scores(ordered, ["model"], "y")


def series_partitions(client: Any, data: Any) -> Any:
    """A long frame (sorted by unique_id) as a Dask frame of whole series, two partitions per worker, scattered."""
    import dask.dataframe as dd

    ids = data["unique_id"].to_numpy()
    starts = np.concatenate([[0], np.flatnonzero(ids[1:] != ids[:-1]) + 1])
    parts = min(max(len(client.scheduler_info()["workers"]), 1) * 2, len(starts))
    cuts = [int(starts[group[0]]) for group in np.array_split(np.arange(len(starts)), parts)] + [len(ids)]
    pieces = [data.iloc[a:b] for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
    return dd.from_delayed(client.scatter(pieces), meta=data.iloc[:0], verify_meta=False)


class MomentsRegressor:
    """A DistributedMLForecast model for Dask (the contract of mlforecast's DaskLGBMForecast: `fit(X, y)` on Dask
    collections, the fitted local estimator in `model_`) for scikit-learn's least-squares regressors.

    Each partition's row count, column means and centred cross-products of [X, y] are computed where it lies and
    combined pairwise (Chan, Golub and LeVeque's update), so the cluster never moves more than a features x
    features matrix per partition; the estimator's normal equations are then solved once, as its own
    cholesky/lstsq solvers would: coefficients equal to a fit on the whole frame up to float rounding.
    """

    def __init__(self, estimator: Any):
        self.estimator = estimator

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """scikit-learn's clone() (DistributedMLForecast clones its models before each fit) reads this."""
        return {"estimator": self.estimator}

    def set_params(self, **params: Any) -> MomentsRegressor:
        self.estimator = params.get("estimator", self.estimator)
        return self

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> MomentsRegressor:
        import dask
        from distributed import get_client
        from sklearn.base import clone

        if sample_weight is not None:
            raise NotImplementedError("sample weights are not supported on the cluster")
        moments = [dask.delayed(partition_moments, pure=True)(x, t)
                   for x, t in zip(X.to_delayed(), y.to_delayed(), strict=True)]
        count, mean, m2 = get_client().compute(dask.delayed(combine_moments)(moments)).result()
        if count == 0:
            raise ValueError("no training rows on the cluster")
        self.model_ = solve_linear(clone(self.estimator), list(X.columns), count, mean, m2)
        return self


Moments = tuple[int, np.ndarray, np.ndarray]  # rows, means of [X, y], centred cross-products of [X, y]


def partition_moments(x: Any, y: Any) -> Moments:
    """The moments of one partition's [features, target]."""
    z = np.column_stack([x.to_numpy(np.float64), y.to_numpy(np.float64)])
    if not len(z):
        return 0, np.zeros(z.shape[1]), np.zeros((z.shape[1], z.shape[1]))
    mean = z.mean(axis=0)
    centred = z - mean
    return len(z), mean, centred.T @ centred


def combine_moments(parts: Sequence[Moments]) -> Moments:
    """The moments of the union of the partitions (pairwise update, stable for any offsets)."""
    count, mean, m2 = parts[0]
    for n, m, s in parts[1:]:
        if n == 0:
            continue
        total, delta = count + n, m - mean
        m2 = m2 + s + np.outer(delta, delta) * (count * n / total)
        mean, count = mean + delta * (n / total), total
    return count, mean, m2


def solve_linear(model: Any, columns: list[str], count: int, mean: np.ndarray, m2: np.ndarray) -> Any:
    """`model` (an unfitted Ridge or LinearRegression) fitted from the moments: what its fit sets, set."""
    import scipy.linalg

    p = len(columns)
    intercept = bool(getattr(model, "fit_intercept", True))
    gram = m2 if intercept else m2 + count * np.outer(mean, mean)
    xx, xy = gram[:p, :p], gram[:p, p]
    alpha = float(getattr(model, "alpha", 0.0))
    if alpha > 0:  # Ridge's cholesky solver: (XᵀX + αI) w = Xᵀy on centred data
        coef = scipy.linalg.solve(xx + alpha * np.eye(p), xy, assume_a="pos")
    else:  # LinearRegression's lstsq: the minimum-norm solution, also where XᵀX is singular
        coef = np.linalg.lstsq(xx, xy, rcond=None)[0]
    model.coef_ = coef
    model.intercept_ = float(mean[p] - mean[:p] @ coef) if intercept else 0.0
    model.n_features_in_ = p
    model.feature_names_in_ = np.asarray(columns, dtype=object)
    return model
