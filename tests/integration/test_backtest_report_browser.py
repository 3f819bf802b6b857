"""index.html of a backtest in a real browser (Debian's chromium through Playwright): every chart draws, with its
title, legend, score panel and warm-up key, offline, without a script error."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from oa_exporter.entrypoints.cli import main
from tests.unit.harness import write_rules
from tests.unit.test_backtest_report import write_series

playwright = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def page_file(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("report")
    paths = []
    for name, seed in (("a", 1), ("b", 2), ("c", 3)):
        write_series(folder / f"{name}.csv", 3, seed, 2.5)
        paths.append(str(folder / f"{name}.csv"))
    rules = write_rules(folder / "rules.yaml", """
        groups:
          - name: g
            rules:
              - {anomaly: latency, expr: request_latency_seconds, step: 5m, train: {window: 7d, every: 6h},
                 forecast: {level: 99}, min_history: 1d}
    """)
    out = folder / "out"
    assert main(["backtest", "--rules", str(rules), "--csv", *paths, "--out", str(out), "--jobs", "1",
                 "--no-progress"]) == 0
    return out / "index.html"


def test_every_chart_draws_with_its_title_legend_and_score_panel(page_file: Path):
    if not Path(CHROMIUM).exists():
        pytest.skip("no chromium")
    errors: list[str] = []
    requests: list[str] = []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(page_file.as_uri())
            figures = page.locator("figure.series")
            assert figures.count() == 3
            for i in range(3):
                figure = figures.nth(i)
                figure.scroll_into_view_if_needed()
                figure.locator(".scores canvas").wait_for(timeout=10_000)  # drawn when it comes into view
                assert figure.locator(".u-title").inner_text() == f"latency / file={'abc'[i]}"
                assert figure.locator("canvas").count() == 2  # the values and, on its own panel, the score
                legend = [t.strip().rstrip(":") for t in figure.locator(".u-legend th").all_inner_texts()]
                assert legend == ["time (UTC)", "band 99 % (lower)", "band 99 % (upper)", "forecast (yhat)", "y",
                                  "anomaly (score > 1)", "warm-up (not scored: min_history 1d)",
                                  "time (UTC)", "anomaly score", "threshold 1"]
        finally:
            browser.close()
    assert not errors
    assert all(url.startswith("file:") for url in requests)  # nothing fetched: one self-contained file
