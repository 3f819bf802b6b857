"""Range responses parsed without a Python object per sample, equal to the full JSON parse; selector splitting."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from oa_exporter.adapters.tsdb.matrix import Grid, MatrixBuilder, _fast_chunk, _parsed_chunk, parse_chunk
from oa_exporter.adapters.tsdb.series_split import group, groups, splittable
from oa_exporter.core.errors import QueryError


def body(result: list[dict]) -> bytes:
    return orjson.dumps({"status": "success", "data": {"resultType": "matrix", "result": result}})


def test_the_fast_parse_equals_the_json_parse_with_odd_values_and_escaped_labels():
    result = [
        {"metric": {"__name__": "x", "path": "/a<b>"}, "values": [[10, "NaN"], [20, "+Inf"], [30.5, "-1e-3"]]},
        {"metric": {"job": 'q"uote\\d'}, "values": [[10, "-Inf"], [40, "1.7976931348623157e+308"]]},
        {"metric": {"job": "empty"}, "values": []},
    ]
    data = body(result).replace(b"<", b"\\u003c")  # as Go writes it
    fast, full = _fast_chunk(data), _parsed_chunk(data)
    assert fast is not None
    assert [key for key, _, _ in fast] == [key for key, _, _ in full][:2]
    for (_, times, values), (_, times2, values2) in zip(fast, full, strict=False):
        np.testing.assert_array_equal(times, times2)
        np.testing.assert_array_equal(values, values2)


def test_a_malformed_value_takes_the_json_parser():
    data = body([{"metric": {"a": "b"}, "values": [[10, "1"], [20, "x"]]}])
    assert _fast_chunk(data) is None
    with pytest.raises(QueryError, match="could not convert"):
        parse_chunk(data)


def test_chunks_fill_one_grid_and_rows_grow_past_the_expected_count():
    builder = MatrixBuilder(Grid(0.0, 10.0, 4), expected_series=1)
    builder.add(parse_chunk(body([{"metric": {"i": "0"}, "values": [[0, "1"], [10, "2"]]}])))
    builder.add(parse_chunk(body([{"metric": {"i": "1"}, "values": [[20, "5"]]},
                                  {"metric": {"i": "0"}, "values": [[20, "3"], [30, "4"], [40, "9"]]}])))
    matrix = builder.matrix()
    assert matrix.labels == [{"i": "0"}, {"i": "1"}]
    np.testing.assert_array_equal(matrix.values, [[1, 2, 3, 4], [np.nan, np.nan, 5, np.nan]])


@pytest.mark.parametrize(("expr", "ok"), [
    ("x", True), ('x{a="b"}', True), ('{__name__="x"}', True), ("x offset 5m", False), ("x @ 100", False),
    ("rate(x[5m])", False), ("sum(x)", False), ("x[5m]", False), ("x + y", False),
])
def test_only_bare_selectors_are_split_by_series(expr, ok):
    assert splittable(expr) is ok


def test_groups_cover_every_series_once_on_the_most_varied_label():
    series = [{"__name__": "x", "job": "j", "instance": f"h.{i}"} for i in range(7)] + [{"__name__": "x", "job": "k"}]
    pieces = groups('x{job=~"j|k"}', series, 3, 0, 10)
    assert all(piece.label == "instance" and piece.series <= 3 for piece in pieces)
    assert sorted(v for piece in pieces for v in piece.values) == sorted(["", *(f"h.{i}" for i in range(7))])
    assert group("x{}", "instance", ["h.1", ""], 0, 1).query == 'x{instance=~"h\\\\.1|"}'
    assert pieces[0].query.startswith('x{job=~"j|k", instance=~"')
