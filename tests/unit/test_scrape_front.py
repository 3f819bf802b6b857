"""The public listener: /metrics from threads, everything else from aiohttp, over real loopback sockets."""

from __future__ import annotations

import asyncio
import gzip
import http.client
import os
import socket
import sys
import threading
import time
from types import SimpleNamespace

import pytest

from oa_exporter.adapters.sinks.exposition import ExpositionPage
from oa_exporter.entrypoints import daemon
from oa_exporter.entrypoints.scrape_front import Malformed, ScrapeFront, parse_scrape
from oa_exporter.settings import Settings

PAGE_TEXT = b"".join(b'oa_y{rule="r",i="%d"} %d.5\n' % (i, i) for i in range(5000))


@pytest.fixture
async def server():
    page = ExpositionPage(extra=lambda: PAGE_TEXT)
    page.flush()
    reloads = []

    async def load_rules() -> bool:
        reloads.append(time.time())
        return True

    app = SimpleNamespace(page=page, rules=object(), ready=lambda: True, load_rules=load_rules,
                          rules_status=list, reload_problems=[],
                          settings=Settings())
    web = await daemon._start_web(app, "127.0.0.1:0", enable_lifecycle=True)
    web.reloads = reloads
    yield web
    await web.cleanup()


def exchange(port: int, requests: list[tuple[str, str, dict]]) -> list[tuple[int, dict, bytes]]:
    """Requests over one kept-alive connection (http.client, as a scraper would)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    answers = []
    for method, path, headers in requests:
        connection.request(method, path, headers=headers)
        response = connection.getresponse()
        answers.append((response.status, dict(response.headers), response.read()))
    connection.close()
    return answers


def raw(port: int, data: bytes, pause: float = 0.0, split: int | None = None) -> bytes:
    """Send bytes (optionally in two parts with a pause) and read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        if split is not None:
            sock.sendall(data[:split])
            time.sleep(pause)
            data = data[split:]
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(1 << 16):
            chunks.append(chunk)
    return b"".join(chunks)


GZIP = {"Accept-Encoding": "gzip"}


async def test_a_scrape_gets_the_rendered_page_gzipped_or_plain(server):
    answers = await asyncio.to_thread(exchange, server.front.port, [
        ("GET", "/metrics", GZIP), ("GET", "/metrics", {}), ("HEAD", "/metrics", GZIP)])
    (status, headers, body), (plain_status, plain_headers, plain), (_, head_headers, head_body) = answers
    assert status == plain_status == 200
    assert headers["Content-Encoding"] == "gzip" and gzip.decompress(body) == plain
    assert PAGE_TEXT in plain and "Content-Encoding" not in plain_headers
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert head_body == b"" and int(head_headers["Content-Length"]) == len(body)
    assert "Server" not in headers and "GMT" in headers["Date"]  # answered by the front's thread, not aiohttp


async def test_other_requests_on_a_scrape_connection_reach_the_api(server):
    answers = await asyncio.to_thread(exchange, server.front.port, [
        ("GET", "/metrics", GZIP), ("GET", "/-/healthy", {}), ("POST", "/-/reload", {}),
        ("GET", "/api/v1/rules", {}), ("GET", "/metrics", GZIP), ("GET", "/nowhere", {})])
    statuses = [status for status, _, _ in answers]
    assert statuses == [200, 200, 200, 200, 200, 404]
    assert answers[1][2] == b"OpenAnomaly is Healthy.\n" and len(server.reloads) == 1
    assert gzip.decompress(answers[4][2]) == gzip.decompress(answers[0][2])  # aiohttp sends the same page


async def test_what_the_front_does_not_serve_gets_aiohttp_answers(server):
    port = server.front.port
    garbage = await asyncio.to_thread(raw, port, b"NOT HTTP AT ALL\r\n\r\n")
    posted = await asyncio.to_thread(raw, port, b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                                                b"Connection: close\r\n\r\nhi")
    assert garbage.startswith(b"HTTP/1.0 400") or garbage.startswith(b"HTTP/1.1 400")
    assert posted.startswith(b"HTTP/1.1 405")


async def test_headers_in_two_packets_and_connection_close(server):
    request = b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    answer = await asyncio.to_thread(raw, server.front.port, request, 0.1, 20)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"Connection: close" in head
    assert PAGE_TEXT in body


async def test_scrapes_beyond_the_thread_limit_are_still_answered():
    page = ExpositionPage(extra=lambda: PAGE_TEXT)
    page.flush()
    app = SimpleNamespace(page=page, rules=object(), ready=lambda: True, load_rules=None,
                          rules_status=list, reload_problems=[],
                          settings=Settings())
    web = await daemon._start_web(app, "127.0.0.1:0")
    web.front._slots = threading.BoundedSemaphore(1)  # one scrape thread
    try:
        idle = socket.create_connection(("127.0.0.1", web.front.port))  # holds the one thread
        answers = await asyncio.to_thread(exchange, web.front.port, [("GET", "/metrics", {})])
        assert answers[0][0] == 200 and PAGE_TEXT in answers[0][2]
        assert "Server" in answers[0][1]  # aiohttp took it
        idle.close()
    finally:
        await web.cleanup()


async def test_a_taken_address_fails_at_start_and_close_stops_serving(server):
    port = server.front.port
    with pytest.raises(OSError):
        ScrapeFront(lambda gz: b"", "text/plain", lambda s: s.close()).start("127.0.0.1", port)
    server.front.close()
    server.front.close()  # twice is fine
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).recv(1)


@pytest.mark.parametrize("request_bytes, expected", [
    (b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\n\r\n", (True, False, True)),
    (b"HEAD /metrics?x=1 HTTP/1.1\r\nHost: x\r\n\r\n", (False, True, True)),
    (b"GET /metrics HTTP/1.0\r\n\r\n", (False, False, False)),
    (b"GET /metrics HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", (False, False, True)),
    (b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", (False, False, False)),
])
def test_scrape_requests_are_recognised(request_bytes, expected):
    scrape = parse_scrape(request_bytes)
    assert scrape is not None and scrape.head_length == len(request_bytes)
    assert (scrape.gzip, scrape.head_only, scrape.keep_alive) == expected


@pytest.mark.parametrize("request_bytes", [
    b"GET /metrics HTTP/1.1\r\nHost: x\r\n",  # headers not complete yet
    b"GET /metricsx HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
    b"GET /metrics HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"GET /metrics HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\n\r\n",
    b"GET /metrics HTTP/2.0\r\n\r\n",
    b"GET  /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
])
def test_everything_else_is_left_to_aiohttp(request_bytes):
    assert parse_scrape(request_bytes) is None


@pytest.mark.parametrize("request_bytes", [
    b"GET /metrics HTTP/1.1\r\nHost: x\r\nbad header line\r\n\r\n",
    b"GET /metrics HTTP/1.1\r\n\r\n",  # HTTP/1.1 needs a Host
    b"GET /-/healthy HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
])
def test_ambiguous_heads_are_malformed(request_bytes):
    with pytest.raises(Malformed):
        parse_scrape(request_bytes)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread niceness is Linux's")
async def test_background_work_runs_nicer_than_the_scrape_threads():
    daemon.run_background_work_nicer(asyncio.get_running_loop())

    def niceness() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    assert await asyncio.to_thread(niceness) == min(19, niceness() + daemon.BACKGROUND_NICENESS)
