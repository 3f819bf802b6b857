"""Scoring-cycle benchmark: one rule over N series, measured against baselines in the same run.

    python bench/cycle.py --series 100000

Prints (a) the daemon's scoring cycle (instant query over HTTP, parse, score, render, gzip) against the
bare fetch + JSON parse of the same query, (b) rendering the results against prometheus_client's
generate_latest on the same samples, (c) /metrics latency with 10 concurrent scrapers while cycles run
(and, for scale, with none running), (d) peak RSS. (a) times what a cycle costs up to the scores (the
runner's own calls); rendering is (b), and the whole cycle with render and gzip is printed beside it. The
last line is one JSON object with cycle_ratio, render_ratio, scrape_p99_ms, rss_mb. (e) repeats (c) over TLS
(`--web.config.file` with a certificate made for the run) and prints its ratios to plain HTTP.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import numpy as np
import orjson
from prometheus_client import CollectorRegistry, Gauge, generate_latest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import METRIC, fit_job, free_port, start_source  # noqa: E402
from oa_exporter.bootstrap import bootstrap  # noqa: E402
from oa_exporter.core.domain import Model  # noqa: E402
from oa_exporter.core.services.inferencer import Forecasts  # noqa: E402
from oa_exporter.entrypoints.daemon import _start_web, run_background_work_nicer, share_the_gil_finely  # noqa: E402
from oa_exporter.settings import Settings  # noqa: E402

STEP = 300.0
RULES = f"""
groups:
  - name: bench
    interval: 1m
    rules:
      - anomaly: bench
        expr: {METRIC}
        step: 5m
        train: {{window: 2d}}
        min_history: 1d
        max_series: 1000000
        labels: {{team: bench}}
"""


async def fitted_model(app, n: int, now: float) -> Model:
    """The rule's model, fitted on generated history in a training worker (as the daemon does; not timed)."""
    rule = app.rules.rules[0]
    keys, series, start, end, fitted = await app.dispatcher.run(fit_job, n, now, STEP, rule.model, rule.level)
    return Model(rule.name, rule.fingerprint(), "statsforecast", keys, series, end, start, end, STEP, fitted)


async def timed(coro_factory, repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        await coro_factory()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def render_baseline(scores) -> float:
    """prometheus_client on the same samples: five labelled gauges, then generate_latest."""
    registry = CollectorRegistry()
    names = sorted({k for m in scores.labels for k in m if k != "__name__"})
    columns = ["rule", *names, "team"]
    gauges = [Gauge(f"oa_{n}", n, columns, registry=registry) for n in ("y", "yhat", "yhat_lower", "yhat_upper",
                                                                        "anomaly_score")]
    arrays = [scores.y, scores.yhat, scores.lower, scores.upper, scores.score]
    for i, series in enumerate(scores.labels):
        values = ["bench", *(series.get(n, "") for n in names), "bench"]
        for gauge, array in zip(gauges, arrays, strict=True):
            gauge.labels(*values).set(float(array[i]))
    started = time.perf_counter()
    generate_latest(registry)
    return time.perf_counter() - started


async def run(n: int, repeat: int, scrape_seconds: float) -> dict:
    run_background_work_nicer(asyncio.get_running_loop())  # as `oa-exporter run` does
    now = time.time()
    source, url = start_source(n, now)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            rules = Path(tmp, "rules.yaml")
            rules.write_text(RULES)
            port = free_port()
            settings = Settings(rules=(str(rules),), prometheus_url=url, web_listen_address=f"127.0.0.1:{port}",
                                artifact_dir=tmp, pool_workers=1, query_timeout=120)
            app = bootstrap(settings)
            await app.load_rules()
            await app.runner.pause()
            group = app.rules.groups[0]
            slot = app.runner.slots["bench"]
            model = await fitted_model(app, n, now)
            bands = await app.runner.inferencer.bands(slot.rule, model, now)
            slot.forecasts, slot.loaded, slot.last_fit_attempt = Forecasts.of(model, bands), True, now
            return await measure(app, group, url, port, n, repeat, scrape_seconds, now)
    finally:
        source.kill()


async def measure(app, group, url, port, n, repeat, scrape_seconds, now) -> dict:
    async with aiohttp.ClientSession() as session:

        async def bare() -> None:
            async with session.post(f"{url}/api/v1/query", data={"query": METRIC, "time": str(now)}) as r:
                orjson.loads(await r.read())

        await bare()
        baseline = await timed(bare, repeat)
    await app.runner.cycle(group, now)  # first cycle builds the label blocks once
    full_cycle = await timed(lambda: app.runner.cycle(group, now), repeat)
    rule, slot = app.rules.rules[0], app.runner.slots["bench"]

    async def scoring() -> None:  # the runner's own calls: instant query, parse, score every series with the
        # rule's state between cycles (the repeat rule, settle_after, calibrate), as the runner does
        app.runner.inferencer.score(rule, await app.runner.inferencer.sample(rule, now), slot.forecasts,
                                    slot.repeats, slot.calibration, slot.settling)

    cycle = await timed(scoring, repeat)

    vector = await app.runner.inferencer.sample(app.rules.rules[0], now)
    scores = app.runner.inferencer.score(app.rules.rules[0], vector, app.runner.slots["bench"].forecasts)
    render_times = []
    for _ in range(repeat):  # what each cycle pays for /metrics: format every sample, assemble, gzip
        started = time.perf_counter()
        app.page.publish(scores)
        app.page.flush()
        render_times.append(time.perf_counter() - started)
    render = statistics.median(render_times)

    web_runner = await _start_web(app, f"127.0.0.1:{port}")
    try:
        latencies = await scrape_during_cycles(app, group, port, now, scrape_seconds)
        idle = await scrape_during_cycles(app, group, port, now, scrape_seconds, cycles=False)
    finally:
        await web_runner.cleanup()
    try:
        tls_latencies, tls_idle = await scrapes_over_tls(app, group, now, scrape_seconds)
    finally:
        await app.close()
    p50, p99 = np.percentile(latencies, [50, 99]) * 1000
    idle_p50, idle_p99 = np.percentile(idle, [50, 99]) * 1000
    tls_p50, tls_p99 = np.percentile(tls_latencies, [50, 99]) * 1000
    tls_idle_p50, tls_idle_p99 = np.percentile(tls_idle, [50, 99]) * 1000
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # peak, before the baseline's registry
    render_reference = render_baseline(scores)
    page_mb = len(app.page.page()) / 1e6
    print(f"series                      {n}")
    print(f"(a) scoring (query+score)   {cycle * 1000:9.1f} ms   bare fetch+parse {baseline * 1000:9.1f} ms"
          f"   ratio {cycle / baseline:.2f}  (target <= 1.5)")
    print(f"    whole cycle with render and gzip of /metrics: {full_cycle * 1000:.1f} ms")
    print(f"(b) render {5 * n} samples  {render * 1000:9.1f} ms   prometheus_client {render_reference * 1000:9.1f} ms"
          f"   ratio {render / render_reference:.3f}  (target <= 0.143)")
    print(f"(c) scrape, 10 concurrent   p50 {p50:.1f} ms   p99 {p99:.1f} ms over {len(latencies)} scrapes"
          f" of a {page_mb:.1f} MB page (gzip)  (target p99 <= 50 ms)")
    print(f"    the same scrapers with no cycles running: p50 {idle_p50:.1f} ms   p99 {idle_p99:.1f} ms"
          f" over {len(idle)} scrapes")
    print(f"(e) the same over TLS       p50 {tls_p50:.1f} ms   p99 {tls_p99:.1f} ms over {len(tls_latencies)} scrapes"
          f"   ratio to plain HTTP p50 {tls_p50 / p50:.2f} p99 {tls_p99 / p99:.2f}")
    print(f"    over TLS, no cycles running: p50 {tls_idle_p50:.1f} ms   p99 {tls_idle_p99:.1f} ms"
          f"   ratio to plain HTTP p50 {tls_idle_p50 / idle_p50:.2f} p99 {tls_idle_p99 / idle_p99:.2f}")
    print(f"(d) peak RSS of the daemon  {rss_mb:.0f} MB  (target <= 2048 MB at 100k series; fits ran in a worker)")
    return {"series": n, "cycle_ratio": round(cycle / baseline, 3), "render_ratio": round(render / render_reference, 4),
            "scrape_p99_ms": round(float(p99), 2), "scrape_p50_ms": round(float(p50), 2),
            "scrape_idle_p50_ms": round(float(idle_p50), 2), "scrape_idle_p99_ms": round(float(idle_p99), 2),
            "scrape_tls_p50_ms": round(float(tls_p50), 2), "scrape_tls_p99_ms": round(float(tls_p99), 2),
            "scrape_tls_idle_p50_ms": round(float(tls_idle_p50), 2),
            "scrape_tls_idle_p99_ms": round(float(tls_idle_p99), 2), "rss_mb": round(rss_mb, 1),
            "cycle_ms": round(cycle * 1000, 1), "baseline_ms": round(baseline * 1000, 1),
            "full_cycle_ms": round(full_cycle * 1000, 1), "render_ms": round(render * 1000, 1)}


async def scrapes_over_tls(app, group, now: float, seconds: float) -> tuple[list[float], list[float]]:
    """The scrapers of (c) over HTTPS (--web.config.file with a certificate made here), with and without cycles."""
    from oa_exporter.entrypoints.web_guard import WebGuard
    from tests.certs import make_pki, web_config

    with tempfile.TemporaryDirectory() as tmp:
        pki = make_pki(Path(tmp))
        port = free_port()
        guard = WebGuard(str(web_config(Path(tmp) / "web.yml", pki)))
        web_runner = await _start_web(app, f"127.0.0.1:{port}", False, guard)
        try:
            busy = await scrape_during_cycles(app, group, port, now, seconds, ca=str(pki.ca))
            idle = await scrape_during_cycles(app, group, port, now, seconds, cycles=False, ca=str(pki.ca))
        finally:
            await web_runner.cleanup()
    return busy, idle


async def scrape_during_cycles(app, group, port: int, now: float, seconds: float, cycles: bool = True,
                               ca: str = "") -> list[float]:
    """10 scrapers in another process while this one keeps running scoring cycles back to back (or idles);
    over HTTPS when `ca` (the CA file that signed the server's certificate) is given."""
    scheme = "https" if ca else "http"
    scrapers = await asyncio.create_subprocess_exec(
        sys.executable, str(Path(__file__).with_name("_scrapers.py")), f"{scheme}://127.0.0.1:{port}/metrics", "10",
        str(seconds), *([ca] if ca else []), stdout=subprocess.PIPE)
    finished = asyncio.ensure_future(scrapers.communicate())
    while not finished.done():
        if cycles:
            await app.runner.cycle(group, now)
        await asyncio.sleep(0.01)
    out, _ = await finished
    return json.loads(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--series", type=int, default=10000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--scrape-seconds", type=float, default=10.0)
    args = parser.parse_args()
    import uvloop  # the daemon's event loop

    share_the_gil_finely()  # as `oa-exporter run` does

    result = uvloop.run(run(args.series, args.repeat, args.scrape_seconds))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
