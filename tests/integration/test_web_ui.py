"""The web UI in a real browser (Debian's Chromium through Playwright) against a daemon beside a real Prometheus:
rules page, one rule with its chart, the editor validating and previewing, save, the new rule on /metrics.
Screenshots of each page go to $OA_TEST_ARTIFACTS/ui (default: the test's temporary directory)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path

import aiohttp
import pytest

from oa_exporter.entrypoints.daemon import serve
from oa_exporter.settings import Settings
from tests.servers import PrometheusServer, free_port
from tests.synthetic import Scenario

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
RULES = """\
groups:
  - name: synthetic
    interval: 2s
    rules:
      - anomaly: requests
        expr: oa_test_requests
        step: 1m
        train: {window: 3d, every: 1d}
        forecast: {horizon: 1h, level: 99}
        min_history: 1d
"""


@pytest.fixture
def prometheus(tmp_path):
    scenario = Scenario(end=time.time())
    with PrometheusServer(tmp_path, series=scenario.build()) as server:
        yield server


@pytest.fixture
def screenshots(tmp_path) -> Path:
    folder = Path(os.environ.get("OA_TEST_ARTIFACTS") or tmp_path) / "ui"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@contextlib.asynccontextmanager
async def daemon(prometheus: PrometheusServer, tmp_path: Path, writable: bool = True):
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    port = free_port()
    settings = Settings(rules=(str(rules),), prometheus_url=prometheus.url, web_listen_address=f"127.0.0.1:{port}",
                        artifact_dir=str(tmp_path / "models"), pool_workers=1, query_retries=1,
                        web_enable_rules_api=writable)
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings, stop=stop))
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop.set()
        assert await task == 0


async def scores_on_metrics(base: str, rule: str, timeout: float = 60.0) -> int:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"{base}/metrics") as response:
                    found = [line for line in (await response.text()).splitlines()
                             if line.startswith("oa_anomaly_score{") and f'rule="{rule}"' in line]
                    if found:
                        return len(found)
            await asyncio.sleep(0.5)
    raise AssertionError(f"rule {rule} not scored on /metrics within {timeout}s")


async def test_rules_page_rule_chart_editor_preview_and_save_in_a_browser(prometheus, tmp_path, screenshots):
    from playwright.async_api import async_playwright, expect

    async with daemon(prometheus, tmp_path) as base, async_playwright() as playwright:
        await scores_on_metrics(base, "requests")
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))

            await page.goto(f"{base}/")
            await expect(page.locator("#rules")).to_contain_text("requests")
            await expect(page.locator("#rules")).to_contain_text("ok")
            await page.screenshot(path=screenshots / "1-rules.png", full_page=True)

            await page.click("#rules a:text('requests')")
            await expect(page.locator("#chart canvas").first).to_be_visible(timeout=30_000)
            await expect(page.locator("#chart-note")).to_contain_text("1 series")
            await expect(page.locator("#scores tbody tr")).to_have_count(20)
            await page.screenshot(path=screenshots / "2-rule.png", full_page=True)

            await page.click("#edit")
            editor = page.locator("#yaml")
            await expect(page.locator("#validity")).to_contain_text("valid")
            await editor.fill("anomaly: requests_edited\nexpr: oa_test_requests{instance=~\"host-0.\"}\nstep: 1m\n"
                              "train: {window: 2d, every: 1d}\nforecast: {level: 120}\nmin_history: 1d\n")
            await expect(page.locator("#validity")).to_contain_text("forecast.level must be a number")
            await expect(page.locator("#save")).to_be_disabled()
            await page.screenshot(path=screenshots / "3-editor-invalid.png", full_page=True)
            await editor.fill("anomaly: requests_edited\nexpr: oa_test_requests{instance=~\"host-0.\"}\nstep: 1m\n"
                              "train: {window: 2d, every: 1d}\nforecast: {level: 99}\nmin_history: 1d\n"
                              "labels: {team: sre}\n")
            await expect(page.locator("#validity")).to_contain_text("✓ valid")
            await page.select_option("#range", label="last 6h")
            await page.click("#preview")
            await expect(page.locator("#chart canvas").first).to_be_visible(timeout=30_000)
            await expect(page.locator("#paged")).to_contain_text("host-0")  # the spiked hosts would have paged
            await page.screenshot(path=screenshots / "4-editor-preview.png", full_page=True)

            await page.click("#save")
            await expect(page.locator("h1")).to_have_text("requests_edited", timeout=10_000)
            await page.screenshot(path=screenshots / "5-saved.png", full_page=True)
            assert errors == []
        finally:
            await browser.close()
        assert await scores_on_metrics(base, "requests_edited") == 10
    assert "requests_edited" in (tmp_path / "rules.yaml").read_text()


async def test_the_ui_is_read_only_when_the_rules_api_is_off(prometheus, tmp_path, screenshots):
    from playwright.async_api import async_playwright, expect

    async with daemon(prometheus, tmp_path, writable=False) as base, async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            await page.goto(f"{base}/ui/")
            await expect(page.locator("#rules")).to_contain_text("requests")
            await expect(page.locator("#mode")).to_have_text("rules API: read-only")
            await expect(page.locator("#new-rule")).to_have_count(0)
            await page.click("#rules a:text('requests')")
            await expect(page.locator("#chart-note")).to_contain_text("series")  # previews still work
            await expect(page.locator("#edit")).to_have_count(0)
            await page.goto(f"{base}/ui/#/edit/requests")
            await expect(page.locator("main")).to_contain_text("--web.enable-rules-api")
            await page.screenshot(path=screenshots / "6-read-only.png", full_page=True)
        finally:
            await browser.close()
    assert (tmp_path / "rules.yaml").read_text() == RULES
