"""Scrapes while hostile connections are open: /metrics latency with 10 concurrent scrapers, first alone, then
beside 500 connections that trickle a request head one byte a second (from another loopback address, as an
attacker elsewhere would), then beside 500 idle connections. Prints p50/p99 and the ratios to the first.

    python bench/hostile.py --series 10000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import free_port  # noqa: E402
from oa_exporter.adapters.sinks.exposition import ExpositionPage  # noqa: E402
from oa_exporter.entrypoints.daemon import _start_web  # noqa: E402
from oa_exporter.settings import Settings  # noqa: E402


def page_of(series: int) -> ExpositionPage:
    text = b"".join(b'oa_anomaly_score{rule="bench",instance="host-%06d",team="bench"} %d.25\n' % (i, i % 7)
                    for i in range(series * 5))
    page = ExpositionPage(extra=lambda: text)
    page.flush()
    return page


def hostile(port: int, count: int, trickle: bool, stop: threading.Event) -> None:
    """`count` connections from 127.0.0.2; each sends one byte of a request head a second while `trickle`."""
    sockets = []
    for _ in range(count):
        sock = socket.socket()
        sock.bind(("127.0.0.2", 0))
        sock.connect(("127.0.0.1", port))
        sockets.append(sock)
    head = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 4000
    sent = 0
    while not stop.wait(1.0):
        if trickle:
            for sock in sockets:
                with contextlib.suppress(OSError):  # cut by the server
                    sock.send(head[sent % len(head):][:1])
            sent += 1
    for sock in sockets:
        sock.close()


async def scrapes(port: int, seconds: float) -> list[float]:
    scrapers = await asyncio.create_subprocess_exec(
        sys.executable, str(Path(__file__).with_name("_scrapers.py")), f"http://127.0.0.1:{port}/metrics", "10",
        str(seconds), stdout=subprocess.PIPE)
    out, _ = await scrapers.communicate()
    return json.loads(out)


async def run(series: int, seconds: float) -> dict:
    port = free_port()
    app = SimpleNamespace(page=page_of(series), rules=object(), ready=lambda: True, load_rules=None,
                          rules_status=list, reload_problems=[], settings=Settings())
    web = await _start_web(app, f"127.0.0.1:{port}")
    results = {}
    try:
        results["alone"] = await scrapes(port, seconds)
        for name, trickle in (("500 trickling", True), ("500 idle", False)):
            stop = threading.Event()
            flood = threading.Thread(target=hostile, args=(port, 500, trickle, stop))
            flood.start()
            try:
                results[name] = await scrapes(port, seconds)
            finally:
                stop.set()
                flood.join()
    finally:
        await web.cleanup()
    base = np.percentile(results["alone"], [50, 99]) * 1000
    summary = {"series": series}
    for name, latencies in results.items():
        p50, p99 = np.percentile(latencies, [50, 99]) * 1000
        print(f"{name:14s} p50 {p50:7.1f} ms   p99 {p99:7.1f} ms over {len(latencies)} scrapes"
              f"   ratio to alone p50 {p50 / base[0]:.2f} p99 {p99 / base[1]:.2f}  (target p99 <= 2)")
        summary[f"{name.replace(' ', '_')}_p99_ratio"] = round(float(p99 / base[1]), 2)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--series", type=int, default=10000)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.series, args.seconds))))


if __name__ == "__main__":
    main()
