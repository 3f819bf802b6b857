"""Reading the series of a plain selector a group at a time, for servers whose limits a narrower time range
does not get under (VictoriaMetrics counts every sample of each block a query touches, up to 8,192 a series).

Only a bare vector selector (`name`, `name{...}`, `{...}`, no offset or @) is split: a matcher added to it
selects a subset of its series and nothing else. Any other expression may aggregate, join or rename, where a
matcher on its inputs could change its results; those are narrowed in time only.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import promql_parser

SELECTOR = re.compile(r"\s*([a-zA-Z_:][a-zA-Z0-9_:]*)?\s*(\{.*\})?\s*", re.DOTALL)


@dataclass(frozen=True)
class Piece:
    """Part of a range read: the query for a group of series (all when `values` is empty), columns first..last-1."""

    query: str
    series: int  # how many series the query is expected to return (0: not known yet)
    first: int
    last: int
    label: str = ""
    values: tuple[str, ...] = ()

    def narrowed(self, first: int, last: int) -> Piece:
        return Piece(self.query, self.series, first, last, self.label, self.values)

    def halves(self, expr: str) -> tuple[Piece, Piece]:
        """The same columns for each half of the group's series."""
        middle = len(self.values) // 2
        return (group(expr, self.label, self.values[:middle], self.first, self.last),
                group(expr, self.label, self.values[middle:], self.first, self.last))


def splittable(expr: str) -> bool:
    """Whether `expr` is a bare vector selector, which a label matcher narrows to a subset of its series."""
    match = SELECTOR.fullmatch(expr)
    if match is None or not (match.group(1) or match.group(2)):
        return False
    try:
        node = promql_parser.parse(expr)
    except ValueError:
        return False
    modifiers = (getattr(node, "offset", None), getattr(node, "at", None))
    return type(node).__name__ == "VectorSelector" and modifiers == (None, None)


def group(expr: str, label: str, values: Sequence[str], first: int, last: int) -> Piece:
    """The piece reading the series of `expr` whose `label` is one of `values` ("" also: the label absent)."""
    pattern = "|".join(re.escape(value) for value in values)
    matcher = f"{label}=~{json.dumps(pattern)}"
    text = expr.strip()
    query = f"{text[:-1].rstrip()}, {matcher}}}" if text.endswith("}") else f"{text}{{{matcher}}}"
    if text.endswith("}") and text[:-1].rstrip().endswith("{"):  # `name{}` or `{...}` with no matcher yet
        query = f"{text[:-1].rstrip()}{matcher}}}"
    return Piece(query, len(values), first, last, label, tuple(values))


def groups(expr: str, series: Sequence[Mapping[str, str]], size: int, first: int, last: int) -> list[Piece]:
    """Pieces of at most `size` series each, split on the label with the most distinct values."""
    names = {name for labels in series for name in labels if name != "__name__"}
    if not names or len(series) <= size:
        return [Piece(expr, len(series), first, last)]
    label = max(sorted(names), key=lambda name: len({labels.get(name, "") for labels in series}))
    counts: dict[str, int] = {}
    for labels in series:
        value = labels.get(label, "")
        counts[value] = counts.get(value, 0) + 1
    pieces: list[Piece] = []
    values: list[str] = []
    taken = 0
    for value in sorted(counts):
        if values and taken + counts[value] > size:
            pieces.append(group(expr, label, values, first, last))
            values, taken = [], 0
        values.append(value)
        taken += counts[value]
    pieces.append(group(expr, label, values, first, last))
    return [_counted(piece, counts) for piece in pieces]


def _counted(piece: Piece, counts: Mapping[str, int]) -> Piece:
    return Piece(piece.query, sum(counts[v] for v in piece.values), piece.first, piece.last, piece.label,
                 piece.values)
