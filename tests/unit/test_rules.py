"""Rules files: what a valid file turns into, and every mistake reported as file:line with the rule's name."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from oa_exporter.bootstrap import config_store
from oa_exporter.core.domain import Direction, ModelSpec
from oa_exporter.core.errors import RuleError
from oa_exporter.core.presets import PRESETS
from oa_exporter.core.rules import build_rule_set
from oa_exporter.entrypoints.cli import main
from oa_exporter.settings import Settings
from tests.unit.harness import write_rules

DAY = 86400.0

FULL = """
groups:
  - name: http
    interval: 30s
    rules:
      - anomaly: http_requests:rate5m
        expr: sum by (job) (rate(http_requests_total[5m]))
        step: 2m
        model:
          engine: statsforecast
          name: SeasonalProfile
          params: {seasons: [1d], buckets: 96}
        train:
          window: 7d
          every: 12h
        forecast:
          horizon: 2h
          level: 95
        direction: above
        min_history: 2d
        max_series: 500
        labels:
          team: web
          severity: page
        annotations:
          summary: request rate is unusual
      - anomaly: http_errors
        expr: sum(rate(http_errors_total[5m]))
  - name: nodes
    rules:
      - anomaly: node_load
        expr: node_load1
"""


def load(*patterns: str | Path):
    return config_store(Settings(rules=tuple(str(p) for p in patterns))).load()


def problems(*patterns: str | Path) -> list[str]:
    with pytest.raises(RuleError) as caught:
        load(*patterns)
    return [str(p) for p in caught.value.problems]


def one_rule(tmp_path: Path, body: str, name: str = "rules.yaml") -> Path:
    """A file with one group `g` holding one rule `a` (expr up) plus `body`, indented as rule keys."""
    lines = "".join(f"        {line}\n" for line in body.strip("\n").splitlines())
    return write_rules(tmp_path / name, "groups:\n  - name: g\n    rules:\n      - anomaly: a\n"
                                         "        expr: up\n" + lines)


def test_the_full_example_parses_with_every_value(tmp_path):
    path = write_rules(tmp_path / "rules.yaml", FULL)
    rules = load(path)
    assert [g.name for g in rules.groups] == ["http", "nodes"]
    assert rules.groups[0].interval == 30
    rule = rules.rules[0]
    assert rule.name == "http_requests:rate5m"
    assert rule.group == "http"
    assert rule.expr == "sum by (job) (rate(http_requests_total[5m]))"
    assert rule.step == 120
    assert rule.model == ModelSpec("statsforecast", "SeasonalProfile", {"seasons": ["1d"], "buckets": 96})
    assert (rule.train_window, rule.train_every) == (7 * DAY, 12 * 3600)
    assert (rule.horizon, rule.level) == (7200, 95.0)
    assert rule.direction is Direction.ABOVE
    assert rule.min_history == 2 * DAY
    assert rule.max_series == 500
    assert dict(rule.labels) == {"team": "web", "severity": "page"}
    assert (rule.file, rule.line) == (str(path), 5)


def test_defaults_fill_what_a_rule_leaves_out(tmp_path):
    rules = load(write_rules(tmp_path / "rules.yaml", FULL))
    errors, load_rule = rules.rules[1], rules.rules[2]
    assert errors.step == 30  # the group's interval
    assert rules.groups[1].interval == 60  # groups default to 1m
    assert load_rule.step == 60
    preset = PRESETS["default"]  # a rule naming no preset is the default preset's
    assert errors.model == preset.model
    assert (errors.train_window, errors.train_every) == (preset.train_window, preset.train_every)
    assert (errors.horizon, errors.level) == (preset.horizon, preset.level)
    assert errors.direction is Direction.BOTH
    assert errors.min_history == preset.min_history
    assert (errors.repeat_window, errors.settle_after) == (preset.repeat_window, preset.settle_after)
    assert errors.max_series == 10000
    assert dict(errors.labels) == {}


def test_an_empty_file_has_no_rules(tmp_path):
    assert load(write_rules(tmp_path / "empty.yaml", "")).rules == ()


def test_an_unknown_rule_key_names_file_line_and_rule(tmp_path):
    path = one_rule(tmp_path, "tarin: {window: 1d}")
    [problem] = problems(path)
    assert problem.startswith(f'{path}:6: rule "a":')
    assert "unknown rule key 'tarin'" in problem


def test_an_unknown_key_in_a_section_is_located_on_its_own_line(tmp_path):
    path = one_rule(tmp_path, "train:\n  window: 1d\n  evry: 1h")
    [problem] = problems(path)
    assert problem.startswith(f'{path}:8: rule "a":')
    assert "unknown train key 'evry'" in problem


def test_an_unknown_group_key_is_located(tmp_path):
    path = write_rules(tmp_path / "rules.yaml", """
        groups:
          - name: g
            intreval: 1m
            rules: []
        """)
    [problem] = problems(path)
    assert problem.startswith(f"{path}:3:")
    assert "unknown group key 'intreval'" in problem


def test_every_problem_is_reported_not_just_the_first(tmp_path):
    path = write_rules(tmp_path / "rules.yaml", """
        groups:
          - name: g
            rules:
              - anomaly: a
                expr: up
                direction: sideways
              - anomaly: b
                expr: up
                step: 60
        """)
    found = problems(path)
    assert len(found) == 2
    assert found[0].startswith(f'{path}:6: rule "a":') and "direction" in found[0]
    assert found[1].startswith(f'{path}:9: rule "b":') and "invalid duration" in found[1]


def test_malformed_yaml_names_file_and_line(tmp_path):
    path = write_rules(tmp_path / "rules.yaml", """
        groups:
          - name: g
            rules:
              - anomaly: a
                expr: up
               bad: [
        """)
    [problem] = problems(path)
    assert problem.startswith(f"{path}:6: invalid YAML")


def test_a_repeated_key_is_an_error_not_a_silent_overwrite(tmp_path):
    path = one_rule(tmp_path, "expr: down")
    [problem] = problems(path)
    assert problem.startswith(f"{path}:6:") and "duplicate key 'expr'" in problem


def test_rule_names_must_be_unique_across_files(tmp_path):
    first = one_rule(tmp_path, "", "first.yaml")
    second = write_rules(tmp_path / "second.yaml", """
        groups:
          - name: other
            rules:
              - anomaly: b
                expr: up
              - anomaly: a
                expr: down
        """)
    [problem] = problems(first, second)
    assert problem.startswith(f'{second}:6: rule "a":')
    assert f"first defined at {first}:4" in problem


def test_group_names_must_be_unique_in_a_file(tmp_path):
    path = write_rules(tmp_path / "rules.yaml", """
        groups:
          - name: g
            rules: []
          - name: g
            rules: []
        """)
    [problem] = problems(path)
    assert problem.startswith(f"{path}:4:") and 'group name "g" is repeated' in problem


def test_invalid_promql_is_caught_offline(tmp_path):
    path = write_rules(tmp_path / "rules.yaml", """
        groups:
          - name: g
            rules:
              - anomaly: a
                expr: rate(http_requests_total[5m]
        """)
    [problem] = problems(path)
    assert problem.startswith(f'{path}:5: rule "a": invalid PromQL')


def test_an_unknown_model_is_named(tmp_path):
    [problem] = problems(one_rule(tmp_path, "model: {name: NoSuchModel}"))
    assert 'rule "a"' in problem and "NoSuchModel" in problem


def test_an_unknown_engine_is_named(tmp_path):
    [problem] = problems(one_rule(tmp_path, "model: {engine: prophet, name: Prophet}"))
    assert 'rule "a"' in problem and "unknown engine 'prophet'" in problem


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ("{buckets: 1}", "buckets must be an integer >= 2"),
        ("{sesons: [1d]}", "has no parameter(s) ['sesons']"),
        ("{seasons: 1d}", "seasons must be a list"),
        ("{seasons: [1x]}", "invalid duration '1x'"),
    ],
)
def test_bad_seasonal_profile_params_are_rejected(tmp_path, params, message):
    path = one_rule(tmp_path, f"model:\n  name: SeasonalProfile\n  params: {params}")
    [problem] = problems(path)
    assert problem.startswith(f'{path}:7: rule "a": model:')
    assert message in problem


def test_the_rule_label_is_reserved(tmp_path):
    path = one_rule(tmp_path, "labels:\n  rule: x")
    [problem] = problems(path)
    assert problem.startswith(f'{path}:7: rule "a":') and "'rule' is reserved" in problem


def test_min_history_cannot_exceed_the_training_window(tmp_path):
    path = one_rule(tmp_path, "min_history: 3d\ntrain: {window: 2d}")
    [problem] = problems(path)
    assert problem.startswith(f'{path}:6: rule "a":') and "min_history is longer than train.window" in problem


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("forecast: {level: 100}", "forecast.level must be a number strictly between 0 and 100"),
        ("forecast: {horizon: 30s}", "forecast.horizon must be at least one step"),
        ("max_series: 0", "max_series must be a positive integer"),
        ("labels: {team: [a]}", "value of 'team' must be a string"),
        ("labels: {__name__: x}", "invalid label name '__name__'"),
    ],
)
def test_other_rule_mistakes(tmp_path, body, message):
    [problem] = problems(one_rule(tmp_path, body))
    assert 'rule "a"' in problem and message in problem


def test_a_rule_without_a_valid_name_is_located(tmp_path):
    path = write_rules(tmp_path / "rules.yaml", """
        groups:
          - name: g
            rules:
              - anomaly: "bad name"
                expr: up
        """)
    [problem] = problems(path)
    assert problem.startswith(f"{path}:4:") and "anomaly" in problem


def test_a_directory_yields_its_rules_files_and_skips_hidden_entries(tmp_path):
    """A Kubernetes ConfigMap volume: the files are symlinks into a hidden `..data` directory."""
    folder = tmp_path / "rules"
    version = folder / "..2024_01_01_00_00_00.000000000"
    version.mkdir(parents=True)
    one_rule(version, "", "rules.yaml")
    write_rules(version / "notes.txt", "not rules")
    os.symlink(version.name, folder / "..data")
    os.symlink("..data/rules.yaml", folder / "rules.yaml")
    write_rules(folder / ".hidden.yaml", "not: [valid")
    rules = load(folder)
    assert [r.name for r in rules.rules] == ["a"]
    assert rules.rules[0].file == str(folder / "rules.yaml")


def test_a_glob_expands_to_the_files_it_matches(tmp_path):
    one_rule(tmp_path, "", "a.yaml")
    write_rules(tmp_path / "b.yml", "groups: [{name: h, rules: [{anomaly: b, expr: up}]}]")
    write_rules(tmp_path / ".c.yaml", "not: [valid")
    rules = load(tmp_path / "*.y*ml")
    assert sorted(r.name for r in rules.rules) == ["a", "b"]


def test_a_missing_file_is_reported(tmp_path):
    [problem] = problems(tmp_path / "missing.yaml")
    assert problem.startswith(f"{tmp_path / 'missing.yaml'}: cannot read")


def test_building_a_rule_set_from_plain_mappings_needs_no_yaml():
    from oa_exporter.core.rules import SourceDocument

    content = {"groups": [{"name": "g", "rules": [{"anomaly": "a", "expr": "up"}]}]}
    document = SourceDocument("inline", content)
    rules = build_rule_set([document], ModelSpec("statsforecast", "SeasonalProfile"))
    assert [r.name for r in rules.rules] == ["a"]


class TestCheckCommand:
    """`oa-exporter check` exits 0 on valid files and 1 on invalid ones, listing problems as file:line."""

    @pytest.fixture(autouse=True)
    def _no_environment(self, monkeypatch):
        for name in [n for n in os.environ if n.startswith("OA_")]:
            monkeypatch.delenv(name)

    def test_valid_files_pass(self, tmp_path, capsys):
        path = write_rules(tmp_path / "rules.yaml", FULL)
        assert main(["check", str(path)]) == 0
        assert "SUCCESS: 3 rules found" in capsys.readouterr().out

    def test_invalid_files_fail_with_file_and_line(self, tmp_path, capsys):
        good = one_rule(tmp_path, "", "good.yaml")
        bad = one_rule(tmp_path, "tarin: {window: 1d}", "bad.yaml")
        assert main(["check", str(good), str(bad)]) == 1
        captured = capsys.readouterr()
        assert f'{bad}:6: rule "a": unknown rule key' in captured.err
        assert str(good) not in captured.err

    def test_names_repeated_across_files_fail(self, tmp_path, capsys):
        one_rule(tmp_path, "", "one.yaml")
        second = one_rule(tmp_path, "", "two.yaml")
        assert main(["check", str(tmp_path)]) == 1
        assert f'{second}:4: rule "a": rule name is not unique' in capsys.readouterr().err

    def test_no_matching_files_fail(self, tmp_path, capsys):
        assert main(["check", str(tmp_path / "*.yaml")]) == 1
        assert "no rules files match" in capsys.readouterr().err
