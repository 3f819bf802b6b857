"""Every way loading the rules can fail is a failed reload with a clear message; the daemon and its watcher
keep going, `check` prints file:line messages without a traceback."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap

import pytest
from aiohttp.test_utils import TestClient, TestServer

from oa_exporter.adapters.config.yaml_rules import YamlConfigStore
from oa_exporter.adapters.sinks.exposition import ExpositionPage
from oa_exporter.core.domain import ModelSpec
from oa_exporter.core.errors import RuleError
from oa_exporter.entrypoints.web import make_app
from tests.unit.fakes import FakeTsdb, value
from tests.unit.harness import Daemon

GOOD = """
groups:
  - name: g
    rules:
      - anomaly: requests
        expr: sum(rate(http_requests_total[5m]))
"""
SKLEARN = GOOD + "        model: {engine: sklearn, name: Ridge}\n"


def rules_file(tmp_path, text: str):
    path = tmp_path / "rules.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def run_check(path, *hide: str) -> subprocess.CompletedProcess:
    """`oa-exporter check` in a fresh process where the modules `hide` cannot be imported."""
    code = ("import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in hide)
            + "from oa_exporter.entrypoints.cli import main\nsys.exit(main(['check', sys.argv[1]]))")
    return subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)


def test_check_names_the_extra_a_missing_engine_needs(tmp_path):
    done = run_check(rules_file(tmp_path, SKLEARN), "sklearn")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert "rules.yaml:7:" in done.stderr
    assert "engine sklearn needs `pip install 'oa-exporter[sklearn]'`" in done.stderr


@pytest.fixture
def no_sklearn(monkeypatch):
    for module in [m for m in sys.modules if m == "sklearn" or m.startswith("sklearn.")] + ["sklearn"]:
        monkeypatch.setitem(sys.modules, module, None)


async def test_a_missing_engine_is_a_failed_reload_that_keeps_the_rules(tmp_path, no_sklearn):
    path = rules_file(tmp_path, GOOD)
    daemon = Daemon(path, FakeTsdb({}), tmp_path / "models")
    assert await daemon.load()
    path.write_text(textwrap.dedent(SKLEARN))
    assert not await daemon.load()
    assert value(daemon.page, "oa_rules_last_reload_successful") == 0
    assert any("oa-exporter[sklearn]" in p and "rules.yaml:7" in p for p in daemon.app.reload_problems)
    assert [r.name for r in daemon.app.rules.rules] == ["requests"]  # the previous rules stay in force
    await daemon.app.close()


async def test_a_store_that_cannot_be_read_is_a_failed_reload(tmp_path, monkeypatch):
    daemon = Daemon(rules_file(tmp_path, GOOD), FakeTsdb({}), tmp_path / "models")
    assert await daemon.load()

    def fails() -> str:
        raise PermissionError("rules.yaml: permission denied")

    monkeypatch.setattr(daemon.app.rules_store, "version", fails)
    assert not await daemon.load()
    assert value(daemon.page, "oa_rules_last_reload_successful") == 0
    assert "PermissionError" in daemon.app.reload_problems[0]
    await daemon.app.close()


def test_a_checker_that_fails_is_a_problem_of_that_rule(tmp_path):
    def broken_checker(spec: ModelSpec) -> None:
        raise RuntimeError("engine exploded")

    store = YamlConfigStore([], ModelSpec("nixtla", "SeasonalProfile"), lambda expr: None, broken_checker)
    with pytest.raises(RuleError) as caught:
        store.load_files([rules_file(tmp_path, GOOD)])
    assert [str(p) for p in caught.value.problems] == [
        f'{tmp_path / "rules.yaml"}:5: rule "requests": cannot check this rule: RuntimeError: engine exploded']


async def test_the_watcher_applies_a_good_edit_after_a_failed_one(tmp_path, no_sklearn):
    path = rules_file(tmp_path, GOOD)
    daemon = Daemon(path, FakeTsdb({}), tmp_path / "models")
    assert await daemon.load()
    watching = asyncio.create_task(daemon.app.watch_rules(0.2))
    try:
        path.write_text(textwrap.dedent(SKLEARN))
        await _until(lambda: value(daemon.page, "oa_rules_last_reload_successful") == 0)
        path.write_text(textwrap.dedent(GOOD.replace("requests", "errors")))
        await _until(lambda: value(daemon.page, "oa_rules_last_reload_successful") == 1)
        assert [r.name for r in daemon.app.rules.rules] == ["errors"]
    finally:
        watching.cancel()
        await asyncio.gather(watching, return_exceptions=True)
        await daemon.app.close()


async def _until(condition, timeout: float = 20.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached")


async def test_reload_endpoint_answers_why_it_failed():
    async def reload() -> bool:
        return False

    problems = ['rules.yaml:7: rule "requests": unknown rule key \'stepp\'']
    app = make_app(ExpositionPage(), lambda: True, reload, list, lambda: problems, enable_lifecycle=True)
    async with TestClient(TestServer(app)) as client:
        answer = await client.post("/-/reload")
        assert answer.status == 400
        assert problems[0] in await answer.text()


def test_check_reports_rule_errors_under_a_bad_group_in_line_order(tmp_path, capsys):
    from oa_exporter.entrypoints.cli import main

    path = rules_file(tmp_path, """
        groups:
          - name: g
            colour: blue
            rules:
              - anomaly: a
                expr: up
                stepp: 1m
              - anomaly: b
                expr: up
                model: {name: NoSuchModel}
        """)
    assert main(["check", str(path)]) == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if str(path) in line]
    assert [int(line.split(":")[1]) for line in lines] == [4, 8, 11]
    assert "unknown group key 'colour'" in lines[0] and "stepp" in lines[1]
    assert "SeasonalProfile" in lines[2]


def test_check_refuses_a_lone_surrogate_in_a_label_value(tmp_path, capsys):
    from oa_exporter.entrypoints.cli import main

    path = rules_file(tmp_path, GOOD + '        labels: {team: "\\udc80"}\n')
    assert main(["check", str(path)]) == 1
    assert f"{path}:7: invalid YAML:" in capsys.readouterr().err  # text that could never be published


async def test_reload_over_http_is_refused_unless_the_lifecycle_api_is_enabled():
    reloads = []

    async def reload() -> bool:
        reloads.append(1)
        return True

    app = make_app(ExpositionPage(), lambda: True, reload)
    async with TestClient(TestServer(app)) as client:
        for method in ("POST", "PUT"):
            answer = await client.request(method, "/-/reload")
            assert answer.status == 403 and await answer.text() == "Lifecycle API is not enabled.\n"
        assert (await client.get("/-/reload")).status == 405  # never a state change on GET
    assert reloads == []


async def test_a_cross_site_browser_request_cannot_reload():
    reloads = []

    async def reload() -> bool:
        reloads.append(1)
        return True

    app = make_app(ExpositionPage(), lambda: True, reload, enable_lifecycle=True)
    async with TestClient(TestServer(app)) as client:
        host = f"{client.host}:{client.port}"
        refused = await client.post("/-/reload", headers={"Origin": "http://evil.example"})
        opaque = await client.post("/-/reload", headers={"Origin": "null"})
        same_site = await client.post("/-/reload", headers={"Origin": f"http://{host}"})
        no_origin = await client.post("/-/reload")
    assert (refused.status, opaque.status, same_site.status, no_origin.status) == (403, 403, 200, 200)
    assert len(reloads) == 2


async def test_the_watcher_stops_when_cancelled_as_a_change_arrives(tmp_path):
    daemon = Daemon(rules_file(tmp_path, GOOD), FakeTsdb({}), tmp_path / "models")
    assert await daemon.load()
    pokes = []
    daemon.app.watch = lambda on_change: pokes.append(on_change) or (lambda: None)
    for _ in range(20):
        watching = asyncio.create_task(daemon.app.watch_rules(60.0))
        await asyncio.sleep(0.01)  # waiting for a change
        pokes[-1]()  # a file event ...
        await asyncio.sleep(0)  # ... whose wake-up is handled while the stop comes in
        watching.cancel()
        done, _ = await asyncio.wait([watching], timeout=5)
        assert done, "the watcher went on after it was cancelled"
    await daemon.app.close()
