"""A rule previewed over 7 days of 1-minute data for 100 series, and what it costs the daemon's scrapes.

    nice -n 10 python bench/preview.py [--series 100] [--days 7] [--scrape-seconds 10]

A real Prometheus is backfilled with `--series` series of `--days` days at a 1-minute step (a daily cycle,
noise, a few spikes). A daemon (`oa-exporter run`, a subprocess) scores one rule on them and serves /metrics.
Then:
  (a) POST /api/v1/preview of a rule with `preset: default` and a 1-minute step over the whole range:
      seconds to answer (target <= 10 s), with the daemon's own accounting of the replay;
  (b) the daemon's scrape latency (10 concurrent gzip scrapers, curl's timer) first with nothing else going
      on, then during back-to-back previews: p50/p99 and the ratio (target p99 within 1.5x);
  (c) unless --no-compare, the same replay in this process (the history as generated, no HTTP): the
      straightforward way (the refits one after the other, on the numpy helpers of tests/arrays_reference.py)
      then the daemon's way (--preview.threads, by default one per core: refits ahead on 2 threads of a
      2-core machine, and the numpy helpers of oa_exporter.core.arrays), wall and CPU seconds of
      each and their ratio, and whether both gave the same scores. A shared machine's load changes (a) from
      one run to the next; the ratio of (c), measured back to back, much less.
The load average is printed with each part. Prints one JSON line at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from oa_exporter.bootstrap import replay_in_child  # noqa: E402
from oa_exporter.core import seasonal  # noqa: E402
from oa_exporter.core.domain import Rule, SeriesMatrix  # noqa: E402
from oa_exporter.core.presets import PRESETS  # noqa: E402
from oa_exporter.core.rules import SourceDocument, build_rule_set  # noqa: E402
from oa_exporter.core.services.backtester import Replay, Samples  # noqa: E402
from tests import arrays_reference  # noqa: E402
from tests.servers import PrometheusServer, free_port  # noqa: E402

METRIC = "bench_preview_requests"
RULES = f"""\
groups:
  - name: bench
    interval: 10s
    rules:
      - anomaly: scored
        expr: {METRIC}
        step: 1m
        preset: default
"""


def history(series: int, days: float, end: float) -> list:
    rng = np.random.default_rng(3)
    times = end - 60.0 * np.arange(int(days * 1440))[::-1]
    out = []
    for i in range(series):
        values = 100 + 10 * (i % 7) + 20 * np.sin(2 * np.pi * times / 86400 + i) + rng.normal(0, 1.5, len(times))
        values[rng.integers(0, len(times), 3)] += 40  # a few spikes a week
        out.append((METRIC, {"instance": f"host-{i:03d}", "job": "bench"}, times, values))
    return out


def request(url: str, body: dict | None = None, timeout: float = 600) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def wait_ready(base: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{base}/-/ready", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError("daemon not ready")


class Scrapes:
    """10 concurrent scrapers for `seconds`, in a subprocess. Their latencies go to a file, not a pipe: a pipe
    fills at 64 KB (about 6,000 latencies, 10 s of fast scrapes) and would stop them before they are read."""

    def __init__(self, base: str, seconds: float):
        self.output = tempfile.TemporaryFile()  # noqa: SIM115 (closed once read, in latencies())
        self.process = subprocess.Popen([sys.executable, str(ROOT / "bench" / "_scrapers.py"), f"{base}/metrics",
                                         "10", str(seconds)], stdout=self.output)

    def running(self) -> bool:
        return self.process.poll() is None

    def latencies(self) -> list[float]:
        self.process.wait()
        self.output.seek(0)
        with self.output:
            return json.loads(self.output.read())


def percentiles(latencies: list[float]) -> tuple[float, float]:
    ms = np.asarray(latencies) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def preview(base: str, start: float, end: float) -> tuple[float, dict]:
    rule = {"anomaly": "tuning", "expr": METRIC, "step": "1m", "preset": "default"}
    started = time.perf_counter()
    status, body = request(f"{base}/api/v1/preview", {"rule": rule, "start": start, "end": end, "limit": 5})
    took = time.perf_counter() - started
    if status != 200:
        raise RuntimeError(f"preview answered {status}: {body}")
    return took, body["data"]


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def preview_rule() -> Rule:
    document = {"groups": [{"name": "bench", "rules": [{"anomaly": "tuning", "expr": METRIC, "step": "1m",
                                                        "preset": "default"}]}]}
    return build_rule_set([SourceDocument("bench.yaml", document)], PRESETS["default"].model).groups[0].rules[0]


def in_process(series: list, threads: int, straightforward: bool) -> tuple[float, float, Replay]:
    """Wall and CPU seconds of the preview's replay here, over the generated history (as the previewer
    frames it: the range's steps, the train.window before them)."""
    rule = preview_rule()
    times = series[0][2]
    start = float(times[0]) - rule.train_window + rule.step
    columns = int(round((times[-1] - start) / rule.step)) + 1
    values = np.full((len(series), columns), np.nan)
    values[:, columns - len(times):] = np.array([s[3] for s in series])
    keys = [json.dumps(s[1], sort_keys=True).encode() for s in series]
    labels = [s[1] for s in series]
    history = SeriesMatrix(keys, labels, start, rule.step, values)
    samples = Samples(keys, labels, times, values[:, columns - len(times):])
    helpers = seasonal.arrays
    if straightforward:
        seasonal.arrays = arrays_reference  # type: ignore[assignment]
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        result = replay_in_child(rule, history, samples, threads)  # the preview's own replay, here
    finally:
        seasonal.arrays = helpers
    return time.perf_counter() - wall, time.process_time() - cpu, result


def compare(series: list, threads: int) -> dict:
    print(f"(c) the same replay in this process ({load()}):")
    plain_wall, plain_cpu, plain = in_process(series, 1, straightforward=True)
    print(f"    straightforward (refits one after the other, tests/arrays_reference.py): {plain_wall:.2f} s, "
          f"{plain_cpu:.2f} s CPU")
    wall, cpu, ours = in_process(series, threads, straightforward=False)
    same = all(np.allclose(getattr(ours, k), getattr(plain, k), rtol=0, atol=1e-9, equal_nan=True)
               for k in ("yhat", "lower", "upper", "score")) and ours.fits == plain.fits
    how = f"refits ahead on {threads} threads" if threads > 1 else "one thread: refits inline"
    print(f"    the daemon's ({how}, oa_exporter.core.arrays): {wall:.2f} s, {cpu:.2f} s "
          f"CPU; ratio {plain_wall / wall:.2f} wall, {plain_cpu / cpu:.2f} CPU; same scores: {same} ({load()})")
    return {"replay_straightforward_s": round(plain_wall, 2), "replay_s": round(wall, 2),
            "replay_ratio": round(plain_wall / wall, 2), "replay_cpu_ratio": round(plain_cpu / cpu, 2),
            "same_scores": same}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--series", type=int, default=100)
    parser.add_argument("--days", type=float, default=7.0)
    parser.add_argument("--scrape-seconds", type=float, default=10.0)
    parser.add_argument("--no-compare", action="store_true", help="skip (c), the in-process comparison")
    parser.add_argument("--preview-threads", type=int, default=0,
                        help="the daemon's --preview.threads and the threads of (c)'s second replay (0: the default)")
    args = parser.parse_args()
    end = float(int(time.time() // 60 * 60))
    start = end - args.days * 86400 + 60
    series = history(args.series, args.days, end)
    with tempfile.TemporaryDirectory() as tmp, PrometheusServer(tmp, series=series) as tsdb:
        rules = Path(tmp) / "rules.yaml"
        rules.write_text(RULES)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        daemon = subprocess.Popen(
            [sys.executable, "-m", "oa_exporter.entrypoints.cli", "run", "--rules", str(rules),
             "--prometheus-url", tsdb.url, "--web.listen-address", f"127.0.0.1:{port}", "--artifact.store", "noop",
             "--preview.timeout", "600", "--preview.threads", str(args.preview_threads)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_ready(base)
            time.sleep(5)  # the first fit and cycles of the scored rule
            idle = Scrapes(base, args.scrape_seconds).latencies()
            print(f"(a) {load()}")
            took, data = preview(base, start, end)
            print(f"(a) preview of one rule (preset default, 1m step) over {args.days:g} days x {args.series} series: "
                  f"{took:.2f} s to answer (target <= 10 s); {len(data['timestamps'])} steps, {data['fits']} fits, "
                  f"{len(data['excursions'])} excursions; the daemon counted {data['seconds']:.2f} s")
            scrapers = Scrapes(base, args.scrape_seconds)
            previews = 0
            while scrapers.running():
                preview(base, start, end)
                previews += 1
            busy = scrapers.latencies()
        finally:
            daemon.terminate()
            daemon.wait(30)
    idle_p50, idle_p99 = percentiles(idle)
    busy_p50, busy_p99 = percentiles(busy)
    print(f"(b) scrapes without a preview: p50 {idle_p50:.1f} ms  p99 {idle_p99:.1f} ms over {len(idle)} scrapes")
    print(f"    scrapes during {previews} previews: p50 {busy_p50:.1f} ms  p99 {busy_p99:.1f} ms over {len(busy)} "
          f"scrapes: p99 ratio {busy_p99 / idle_p99:.2f} (target <= 1.5)")
    compared = {} if args.no_compare else compare(series, args.preview_threads or os.cpu_count() or 1)
    print(json.dumps({"series": args.series, "days": args.days, "preview_s": round(took, 2),
                      "scrape_idle_p99_ms": round(idle_p99, 2), "scrape_busy_p99_ms": round(busy_p99, 2),
                      "p99_ratio": round(busy_p99 / idle_p99, 3), **compared}))


if __name__ == "__main__":
    main()
