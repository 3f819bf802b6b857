"""Concurrent scrapers for bench/cycle.py: N curl processes GET /metrics like Prometheus does (gzip,
keep-alive) for a while; curl's own timer measures each transfer. Prints every latency as JSON.

    python bench/_scrapers.py URL SCRAPERS SECONDS [CA_FILE]"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

BATCH = 5  # transfers per curl process, over one kept-alive connection


def scrape_for(url: str, seconds: float, ca: str = "") -> list[float]:
    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        command = ["curl", "-s", "-H", "Accept-Encoding: gzip", "-w", "%{time_total}\\n"]
        if ca:
            command += ["--cacert", ca]
        for _ in range(BATCH):
            command += ["-o", "/dev/null", url]
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        latencies.extend(float(x) for x in out.split())
    return latencies


def main() -> None:
    url, scrapers, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    ca = sys.argv[4] if len(sys.argv) > 4 else ""  # https: the CA file that signed the server's certificate
    with ThreadPoolExecutor(scrapers) as pool:
        results = list(pool.map(lambda _: scrape_for(url, seconds, ca), range(scrapers)))
    print(json.dumps([x for r in results for x in r]))


if __name__ == "__main__":
    main()
