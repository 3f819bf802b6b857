"""Choosing engines: per rule or by OA_MODEL_ENGINE, bad models caught by `check`, heavy libraries loaded lazily."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from oa_exporter.bootstrap import config_store, engine_registry
from oa_exporter.entrypoints.cli import main
from oa_exporter.settings import Settings

HEAVY = ("torch", "darts", "neuralforecast", "mlforecast", "sklearn", "pytorch_lightning")


def rules_file(tmp_path: Path, model: str) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(textwrap.dedent(f"""\
        groups:
          - name: g
            rules:
              - anomaly: plain
                expr: up
              - anomaly: chosen
                expr: up
                model: {model}
        """))
    return path


@pytest.fixture(autouse=True)
def _no_environment(monkeypatch):
    for name in [n for n in os.environ if n.startswith("OA_")]:
        monkeypatch.delenv(name)


# the library each engine needs beyond the base install (its extra), skipped where it is not installed
LIBRARY = {"nixtla": "statsforecast", "statsforecast": "statsforecast", "mlforecast": "mlforecast",
           "neuralforecast": "neuralforecast", "darts": "darts", "sklearn": "sklearn"}


def needs(engine: str) -> None:
    pytest.importorskip(LIBRARY[engine], reason=f"the {engine} engine's extra is not installed")


@pytest.mark.parametrize("engine", list(LIBRARY))
def test_oa_model_engine_picks_the_default_of_rules_that_name_none(tmp_path, engine):
    needs(engine)
    path = rules_file(tmp_path, "{engine: statsforecast, name: AutoETS, params: {model: ZZN}}")
    settings = Settings.from_env({"OA_MODEL_ENGINE": engine}).with_overrides({"rules": (str(path),)})
    plain, chosen = config_store(settings).load().rules
    own = engine_registry()[engine]
    assert (plain.model.engine, plain.model.name) == (own.name, own.default_model)
    assert (chosen.model.engine, chosen.model.name) == ("statsforecast", "AutoETS")


@pytest.mark.parametrize("engine", list(LIBRARY))
def test_a_rule_naming_only_an_engine_gets_its_default_model(tmp_path, engine):
    needs(engine)
    path = rules_file(tmp_path, f"{{engine: {engine}}}")
    plain, chosen = config_store(Settings(rules=(str(path),))).load().rules
    own = engine_registry()[engine]
    assert chosen.model == type(chosen.model)(own.name, own.default_model, {})
    if own.name == "statsforecast":  # the alias and the library name are one engine: the same rule
        assert chosen.model.engine == "statsforecast"


def test_the_alias_and_the_library_name_make_the_same_rule(tmp_path):
    path = rules_file(tmp_path, "{engine: nixtla, name: AutoETS}")
    _, alias = config_store(Settings(rules=(str(path),))).load().rules
    path.write_text(path.read_text().replace("nixtla", "statsforecast"))
    _, library = config_store(Settings(rules=(str(path),))).load().rules
    assert alias == library and alias.fingerprint() == library.fingerprint()


def test_the_default_engine_is_nixtla_with_seasonal_profile():
    assert Settings.from_env({}).model_engine == "nixtla"
    assert engine_registry()["nixtla"].default_model == "SeasonalProfile"


@pytest.mark.parametrize(("model", "message"), [
    ("{engine: sklearn, name: KMeans}", "no regressor or outlier detector 'KMeans'"),
    ("{engine: sklearn, name: Ridge, params: {alhpa: 1}}", "bad params for sklearn Ridge"),
    ("{engine: mlforecast, name: Ridge, params: {lags: 3}}", "mlforecast lags must be a non-empty list"),
    ("{engine: darts, name: NaiveSeasonal}", "neither probabilistic"),
    ("{engine: prophet, name: Prophet}", "unknown engine 'prophet'"),
])
def test_check_names_the_rule_whose_model_cannot_be_built(tmp_path, capsys, model, message):
    library = {"sklearn": "sklearn", "mlforecast": "mlforecast", "darts": "darts"}.get(model.split(",")[0][9:])
    if library:
        pytest.importorskip(library)
    path = rules_file(tmp_path, model)
    assert main(["check", str(path)]) == 1
    err = capsys.readouterr().err
    assert f'{path}:8: rule "chosen": model: ' in err and message in err
    assert 'rule "plain"' not in err


def _modules_after(code: str, cwd: Path) -> list[str]:
    """Run `code` in a fresh interpreter and list the heavy libraries it imported."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OA_")}
    done = subprocess.run([sys.executable, "-c", probe], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_help_imports_no_heavy_library(tmp_path):
    code = textwrap.dedent("""\
        import contextlib, io
        from oa_exporter.entrypoints.cli import main
        with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):
            main(["--help"])
        """)
    assert _modules_after(code, Path.cwd()) == []


def test_a_statsforecast_only_daemon_never_imports_torch(tmp_path):
    path = rules_file(tmp_path, "{engine: statsforecast, name: AutoETS, params: {model: ZZN}}")
    code = textwrap.dedent(f"""\
        import asyncio
        import numpy as np
        from oa_exporter.bootstrap import bootstrap
        from oa_exporter.core.domain import ModelSpec, SeriesMatrix
        from oa_exporter.settings import Settings
        import oa_exporter.entrypoints.daemon
        settings = Settings.from_env({{}}).with_overrides({{"rules": ({str(path)!r},), "artifact_store": "noop"}})
        app = bootstrap(settings)
        rules = app.rules_store.load()
        history = SeriesMatrix([b"a"], [{{}}], 0.0, 300.0, 50 + np.random.default_rng(0).normal(0, 1, (1, 600)))
        for rule in rules.rules:
            engine = app.runner.trainer.engines[rule.model.engine]
            engine.fit(history, rule.model, rule.level)
        asyncio.run(app.close())
        """)
    assert _modules_after(code, Path.cwd()) == []
