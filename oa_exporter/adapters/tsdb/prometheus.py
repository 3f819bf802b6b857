"""Prometheus HTTP API client (aiohttp): Prometheus, VictoriaMetrics, Thanos, Mimir, Cortex.

Range queries are split into chunks below Prometheus's 11,000-points-per-series limit and fetched
concurrently; transient failures (connection errors, timeouts, 5xx, 429) are retried with backoff;
a query the server rejects (400/422: bad PromQL, too many samples) fails at once with its message.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import logging
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

import aiohttp
import numpy as np
import orjson

from ...core.domain import InstantVector, SeriesKey, SeriesMatrix
from ...core.errors import QueryError, TsdbError

log = logging.getLogger(__name__)
MAX_POINTS_PER_QUERY = 10_000  # Prometheus refuses more than 11,000 points per series in one range query
RETRYABLE_STATUS = {429, 500, 502, 503, 504}


METRIC = b'{"metric":'


def series_key(metric: dict[str, str]) -> bytes:
    """Identity of a series from its parsed labels: the compact JSON of the label object, in its order."""
    return orjson.dumps(metric)


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
    ):
        self.url = url.rstrip("/")
        self.auth = auth or HttpAuth()
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self._limit = asyncio.Semaphore(max_concurrency)
        self._session: aiohttp.ClientSession | None = None

    async def query(self, expr: str, at: float) -> InstantVector:
        body = await self._call("query", {"query": expr, "time": _fmt(at)})
        return await asyncio.to_thread(_instant_vector, body, at)  # 100k series parse for ~0.5 s: off the loop

    async def query_range(self, expr: str, start: float, end: float, step: float) -> SeriesMatrix:
        points = int(round((end - start) / step)) + 1
        chunks = [
            (start + i * step, start + min(i + MAX_POINTS_PER_QUERY, points) * step - step)
            for i in range(0, points, MAX_POINTS_PER_QUERY)
        ]
        parts = await asyncio.gather(*(self._range_chunk(expr, a, b, step) for a, b in chunks))
        return _assemble(parts, start, step, points)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _range_chunk(self, expr: str, start: float, end: float, step: float) -> list[dict]:
        params = {"query": expr, "start": _fmt(start), "end": _fmt(end), "step": _fmt(step)}
        data = await asyncio.to_thread(_data, await self._call("query_range", params))
        if data["resultType"] != "matrix":
            raise QueryError(f"expected a range vector (matrix), got {data['resultType']}")
        return data["result"]

    async def _call(self, endpoint: str, params: dict[str, str]) -> bytes:
        for attempt in range(self.retries + 1):
            try:
                async with self._limit:
                    return await self._post(endpoint, params)
            except TsdbError as e:
                if isinstance(e, QueryError) or attempt == self.retries:
                    raise
                delay = self.backoff * 2**attempt
                log.warning("query failed, retrying in %.1fs: %s", delay, e)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def _post(self, endpoint: str, params: dict[str, str]) -> bytes:
        url = f"{self.url}/api/v1/{endpoint}"
        try:
            async with self._client().post(
                url, data=params, headers=self.auth.request_headers(), ssl=self.auth.ssl_context,
            ) as response:
                body = await response.read()
                if response.status != 200:
                    _raise_for(response.status, body, url)
                return body
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            raise TsdbError(f"{url}: {type(e).__name__}: {e}") from e

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            timeout = aiohttp.ClientTimeout(total=self.timeout)
            self._session = aiohttp.ClientSession(timeout=timeout, json_serialize=lambda o: orjson.dumps(o).decode())
        return self._session


def _raise_for(status: int, body: bytes, url: str) -> None:
    try:
        decoded = orjson.loads(body)
        message = decoded.get("error", "") if isinstance(decoded, dict) else ""
    except orjson.JSONDecodeError:
        message = body[:200].decode(errors="replace")
    error = f"{url}: HTTP {status}: {message}"
    if status in RETRYABLE_STATUS:
        raise TsdbError(error)
    raise QueryError(error)


def _data(body: bytes) -> dict[str, Any]:
    """The `data` of a successful API response; QueryError for anything else."""
    try:
        decoded = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise QueryError(f"the TSDB answered with invalid JSON: {e}") from e
    if not isinstance(decoded, dict) or decoded.get("status") != "success":
        raise QueryError(f"the TSDB answered with an error: {str(decoded)[:200]}")
    return decoded["data"]


def _instant_vector(body: bytes, at: float) -> InstantVector:
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
    pieces = _split(body, METRIC)[1:]  # '{"metric":' cannot occur inside a JSON string: quotes are escaped
    cuts = [piece.find(VALUE) for piece in pieces]  # ints and bytes only: no 100k tuples for the GC to chase
    if not cuts or -1 in cuts:
        return None
    # escapes differ between servers (Go writes \u003c for <); such keys take the canonical form
    keys = [piece[:cut] if b"\\" not in piece[:cut] else series_key(orjson.loads(piece[:cut]))
            for piece, cut in zip(pieces, cuts, strict=True)]
    texts = [piece[cut + len(VALUE) :].split(b'"', 2)[1] for piece, cut in zip(pieces, cuts, strict=True)]
    values = np.concatenate([np.array(texts[i : i + SLICE]).astype(np.float64) for i in range(0, len(texts), SLICE)])
    return InstantVector(keys, _LabelsOfKeys(keys), values, at)


# This parse runs on a thread beside the threads answering scrapes, and a C call holds the GIL until it
# returns: splitting a 19 MB body in one call held it ~50 ms, converting 100k numbers in one call ~55 ms.
# Both go a block at a time.
SLICE = 4096
BLOCK = 1 << 20
VALUE = b',"value":['


def _split(body: bytes, separator: bytes) -> list[bytes]:
    """`body.split(separator)`, a block of about BLOCK bytes at a time."""
    pieces: list[bytes] = []
    start = 0
    while start < len(body) or not pieces:
        cut = body.find(separator, start + BLOCK)
        end = len(body) if cut < 0 else cut
        block = body[start:end].split(separator)
        pieces.extend(block if start == 0 else block[1:])  # later blocks start with the separator
        start = end
    return pieces


def _parsed_vector(body: bytes, at: float) -> InstantVector:
    data = _data(body)
    if data["resultType"] == "scalar":
        return _scalar_vector(data["result"], at)
    if data["resultType"] != "vector":
        raise QueryError(f"expected an instant vector, got {data['resultType']}")
    result = data["result"]
    keys = [series_key(item["metric"]) for item in result]
    values = np.array([item["value"][1] for item in result], dtype=np.float64)
    return InstantVector(keys, [item["metric"] for item in result], values, at)


def _assemble(parts: list[list[dict]], start: float, step: float, points: int) -> SeriesMatrix:
    """Stitch chunked matrix results into one (series × points) grid; NaN where no sample."""
    rows: dict[SeriesKey, int] = {}
    labels: list[dict[str, str]] = []
    pieces: list[tuple[int, np.ndarray, np.ndarray]] = []
    for part in parts:
        for item in part:
            key = series_key(item["metric"])  # the same bytes as the fast instant path: compact, in order
            row = rows.setdefault(key, len(rows))
            if row == len(labels):
                labels.append(item["metric"])
            samples = item["values"]
            times = np.fromiter((s[0] for s in samples), np.float64, len(samples))
            values = np.array([s[1] for s in samples], dtype=np.float64)
            pieces.append((row, times, values))
    matrix = np.full((len(rows), points), np.nan)
    for row, times, values in pieces:
        columns = np.rint((times - start) / step).astype(np.int64)
        inside = (columns >= 0) & (columns < points)
        matrix[row, columns[inside]] = values[inside]
    return SeriesMatrix(list(rows), labels, start, step, matrix)


def _scalar_vector(result: list, at: float) -> InstantVector:
    return InstantVector([b"{}"], [{}], np.array([float(result[1])]), at)


def _fmt(value: float) -> str:
    return f"{value:.3f}".rstrip("0").rstrip(".")


def _read(path: str) -> str:
    return Path(path).read_text().strip() if path else ""
