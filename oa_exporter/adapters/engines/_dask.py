"""What the engines do on a Dask cluster when a rule is too large for one worker: fits spread over the cluster.

A fit the dask dispatcher runs lands on a Dask worker. There, an engine given at least `distributed_from`
series takes a client to the same cluster (`worker_client`: the task steps aside while the pieces run) and
spreads the work: SeasonalProfile's row blocks as tasks, StatsForecast models through Fugue
(`StatsForecast.forecast(df=<dask frame>)`). Anywhere else (the local pool, a backtest) nothing changes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
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
