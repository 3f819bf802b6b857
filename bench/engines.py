"""Engine adapters against their raw libraries: fit + predict throughput on the same series, one core.

For each engine's default model (and statsforecast's AutoETS, since its default SeasonalProfile is our own numpy
code with no library to compare against), the same N series are fitted and forecast `--horizon` steps at
`--level` % through the adapter (SeriesMatrix in, Bands out: gap filling, the SeasonalProfile safety net and
the array conversions included) and through the library's own API on a ready long DataFrame, with the same
model settings. ratio = raw seconds / adapter seconds (target >= 0.9: adapter overhead <= 10 %).

The sklearn engine's feature pipeline, calibration and recursion are the engine itself; its baseline is the bare
estimator fitted on prebuilt lag features and asked for `horizon` one-step predictions, so its ratio shows
what the pipeline costs on top of the estimator, not a wrapper's overhead.

Threads are pinned to one (OMP/MKL/torch), so series/s is per core. Last line: one JSON object.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable  # noqa: E402

import numpy as np  # noqa: E402

from oa_exporter.adapters.engines import _batch  # noqa: E402
from oa_exporter.bootstrap import engine_registry  # noqa: E402
from oa_exporter.core.domain import Model, ModelSpec, SeriesMatrix  # noqa: E402

STEP = 300.0


def series(n: int, points: int, seed: int = 3) -> SeriesMatrix:
    rng = np.random.default_rng(seed)
    t = STEP * np.arange(points)
    values = (rng.uniform(20, 200, (n, 1)) + rng.uniform(2, 15, (n, 1)) * np.sin(2 * np.pi * t / 86400
              + rng.uniform(0, 6.3, (n, 1))) + rng.normal(0, 1, (n, points)))
    return SeriesMatrix([str(i).encode() for i in range(n)], [{"i": str(i)} for i in range(n)], 0.0, STEP, values)


def adapter_run(spec: ModelSpec, history: SeriesMatrix, h: int, level: float) -> Callable[[], object]:
    engine = engine_registry()[spec.engine]

    def run() -> object:
        fitted = engine.fit(history, spec, level)
        end = float(history.timestamps[-1])
        model = Model("bench", "f", engine.name, history.keys, history.labels, end, 0.0, end, STEP, fitted)
        assert not fitted.errors, fitted.errors
        return engine.predict(model, end + STEP, h, level)

    return run


def raw_statsforecast(frame, h: int, level: float) -> Callable[[], object]:
    from statsforecast import StatsForecast
    from statsforecast.models import AutoETS

    return lambda: StatsForecast(models=[AutoETS(model="ZZN")], freq=_batch.freq(STEP)).fit(frame).predict(
        h=h, level=[_batch.level_key(level)])


def raw_mlforecast(frame, h: int, level: float, points: int) -> Callable[[], object]:
    from mlforecast import MLForecast
    from mlforecast.target_transforms import LocalStandardScaler
    from mlforecast.utils import PredictionIntervals
    from sklearn.linear_model import Ridge

    from oa_exporter.adapters.engines import mlforecast as adapter

    lags = adapter._lags(adapter.DEFAULTS["lags"], STEP, points)
    features = [adapter.day_sin, adapter.day_cos, adapter.week_sin, adapter.week_cos]
    corrected = _batch.level_key(adapter._corrected(level, adapter.DEFAULTS["n_windows"]))

    def run() -> object:
        forecaster = MLForecast(models={"model": Ridge(random_state=0)}, freq=_batch.freq(STEP), lags=lags,
                                date_features=features, target_transforms=[LocalStandardScaler()])
        forecaster.fit(frame, prediction_intervals=PredictionIntervals(n_windows=adapter.DEFAULTS["n_windows"],
                                                                       h=adapter.DEFAULTS["interval_h"]))
        return forecaster.predict(h, level=[corrected])

    return run


def raw_neuralforecast(frame, h: int, level: float, steps: int) -> Callable[[], object]:
    from neuralforecast import NeuralForecast
    from neuralforecast.losses.pytorch import MQLoss
    from neuralforecast.models import NHITS

    from oa_exporter.adapters.engines import neuralforecast as adapter

    def run() -> object:
        model = NHITS(**{**adapter.DEFAULTS, "max_steps": steps}, loss=MQLoss(level=[_batch.level_key(level)]),
                      accelerator="cpu", **adapter.QUIET)
        forecaster = NeuralForecast(models=[model], freq=_batch.freq(STEP))
        forecaster.fit(frame)
        return forecaster.predict(df=frame.groupby("unique_id").tail(adapter.DEFAULTS["input_size"]))

    return run


def raw_darts(frame, h: int, level: float) -> Callable[[], object]:
    from darts import TimeSeries
    from darts.models import ConformalNaiveModel, LinearRegressionModel

    from oa_exporter.adapters.engines import darts as adapter

    q_lo, q_hi = _batch.quantile_levels(level)

    def run() -> object:
        series_list = [TimeSeries.from_dataframe(g, time_col="ds", value_cols="y", freq=_batch.freq(STEP))
                       for _, g in frame.groupby("unique_id")]
        model = LinearRegressionModel(**adapter.DEFAULT_PARAMS, random_state=0).fit(series_list)
        conformal = ConformalNaiveModel(model, quantiles=[q_lo, 0.5, q_hi], cal_length=adapter.OWN["cal_length"],
                                        random_state=0)
        return conformal.predict(h, series=series_list, predict_likelihood_parameters=True)

    return run


def raw_sklearn(history: SeriesMatrix, h: int) -> Callable[[], object]:
    from sklearn.linear_model import Ridge

    lags = [1, 2, 3, 12, 288]
    z = (history.values - history.values.mean(axis=1, keepdims=True)) / history.values.std(axis=1, keepdims=True)
    columns = np.arange(max(lags), z.shape[1])
    features = np.stack([z[:, columns - lag] for lag in lags], axis=-1).reshape(-1, len(lags))
    target = z[:, columns].reshape(-1)

    def run() -> object:
        model = Ridge().fit(features, target)
        return [model.predict(features[-len(z):]) for _ in range(h)]

    return run


def paired(runs: list[Callable[[], object]], repeats: int) -> list[float]:
    """Best time of each run, interleaved (a, b, a, b, ...) so that drift and noise hit both alike."""
    for run in runs:
        run()  # warm: imports, first-call setup
    times: list[list[float]] = [[] for _ in runs]
    for _ in range(repeats):
        for run, spent in zip(runs, times, strict=True):
            gc.collect()
            started = time.perf_counter()
            run()
            spent.append(time.perf_counter() - started)
    return [min(spent) for spent in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--series", type=int, default=40)
    parser.add_argument("--points", type=int, default=2016, help="history per series (2016 = 7 days of 5 min)")
    parser.add_argument("--horizon", type=int, default=12)
    parser.add_argument("--level", type=float, default=99.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--neural-steps", type=int, default=200, help="NHITS max_steps (the engine's default: 200)")
    parser.add_argument("--only", nargs="*", help="engines to run (default: all installed)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass

    history = series(args.series, args.points)
    frame, _ = _batch.long_frame(history, 3)
    data, h, level = frame.data, args.horizon, args.level
    cases: dict[str, tuple[ModelSpec, Callable[[], Callable[[], object]]]] = {
        "statsforecast AutoETS(ZZN)": (ModelSpec("statsforecast", "AutoETS", {"model": "ZZN"}),
                                       lambda: raw_statsforecast(data, h, level)),
        "statsforecast SeasonalProfile": (ModelSpec("statsforecast", "SeasonalProfile"), lambda: None),  # type: ignore
        "mlforecast Ridge": (ModelSpec("mlforecast", "Ridge"), lambda: raw_mlforecast(data, h, level, args.points)),
        "neuralforecast NHITS": (ModelSpec("neuralforecast", "NHITS", {"max_steps": args.neural_steps}),
                                 lambda: raw_neuralforecast(data, h, level, args.neural_steps)),
        "darts LinearRegressionModel": (ModelSpec("darts", "LinearRegressionModel"), lambda: raw_darts(data, h, level)),
        "sklearn Ridge": (ModelSpec("sklearn", "Ridge"), lambda: raw_sklearn(history, h)),
    }
    rows = []
    for name, (spec, raw_factory) in cases.items():
        if args.only and spec.engine not in args.only:
            continue
        try:
            raw = raw_factory()
        except ImportError as e:
            print(f"{name}: skipped ({e})")
            continue
        adapter = adapter_run(spec, history, h, level)
        adapter_s, raw_s = paired([adapter, raw], args.repeats) if raw is not None else (
            paired([adapter], args.repeats)[0], None)
        rows.append({"engine": name, "adapter_s": round(adapter_s, 4), "raw_s": raw_s and round(raw_s, 4),
                     "ratio": raw_s and round(raw_s / adapter_s, 3),
                     "series_per_s_per_core": round(args.series / adapter_s, 1)})
    print(f"{args.series} series x {args.points} points, h={h}, level={level}, one thread, best of {args.repeats}")
    print(f"{'engine':32} {'adapter s':>10} {'raw s':>10} {'ratio':>7} {'series/s/core':>14}")
    for row in rows:
        raw_text = f"{row['raw_s']:10.3f}" if row["raw_s"] is not None else f"{'-':>10}"
        ratio = f"{row['ratio']:7.3f}" if row["ratio"] is not None else f"{'-':>7}"
        print(f"{row['engine']:32} {row['adapter_s']:10.3f} {raw_text} {ratio} {row['series_per_s_per_core']:14.1f}")
    print(json.dumps({"series": args.series, "points": args.points, "horizon": h, "level": level, "engines": rows}))


if __name__ == "__main__":
    main()
