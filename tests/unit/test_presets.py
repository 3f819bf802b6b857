"""`preset:` in a rules file: named defaults for a rule, which the rule's own keys override."""

from __future__ import annotations

import pytest

from oa_exporter.bootstrap import config_store
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


def test_a_rule_without_a_preset_keeps_the_plain_defaults(tmp_path):
    [rule] = load(tmp_path, """
        groups:
          - name: g
            rules:
              - {anomaly: cpu, expr: node_cpu}
    """).rules
    assert (rule.train_window, rule.train_every, rule.level, rule.model.params) == (14 * DAY, DAY, 99.0, {})
    assert rule.repeat_window == 0  # every excursion pages


@pytest.mark.parametrize("setting, seconds", [("off", 0.0), ("0", 0.0), ("2h", 7200.0)])
def test_a_rule_sets_or_turns_off_the_presets_repeat_window(tmp_path, setting, seconds):
    [with_preset, without] = load(tmp_path, f"""
        groups:
          - name: g
            rules:
              - {{anomaly: cpu, expr: node_cpu, preset: default, repeat_window: {setting}}}
              - {{anomaly: mem, expr: node_mem, repeat_window: {setting}}}
    """).rules
    assert with_preset.repeat_window == without.repeat_window == seconds


def test_a_bad_repeat_window_is_reported(tmp_path):
    with pytest.raises(RuleError, match="repeat_window"):
        load(tmp_path, """
            groups:
              - name: g
                rules:
                  - {anomaly: cpu, expr: node_cpu, repeat_window: soon}
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
