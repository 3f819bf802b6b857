"""What TLS costs a /metrics scrape, split into the daemon's share and the scraper's.

    python bench/tls_scrape.py --series 10000 --seconds 5

The same page (N series, gzipped as Prometheus asks) is served plain and over TLS (`--web.config.file`, a
certificate made for the run) by the daemon's own front, and scraped by scrapers in another process for a
while, each opening a new connection every 5 scrapes and keeping it alive between them. Printed, TLS against
plain in the same run:
(a) the daemon's CPU time per scrape (this process serves and does nothing else meanwhile);
(b) scrape latency p50/p99 with 4 lean scrapers (Python's ssl, no session resumption, as Prometheus scrapes);
(c) the same with the curl scrapers of bench/cycle.py (a curl process per 5 scrapes), and the scrapers' own
    CPU per scrape, which on a small machine competes with the daemon for the same cores.
The last line is one JSON object with the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from oa_exporter.adapters.sinks.exposition import ExpositionPage  # noqa: E402
from oa_exporter.entrypoints.daemon import _start_web, share_the_gil_finely  # noqa: E402
from oa_exporter.entrypoints.web_guard import WebGuard  # noqa: E402
from oa_exporter.settings import Settings  # noqa: E402

BATCH = 5  # scrapes per connection, as bench/_scrapers.py's curl processes
LEAN_SCRAPERS = 4
REQUEST = b"GET /metrics HTTP/1.1\r\nHost: bench\r\nAccept-Encoding: gzip\r\n\r\n"


def page_text(n: int) -> bytes:
    return b"".join(b'oa_anomaly_score{rule="bench",instance="10.0.%d.%d:9100",job="svc-%d"} %r\n'
                    % (i // 256 % 256, i % 256, i % 50, i * 0.37) for i in range(n))


def cpu(who: int = resource.RUSAGE_SELF) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


# -- the lean scrapers (run as `tls_scrape.py --scrape PORT SECONDS [CA]` in a child process) --------------

def scrape_connection(port: int, context: ssl.SSLContext | None, batch: int, deadline: float) -> list[float]:
    """`batch` scrapes over one new connection (fewer past `deadline`); each one's seconds (the first includes
    connect and handshake)."""
    started = time.perf_counter()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    conn: socket.socket = context.wrap_socket(sock, server_hostname="127.0.0.1") if context else sock
    latencies, buffer = [], bytearray(1 << 20)
    with conn:
        for _ in range(batch):
            if latencies and time.monotonic() > deadline:
                break
            conn.sendall(REQUEST)
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(1 << 16)
            head, _, body = data.partition(b"\r\n\r\n")
            length = int(next(x for x in head.split(b"\r\n") if x.lower().startswith(b"content-length:"))[15:])
            got = len(body)
            while got < length:
                got += conn.recv_into(buffer)
            latencies.append(time.perf_counter() - started)
            started = time.perf_counter()
    return latencies


def lean_scrapers(port: int, seconds: float, batch: int, ca: str) -> None:
    context = ssl.create_default_context(cafile=ca) if ca else None
    deadline, results = time.monotonic() + seconds, []

    def scraper() -> None:
        while time.monotonic() < deadline:
            results.extend(scrape_connection(port, context, batch, deadline))

    threads = [threading.Thread(target=scraper) for _ in range(LEAN_SCRAPERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps(results))


# -- the bench ---------------------------------------------------------------------------------------------

async def scrape_for(port: int, seconds: float, ca: str, clients: str) -> dict:
    url = f"{'https' if ca else 'http'}://127.0.0.1:{port}/metrics"
    batch = {"lean": BATCH, "kept": 1_000_000}.get(clients, BATCH)
    curl = clients == "curl"
    script = [str(Path(__file__).with_name("_scrapers.py")), url, "4", str(seconds)] if curl else \
        [__file__, "--scrape", str(port), str(seconds), str(batch)]
    children, served = cpu(resource.RUSAGE_CHILDREN), cpu()
    process = await asyncio.create_subprocess_exec(sys.executable, *script, *([ca] if ca else []),
                                                   stdout=subprocess.PIPE)
    out, _ = await process.communicate()
    served, children = cpu() - served, cpu(resource.RUSAGE_CHILDREN) - children
    latencies = sorted(json.loads(out))
    p50, p99 = statistics.median(latencies) * 1000, latencies[int(len(latencies) * 0.99)] * 1000
    return {"p50": p50, "p99": p99, "n": len(latencies), "server_cpu_ms": served / len(latencies) * 1000,
            "client_cpu_ms": children / len(latencies) * 1000}


async def run(n: int, seconds: float) -> dict:
    share_the_gil_finely()  # as `oa-exporter run` does
    page = ExpositionPage(extra=lambda: page_text(n))
    page.flush()
    app = SimpleNamespace(page=page, rules=object(), ready=lambda: True, load_rules=None, rules_status=list,
                          reload_problems=[], settings=Settings())
    from tests.certs import make_pki, web_config

    found: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        pki = make_pki(Path(tmp))
        config = str(web_config(Path(tmp) / "web.yml", pki))
        for scheme, web_file in (("plain", ""), ("tls", config)):
            web = await _start_web(app, "127.0.0.1:0", False, WebGuard(web_file))
            try:
                for clients in ("lean", "kept", "curl"):
                    ca = str(pki.ca) if web_file else ""
                    found[f"{scheme}_{clients}"] = await scrape_for(web.front.port, seconds, ca, clients)
            finally:
                await web.cleanup()
    return report(n, len(page.page(gzipped=True)), found)


def report(n: int, size: int, found: dict[str, dict]) -> dict:
    plain, tls = found["plain_lean"], found["tls_lean"]
    ratios = {"server_cpu_ratio": tls["server_cpu_ms"] / plain["server_cpu_ms"],
              "lean_p50_ratio": tls["p50"] / plain["p50"], "lean_p99_ratio": tls["p99"] / plain["p99"],
              "curl_p50_ratio": found["tls_curl"]["p50"] / found["plain_curl"]["p50"],
              "curl_p99_ratio": found["tls_curl"]["p99"] / found["plain_curl"]["p99"]}
    print(f"{n} series, {size / 1e6:.2f} MB gzipped; ratios are TLS / plain, measured in this run")
    print(f"(a) daemon CPU per scrape  plain {plain['server_cpu_ms']:.3f} ms   TLS {tls['server_cpu_ms']:.3f} ms"
          f"   ratio {ratios['server_cpu_ratio']:.2f}")
    print(f"(b) lean scrapers          plain p50 {plain['p50']:.2f} p99 {plain['p99']:.2f} ms   TLS p50 "
          f"{tls['p50']:.2f} p99 {tls['p99']:.2f} ms   ratio p50 {ratios['lean_p50_ratio']:.2f} p99 "
          f"{ratios['lean_p99_ratio']:.2f}"
          f"   ({plain['n']} / {tls['n']} scrapes)")
    kept_plain, kept_tls = found["plain_kept"], found["tls_kept"]
    ratios |= {"kept_p50_ratio": kept_tls["p50"] / kept_plain["p50"],
               "kept_p99_ratio": kept_tls["p99"] / kept_plain["p99"],
               "kept_server_cpu_ratio": kept_tls["server_cpu_ms"] / kept_plain["server_cpu_ms"]}
    print(f"(b') one kept-alive connection per scraper, as Prometheus keeps one: plain p50 {kept_plain['p50']:.2f} p99 "
          f"{kept_plain['p99']:.2f} ms   TLS p50 {kept_tls['p50']:.2f} p99 {kept_tls['p99']:.2f} ms   ratio p50 "
          f"{ratios['kept_p50_ratio']:.2f} p99 {ratios['kept_p99_ratio']:.2f}; daemon CPU per scrape ratio "
          f"{ratios['kept_server_cpu_ratio']:.2f}")
    curl_plain, curl_tls = found["plain_curl"], found["tls_curl"]
    print(f"(c) curl scrapers          plain p50 {curl_plain['p50']:.2f} p99 {curl_plain['p99']:.2f} ms   TLS p50 "
          f"{curl_tls['p50']:.2f} p99 {curl_tls['p99']:.2f} ms   ratio p50 {ratios['curl_p50_ratio']:.2f} p99 "
          f"{ratios['curl_p99_ratio']:.2f}")
    print(f"    CPU per scrape: curl plain {curl_plain['client_cpu_ms']:.2f} ms, TLS "
          f"{curl_tls['client_cpu_ms']:.2f} ms; daemon plain {curl_plain['server_cpu_ms']:.3f} ms, TLS "
          f"{curl_tls['server_cpu_ms']:.3f} ms")
    return {k: round(v, 2) for k, v in ratios.items()}


def main() -> None:
    if sys.argv[1:2] == ["--scrape"]:
        lean_scrapers(int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), sys.argv[5] if len(sys.argv) > 5 else "")
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--series", type=int, default=10000)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.series, args.seconds))))


if __name__ == "__main__":
    main()
