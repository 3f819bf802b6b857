"""The web config file re-read while the daemon runs: when it changes (as exporter-toolkit reads it at every
request and handshake), on SIGHUP and on POST /-/reload. New users, passwords and certificates take effect
without a restart, over real TLS handshakes; a broken file keeps the settings in force and says so."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import signal
import socket
import ssl
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from oa_exporter.adapters.telemetry.prometheus_client import WebConfigMetrics
from oa_exporter.adapters.telemetry.worker_metrics import WorkerMetrics
from oa_exporter.entrypoints import web_guard
from oa_exporter.entrypoints.daemon import serve
from oa_exporter.entrypoints.web_guard import WebGuard
from oa_exporter.settings import Settings
from tests.certs import Pki, make_pki, web_config
from tests.servers import free_port
from tests.unit.test_web_security import start

OK_METRIC = "oa_web_config_last_reload_successful"


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def replace(path: Path, pki: Pki | None, users: dict[str, str] | None = None, text: str | None = None) -> None:
    """Write a new version of the web config file in one step, as a Kubernetes Secret update does."""
    new = path.with_name(path.name + ".new")
    if text is None:
        web_config(new, pki, users)
    else:
        new.write_text(text)
    os.replace(new, path)


def request(user: str, password: str, path: str = "/metrics", close: bool = True) -> bytes:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return (f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {token}\r\n"
            f"{'Connection: close' if close else 'X-Keep: 1'}\r\n\r\n").encode()


def tls_connect(port: int, ca: Path) -> ssl.SSLSocket:
    """A new TLS connection: a full handshake, the server's certificate checked against `ca`."""
    context = ssl.create_default_context(cafile=str(ca))
    return context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname="127.0.0.1")


def status(port: int, ca: Path, user: str, password: str, path: str = "/metrics") -> int:
    """The HTTP status of one request on a new TLS connection."""
    with tls_connect(port, ca) as tls:
        tls.sendall(request(user, password, path))
        chunks = []
        while chunk := tls.recv(1 << 16):
            chunks.append(chunk)
    return int(b"".join(chunks).split(b" ", 2)[1])


def read_response(tls: ssl.SSLSocket) -> int:
    """One response of a kept-alive connection (Content-Length framed): its status."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += tls.recv(1 << 16)
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    length = int(next(line.split(b":")[1] for line in lines if line.lower().startswith(b"content-length")))
    while len(body) < length:
        body += tls.recv(1 << 16)
    return int(head.split(b" ", 2)[1])


async def until(condition, timeout: float = 20.0):
    """Poll `condition` (a blocking call, run on a thread) until it is true; its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = await asyncio.to_thread(condition)
        if value or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.1)


async def test_new_users_and_passwords_take_effect_when_the_file_changes(pki, tmp_path):
    config = web_config(tmp_path / "web.yml", pki, {"alice": "old"})
    web = await start(config)
    port = web.front.port
    try:
        assert await asyncio.to_thread(status, port, pki.ca, "alice", "old") == 200
        kept = await asyncio.to_thread(tls_connect, port, pki.ca)  # a kept-alive scrape connection from before
        with kept:
            kept.sendall(request("alice", "old", close=False))
            assert await asyncio.to_thread(read_response, kept) == 200
            replace(config, pki, {"alice": "new", "bob": "b0b"})
            assert await until(lambda: status(port, pki.ca, "alice", "new") == 200), "the new password never passed"
            assert await asyncio.to_thread(status, port, pki.ca, "alice", "old") == 401
            assert await asyncio.to_thread(status, port, pki.ca, "bob", "b0b", "/api/v1/rules") == 200
            kept.sendall(request("alice", "old", close=False))  # the same connection: each request is checked anew
            assert await asyncio.to_thread(read_response, kept) == 401
    finally:
        await web.cleanup()


def served_certificate(port: int, ca: Path) -> bytes | None:
    """The certificate the server sends, if it verifies against `ca`; None when it does not."""
    try:
        with tls_connect(port, ca) as tls:
            return tls.getpeercert(binary_form=True)
    except ssl.SSLCertVerificationError:
        return None


async def test_certificate_files_the_file_names_anew_are_served_without_a_restart(pki, tmp_path):
    config = web_config(tmp_path / "web.yml", pki)
    web = await start(config)
    try:
        assert await asyncio.to_thread(served_certificate, web.front.port, pki.ca)
        other = make_pki(tmp_path / "other")
        replace(config, other)
        assert await until(lambda: served_certificate(web.front.port, other.ca)), "the new certificate never served"
        assert await asyncio.to_thread(served_certificate, web.front.port, pki.ca) is None
    finally:
        await web.cleanup()


async def test_a_broken_file_keeps_the_settings_in_force_and_says_so(pki, tmp_path, caplog):
    registry = CollectorRegistry()
    config = web_config(tmp_path / "web.yml", pki, {"alice": "s3cret"})
    web = await start(config, guard=WebGuard(str(config), WebConfigMetrics(registry).loaded))
    port = web.front.port
    try:
        assert registry.get_sample_value(OK_METRIC) == 1
        replace(config, pki, text="basic_auth_users: {alice: plaintext}\n")
        assert await until(lambda: (status(port, pki.ca, "alice", "s3cret"), registry.get_sample_value(OK_METRIC))
                           == (200, 0))  # still TLS, still alice: the settings in force stay
        await asyncio.sleep(2 * web_guard.CHECK_EVERY)
        assert await asyncio.to_thread(status, port, pki.ca, "alice", "s3cret") == 200
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and "basic_auth_users.alice" in errors[0] and "previous settings" in errors[0]
        replace(config, pki, {"bob": "b0b"})
        assert await until(lambda: status(port, pki.ca, "bob", "b0b") == 200)
        assert registry.get_sample_value(OK_METRIC) == 1
        assert await asyncio.to_thread(status, port, pki.ca, "alice", "s3cret") == 401
    finally:
        await web.cleanup()


async def test_post_reload_rereads_the_file_at_once_and_the_rules_reload_even_when_it_is_bad(pki, tmp_path,
                                                                                            monkeypatch):
    monkeypatch.setattr(web_guard, "CHECK_EVERY", 3600.0)  # no look at the file but the reload's
    config = web_config(tmp_path / "web.yml", pki, {"alice": "old"})
    web = await start(config, enable_lifecycle=True)
    port = web.front.port
    try:
        replace(config, pki, {"alice": "new"})
        assert await asyncio.to_thread(status, port, pki.ca, "alice", "old") == 200  # not looked at yet
        with tls_connect(port, pki.ca) as tls:
            tls.sendall(request("alice", "old", "/-/reload").replace(b"GET", b"POST"))
            assert await asyncio.to_thread(read_response, tls) == 200
        assert await asyncio.to_thread(status, port, pki.ca, "alice", "new") == 200
        assert await asyncio.to_thread(status, port, pki.ca, "alice", "old") == 401
        replace(config, pki, text="tls_server_config: {cert_file: nope.crt}\n")
        reloads = len(web.reloads)
        assert not await web.reload()
        assert len(web.reloads) == reloads + 1  # the rules reloaded all the same
        assert await asyncio.to_thread(status, port, pki.ca, "alice", "new") == 200
    finally:
        await web.cleanup()


RULES = """
groups:
  - name: g
    interval: 1s
    rules:
      - anomaly: requests
        expr: up
"""


async def test_sighup_rereads_the_file_and_metrics_say_whether_it_loaded(pki, tmp_path, monkeypatch):
    monkeypatch.setattr(web_guard, "CHECK_EVERY", 3600.0)  # no look at the file but SIGHUP's
    config = web_config(tmp_path / "web.yml", pki, {"alice": "old"})
    (tmp_path / "rules.yaml").write_text(RULES)
    port = free_port()
    settings = Settings(rules=(str(tmp_path / "rules.yaml"),), web_listen_address=f"127.0.0.1:{port}",
                        prometheus_url=f"http://127.0.0.1:{free_port()}", query_retries=1, web_config_file=str(config),
                        artifact_store="noop", pool_workers=1)
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings, stop=stop))

    def metric(user: str, password: str) -> float | None:
        with tls_connect(port, pki.ca) as tls:
            tls.sendall(request(user, password))
            page = b""
            while chunk := tls.recv(1 << 16):
                page += chunk
        line = next((x for x in page.decode().splitlines() if x.startswith(OK_METRIC + " ")), None)
        return float(line.split()[1]) if line else None

    try:
        assert await until(lambda: _quietly(metric, "alice", "old") == 1), "the daemon did not start"
        replace(config, pki, {"alice": "new"})
        os.kill(os.getpid(), signal.SIGHUP)
        assert await until(lambda: _quietly(status, port, pki.ca, "alice", "new") == 200)
        replace(config, pki, text="basic_auth_users: [alice]\n")
        os.kill(os.getpid(), signal.SIGHUP)
        assert await until(lambda: metric("alice", "new") == 0), "the failed read is not on /metrics"
    finally:
        stop.set()
        assert await task == 0


def _quietly(call, *args):
    try:
        return call(*args)
    except OSError:  # not listening yet
        return None


async def test_a_workers_port_rereads_the_file_too(pki, tmp_path):
    from oa_exporter.entrypoints.worker import _serve_metrics

    metrics, port = WorkerMetrics(), free_port()
    config = web_config(tmp_path / "web.yml", pki, {"alice": "old"})
    runner = await _serve_metrics(metrics, f"127.0.0.1:{port}", str(config), metrics.web_config.loaded)
    try:
        assert await asyncio.to_thread(status, port, pki.ca, "alice", "old") == 200
        other = make_pki(tmp_path / "other")
        replace(config, other, {"alice": "new"})
        assert await until(lambda: served_certificate(port, other.ca)), "the new certificate never served"
        assert await asyncio.to_thread(status, port, other.ca, "alice", "new") == 200
        assert await asyncio.to_thread(status, port, other.ca, "alice", "old") == 401
        replace(config, other, text="http_server_config: {headers: {Content-Type: x}}\n")
        failed = (200, 0)  # the failed read is counted; alice still passes
        assert await until(lambda: (status(port, other.ca, "alice", "new"),
                                    metrics.registry.get_sample_value(OK_METRIC)) == failed)
    finally:
        await runner.cleanup()
