"""The scrape front under hostile connections: trickling and idle floods, running out of descriptors, fuzzed
requests. Outcomes only: scrapes still answered, threads and descriptors back, no crash."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import http.client
import logging
import os
import resource
import socket
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oa_exporter.adapters.sinks.exposition import ExpositionPage
from oa_exporter.entrypoints import daemon, head_deadline, scrape_front
from oa_exporter.entrypoints.scrape_front import Malformed, Scrape, parse_scrape
from oa_exporter.settings import Settings

PAGE_TEXT = b"".join(b'oa_y{rule="r",i="%d"} %d.5\n' % (i, i) for i in range(2000))
HTTP_FUZZ_EXAMPLES = int(os.environ.get("HTTP_FUZZ_EXAMPLES", "10000"))  # in-process parses; a share also over sockets
SOCKET_FUZZ_EVERY = 25


@pytest.fixture
async def server():
    page = ExpositionPage(extra=lambda: PAGE_TEXT)
    page.flush()
    reloads = []

    async def load_rules() -> bool:
        reloads.append(1)
        return True

    app = SimpleNamespace(page=page, rules=object(), ready=lambda: True, load_rules=load_rules,
                          rules_status=list, reload_problems=[],
                          settings=Settings())
    web = await daemon._start_web(app, "127.0.0.1:0", enable_lifecycle=True)
    web.reloads = reloads
    yield web
    await web.cleanup()


def scrape(port: int) -> bytes:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", "/metrics")
        response = connection.getresponse()
        assert response.status == 200
        return response.read()
    finally:
        connection.close()


def front_threads() -> int:
    """Threads but the event loop's executor (the test's own asyncio.to_thread calls start those)."""
    return sum(1 for t in threading.enumerate() if not t.name.startswith("asyncio_"))


def descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


async def settled(expected_threads: int, expected_fds: int, timeout: float = 20.0) -> tuple[int, int]:
    for _ in range(int(timeout / 0.1)):
        now = front_threads(), descriptors()
        if now[0] <= expected_threads and now[1] <= expected_fds:
            return now
        await asyncio.sleep(0.1)
    return front_threads(), descriptors()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="127.0.0.2 is a loopback address on Linux")
async def test_500_trickling_connections_do_not_stop_scrapes_and_leave_nothing_behind(server, monkeypatch, caplog):
    monkeypatch.setattr(scrape_front, "HEADER_TIMEOUT", 2.0)
    port = server.front.port
    assert PAGE_TEXT in await asyncio.to_thread(scrape, port)
    threads, fds = front_threads(), descriptors()
    tricklers = []
    for _ in range(500):  # another client address: the front's per-client cap applies to it alone
        sock = socket.socket()
        sock.bind(("127.0.0.2", 0))
        sock.connect(("127.0.0.1", port))
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHo")
        tricklers.append(sock)
    try:
        for _ in range(20):
            assert PAGE_TEXT in await asyncio.to_thread(scrape, port)
            for sock in tricklers[:50]:
                with contextlib.suppress(OSError):  # cut already
                    sock.send(b"s")
        assert "closing connections from 127.0.0.2" in caplog.text
        await asyncio.sleep(2.5)  # past the header timeout: the ones the front held are cut
        assert PAGE_TEXT in await asyncio.to_thread(scrape, port)
    finally:
        for sock in tricklers:
            sock.close()
    assert await settled(threads, fds) <= (threads, fds)


async def test_the_acceptor_survives_running_out_of_descriptors(server, caplog):
    port = server.front.port
    for _ in range(3):  # a descriptor freed elsewhere in the process (a collected socket) lets one accept through
        out = await _connect_while_out_of_descriptors(port, caplog)
        assert out.startswith(b"HTTP/1.1 200")
        if "cannot accept connections" in caplog.text:
            break
    assert "cannot accept connections" in caplog.text
    assert PAGE_TEXT in await asyncio.to_thread(scrape, port)


async def _connect_while_out_of_descriptors(port: int, caplog) -> bytes:
    """What a client that connects while this process has no descriptor left gets once they are back."""
    client = subprocess.Popen([sys.executable, "-c", CLIENT, str(port)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert client.stdout is not None and client.stdin is not None
    assert await asyncio.to_thread(client.stdout.readline) == b"ready\n"
    gc.collect()  # close unreferenced sockets now, not while the table is full
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    filler = []
    resource.setrlimit(resource.RLIMIT_NOFILE, (descriptors() + 16, hard))
    try:
        with pytest.raises(OSError):
            while True:
                filler.append(socket.socket())
        client.stdin.write(b"go\n")
        client.stdin.flush()
        for _ in range(300):  # the client connects now; accept fails with EMFILE and backs off
            if "cannot accept connections" in caplog.text:
                break
            await asyncio.sleep(0.1)
    finally:
        for sock in filler:
            sock.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    out = await asyncio.to_thread(client.stdout.read)
    client.wait(timeout=30)
    return out


CLIENT = """
import socket, sys
print("ready", flush=True)
sys.stdin.readline()
sock = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=20)
sock.sendall(b"GET /metrics HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n")
sys.stdout.buffer.write(sock.recv(64))
"""

METHODS = [b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PRI", b"G\x00T", b""]
PATHS = [b"/metrics", b"/metrics?x=1", b"/-/reload", b"/-/healthy", b"/api/v1/rules", b"*", b"/" * 300, b"/\xff"]
VERSIONS = [b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.1 ", b"", b"http/1.1"]
HEADERS = [b"Host: x", b"Host: y", b"Content-Length: 0", b"Content-Length: 5", b"Content-Length: -1",
           b"Content-Length: 1e3", b"Transfer-Encoding: chunked", b"Transfer-Encoding : chunked",
           b"Accept-Encoding: gzip", b"Accept-Encoding: gzip;q=0", b"Accept-Encoding: gzip;q=abc",
           b"Connection: close", b"Connection: keep-alive", b"Expect: 100-continue", b"Upgrade: h2c",
           b"Authorization: Basic !!!", b" folded", b"X: \x00", b"X:\x7f", b"NoColon", b":", b"X-" + b"a" * 9000]
SEPARATORS = [b"\r\n", b"\n", b"\r", b"\r\r\n"]


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    line = b" ".join([draw(st.sampled_from(METHODS)), draw(st.sampled_from(PATHS)), draw(st.sampled_from(VERSIONS))])
    parts = [line] + draw(st.lists(st.sampled_from(HEADERS), max_size=6))
    separator = draw(st.sampled_from(SEPARATORS))
    head = separator.join(parts) + draw(st.sampled_from([b"\r\n\r\n", b"\n\n", b"\r\n", b""]))
    body = draw(st.sampled_from([b"", b"hello", SMUGGLE, b"0\r\n\r\n" + SMUGGLE]))
    data = head + body
    if draw(st.booleans()):  # flip bytes
        raw = bytearray(data)
        for _ in range(draw(st.integers(1, 3))):
            raw[draw(st.integers(0, max(len(raw) - 1, 0)))] = draw(st.integers(0, 255))
        data = bytes(raw)
    return data


SMUGGLE = b"POST /-/reload HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"


def exchange(port: int, data: bytes, half_close: bool = True) -> bytes:
    """Send `data` (then end the sending side, unless told not to) and read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        try:
            while chunk := sock.recv(1 << 16):
                chunks.append(chunk)
        except ConnectionResetError:
            pass
    return b"".join(chunks)


async def test_fuzzed_requests_never_crash_the_front(server, monkeypatch):
    monkeypatch.setattr(scrape_front, "HEADER_TIMEOUT", 0.05)
    port = server.front.port
    threads, fds = front_threads(), descriptors()
    sent = {"parsed": 0, "sockets": 0}

    @settings(max_examples=HTTP_FUZZ_EXAMPLES, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(requests())
    def one(data: bytes) -> None:
        sent["parsed"] += 1
        with contextlib.suppress(Malformed):
            assert isinstance(parse_scrape(data), Scrape | None)
        if sent["parsed"] % SOCKET_FUZZ_EVERY == 0:
            sent["sockets"] += 1
            exchange(port, data)

    await asyncio.to_thread(one)
    assert sent["parsed"] >= HTTP_FUZZ_EXAMPLES and sent["sockets"] >= HTTP_FUZZ_EXAMPLES // SOCKET_FUZZ_EVERY
    assert PAGE_TEXT in await asyncio.to_thread(scrape, port)
    assert await settled(threads, fds) <= (threads, fds)


async def test_garbage_handed_to_aiohttp_writes_no_traceback(server, caplog):
    for garbage in (b"NOT HTTP AT ALL\r\n\r\n", b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1x\r\n\r\n",
                    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n"):
        answer = await asyncio.to_thread(exchange, server.front.port, garbage, False)  # aiohttp closes after 400
        assert answer.startswith(b"HTTP/1.") and b" 400 " in answer[:20], garbage
    assert "Traceback" not in caplog.text and not [r for r in caplog.records if r.levelno >= logging.ERROR]


def trickle_until_cut(sock: socket.socket, limit: float) -> float | None:
    """Send a byte of headers every 0.2 s: the seconds until the server closed the connection, None if it
    still had not after `limit`."""
    sock.settimeout(0.2)
    started = time.monotonic()
    while time.monotonic() - started < limit:
        try:
            if sock.recv(1 << 16) == b"":
                return time.monotonic() - started
        except TimeoutError:
            pass
        except ConnectionResetError:
            return time.monotonic() - started
        try:
            sock.send(b"x")
        except (BrokenPipeError, ConnectionResetError):
            return time.monotonic() - started
    return None


def connect_from(address: str, port: int) -> socket.socket:
    sock = socket.socket()
    sock.bind((address, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def scrape_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name == "scrape")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="127.0.0.x are loopback addresses on Linux")
async def test_a_trickler_handed_to_aiohttp_while_the_front_is_full_is_cut_after_the_header_timeout(server,
                                                                                                   monkeypatch):
    monkeypatch.setattr(scrape_front, "HEADER_TIMEOUT", 120.0)  # the front's own tricklers stay all along
    monkeypatch.setattr(head_deadline, "HEADER_TIMEOUT", 1.0)
    port, held = server.front.port, []
    try:
        for client in range(scrape_front.MAX_CONNECTIONS // scrape_front.MAX_PER_CLIENT):  # every front thread
            for _ in range(scrape_front.MAX_PER_CLIENT):
                held.append(connect_from(f"127.0.0.{2 + client}", port))
                held[-1].sendall(b"GET /metrics HTTP/1.1\r\nHo")
        deadline = time.monotonic() + 60.0  # 64 threads to start on a busy machine
        while scrape_threads() < scrape_front.MAX_CONNECTIONS and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert scrape_threads() == scrape_front.MAX_CONNECTIONS
        assert PAGE_TEXT in await asyncio.to_thread(scrape, port)  # answered by aiohttp meanwhile
        with connect_from("127.0.0.20", port) as trickler:
            trickler.sendall(b"GET /api/v1/rules HTTP/1.1\r\nHo")
            cut = await asyncio.to_thread(trickle_until_cut, trickler, 30.0)  # aiohttp alone: 75 s
        assert cut is not None and cut < 30.0
    finally:
        for sock in held:
            sock.close()


class Responses:
    """A kept-alive connection's responses, read one after another. Bytes past one response are the next's:
    a slow reader (a loaded machine) gets pipelined responses in one recv."""

    def __init__(self, sock: socket.socket):
        self._sock, self._buffered = sock, b""

    def next(self) -> bytes:
        """The next Content-Length framed response's head (its body read past); b"" when the server closed the
        connection first."""
        while (end := self._buffered.find(b"\r\n\r\n")) < 0:
            if not self._receive():
                return b""
        head = self._buffered[:end]
        length = int(next(x.split(b":")[1] for x in head.split(b"\r\n") if x.lower().startswith(b"content-length")))
        while len(self._buffered) < end + 4 + length:
            if not self._receive():
                return b""
        self._buffered = self._buffered[end + 4 + length:]
        return head

    def unread(self) -> bytes:
        return self._buffered

    def _receive(self) -> bool:
        chunk = self._sock.recv(1 << 16)
        self._buffered += chunk
        return bool(chunk)


async def test_a_kept_alive_connection_aiohttp_serves_is_cut_when_its_next_head_trickles(server, monkeypatch):
    monkeypatch.setattr(head_deadline, "HEADER_TIMEOUT", 1.0)
    with socket.create_connection(("127.0.0.1", server.front.port), timeout=30) as sock:  # a busy machine
        responses = Responses(sock)
        sock.sendall(b"POST /-/reload HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\nab\r\n\r\ncd!"
                     b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n")  # a body, then a pipelined request
        assert (await asyncio.to_thread(responses.next)).startswith(b"HTTP/1.1 200")
        assert (await asyncio.to_thread(responses.next)).startswith(b"HTTP/1.1 200")
        await asyncio.sleep(1.5)  # idle between requests is the keep-alive timer's (75 s), not the head's
        sock.sendall(b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await asyncio.to_thread(responses.next)).startswith(b"HTTP/1.1 200")
        assert responses.unread() == b""
        sock.sendall(b"GET /-/healthy HTTP/1.1\r\nHo")
        cut = await asyncio.to_thread(trickle_until_cut, sock, 30.0)
    assert cut is not None and cut < 30.0 and server.reloads == [1]


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_a_slow_body_is_not_taken_for_a_slow_head(server, monkeypatch, framing):
    monkeypatch.setattr(head_deadline, "HEADER_TIMEOUT", 0.5)
    parts = [b"ab\r\n\r\n", b"cd", b"!"]
    if framing == "chunked":
        head, parts = b"Transfer-Encoding: chunked", [b"%x\r\n%s\r\n" % (len(p), p) for p in parts] + [b"0\r\n\r\n"]
    else:
        head = b"Content-Length: %d" % sum(map(len, parts))
    with socket.create_connection(("127.0.0.1", server.front.port), timeout=30) as sock:  # a busy machine
        sock.sendall(b"POST /-/reload HTTP/1.1\r\nHost: x\r\n" + head + b"\r\n\r\n")
        for part in parts:
            await asyncio.sleep(0.4)  # 1.2 s or more in all: past the head timeout
            sock.sendall(part)
        assert (await asyncio.to_thread(Responses(sock).next)).startswith(b"HTTP/1.1 200")
    assert server.reloads == [1]


async def test_a_body_whose_length_is_not_the_last_header_is_not_taken_for_the_next_head(server, monkeypatch):
    monkeypatch.setattr(head_deadline, "HEADER_TIMEOUT", 0.5)  # as urllib and browsers send them: more headers after
    with socket.create_connection(("127.0.0.1", server.front.port), timeout=30) as sock:  # a busy machine
        responses = Responses(sock)
        sock.sendall(b"POST /-/reload HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Type: application/json"
                     b"\r\n\r\n{}")
        assert (await asyncio.to_thread(responses.next)).startswith(b"HTTP/1.1 200")
        await asyncio.sleep(1.0)  # a slow answer (a preview) would have been cut here: its body read as a head
        sock.sendall(b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await asyncio.to_thread(responses.next)).startswith(b"HTTP/1.1 200")
    assert server.reloads == [1]

