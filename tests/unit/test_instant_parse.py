"""The instant-query fast parse gives what the full JSON parse gives, on bodies of many blocks."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from oa_exporter.adapters.tsdb import matrix
from oa_exporter.adapters.tsdb.matrix import split
from oa_exporter.adapters.tsdb.prometheus import _fast_vector, _parsed_vector


def body(n: int) -> bytes:
    result = [{"metric": {"__name__": "up", "instance": f"10.0.{i // 250}.{i % 250}:9100",
                          "path": "/a<b>" if i % 1000 == 7 else f"/p/{i}"},  # some need escapes
               "value": [1700000000, repr(i * 0.37 - 5)]} for i in range(n)]
    text = orjson.dumps({"status": "success", "data": {"resultType": "vector", "result": result}})
    return text.replace(b"<", b"\\u003c")  # as Go writes it


def test_a_body_of_many_blocks_parses_as_the_json_parser_reads_it():
    data = body(40_000)
    assert len(data) > 2 * matrix.BLOCK
    fast, full = _fast_vector(data, 1.0), _parsed_vector(data, 1.0)
    assert fast is not None and fast.keys == full.keys
    np.testing.assert_array_equal(fast.values, full.values)
    assert fast.labels[7]["path"] == "/a<b>" and len(fast.values) == 40_000


@pytest.mark.parametrize("block", [1, 5, 64, 1 << 20])
@pytest.mark.parametrize("text", [b"", b"abc", b"<>", b"x<>y<>", b"<><>", b"head" + b"<>a" * 1000])
def test_split_a_block_at_a_time_is_split(monkeypatch, block, text):
    monkeypatch.setattr(matrix, "BLOCK", block)
    assert split(text, b"<>") == text.split(b"<>")
