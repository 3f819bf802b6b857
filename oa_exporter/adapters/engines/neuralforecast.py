"""Nixtla NeuralForecast engine: NHITS, NBEATS, TFT, ... trained once for all series of a rule.

`model.name` is a class of `neuralforecast.models`; `params` are its constructor parameters (h, input_size,
max_steps, learning_rate, ...; defaults below) and PyTorch Lightning's `accelerator`/`devices`/`precision`.
The loss is set by the engine: MQLoss at the rule's level, so the network learns the median and the two
quantiles of the band directly (intervals from a multi-quantile loss, no resampling).

- Device: the GPU when torch sees one (`accelerator: gpu`), else the CPU; the weights are kept on the CPU
  between fits, so a model trained on a GPU serves anywhere.
- A forecast of more than `h` steps feeds its own median back as history, chunk by chunk; the band of those
  later chunks is the network's quantiles given that history, so it is narrower than a true multi-step band.
- A global model: `update` forecasts series that appeared after training from their own recent history
  (`input_size` points), without a refit.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from ...core.domain import Bands, Capabilities, Fitted, Model, ModelSpec, SeriesMatrix
from . import _batch

DEFAULT_MODEL = "NHITS"
# Training stops after max_steps or max_time (PyTorch Lightning's DD:HH:MM:SS), whichever comes first: about
# 40 s for 200 steps on an idle 2-core machine, and never more than 2 minutes of training on a busy one, so a
# rule's first scores come within a few minutes (the library's import and the forecast come on top).
DEFAULTS: dict[str, Any] = {"h": 12, "input_size": 48, "max_steps": 200, "max_time": "00:00:02:00",
                            "scaler_type": "robust", "random_seed": 0}
TRAINER_KEYS = {"accelerator", "devices", "precision", "gradient_clip_val", "deterministic", "max_time"}
QUIET = {"enable_progress_bar": False, "logger": False, "enable_model_summary": False, "enable_checkpointing": False}
SET_BY_ENGINE = {"loss", "valid_loss", "alias", *QUIET}


class NeuralForecastEngine:
    """Fits rules whose model.engine is `neuralforecast`."""

    name = "neuralforecast"
    default_model = DEFAULT_MODEL

    @functools.cached_property
    def versions(self) -> dict[str, str]:
        """What a pickled model depends on (torch tensors, Lightning modules)."""
        return _batch.versions("neuralforecast", "torch", "pytorch-lightning")

    def validate(self, spec: ModelSpec) -> None:
        model_class = _model_class(spec.name)
        taken = set(SET_BY_ENGINE) & set(spec.params)
        if taken:
            raise ValueError(f"neuralforecast params {sorted(taken)} are set by the engine (MQLoss at the level)")
        explicit = {k: v for k, v in spec.params.items() if k not in TRAINER_KEYS}
        unknown = set(explicit) - _explicit_parameters(model_class)
        if unknown:  # the models take **trainer_kwargs: a typo would only fail at fit time
            raise ValueError(f"bad params for neuralforecast {spec.name}: no parameter(s) {sorted(unknown)}")
        settings = _settings(spec.params)
        for key in ("h", "input_size", "max_steps"):
            if isinstance(settings[key], bool) or not isinstance(settings[key], int) or settings[key] < 1:
                raise ValueError(f"neuralforecast {key} must be a positive integer")

    def capabilities(self, spec: ModelSpec) -> Capabilities:
        """One network across series: global, on a GPU when there is one, new series forecast without a refit."""
        return Capabilities(global_model=True, gpu=True, update=True)

    def fit(self, history: SeriesMatrix, spec: ModelSpec, level: float) -> Fitted:
        cfg = {**_settings(spec.params), "name": spec.name, "step": history.step}
        return _batch.fit(history, _min_points(cfg), lambda frame: _train(frame, cfg, level), level, cfg,
                          context_points=cfg["input_size"])

    def join(self, parts: Sequence[Fitted]) -> Fitted:
        raise NotImplementedError("neuralforecast fits are not separable by rows: a global model")

    def update(self, model: Model, history: SeriesMatrix) -> Fitted:
        cfg = _batch.payload_of(model.fitted).params
        return _batch.update(model.fitted, history, cfg["input_size"], cfg["input_size"])

    def predict(self, model: Model, start: float, steps: int, level: float) -> Bands:
        return _batch.predict(model.fitted, start, model.step, steps, level, _forecast)

    def dumps(self, fitted: Fitted) -> bytes:
        return _batch.dumps(fitted)

    def loads(self, data: bytes) -> Fitted:
        return _batch.loads(data, self.name, lambda state: type(state).__name__ == "NeuralForecast")


def _model_class(name: str) -> type:
    from neuralforecast import models  # 4-8 s (PyTorch Lightning): only for rules that use this engine

    model_class = getattr(models, name, None)
    if not isinstance(model_class, type) or name.startswith("_"):
        raise ValueError(f"neuralforecast has no model {name!r} (e.g. NHITS, NBEATS, TFT, PatchTST, MLP)")
    return model_class


def _explicit_parameters(model_class: type) -> set[str]:
    import inspect

    return {p.name for p in inspect.signature(model_class).parameters.values() if p.kind is p.POSITIONAL_OR_KEYWORD
            or p.kind is p.KEYWORD_ONLY}


def _settings(params: Any) -> dict[str, Any]:
    return {**DEFAULTS, **params}


def _min_points(cfg: dict[str, Any]) -> int:
    return int(cfg["input_size"]) + int(cfg["h"])


def _device() -> str:
    import torch

    return "gpu" if torch.cuda.is_available() else "cpu"


def _quiet() -> None:
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning", "neuralforecast"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _train(frame: _batch.Frame, cfg: dict[str, Any], level: float) -> Any:
    from neuralforecast import NeuralForecast
    from neuralforecast.losses.pytorch import MQLoss

    _quiet()
    params = {k: v for k, v in cfg.items() if k not in ("name", "step")}
    params.setdefault("accelerator", _device())
    model = _model_class(cfg["name"])(**params, loss=MQLoss(level=[_batch.level_key(level)]), **QUIET)
    forecaster = NeuralForecast(models=[model], freq=_batch.freq(cfg["step"]))
    forecaster.fit(frame.data)
    for fitted in forecaster.models:
        fitted.cpu()  # a model trained on a GPU must load and serve on a machine without one
    return forecaster


def _forecast(payload: _batch.Payload, h: int, level: float) -> _batch.Forecast:
    """Chunks of the network's h steps; each later chunk continues from the medians before it."""
    if level != payload.level:
        raise ValueError(f"the network was trained for level {payload.level}, not {level}")
    assert payload.context is not None
    _quiet()
    forecaster, key, chunk = payload.state, _batch.level_key(level), int(payload.params["h"])
    for model in forecaster.models:  # serve on what this machine has, whatever the model was trained on
        model.trainer_kwargs.update(accelerator=_device(), devices=1)
    context, series = payload.context.data, len(payload.rows)
    parts: list[list[np.ndarray]] = []
    while len(parts) * chunk < h:
        frame = forecaster.predict(df=context)
        columns = [_column(frame, suffix) for suffix in ("-median", f"-lo-{key}", f"-hi-{key}")]
        parts.append(_batch.wide(frame, columns, series, chunk))
        ahead = frame[["unique_id", "ds"]].assign(y=frame[columns[0]].to_numpy())
        context = pd.concat([context, ahead]).groupby("unique_id", sort=True).tail(int(payload.params["input_size"]))
    mean, lower, upper = (np.concatenate([part[i] for part in parts], axis=1)[:, :h] for i in range(3))
    return mean, lower, upper


def _column(frame: pd.DataFrame, suffix: str) -> str:
    """The forecast column ending in `suffix` (the prefix is the model's alias, which NeuralForecast chooses)."""
    (column,) = (c for c in frame.columns if str(c).endswith(suffix))
    return str(column)
