"""The port behind `--web.config.file`: TLS (also mutual), basic auth and headers on every path, the scrape
front included; the lifecycle gate; requests that could smuggle a second request refused."""

from __future__ import annotations

import asyncio
import gzip
import shutil
import socket
import ssl
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from oa_exporter.adapters.sinks.exposition import ExpositionPage
from oa_exporter.entrypoints import daemon
from oa_exporter.entrypoints.allowed_hosts import AllowedHosts
from oa_exporter.entrypoints.web_config import WebConfigError, load_web_config
from oa_exporter.entrypoints.web_guard import WebGuard
from oa_exporter.settings import Settings
from tests.certs import make_pki, web_config

PAGE_TEXT = b"".join(b'oa_y{rule="r",i="%d"} %d.5\n' % (i, i) for i in range(2000))
HSTS = "max-age=31536000"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


async def start(config: Path | None, enable_lifecycle: bool = False, guard: WebGuard | None = None,
                allowed_hosts: tuple[str, ...] = ()):
    page = ExpositionPage(extra=lambda: PAGE_TEXT)
    page.flush()
    reloads = []

    async def load_rules() -> bool:
        reloads.append(time.time())
        return True

    app = SimpleNamespace(page=page, rules=object(), ready=lambda: True, load_rules=load_rules,
                          rules_status=list, reload_problems=[],
                          settings=Settings(web_allowed_hosts=allowed_hosts))
    web = await daemon._start_web(app, "127.0.0.1:0", enable_lifecycle, guard or WebGuard(str(config or "")))
    web.reloads = reloads
    return web


def curl(*args: str) -> tuple[int, str, str]:
    """curl's exit code, the HTTP status it saw and the body."""
    done = subprocess.run(["curl", "-s", "-o", "-", "-w", "\n%{http_code}", "--max-time", "10", *args],
                          capture_output=True, text=True, timeout=30)
    body, _, status = done.stdout.rpartition("\n")
    return done.returncode, status, body


needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


@needs_curl
async def test_tls_and_basic_auth_guard_every_path(pki, tmp_path):
    config = web_config(tmp_path / "web.yml", pki, {"alice": "s3cret"}, headers={"Strict-Transport-Security": HSTS})
    web = await start(config)
    try:
        base = f"https://127.0.0.1:{web.front.port}"
        ok = await asyncio.to_thread(curl, "--cacert", str(pki.ca), "-u", "alice:s3cret", "-i", f"{base}/metrics")
        assert ok[0] == 0 and ok[1] == "200" and 'oa_y{rule="r",i="1999"} 1999.5' in ok[2]
        assert f"Strict-Transport-Security: {HSTS}" in ok[2]
        wrong = await asyncio.to_thread(curl, "--cacert", str(pki.ca), "-u", "alice:nope", f"{base}/metrics")
        anonymous = await asyncio.to_thread(curl, "--cacert", str(pki.ca), "-i", f"{base}/api/v1/rules")
        api = await asyncio.to_thread(curl, "--cacert", str(pki.ca), "-u", "alice:s3cret", "-i", f"{base}/api/v1/rules")
        plain = await asyncio.to_thread(curl, f"http://127.0.0.1:{web.front.port}/metrics")
        assert wrong[1] == "401" and anonymous[1] == "401" and 'WWW-Authenticate: Basic' in anonymous[2]
        assert api[1] == "200" and '"status": "success"' in api[2] and f"Strict-Transport-Security: {HSTS}" in api[2]
        assert plain[1] != "200" and "oa_y" not in plain[2]
    finally:
        await web.cleanup()


@needs_curl
@pytest.mark.parametrize("enabled", [False, True])
async def test_reload_over_tls_needs_the_lifecycle_flag(pki, tmp_path, enabled):
    web = await start(web_config(tmp_path / "web.yml", pki, {"alice": "s3cret"}), enable_lifecycle=enabled)
    try:
        answer = await asyncio.to_thread(curl, "--cacert", str(pki.ca), "-u", "alice:s3cret", "-X", "POST",
                                         f"https://127.0.0.1:{web.front.port}/-/reload")
        assert answer[1] == ("200" if enabled else "403") and len(web.reloads) == int(enabled)
        if not enabled:
            assert answer[2] == "Lifecycle API is not enabled.\n"
    finally:
        await web.cleanup()


def fetch(port: int, ca: Path, cert: tuple[Path, Path] | None = None, request: bytes | None = None) -> bytes:
    context = ssl.create_default_context(cafile=str(ca))
    if cert:
        context.load_cert_chain(*cert)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw_sock, \
            context.wrap_socket(raw_sock, server_hostname="127.0.0.1") as tls:
        tls.sendall(request or b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        chunks = []
        while chunk := tls.recv(1 << 16):
            chunks.append(chunk)
    return b"".join(chunks)


async def test_mutual_tls_refuses_a_client_without_a_certificate(pki, tmp_path):
    web = await start(web_config(tmp_path / "web.yml", pki, client_auth=True))
    try:
        answer = await asyncio.to_thread(fetch, web.front.port, pki.ca, (pki.client_cert, pki.client_key))
        assert answer.startswith(b"HTTP/1.1 200") and PAGE_TEXT in answer
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await asyncio.to_thread(fetch, web.front.port, pki.ca)
    finally:
        await web.cleanup()


def server_certificate(port: int, ca: Path) -> bytes:
    context = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw_sock, \
            context.wrap_socket(raw_sock, server_hostname="127.0.0.1") as tls:
        certificate = tls.getpeercert(binary_form=True)
    assert certificate is not None
    return certificate


async def test_a_rotated_certificate_is_served_without_a_restart(tmp_path):
    first = make_pki(tmp_path / "first")
    live = make_pki(tmp_path / "live")
    for name in ("server.crt", "server.key"):
        shutil.copy(first.server_cert.parent / name, live.server_cert.parent / name)
    web = await start(web_config(tmp_path / "web.yml", live))
    try:
        before = await asyncio.to_thread(server_certificate, web.front.port, first.ca)
        second = make_pki(tmp_path / "second")
        for name in ("server.key", "server.crt"):  # as cert-manager does: new files in place
            shutil.copy(second.server_cert.parent / name, live.server_cert.parent / name)
        for _ in range(100):
            try:
                after = await asyncio.to_thread(server_certificate, web.front.port, second.ca)
                break
            except ssl.SSLError:  # still the old certificate: checked once a second
                await asyncio.sleep(0.1)
        assert after != before
    finally:
        await web.cleanup()


@pytest.mark.parametrize(("text", "key"), [
    ("tls_server_config: {cert_file: a.crt}\n", "tls_server_config.key_file"),
    ("tls_server_config: {cert_file: a.crt, key_file: a.key, min_version: TLS9}\n", "tls_server_config.min_version"),
    ("tls_server_config: {cert_file: a.crt, key_file: a.key, client_auth_type: RequireAnyClientCert}\n",
     "tls_server_config.client_auth_type"),
    ("tls_server_config: {cert_file: a.crt, key_file: a.key, cipher_suites: [TLS_NOPE]}\n",
     "tls_server_config.cipher_suites"),
    ("tls_server_config: {cert_file: missing.crt, key_file: missing.key}\n", "tls_server_config"),
    ("basic_auth_users: {alice: plaintext}\n", "basic_auth_users.alice"),
    ("http_server_config: {headers: {Content-Type: x}}\n", "http_server_config.headers.Content-Type"),
    ("http_server_config: {colour: blue}\n", "http_server_config.colour"),
    ("tls_config: {}\n", "tls_config"),
])
def test_a_bad_web_config_names_the_key(tmp_path, text, key):
    path = tmp_path / "web.yml"
    path.write_text(text)
    with pytest.raises(WebConfigError) as caught:
        load_web_config(str(path))
    assert key in str(caught.value) and str(path) in str(caught.value)


async def test_a_bad_web_config_on_reload_keeps_the_previous_one(pki, tmp_path):
    config = web_config(tmp_path / "web.yml", pki, {"alice": "s3cret"})
    web = await start(config, enable_lifecycle=True)
    try:
        config.write_text("basic_auth_users: {alice: plaintext}\n")
        assert not await web.reload()
        answer = await asyncio.to_thread(fetch, web.front.port, pki.ca)  # still TLS, still behind auth
        assert answer.startswith(b"HTTP/1.1 401")
    finally:
        await web.cleanup()


def raw(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(1 << 16):
            chunks.append(chunk)
    return b"".join(chunks)


SMUGGLED = b"POST /-/reload HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"


@pytest.mark.parametrize("request_bytes", [
    b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nContent-Length: 0\r\n\r\n" % len(SMUGGLED) + SMUGGLED,
    b"GET /metrics HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n" + SMUGGLED,
    b"GET /metrics HTTP/1.1\r\nHost: x\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED,
    b"GET /metrics HTTP/1.1\r\nHost: x\x00y\r\n\r\n" + SMUGGLED,
    b"GET /metrics HTTP/1.1\r\nAccept: */*\r\n\r\n" + SMUGGLED,
    b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n" + SMUGGLED,
    b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\n\r\n" + SMUGGLED,
], ids=["two-content-lengths", "te-and-cl", "bare-lf", "nul", "no-host", "negative-length", "folded"])
async def test_ambiguous_requests_get_400_and_nothing_behind_them_runs(request_bytes):
    web = await start(None, enable_lifecycle=True)
    try:
        answer = await asyncio.to_thread(raw, web.front.port, request_bytes)
        assert answer.startswith(b"HTTP/1.1 400") and answer.count(b"HTTP/1.") == 1
        assert web.reloads == []
    finally:
        await web.cleanup()


async def test_gzip_refused_with_q_0_is_not_sent():
    web = await start(None)
    try:
        refused = await asyncio.to_thread(raw, web.front.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n"
                                          b"Accept-Encoding: gzip;q=0, identity\r\nConnection: close\r\n\r\n")
        wanted = await asyncio.to_thread(raw, web.front.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n"
                                         b"Accept-Encoding: gzip;q=0.5\r\nConnection: close\r\n\r\n")
        assert b"Content-Encoding" not in refused.partition(b"\r\n\r\n")[0] and PAGE_TEXT in refused
        assert gzip.decompress(wanted.partition(b"\r\n\r\n")[2]) .startswith(PAGE_TEXT[:100]) or PAGE_TEXT in \
            gzip.decompress(wanted.partition(b"\r\n\r\n")[2])
    finally:
        await web.cleanup()


@needs_curl
async def test_a_workers_metrics_port_takes_the_same_web_config(pki, tmp_path):
    from oa_exporter.entrypoints.worker import _serve_metrics
    from tests.servers import free_port

    port = free_port()
    config = web_config(tmp_path / "web.yml", pki, {"alice": "s3cret"})
    runner = await _serve_metrics(SimpleNamespace(render=lambda: b"oa_worker_jobs 1\n"), f"127.0.0.1:{port}",
                                  str(config))
    try:
        url = f"https://127.0.0.1:{port}/metrics"
        ok = await asyncio.to_thread(curl, "--cacert", str(pki.ca), "-u", "alice:s3cret", url)
        anonymous = await asyncio.to_thread(curl, "--cacert", str(pki.ca), url)
        plain = await asyncio.to_thread(curl, url.replace("https", "http"))
        assert ok[1] == "200" and "oa_worker_jobs 1" in ok[2]
        assert anonymous[1] == "401" and plain[1] != "200"
    finally:
        await runner.cleanup()


async def test_a_workers_port_serves_a_rotated_certificate_too(tmp_path):
    from oa_exporter.entrypoints.worker import _serve_metrics
    from tests.servers import free_port

    first, live = make_pki(tmp_path / "first"), make_pki(tmp_path / "live")
    for name in ("server.crt", "server.key"):
        shutil.copy(first.server_cert.parent / name, live.server_cert.parent / name)
    port = free_port()
    runner = await _serve_metrics(SimpleNamespace(render=lambda: b"x 1\n"), f"127.0.0.1:{port}",
                                  str(web_config(tmp_path / "web.yml", live)))
    try:
        before = await asyncio.to_thread(server_certificate, port, first.ca)
        second = make_pki(tmp_path / "second")
        for name in ("server.key", "server.crt"):
            shutil.copy(second.server_cert.parent / name, live.server_cert.parent / name)
        for _ in range(100):
            try:
                after = await asyncio.to_thread(server_certificate, port, second.ca)
                break
            except ssl.SSLError:
                await asyncio.sleep(0.1)
        assert after != before
    finally:
        await runner.cleanup()


def as_host(port: int, host: str, method: str = "GET", path: str = "/metrics", origin: str = "") -> bytes:
    """A browser's request as DNS rebinding makes it: sent to the daemon's address, Host and Origin the page's."""
    headers = f"Host: {host}\r\n" + (f"Origin: {origin}\r\n" if origin else "")
    return raw(port, f"{method} {path} HTTP/1.1\r\n{headers}Content-Length: 0\r\nConnection: close\r\n\r\n".encode())


@pytest.mark.parametrize(("method", "path"), [("POST", "/-/reload"), ("GET", "/metrics"), ("GET", "/api/v1/rules")])
async def test_allowed_hosts_refuse_a_dns_rebinding_page(method, path):
    web = await start(None, enable_lifecycle=True, allowed_hosts=("oa.example", "*.svc.cluster.local"))
    port = web.front.port
    try:
        rebound = f"evil.example:{port}"
        refused = await asyncio.to_thread(as_host, port, rebound, method, path, f"http://{rebound}")
        assert refused.startswith(b"HTTP/1.1 403") and b"--web.allowed-hosts" in refused and web.reloads == []
        for host in (f"oa.example:{port}", "OA.example.", f"oa.monitoring.svc.cluster.local:{port}",
                     f"127.0.0.1:{port}", "localhost", f"[::1]:{port}"):
            answer = await asyncio.to_thread(as_host, port, host, method, path)
            assert answer.startswith(b"HTTP/1.1 200"), (host, answer[:80])
        assert len(web.reloads) == (6 if method == "POST" else 0)
    finally:
        await web.cleanup()


async def test_without_allowed_hosts_any_host_is_answered_as_before():
    web = await start(None, enable_lifecycle=True)
    try:
        rebound = f"evil.example:{web.front.port}"
        answer = await asyncio.to_thread(as_host, web.front.port, rebound, "POST", "/-/reload", f"http://{rebound}")
        assert answer.startswith(b"HTTP/1.1 200") and len(web.reloads) == 1
    finally:
        await web.cleanup()


async def test_allowed_hosts_hold_over_tls(pki, tmp_path):
    web = await start(web_config(tmp_path / "web.yml", pki), allowed_hosts=("oa.example",))
    try:
        request = b"GET /metrics HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n"
        refused = await asyncio.to_thread(fetch, web.front.port, pki.ca, None, request)
        allowed = await asyncio.to_thread(fetch, web.front.port, pki.ca, None, request.replace(b"evil", b"oa"))
        assert refused.startswith(b"HTTP/1.1 403") and allowed.startswith(b"HTTP/1.1 200") and PAGE_TEXT in allowed
    finally:
        await web.cleanup()


@pytest.mark.parametrize(("host", "allowed"), [
    ("oa.example", True), ("oa.example:10100", True), ("OA.EXAMPLE.", True), ("a.svc.local", True),
    ("svc.local", False), ("evilsvc.local", False), ("oa.example.evil", False), ("oa.example:x", False),
    ("10.1.2.3:10100", True), ("[fe80::1]:10100", True), ("[fe80::1", False), ("localhost:1", True), ("", True),
])
def test_allowed_host_names(host, allowed):
    assert AllowedHosts(("oa.example,*.svc.local",)).allows(host) is allowed
