"""`preset:` in a rules file: named defaults for a rule, which the rule's own keys override."""

from __future__ import annotations

from dataclasses import replace

import pytest

from oa_exporter.bootstrap import config_store
from oa_exporter.core.domain import ModelSpec
from oa_exporter.core.errors import RuleError
from oa_exporter.core.presets import PRESETS
from oa_exporter.settings import Settings
from tests.unit.harness import write_rules

DAY = 86400.0


def load(tmp_path, text: str):
    return config_store(Settings(rules=(str(write_rules(tmp_path / "rules.yaml", text)),))).load()


def test_a_rule_naming_the_default_preset_takes_its_model_training_and_band(tmp_path):
    [rule] = load(tmp_path, """
        groups:
          - name: g
            rules:
              - anomaly: cpu
                expr: node_cpu
                preset: default
    """).rules
    preset = PRESETS["default"]
    assert rule.model == preset.model
    assert (rule.train_window, rule.train_every, rule.horizon, rule.level, rule.min_history) == (
        preset.train_window, preset.train_every, preset.horizon, preset.level, preset.min_history)
    assert rule.repeat_window == preset.repeat_window == 6 * 3600
    assert rule.settle_after == preset.settle_after == 3600


def test_keys_the_rule_sets_win_over_the_preset(tmp_path):
    [rule] = load(tmp_path, """
        groups:
          - name: g
            rules:
              - anomaly: cpu
                expr: node_cpu
                preset: default
                train: {every: 6h}
                forecast: {level: 99.5}
                model: {name: SeasonalProfile, params: {seasons: [1d]}}
    """).rules
    preset = PRESETS["default"]
    assert rule.train_every == 6 * 3600 and rule.train_window == preset.train_window
    assert rule.level == 99.5 and rule.horizon == preset.horizon
    assert rule.model.params == {"seasons": ["1d"]}  # a model of its own replaces the preset's whole


def test_a_rule_naming_no_preset_behaves_as_one_naming_the_default_preset(tmp_path):
    plain, named = load(tmp_path, """
        groups:
          - name: g
            rules:
              - {anomaly: cpu, expr: node_cpu}
              - {anomaly: mem, expr: node_cpu, preset: default}
    """).rules
    assert replace(plain, name="mem", line=named.line) == named
    assert plain.fingerprint() == named.fingerprint()


def test_preset_none_opts_out_to_the_plain_defaults(tmp_path):
    [rule] = load(tmp_path, """
        groups:
          - name: g
            rules:
              - {anomaly: cpu, expr: node_cpu, preset: none}
    """).rules
    assert (rule.train_window, rule.train_every, rule.level, rule.min_history) == (14 * DAY, DAY, 99.0, DAY)
    assert rule.model == ModelSpec("statsforecast", "SeasonalProfile", {})
    assert rule.repeat_window == rule.settle_after == 0  # every excursion pages, however long it lasts


def test_a_rule_overrides_each_key_of_the_default_preset_without_naming_it(tmp_path):
    [rule] = load(tmp_path, """
        groups:
          - name: g
            rules:
              - anomaly: cpu
                expr: node_cpu
                train: {window: 2d}
                forecast: {level: 99.9}
                repeat_window: off
    """).rules
    preset = PRESETS["default"]
    assert (rule.train_window, rule.train_every) == (2 * DAY, preset.train_every)
    assert (rule.level, rule.horizon, rule.repeat_window, rule.model) == (99.9, preset.horizon, 0.0, preset.model)
    assert rule.min_history == 2 * DAY  # the preset's 3d warm-up would never end in a 2-day window


def test_another_default_engine_gives_its_default_model_with_the_presets_training(tmp_path):
    settings = Settings(rules=(str(write_rules(tmp_path / "rules.yaml", """
        groups:
          - name: g
            rules:
              - {anomaly: cpu, expr: node_cpu}
    """)),), model_engine="sklearn")
    pytest.importorskip("sklearn")
    [rule] = config_store(settings).load().rules
    assert rule.model == ModelSpec("sklearn", "Ridge", {})
    assert rule.train_every == PRESETS["default"].train_every


@pytest.mark.parametrize("key", ["repeat_window", "settle_after"])
@pytest.mark.parametrize("setting, seconds", [("off", 0.0), ("0", 0.0), ("2h", 7200.0)])
def test_a_rule_sets_or_turns_off_the_presets_excursion_keys(tmp_path, key, setting, seconds):
    [with_preset, without] = load(tmp_path, f"""
        groups:
          - name: g
            rules:
              - {{anomaly: cpu, expr: node_cpu, preset: default, {key}: {setting}}}
              - {{anomaly: mem, expr: node_mem, {key}: {setting}}}
    """).rules
    assert getattr(with_preset, key) == getattr(without, key) == seconds


@pytest.mark.parametrize("key, value", [("repeat_window", "soon"), ("calibrate", "weekly"),
                                        ("settle_after", "later")])
def test_a_bad_duration_key_is_reported(tmp_path, key, value):
    with pytest.raises(RuleError, match=key):
        load(tmp_path, f"""
            groups:
              - name: g
                rules:
                  - {{anomaly: cpu, expr: node_cpu, {key}: {value}}}
        """)


def test_an_unknown_preset_is_reported_with_file_line_and_rule(tmp_path):
    with pytest.raises(RuleError) as caught:
        load(tmp_path, """
            groups:
              - name: g
                rules:
                  - anomaly: cpu
                    expr: node_cpu
                    preset: fancy
        """)
    [problem] = caught.value.problems
    assert problem.line == 6 and problem.rule == "cpu"
    assert "unknown preset 'fancy'" in problem.message and "default" in problem.message


@pytest.mark.parametrize("setting, seconds", [(None, 0.0), ("off", 0.0), ("1w", 7 * 86400.0)])
def test_calibrate_is_off_unless_a_rule_gives_its_budget(tmp_path, setting, seconds):
    key = "" if setting is None else f", calibrate: {setting}"
    [rule] = load(tmp_path, f"""
        groups:
          - name: g
            rules:
              - {{anomaly: cpu, expr: node_cpu, preset: default{key}}}
    """).rules
    assert rule.calibrate == seconds
