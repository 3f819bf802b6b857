"""Prometheus HTTP API client (aiohttp): Prometheus, VictoriaMetrics, Thanos, Mimir, Cortex.

Range queries stay inside the server's limits on their own: each chunk spans at most 10,000 points (below
Prometheus's 11,000 per series) and at most `max_samples` series × points, the series count learned from
the expression's last instant query or from a first short chunk. PromQL results cannot be split by series in
general (an arbitrary expression has no selector to narrow), so a chunk is narrowed in time instead, down to
one point. A chunk the server still refuses for its size is halved and retried, and the expression's
budget lowered for later reads. Chunks are fetched concurrently and written into the result as they arrive.
Answers are asked for uncompressed unless `compression="gzip"` (see __init__).
Transient failures (connection errors, timeouts, 5xx, 429) are retried with backoff; any other query the
server rejects (400/422: bad PromQL) fails at once with its message.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import logging
import os
import ssl
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import overload
from urllib.parse import unquote, urlsplit, urlunsplit

import aiohttp
import numpy as np
import orjson

from ...core.domain import InstantVector, SeriesMatrix
from ...core.errors import QueryError, TsdbError
from ...core.throttle import Throttled
from .matrix import METRIC, Grid, MatrixBuilder, api_data, parse_chunk, series_key, split
from .series_split import Piece, groups, splittable

log = logging.getLogger(__name__)
MAX_POINTS_PER_QUERY = 10_000  # Prometheus refuses more than 11,000 points per series in one range query
DEFAULT_MAX_SAMPLES = 2_000_000  # series × points per range query: 1/25 of Prometheus's --query.max-samples
LOOKBACK = 300.0  # Prometheus's default lookback delta: the series an instant query can return
PROBE_POINTS = 60  # the first chunk of an expression whose series count is not known yet
RETRYABLE_STATUS = {429, 500, 502, 503, 504}
LIMIT_STATUS = {400, 422, 503}
# What servers say when a query would read too much; a narrower time range gets under each of these.
SAMPLE_LIMITS = (
    "too many samples",  # Prometheus, Thanos: query processing would load too many samples into memory
    "maxsamplesperquery", "maxsamplesperseries", "maxpointspertimeseries",  # VictoriaMetrics -search.*
    "exceeded maximum resolution",  # Prometheus: more than 11,000 points per series
    "max number of chunks", "maximum number of chunks", "max-fetched-chunks", "chunks size limit",  # Cortex, Mimir
    "max-fetched-chunk-bytes", "too many chunks", "max-samples",
)


class SampleLimitError(QueryError):
    """The server refused a range query for the samples it would load: a narrower chunk may pass."""


class _LabelsOfKeys(Sequence[Mapping[str, str]]):
    """Labels parsed from the keys on demand: a scoring cycle needs them only for series it has not seen."""

    def __init__(self, keys: list[bytes]):
        self._keys = keys

    def __len__(self) -> int:
        return len(self._keys)

    @overload
    def __getitem__(self, index: int) -> Mapping[str, str]: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[Mapping[str, str]]: ...

    def __getitem__(self, index: int | slice) -> Mapping[str, str] | Sequence[Mapping[str, str]]:
        if isinstance(index, slice):
            return [orjson.loads(k) for k in self._keys[index]]
        return orjson.loads(self._keys[index])


@dataclass(frozen=True)
class HttpAuth:
    """How to reach the TSDB: credentials, TLS and extra headers (e.g. X-Scope-OrgID)."""

    basic_user: str = ""
    basic_password: str = ""
    basic_password_file: str = ""
    bearer_token: str = ""
    bearer_token_file: str = ""
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    insecure_skip_verify: bool = False
    headers: dict[str, str] = field(default_factory=dict)

    def request_headers(self) -> dict[str, str]:
        """Headers for one request; token files are re-read so rotated tokens are picked up."""
        headers = dict(self.headers)
        token = self.bearer_token or _read(self.bearer_token_file)
        if token:
            headers["Authorization"] = f"Bearer {token}"
        elif self.basic_user:
            password = self.basic_password or _read(self.basic_password_file)
            credentials = base64.b64encode(f"{self.basic_user}:{password}".encode()).decode()
            headers["Authorization"] = f"Basic {credentials}"
        return headers

    @functools.cached_property
    def ssl_context(self) -> ssl.SSLContext | bool:
        if not (self.ca_file or self.cert_file or self.insecure_skip_verify):
            return True
        context = ssl.create_default_context(cafile=self.ca_file or None)
        if self.cert_file:
            context.load_cert_chain(self.cert_file, self.key_file or None)
        if self.insecure_skip_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context


class PrometheusClient:
    """TsdbClient over the Prometheus query API."""

    def __init__(
        self,
        url: str,
        auth: HttpAuth | None = None,
        timeout: float = 30.0,
        retries: int = 3,
        backoff: float = 0.5,
        max_concurrency: int = 4,
        max_samples: int = DEFAULT_MAX_SAMPLES,
        compression: str = "none",
    ):
        self.url, self._url_auth = _without_userinfo(url.rstrip("/"))  # self.url is what messages show
        self.auth = auth or HttpAuth()
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_concurrency = max_concurrency
        self.max_samples = max(max_samples, 1)
        # aiohttp asks for gzip by default; gzipping a range read costs the server more CPU than sending it
        # (about 3 s a million samples for Prometheus, 34 MB plain, 12 MB gzipped): only worth it on a slow link
        self._encoding = {"Accept-Encoding": "gzip" if compression == "gzip" else "identity"}
        self._limit = asyncio.Semaphore(max_concurrency)
        self._session: aiohttp.ClientSession | None = None
        self._series: dict[str, int] = {}  # per expression: how many series it returned last
        self._budgets: dict[str, int] = {}  # per expression: samples per query after the server refused more
        self._instant_groups: dict[str, int] = {}  # per bare selector refused whole: series per instant query
        self.answered = False  # whether the TSDB has answered an HTTP request since the start (readiness)
        self._retry_log = Throttled(log)

    async def query(self, expr: str, at: float) -> InstantVector:
        if expr in self._instant_groups:
            vector = await self._query_in_groups(expr, at)
        else:
            try:
                vector = await self._instant(expr, at)
            except SampleLimitError as e:
                if not splittable(expr):
                    raise
                log.warning("the TSDB refused an instant query (%s): reading %r a group of series at a time from "
                            "now on", e, expr)
                self._instant_groups[expr] = 0
                vector = await self._query_in_groups(expr, at)
        self._learn(expr, len(vector.keys))
        return vector

    async def _instant(self, query: str, at: float) -> InstantVector:
        body = await self._call("query", {"query": query, "time": _fmt(at)})
        return await asyncio.to_thread(_instant_vector, body, at)  # 100k series parse for ~0.5 s: off the loop

    async def _query_in_groups(self, expr: str, at: float) -> InstantVector:
        """An instant query of a bare selector as groups of its series, halved while the server refuses them."""
        series = await self._list_series(expr, at - LOOKBACK, at)
        size = self._instant_groups[expr] or max(1, len(series) // 2)
        pending = deque(groups(expr, series, size, 0, 1))
        parts: list[InstantVector] = []
        while pending:
            piece = pending.popleft()
            try:
                parts.append(await self._instant(piece.query, at))
            except SampleLimitError:
                if len(piece.values) < 2:
                    raise
                pending.extendleft(reversed(piece.halves(expr)))
                size = min(size, max(1, len(piece.values) // 2))
        self._instant_groups[expr] = size
        keys = [key for part in parts for key in part.keys]
        values = np.concatenate([part.values for part in parts]) if parts else np.empty(0)
        return InstantVector(keys, _LabelsOfKeys(keys), values, at)

    async def query_range(self, expr: str, start: float, end: float, step: float) -> SeriesMatrix:
        grid = Grid(start, step, int(round((end - start) / step)) + 1)
        builder = MatrixBuilder(grid, self._series.get(expr, 0))
        pending = deque(await self._plan(expr, grid))  # pieces still to read
        if not pending[0].series:  # one short chunk first tells how many series the expression has
            while pending and not await self._read_next(expr, builder, pending, PROBE_POINTS):
                pass
            self._learn(expr, len(builder.rows))
        try:
            async with asyncio.TaskGroup() as readers:
                for _ in range(self.max_concurrency):
                    readers.create_task(self._read_all(expr, builder, pending))
        except ExceptionGroup as failed:  # the first failure, as one read of the whole range would raise it
            raise failed.exceptions[0] from None
        self._learn(expr, len(builder.rows))
        return builder.matrix()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def chunk_points(self, expr: str, series: int) -> int:
        """Points per series in one range query of `expr`, when it returns `series` series."""
        return max(1, min(MAX_POINTS_PER_QUERY, self._budget(expr) // max(series, 1)))

    def _budget(self, expr: str) -> int:
        return self._budgets.get(expr, self.max_samples)

    def _learn(self, expr: str, series: int) -> None:
        if len(self._series) > 10_000 and expr not in self._series:  # expressions of rules long removed
            self._series.clear()
        self._series[expr] = series

    async def _plan(self, expr: str, grid: Grid) -> list[Piece]:
        """The whole read as one piece, or a bare selector too wide for the budget as groups of its series."""
        whole = Piece(expr, self._series.get(expr, 0), 0, grid.points)
        width = min(grid.points, MAX_POINTS_PER_QUERY)
        if not splittable(expr) or (whole.series and whole.series * width <= self._budget(expr)):
            return [whole]
        series = await self._list_series(expr, grid.start, grid.time(grid.points - 1))
        self._learn(expr, len(series))
        return groups(expr, series, max(1, self._budget(expr) // width), 0, grid.points) if series else [whole]

    async def _list_series(self, expr: str, start: float, end: float) -> list[dict[str, str]]:
        """The label sets of a selector's series over a time range: the index only, no samples."""
        body = await self._call("series", {"match[]": expr, "start": _fmt(start), "end": _fmt(end)})
        result = await asyncio.to_thread(api_data, body)
        return result if isinstance(result, list) else []

    async def _read_all(self, expr: str, builder: MatrixBuilder, pending: deque[Piece]) -> None:
        while pending:
            series = pending[0].series or max(self._series.get(expr, 0), len(builder.rows))
            await self._read_next(expr, builder, pending, self.chunk_points(expr, series))

    async def _read_next(self, expr: str, builder: MatrixBuilder, pending: deque[Piece], width: int) -> bool:
        """Read the next chunk of at most `width` points; one the server refuses for its size goes back split
        (a group of series in halves, else its columns in halves) and False is returned."""
        piece = pending.popleft()
        if piece.last - piece.first > width:
            pending.appendleft(piece.narrowed(piece.first + width, piece.last))
            piece = piece.narrowed(piece.first, piece.first + width)
        try:
            await self._range_chunk(piece, builder)
            return True
        except SampleLimitError as e:
            columns = piece.last - piece.first
            if len(piece.values) > 1:
                pending.extendleft(reversed(piece.halves(expr)))
            elif not piece.values and splittable(expr) and (series := await self._list_series(
                    expr, builder.grid.time(piece.first), builder.grid.time(piece.last - 1))) and len(series) > 1:
                pending.extendleft(reversed(groups(expr, series, (len(series) + 1) // 2, piece.first, piece.last)))
            elif columns > 1:
                pending.appendleft(piece.narrowed(piece.first, piece.first + columns // 2))
                pending.insert(1, piece.narrowed(piece.first + columns // 2, piece.last))
            else:
                raise QueryError(f"{e} (even one point of every series is too many: narrow the expr)") from e
            self._halve(expr, (piece.series or len(builder.rows)) * columns, e)
            return False

    def _halve(self, expr: str, refused: int, error: SampleLimitError) -> None:
        if not refused:  # how many series is not known yet: the chunk was halved, the budget stays
            return
        budget = max(1, min(self._budget(expr), refused // 2))
        if expr not in self._budgets:
            log.warning("the TSDB refused a range query of about %d samples (%s): reading %r in chunks of at most "
                        "%d samples from now on (lower --prometheus.max-samples-per-query to avoid the refusals)",
                        refused, error, expr, budget)
        self._budgets[expr] = budget

    async def _range_chunk(self, piece: Piece, builder: MatrixBuilder) -> None:
        grid = builder.grid
        params = {"query": piece.query, "start": _fmt(grid.time(piece.first)),
                  "end": _fmt(grid.time(piece.last - 1)), "step": _fmt(grid.step)}
        body = await self._call("query_range", params)
        await asyncio.to_thread(lambda: builder.add(parse_chunk(body)))

    async def _call(self, endpoint: str, params: dict[str, str]) -> bytes:
        for attempt in range(self.retries + 1):
            try:
                async with self._limit:
                    return await self._post(endpoint, params)
            except TsdbError as e:
                if isinstance(e, QueryError) or attempt == self.retries:
                    raise
                delay = self.backoff * 2**attempt
                # one line a minute while the TSDB stays unreachable, not one per query and attempt
                self._retry_log.log(logging.WARNING, "retry", f"{e}; retrying (every query, up to {self.retries} "
                                    "times with backoff)")
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def _post(self, endpoint: str, params: dict[str, str]) -> bytes:
        url = f"{self.url}/api/v1/{endpoint}"
        try:
            headers = {**self._encoding, **self.auth.request_headers()}
            if self._url_auth and "Authorization" not in headers:
                headers = {**headers, "Authorization": self._url_auth}
            async with self._client().post(
                url, data=params, headers=headers, ssl=self.auth.ssl_context,
            ) as response:
                self.answered = True
                body = await _read_capped(response)
                if response.status != 200:
                    _raise_for(response.status, body, url)
                return body
        except aiohttp.ClientConnectorError as e:
            raise TsdbError(f"cannot reach the TSDB at {self.url}: {_reason(e.os_error)}") from e
        except TimeoutError as e:
            raise TsdbError(f"the TSDB at {self.url} did not answer within {self.timeout:g} s") from e
        except (aiohttp.ClientError, OSError) as e:
            raise TsdbError(f"cannot reach the TSDB at {self.url}: {type(e).__name__}: {e}") from e

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            timeout = aiohttp.ClientTimeout(total=self.timeout)
            self._session = aiohttp.ClientSession(timeout=timeout, json_serialize=lambda o: orjson.dumps(o).decode())
        return self._session


MAX_BODY = 1 << 30  # bytes of one answer: a 100k-series instant query is ~20 MB, a range chunk is bounded too


async def _read_capped(response: aiohttp.ClientResponse) -> bytes:
    """The body, or TsdbError past MAX_BODY (a server, or something in between, gone wrong)."""
    if (response.content_length or 0) > MAX_BODY:
        raise TsdbError(f"the TSDB's answer is {response.content_length} bytes, more than the {MAX_BODY} accepted")
    parts, size = [], 0
    async for part in response.content.iter_chunked(1 << 20):
        size += len(part)
        if size > MAX_BODY:
            raise TsdbError(f"the TSDB's answer is more than the {MAX_BODY} bytes accepted")
        parts.append(part)
    return b"".join(parts)


def _without_userinfo(url: str) -> tuple[str, str | None]:
    """`http://user:pass@host/` as `http://host/` plus its Authorization header: credentials never reach a message."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, None
    clean = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    pair = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}".encode()
    return clean, "Basic " + base64.b64encode(pair).decode()


def _reason(error: OSError) -> str:
    """'connection refused', 'name or service not known', ...: the system's words, not the library's."""
    if error.errno:
        return os.strerror(error.errno).lower()
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    return str(error.strerror or error).lower()


def _raise_for(status: int, body: bytes, url: str) -> None:
    try:
        decoded = orjson.loads(body)
        message = decoded.get("error", "") if isinstance(decoded, dict) else ""
    except orjson.JSONDecodeError:
        message = body[:200].decode(errors="replace")
    error = f"{url}: HTTP {status}: {message}"
    if status in LIMIT_STATUS and any(limit in message.lower() for limit in SAMPLE_LIMITS):
        raise SampleLimitError(error)
    if status in RETRYABLE_STATUS:
        raise TsdbError(error)
    raise QueryError(error)


def unreadable(body: bytes, error: Exception) -> QueryError:
    """The error of an answer that parses as no query result."""
    return QueryError(f"the TSDB answered with a body that is not a query result ({len(body)} bytes, "
                      f"{type(error).__name__}: {str(error)[:200]})")


def _instant_vector(body: bytes, at: float) -> InstantVector:
    """Parse an instant-query response; QueryError for any body that is not one (truncated, wrongly typed...)."""
    try:
        return _instant_vector_of(body, at)
    except QueryError:
        raise
    except Exception as e:  # noqa: BLE001 - whatever a server sends is an error of that query, never a crash
        raise unreadable(body, e) from e


def _instant_vector_of(body: bytes, at: float) -> InstantVector:
    """Parse an instant-query response. The fast path reads the compact JSON that Prometheus-API servers
    write without building a Python object per label: the key of a series is the raw bytes of its label
    object, which Prometheus (and Thanos, Mimir) and VictoriaMetrics write in one canonical order.
    Keys equal `series_key` of the parsed labels, as the range path computes them, for compact JSON.
    Anything unexpected takes the full JSON parser."""
    fast = _fast_vector(body, at)
    return fast if fast is not None else _parsed_vector(body, at)


def _fast_vector(body: bytes, at: float) -> InstantVector | None:
    head = body[:200]
    if b'"status":"success"' not in head or b'"resultType":"vector"' not in head:
        return None
    pieces = split(body, METRIC)[1:]  # '{"metric":' cannot occur inside a JSON string: quotes are escaped
    cuts = [piece.find(VALUE) for piece in pieces]  # ints and bytes only: no 100k tuples for the GC to chase
    if not cuts or -1 in cuts:
        return None
    # escapes differ between servers (Go writes \u003c for <); such keys take the canonical form
    keys = [piece[:cut] if b"\\" not in piece[:cut] else series_key(orjson.loads(piece[:cut]))
            for piece, cut in zip(pieces, cuts, strict=True)]
    texts = [piece[cut + len(VALUE) :].split(b'"', 2)[1] for piece, cut in zip(pieces, cuts, strict=True)]
    values = np.concatenate([np.array(texts[i : i + SLICE]).astype(np.float64) for i in range(0, len(texts), SLICE)])
    return InstantVector(keys, _LabelsOfKeys(keys), values, at)


SLICE = 4096  # numbers converted a block at a time: one C call holds the GIL until it returns
VALUE = b',"value":['


def _parsed_vector(body: bytes, at: float) -> InstantVector:
    data = api_data(body)
    if data["resultType"] == "scalar":
        return _scalar_vector(data["result"], at)
    if data["resultType"] != "vector":
        raise QueryError(f"expected an instant vector, got {data['resultType']}")
    result = data["result"]
    keys = [series_key(item["metric"]) for item in result]
    values = np.array([item["value"][1] for item in result], dtype=np.float64)
    return InstantVector(keys, [item["metric"] for item in result], values, at)


def _scalar_vector(result: list, at: float) -> InstantVector:
    return InstantVector([b"{}"], [{}], np.array([float(result[1])]), at)


def _fmt(value: float) -> str:
    return f"{value:.3f}".rstrip("0").rstrip(".")


def _read(path: str) -> str:
    return Path(path).read_text().strip() if path else ""
