"""Concurrent scrapers for bench/cycle.py: N threads GET /metrics like Prometheus (gzip) for a while."""

from __future__ import annotations

import json
import sys
import threading
import time
import urllib.request


def scrape_for(url: str, seconds: float, out: list[float]) -> None:
    request = urllib.request.Request(url, headers={"Accept-Encoding": "gzip"})
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        started = time.perf_counter()
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()
        out.append(time.perf_counter() - started)


def main() -> None:
    url, scrapers, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    results: list[list[float]] = [[] for _ in range(scrapers)]
    threads = [threading.Thread(target=scrape_for, args=(url, seconds, r)) for r in results]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(json.dumps([x for r in results for x in r]))


if __name__ == "__main__":
    main()
