"""The public listener: scrapes of /metrics are answered from threads, everything else goes to aiohttp.

A /metrics page of 100k series is ~11 MB gzipped. Sent from the event loop, every scraper's bytes are
copied by the one loop thread, one scraper after another, and a scoring cycle holding the GIL delays them
all. Here each scrape connection gets a thread that sends the page with a blocking `sendall`, which holds
no GIL while the kernel copies, so concurrent scrapes use every core: with 10 concurrent scrapers of an
11 MB page on 2 cores this halves the median scrape time against aiohttp (and beats nginx with sendfile).

A connection is only peeked at (MSG_PEEK) until its request is known to be a plain `GET`/`HEAD /metrics`;
anything else — another path, a request body, headers that do not arrive at once, too many scrape
connections — is handed, unread, to the aiohttp server, which serves it exactly as before. The page bytes
are the same object the aiohttp handler sends.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import formatdate

from .allowed_hosts import AllowedHosts
from .web_guard import WebSecurity

log = logging.getLogger(__name__)

MAX_HEAD = 8192  # a scrape request's headers are a few hundred bytes; longer ones go to aiohttp
HEADER_TIMEOUT = 10.0  # seconds for a request's head (and a TLS handshake) to arrive whole, else the connection is cut
ACCEPT_BACKOFF = 0.1  # seconds between accept attempts while the process is out of descriptors
IDLE_TIMEOUT = 75.0  # keep-alive, as aiohttp's default
SEND_TIMEOUT = 60.0  # a scraper that stops reading for this long loses its connection
MAX_CONNECTIONS = 64  # scrape connections served from threads; more go to aiohttp
MAX_PER_CLIENT = 16  # connections one client address may hold in the front's threads; more are closed
WARN_EVERY = 60.0  # seconds between log lines about one kind of refused connection

Page = Callable[[bool], bytes]  # gzipped? -> the latest rendered page
HandOver = Callable[[socket.socket, "ssl.SSLContext | None"], None]  # a connection, unread, to aiohttp (TLS or not)


@dataclass(frozen=True)
class Scrape:
    """A parsed request that this front answers itself."""

    head_length: int
    head_only: bool
    gzip: bool
    keep_alive: bool
    authorization: str | None = None
    host: str | None = None


class Malformed(ValueError):
    """A request head that no server should act on: answered 400 and closed (no hand-over to smuggle through)."""


_FRAMING = ("content-length", "transfer-encoding", "host", "authorization")  # must not be repeated


def parse_scrape(data: bytes, path: str = "/metrics") -> Scrape | None:
    """The request at the start of `data` if it is a body-less GET/HEAD of `path`, else None; Malformed when
    the head is ambiguous (repeated framing headers, bare LF, control bytes, HTTP/1.1 without Host)."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = data[:end]
    _check_bytes(head)
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or parts[2] not in ("HTTP/1.1", "HTTP/1.0"):
        return None  # not HTTP/1.x: aiohttp answers it
    headers = _headers(lines[1:])
    if parts[2] == "HTTP/1.1" and not headers.get("host"):
        raise Malformed("HTTP/1.1 request without Host")
    if parts[0] not in ("GET", "HEAD") or parts[1].split("?", 1)[0] != path:
        return None
    if _has_body(headers) or "upgrade" in headers or "expect" in headers:
        return None
    connection = headers.get("connection", "").lower()
    keep_alive = "close" not in connection and (parts[2] == "HTTP/1.1" or "keep-alive" in connection)
    return Scrape(end + 4, parts[0] == "HEAD", accepts_gzip(headers.get("accept-encoding", "")), keep_alive,
                  headers.get("authorization"), headers.get("host"))


def _check_bytes(head: bytes) -> None:
    if b"\n" in head.replace(b"\r\n", b""):
        raise Malformed("bare LF or CR in the request head")
    if any(byte < 0x20 and byte not in (0x09, 0x0D, 0x0A) or byte == 0x7F for byte in head):
        raise Malformed("control byte in the request head")


def _headers(lines: list[str]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in lines:
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip() or " " in name or "\t" in name:
            raise Malformed(f"malformed header line {line[:40]!r}")  # includes obsolete line folding
        key = name.lower()
        if key in headers and key in _FRAMING:
            raise Malformed(f"repeated {name} header")
        headers[key] = value.strip()
    if "transfer-encoding" in headers and "content-length" in headers:
        raise Malformed("both Transfer-Encoding and Content-Length")
    length = headers.get("content-length")
    if length is not None and not length.isdigit():
        raise Malformed(f"Content-Length {length[:20]!r} is not a number")
    return headers


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether an Accept-Encoding value allows gzip (`gzip;q=0` refuses it)."""
    for item in accept_encoding.lower().split(","):
        coding, _, params = item.partition(";")
        if coding.strip() in ("gzip", "x-gzip"):
            quality = params.strip().removeprefix("q=").strip() if params.strip().startswith("q=") else "1"
            try:
                return float(quality) > 0
            except ValueError:
                return False
    return False


def _has_body(headers: dict[str, str]) -> bool:
    return "transfer-encoding" in headers or headers.get("content-length", "0") != "0"


REQUEST_TIMEOUT = b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
BAD_REQUEST = (b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 12\r\n"
               b"Connection: close\r\n\r\nBad Request\n")


def response_head(scrape: Scrape, length: int, content_type: str, extra: tuple[tuple[str, str], ...] = ()) -> bytes:
    lines = ["HTTP/1.1 200 OK", f"Date: {formatdate(usegmt=True)}", f"Content-Type: {content_type}",
             f"Content-Length: {length}", "Vary: Accept-Encoding"]
    if scrape.gzip:
        lines.append("Content-Encoding: gzip")
    if not scrape.keep_alive:
        lines.append("Connection: close")
    lines += [f"{name}: {value}" for name, value in extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class ScrapeFront:
    """Owns the listening socket; one thread accepts, one thread per scrape connection sends.

    With TLS (`--web.config.file`), a connection's thread does the handshake and reads the request itself (TLS
    cannot be peeked at); scrapes are answered as before, anything else is relayed to aiohttp over a local
    socket pair. With basic auth, a scrape whose credentials do not pass goes to aiohttp, which answers 401.
    """

    def __init__(self, page: Page, content_type: str, hand_over: HandOver, max_connections: int = MAX_CONNECTIONS,
                 security: Callable[[], WebSecurity] = WebSecurity, max_per_client: int = MAX_PER_CLIENT,
                 hosts: AllowedHosts | None = None):
        self._page = page
        self._hosts = hosts or AllowedHosts()
        self._content_type = content_type
        self._hand_over = hand_over
        self._security = security
        self._slots = threading.BoundedSemaphore(max_connections)
        self._max_per_client = max_per_client
        self._per_client: dict[str, int] = {}
        self._warned_at = -WARN_EVERY
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None

    def start(self, host: str, port: int) -> None:
        """Bind now (so a taken address fails the caller), then accept on a thread."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.create_server((host, port), family=family, backlog=1024)
        self._acceptor = threading.Thread(target=self._accept, name="scrape-front", daemon=True)
        self._acceptor.start()

    @property
    def port(self) -> int:
        assert self._listener is not None
        return self._listener.getsockname()[1]

    def close(self) -> None:
        """Stop accepting and drop the connections this front still serves; safe to call twice."""
        listener, self._listener = self._listener, None
        if listener is not None:
            _shut(listener)
            listener.close()
        with self._lock:
            for connection in list(self._open):
                _shut(connection)
        if self._acceptor is not None:
            self._acceptor.join(timeout=5)

    def _accept(self) -> None:
        listener = self._listener
        while listener is not None and listener.fileno() >= 0:
            try:
                connection, address = listener.accept()
            except OSError as e:
                if self._listener is None or listener.fileno() < 0:
                    return  # closed
                self._wait_for_descriptors(e)
                continue
            self._out_of_descriptors = False
            client = address[0] if isinstance(address, tuple) else ""
            if not self._admit(client):
                _shut(connection)
                connection.close()
                continue
            security = self._security()
            if not self._slots.acquire(blocking=False):
                self._leave(client)
                self._give_away(connection, security)
                continue
            try:
                threading.Thread(target=self._serve, args=(connection, security, client), name="scrape",
                                 daemon=True).start()
            except RuntimeError:  # no thread to be had: the event loop still can answer
                self._slots.release()
                self._leave(client)
                self._give_away(connection, security)

    def _admit(self, client: str) -> bool:
        """Count a connection against its client's cap; False (and a log line now and then) past it."""
        with self._lock:
            held = self._per_client.get(client, 0)
            if held < self._max_per_client:
                self._per_client[client] = held + 1
                return True
        now = time.monotonic()
        if now - self._warned_at >= WARN_EVERY:
            self._warned_at = now
            log.warning("closing connections from %s: it holds %d, the most one client may (idle or trickling "
                        "connections; the scrape front serves others first)", client, held)
        return False

    def _leave(self, client: str) -> None:
        with self._lock:
            held = self._per_client.get(client, 1) - 1
            if held > 0:
                self._per_client[client] = held
            else:
                self._per_client.pop(client, None)

    def _wait_for_descriptors(self, error: OSError) -> None:
        """Out of descriptors (EMFILE/ENFILE) or another accept failure: back off, say so once, keep accepting."""
        if not self._out_of_descriptors:
            log.error("cannot accept connections: %s; retrying until descriptors are free", error)
        self._out_of_descriptors = True
        time.sleep(ACCEPT_BACKOFF)

    _out_of_descriptors = False

    def _serve(self, connection: socket.socket, security: WebSecurity, client: str = "") -> None:
        with self._lock:
            self._open.add(connection)
        kept = False
        try:
            _blocking_with_timeouts(connection)
            if security.tls is not None:
                self._serve_tls(connection, security)
            else:
                kept = self._answer_scrapes(connection, security)
        except (OSError, ssl.SSLError) as e:
            log.debug("scrape connection ended: %s", e)
        finally:
            with self._lock:
                self._open.discard(connection)
            self._slots.release()
            self._leave(client)
            if not kept:
                connection.close()

    def _answer_scrapes(self, connection: socket.socket, security: WebSecurity) -> bool:
        """Answer scrapes until the connection closes (False) or asks for something else (True: handed over)."""
        while True:
            data = _peek_head(connection)
            if data is None:
                log.debug("cut a connection whose request head took longer than %.0f s", HEADER_TIMEOUT)
                connection.sendall(REQUEST_TIMEOUT)
                return False
            if not data:
                return False
            try:
                scrape = parse_scrape(data)
            except Malformed as e:
                _refuse(connection, e)
                return False
            now = self._security()  # users and headers as the web config file says now; TLS as at accept
            if scrape is None or not self._answers(scrape, now):
                self._give_away(connection, security)
                return True
            connection.recv(scrape.head_length, socket.MSG_WAITALL)  # consume exactly the peeked request
            self._send_page(connection, scrape, now)
            if not scrape.keep_alive:
                return False

    def _serve_tls(self, connection: socket.socket, security: WebSecurity) -> None:
        assert security.tls is not None
        connection.settimeout(HEADER_TIMEOUT)  # the handshake, too, must not trickle
        with security.tls.current().wrap_socket(connection, server_side=True) as tls:
            buffered = b""
            while True:
                buffered = _read_head(tls, buffered)
                if not buffered:
                    return
                try:
                    scrape = parse_scrape(buffered)
                except Malformed as e:
                    _refuse(tls, e)
                    return
                now = self._security()
                if scrape is None or not self._answers(scrape, now):
                    _relay(tls, buffered, self._hand_over)
                    return
                buffered = buffered[scrape.head_length:]
                self._send_page(tls, scrape, now)
                if not scrape.keep_alive:
                    return

    def _answers(self, scrape: Scrape, security: WebSecurity) -> bool:
        """Whether this front answers the scrape itself; else aiohttp does (its 401 or 403)."""
        return self._hosts.allows(scrape.host) and _authorized(scrape, security)

    def _send_page(self, connection: socket.socket, scrape: Scrape, security: WebSecurity) -> None:
        body = self._page(scrape.gzip)
        connection.sendall(response_head(scrape, len(body), self._content_type, security.extra_headers))
        if not scrape.head_only:
            connection.sendall(body)

    def _give_away(self, connection: socket.socket, security: WebSecurity) -> None:
        try:
            connection.setblocking(False)
            self._hand_over(connection, security.tls.current() if security.tls else None)
        except Exception:  # the loop is gone (shutting down): nothing can answer it
            log.debug("could not hand a connection to the API server", exc_info=True)
            connection.close()


def _refuse(connection: socket.socket, error: Malformed) -> None:
    """Answer 400 and close so that the answer arrives: unread bytes at close() would reset the connection."""
    log.debug("refused a malformed request: %s", error)
    connection.sendall(BAD_REQUEST)
    with contextlib.suppress(OSError, ValueError):
        connection.shutdown(socket.SHUT_WR)
        connection.settimeout(1.0)
        for _ in range(16):  # what the client sent after it, up to 1 MB, is read and dropped
            if not connection.recv(1 << 16):
                break


def _authorized(scrape: Scrape, security: WebSecurity) -> bool:
    return not security.auth.enabled or security.auth.user(scrape.authorization) is not None


def _read_head(connection: socket.socket, buffered: bytes) -> bytes:
    """`buffered` plus what arrives until a whole request head is there: b'' when the peer closed or went idle
    between requests; past MAX_HEAD or HEADER_TIMEOUT the partial bytes are returned (aiohttp refuses them)."""
    deadline = time.monotonic() + HEADER_TIMEOUT
    while b"\r\n\r\n" not in buffered and len(buffered) < MAX_HEAD:
        connection.settimeout(IDLE_TIMEOUT if not buffered else max(deadline - time.monotonic(), 0.001))
        try:
            chunk = connection.recv(MAX_HEAD)
        except TimeoutError:
            return b""
        if not chunk:
            return b""
        buffered += chunk
    connection.settimeout(SEND_TIMEOUT)
    return buffered


def _relay(tls: ssl.SSLSocket, buffered: bytes, hand_over: HandOver) -> None:
    """Serve the rest of a TLS connection through aiohttp: it gets one end of a socket pair in plain text."""
    ours, theirs = socket.socketpair()
    try:
        theirs.setblocking(False)
        hand_over(theirs, None)
    except Exception:  # noqa: BLE001 - shutting down
        ours.close()
        theirs.close()
        return
    with ours, selectors.DefaultSelector() as selector:
        ours.sendall(buffered)
        selector.register(tls, selectors.EVENT_READ)
        selector.register(ours, selectors.EVENT_READ)
        while True:
            ready = [tls] if tls.pending() else [key.fileobj for key, _ in selector.select(IDLE_TIMEOUT)]
            if not ready:
                return  # idle past the keep-alive timeout
            for source in ready:
                data = source.recv(1 << 16)  # type: ignore[union-attr]
                if not data:
                    return
                (ours if source is tls else tls).sendall(data)


def _peek_head(connection: socket.socket) -> bytes | None:
    """The next request's bytes without reading them: b'' when the peer closed or went idle, None when its
    head did not arrive whole within HEADER_TIMEOUT (a trickling client: cut).

    Blocks (no GIL) until the first bytes arrive; the rest of a head split over several packets is looked for
    at growing intervals (2 to 50 ms); past MAX_HEAD the bytes are returned for aiohttp to refuse.
    """
    try:
        data = connection.recv(MAX_HEAD, socket.MSG_PEEK)
    except (TimeoutError, BlockingIOError):
        return b""  # idle past the keep-alive timeout
    deadline, pause = time.monotonic() + HEADER_TIMEOUT, 0.002
    while data and b"\r\n\r\n" not in data and len(data) < MAX_HEAD:
        if time.monotonic() > deadline:
            return None
        time.sleep(pause)
        pause = min(pause * 2, 0.05)
        data = connection.recv(MAX_HEAD, socket.MSG_PEEK)
    return data


def _blocking_with_timeouts(connection: socket.socket) -> None:
    """Truly blocking I/O (one GIL release per send, not one per chunk), bounded by kernel timeouts."""
    connection.settimeout(None)
    connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(IDLE_TIMEOUT))
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _timeval(SEND_TIMEOUT))


def _timeval(seconds: float) -> bytes:
    return struct.pack("ll", int(seconds), int(seconds % 1 * 1e6))


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
