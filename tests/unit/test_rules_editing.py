"""Writes to YAML rules files (YamlRulesEditor) and the excursions a preview reports, on real files and arrays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from oa_exporter.adapters.config.yaml_editor import YamlRulesEditor
from oa_exporter.bootstrap import config_store
from oa_exporter.core.domain import Rule
from oa_exporter.core.errors import ConflictError, NotFound, RuleError
from oa_exporter.core.services.backtester import Replay
from oa_exporter.core.services.preview import excursions
from oa_exporter.settings import Settings

FILE = """\
groups:
  # first group
  - name: a
    interval: 30s
    rules:
      - anomaly: one  # kept
        expr: up
        step: 1m
      - anomaly: two
        expr: up
        step: 1m
  - name: b
    rules:
      - anomaly: three
        expr: up
        step: 5m
"""


def editor(*patterns: Path) -> YamlRulesEditor:
    return YamlRulesEditor(config_store(Settings(rules=tuple(map(str, patterns)))))


def groups(path: Path) -> dict[str, list[str]]:
    return {g["name"]: [r["anomaly"] for r in g["rules"]] for g in yaml.safe_load(path.read_text())["groups"]}


def test_a_rule_moved_to_another_group_leaves_the_old_one_and_an_emptied_group_goes(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text(FILE)
    edit = editor(rules)
    edit.put_rule("b", {"anomaly": "two", "expr": "up", "step": "1m"}, edit.rule("two").etag)
    assert groups(rules) == {"a": ["one"], "b": ["three", "two"]}
    edit.delete_rule("one", None)
    assert groups(rules) == {"b": ["three", "two"]}
    edit.put_rule("c", {"anomaly": "four", "expr": "up", "step": "1m"}, None)
    assert groups(rules) == {"b": ["three", "two"], "c": ["four"]}
    assert config_store(Settings(rules=(str(rules),))).load().rules[-1].name == "four"


def test_versions_are_checked_and_nothing_changes_on_a_refused_write(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text(FILE)
    edit = editor(rules)
    stale = edit.rule("one").etag
    edit.put_rule("a", {"anomaly": "one", "expr": "up", "step": "2m"}, stale)
    before = rules.read_text()
    with pytest.raises(ConflictError, match="changed since it was read"):
        edit.put_rule("a", {"anomaly": "one", "expr": "up", "step": "3m"}, stale)
    with pytest.raises(ConflictError):
        edit.put_rule("a", {"anomaly": "new", "expr": "up", "step": "3m"}, "*")  # `*`: it must exist
    with pytest.raises(RuleError) as invalid:
        edit.put_rule("a", {"anomaly": "one", "expr": "up", "step": "3m", "direction": "sideways"}, None)
    with pytest.raises(NotFound):
        edit.delete_rule("absent", None)
    assert rules.read_text() == before
    assert [str(p) for p in invalid.value.problems] == [
        f"{rules}:9: rule \"one\": direction must be one of both, above, below (got 'sideways')"]
    assert "# kept" in before and "# first group" in before  # the write before kept the comments


def test_a_rule_moves_between_files_with_its_group_and_both_files_change_together(tmp_path):
    (tmp_path / "a.yaml").write_text(FILE)
    (tmp_path / "b.yaml").write_text("groups:\n  - name: other\n    rules: []\n")
    edit = editor(tmp_path)
    edit.put_rule("other", {"anomaly": "three", "expr": "up", "step": "1m"}, None)
    assert groups(tmp_path / "a.yaml") == {"a": ["one", "two"]}
    assert groups(tmp_path / "b.yaml") == {"other": ["three"]}
    assert sorted(r.name for r in config_store(Settings(rules=(str(tmp_path),))).load().rules) == ["one", "three",
                                                                                                   "two"]


def test_a_rules_directory_with_no_file_gets_one(tmp_path):
    edit = editor(tmp_path)
    edit.put_rule("new", {"anomaly": "first", "expr": "up", "step": "1m"}, None)
    assert groups(tmp_path / "rules.yaml") == {"new": ["first"]}


def test_a_dry_run_validates_and_writes_nothing(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text(FILE)
    stored = editor(rules).put_rule("a", {"anomaly": "six", "expr": "up", "step": "1m"}, None, dry_run=True)
    assert stored.name == "six" and rules.read_text() == FILE


def test_excursions_are_the_runs_above_one_with_their_peaks():
    times = 60.0 * np.arange(8)
    score = np.array([[0.1, 1.5, 2.5, 0.2, np.nan, 3.0, 0.0, 1.2],
                      [np.nan, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]])
    replay = Replay(Rule("r", "g", "up", 60.0, None), [b"a", b"b"], [{}, {}], times, score, score, score, score,  # type: ignore[arg-type]
                    score)
    found = [(e.series, e.start, e.end, e.points, e.peak_score, e.peak_at) for e in excursions(replay)]
    assert found == [(0, 60.0, 120.0, 2, 2.5, 120.0), (0, 300.0, 300.0, 1, 3.0, 300.0),
                     (0, 420.0, 420.0, 1, 1.2, 420.0)]
