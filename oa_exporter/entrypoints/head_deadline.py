"""A header timeout for the connections the scrape front hands to aiohttp.

aiohttp's server has no timeout for a request head: a client that trickles one byte of headers at a time
holds its connection until the keep-alive timer closes it (75 s here, 3,630 s by aiohttp's default). The
front cuts such clients after HEADER_TIMEOUT in its own threads, but the connections it hands over (another
path, a request with a body, a kept-alive connection after one, or every connection while its threads are
all busy) are aiohttp's. This protocol sits between the transport and aiohttp's request handler and watches
the bytes go by: from the first byte of a request head, the head must arrive whole within HEADER_TIMEOUT,
or the connection is closed. Bodies framed by Content-Length are skipped over; after a chunked body or an
upgrade it stops watching (the keep-alive timer still bounds an idle connection).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable

from .scrape_front import HEADER_TIMEOUT, MAX_HEAD

log = logging.getLogger(__name__)

HEAD_END = b"\r\n\r\n"
WATCHED_HEAD = 8 * MAX_HEAD  # a longer head is aiohttp's to refuse; it is not watched further
# `$` is before "\n": a header line but the head's last still ends in "\r" (a body taken for the next head
# would arm the timer and cut a request answered more slowly than HEADER_TIMEOUT, a preview)
_LENGTH = re.compile(rb"^content-length[ \t]*:[ \t]*(\d+)[ \t]*\r?$", re.IGNORECASE | re.MULTILINE)
_UNFRAMED = re.compile(rb"^(transfer-encoding|upgrade)[ \t]*:", re.IGNORECASE | re.MULTILINE)


class HeadDeadline(asyncio.Protocol):
    """Passes everything to `inner` (aiohttp's RequestHandler); closes the connection when a request head
    takes longer than `timeout` seconds from its first byte."""

    def __init__(self, inner: asyncio.Protocol, timeout: float):
        self._inner = inner
        self._timeout = timeout
        self._transport: asyncio.BaseTransport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._head = b""  # the bytes of the head being read
        self._body_left = 0  # bytes of a Content-Length body still to come
        self._watching = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._watching:
            self._watch(data)
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def _watch(self, data: bytes) -> None:
        """Follow the requests' framing through `data` (pipelined requests included)."""
        while data and self._watching:
            if self._body_left:
                taken = min(self._body_left, len(data))
                self._body_left -= taken
                data = data[taken:]
                continue
            data = self._read_head(data)

    def _read_head(self, data: bytes) -> bytes:
        """Add `data` to the head being read; what follows the head's end (b'' while it has not ended)."""
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._timeout, self._expired)
        start = max(len(self._head) - len(HEAD_END) + 1, 0)
        self._head += data
        end = self._head.find(HEAD_END, start)
        if end < 0:
            if len(self._head) > WATCHED_HEAD:
                self._stop_watching()
            return b""
        head, rest = self._head[:end], self._head[end + len(HEAD_END):]
        self._head = b""
        self._disarm()
        if _UNFRAMED.search(head):
            self._stop_watching()
            return b""
        length = _LENGTH.search(head)
        self._body_left = int(length.group(1)) if length else 0
        return rest

    def _expired(self) -> None:
        self._timer = None
        log.debug("closed a connection whose request head took longer than %.0f s", self._timeout)
        if self._transport is not None:
            self._transport.close()

    def _stop_watching(self) -> None:
        self._watching = False
        self._head = b""
        self._disarm()

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def with_head_deadline(factory: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
    """A protocol factory whose protocols are `factory`'s behind a HeadDeadline of HEADER_TIMEOUT."""
    return lambda: HeadDeadline(factory(), HEADER_TIMEOUT)
