"""The PromQL parser in its child process: a crash or a hang costs that rule a clean error, nothing more."""

from __future__ import annotations

from pathlib import Path

import pytest

from oa_exporter.adapters.config.promql import parse_error
from oa_exporter.adapters.config.promql_process import PromqlChecker
from oa_exporter.adapters.config.yaml_rules import YamlConfigStore
from oa_exporter.core.domain import ModelSpec
from oa_exporter.core.errors import RuleError
from tests.unit.crashing_parsers import crash_on_marked, hang_on_marked
from tests.unit.fakes import FakeTsdb, value
from tests.unit.harness import Daemon, write_rules

RULES = """
    groups:
      - name: g
        rules:
          - anomaly: first
            expr: rate(http_requests_total[5m])
          - anomaly: boom
            expr: up{{job="{marker}"}}
          - anomaly: broken
            expr: sum(up
          - anomaly: last
            expr: up
    """
FAILED = "the PromQL parser failed on this expression"


@pytest.fixture
def checkers():
    made: list[PromqlChecker] = []

    def make(**kwargs) -> PromqlChecker:
        made.append(PromqlChecker(**kwargs))
        return made[-1]

    yield make
    for checker in made:
        checker.close()


def store(path: Path, checker: PromqlChecker) -> YamlConfigStore:
    return YamlConfigStore([str(path)], ModelSpec("statsforecast", "AutoETS"), checker, lambda spec: None)


def problems(store: YamlConfigStore) -> list[str]:
    with pytest.raises(RuleError) as e:
        store.load()
    return [str(p) for p in e.value.problems]


@pytest.mark.parametrize(("marker", "death"), [("segfault_here", "killed by SIGSEGV"),
                                               ("abort_here", "killed by SIGABRT")])
def test_a_parser_crash_is_that_rules_error_and_the_next_reload_works(tmp_path, checkers, marker, death):
    path = write_rules(tmp_path / "rules.yaml", RULES.format(marker=marker))
    rules = store(path, checkers(parse=crash_on_marked))
    assert problems(rules) == [
        f'{path}:7: rule "boom": {FAILED} (its process was {death})',
        f"{path}:9: rule \"broken\": invalid PromQL in 'expr': unclosed left parenthesis",  # parsed after it
    ]
    write_rules(path, RULES.format(marker="fixed").replace("sum(up", "sum(up)"))
    assert [r.name for r in rules.load().rules] == ["first", "boom", "broken", "last"]


def test_an_expression_the_parser_never_answers_times_out(tmp_path, checkers):
    path = write_rules(tmp_path / "rules.yaml", RULES.format(marker="hang_here"))
    rules = store(path, checkers(parse=hang_on_marked, timeout=2.0))
    assert problems(rules) == [
        f'{path}:7: rule "boom": {FAILED} (no answer within 2 s)',
        f"{path}:9: rule \"broken\": invalid PromQL in 'expr': unclosed left parenthesis",
    ]
    write_rules(path, RULES.format(marker="fixed").replace("sum(up", "sum(up)"))
    assert len(rules.load().rules) == 4


def test_the_real_parser_past_its_memory_limit_is_a_clean_error(checkers):
    # within the bounds, but ~50 MB of parse: more than a child held to 48 MB of address space has
    nested = "+".join("(" * 64 + "up" + ")" * 64 for _ in range(60))
    checker = checkers(memory=48 << 20)
    found = checker.check_all([nested, "up", "sum("])
    assert found[nested] is not None and found[nested].startswith(f"{FAILED} (its process was killed by SIG")
    assert found["up"] is None
    assert found["sum("] is not None and found["sum("].startswith("invalid PromQL in 'expr': ")


def test_answers_are_kept_per_expression_and_bounds_never_reach_the_child(checkers):
    checker = checkers(parse=crash_on_marked)
    crash = 'up{job="segfault_here"}'
    first = checker(crash)
    assert first is not None and first.startswith(FAILED)
    assert checker._child is None  # the crashed child is gone and none has started since
    assert checker(crash) == first  # kept: no new child, no second crash
    assert checker._child is None
    too_deep = "(" * 65 + "up" + ")" * 65
    assert checker(too_deep) == "invalid PromQL in 'expr': expression nests 65 levels deep, more than the 64 allowed"
    assert checker._child is None


def test_a_parser_that_cannot_start_fails_each_expression_until_one_starts(checkers):
    def not_importable(expr: str) -> str | None:  # a local function: the child cannot find it by name
        return None

    checker = checkers(parse=not_importable)
    found = checker.check_all(["up", "down"])
    assert found == dict.fromkeys(["up", "down"], "the PromQL parser did not start (its process exited with code 1)")
    checker.parse = parse_error  # those answers were not kept: the next check starts a child that can parse
    assert checker.check_all(["up", "sum(up"]) == {"up": None,
                                                   "sum(up": "invalid PromQL in 'expr': unclosed left parenthesis"}


async def test_the_daemon_keeps_its_rules_through_a_parser_crash_and_reloads_after(tmp_path, checkers, monkeypatch):
    path = write_rules(tmp_path / "rules.yaml", RULES.format(marker="fine").replace("sum(up", "sum(up)"))
    daemon = Daemon(path, FakeTsdb({}), tmp_path / "models")
    monkeypatch.setattr(daemon.app.rules_store, "check_expr", checkers(parse=crash_on_marked))
    assert await daemon.load()
    write_rules(path, RULES.format(marker="segfault_here"))
    assert not await daemon.load()
    assert value(daemon.page, "oa_rules_last_reload_successful") == 0
    assert daemon.app.reload_problems[0] == f'{path}:7: rule "boom": {FAILED} (its process was killed by SIGSEGV)'
    assert len(daemon.app.rules.rules) == 4  # the previous rules stay in force
    write_rules(path, RULES.format(marker="fixed").replace("sum(up", "sum(up)"))
    assert await daemon.load()
    assert value(daemon.page, "oa_rules_last_reload_successful") == 1
    await daemon.app.close()
