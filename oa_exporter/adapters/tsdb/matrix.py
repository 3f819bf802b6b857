"""Range-query responses into one (series × points) grid, a chunk at a time as the chunks arrive.

A chunk's JSON is parsed and written into the grid at once, so a read holds the grid plus the few chunks in
flight, never every chunk's JSON. The fast parse reads the compact JSON that Prometheus-API servers write
without a Python object per sample (a 2M-sample chunk would otherwise take ~300 MB of lists and strings).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from ...core.domain import SeriesKey, SeriesMatrix
from ...core.errors import QueryError

METRIC = b'{"metric":'
VALUES = b',"values":['
STRIP = b'[]"'  # a values array without brackets and quotes is "t,v,t,v,...": one numpy parse


def series_key(metric: dict[str, str]) -> bytes:
    """Identity of a series from its parsed labels: the compact JSON of the label object, in its order."""
    return orjson.dumps(metric)


@dataclass(frozen=True)
class Grid:
    """The columns of a range read: start, start+step, ..., points of them."""

    start: float
    step: float
    points: int

    def time(self, column: int) -> float:
        return self.start + column * self.step


Chunk = list[tuple[SeriesKey, np.ndarray, np.ndarray]]  # per series: its key, sample times, sample values


def parse_chunk(body: bytes) -> Chunk:
    """The series of one range-query response; QueryError unless it is a successful matrix (any body that is
    not, truncated or wrongly typed, is an error of that query, never a crash)."""
    try:
        fast = _fast_chunk(body)
        return fast if fast is not None else _parsed_chunk(body)
    except QueryError:
        raise
    except Exception as e:  # noqa: BLE001
        raise QueryError(f"the TSDB answered with a body that is not a query result ({len(body)} bytes, "
                         f"{type(e).__name__}: {str(e)[:200]})") from e


def _fast_chunk(body: bytes) -> Chunk | None:
    head = body[:200]
    if b'"status":"success"' not in head or b'"resultType":"matrix"' not in head or b'"histograms"' in body:
        return None
    chunk: Chunk = []
    for piece in split(body, METRIC)[1:]:  # '{"metric":' cannot occur inside a JSON string: quotes are escaped
        cut = piece.find(VALUES)
        if cut < 0:
            return None
        if piece[cut + len(VALUES) : cut + len(VALUES) + 1] == b"]":  # no samples
            continue
        close = piece.find(b"]]", cut)
        if close < 0:
            return None
        label_json = piece[:cut]
        # escapes differ between servers (Go writes \u003c for <); such keys take the canonical form
        key = label_json if b"\\" not in label_json else series_key(orjson.loads(label_json))
        flat = piece[cut + len(VALUES) : close].translate(None, STRIP)
        try:  # numpy's C parser reads NaN, +Inf, -Inf and exponents as Go writes them
            pairs = np.fromstring(flat, sep=",")
        except ValueError:
            return None
        if len(pairs) != flat.count(b",") + 1 or len(pairs) % 2:
            return None
        chunk.append((key, pairs[0::2], pairs[1::2]))
    return chunk


def api_data(body: bytes) -> dict[str, Any]:
    """The `data` of a successful API response; QueryError for anything else."""
    try:
        decoded = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise QueryError(f"the TSDB answered with invalid JSON: {e}") from e
    if not isinstance(decoded, dict) or decoded.get("status") != "success":
        raise QueryError(f"the TSDB answered with an error: {str(decoded)[:200]}")
    return decoded["data"]


def _parsed_chunk(body: bytes) -> Chunk:
    data = api_data(body)
    if data["resultType"] != "matrix":
        raise QueryError(f"expected a range vector (matrix), got {data['resultType']}")
    chunk: Chunk = []
    for item in data["result"]:
        samples = item.get("values", [])
        times = np.fromiter((s[0] for s in samples), np.float64, len(samples))
        values = np.array([s[1] for s in samples], dtype=np.float64)
        chunk.append((series_key(item["metric"]), times, values))
    return chunk


# This parse runs on a thread beside the threads answering scrapes, and a C call holds the GIL until it
# returns: splitting a 19 MB body in one call held it ~50 ms. It goes a block at a time.
BLOCK = 1 << 20


def split(body: bytes, separator: bytes) -> list[bytes]:
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


class MatrixBuilder:
    """The grid of a range read, filled chunk by chunk (from several threads); rows in order of first sight."""

    def __init__(self, grid: Grid, expected_series: int = 0):
        self.grid = grid
        self.rows: dict[SeriesKey, int] = {}
        self._values = np.full((max(expected_series, 1), grid.points), np.nan)
        self._lock = threading.Lock()

    def add(self, chunk: Chunk) -> None:
        """Write one chunk's samples into their rows and columns; samples off the grid are dropped."""
        with self._lock:
            for key, times, values in chunk:
                row = self.rows.setdefault(key, len(self.rows))
                if row == len(self._values):
                    self._grow()
                columns = np.rint((times - self.grid.start) / self.grid.step).astype(np.int64)
                inside = (columns >= 0) & (columns < self.grid.points)
                self._values[row, columns[inside]] = values[inside]

    def matrix(self) -> SeriesMatrix:
        keys = list(self.rows)
        values = self._values[: len(keys)]
        if len(keys) < 0.9 * len(self._values):  # do not keep a much larger buffer alive behind a view
            values = values.copy()
        labels = [orjson.loads(key) for key in keys]
        return SeriesMatrix(keys, labels, self.grid.start, self.grid.step, values)

    def _grow(self) -> None:
        grown = np.full((2 * len(self._values), self.grid.points), np.nan)
        grown[: len(self._values)] = self._values
        self._values = grown
