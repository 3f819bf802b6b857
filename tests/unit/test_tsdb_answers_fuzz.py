"""Whatever a TSDB answers, the instant and range parsers give a result or a QueryError (a rule error), never
another exception: truncated, mutated, wrongly typed and non-JSON bodies (hypothesis, derandomized)."""

from __future__ import annotations

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oa_exporter.adapters.tsdb.matrix import parse_chunk
from oa_exporter.adapters.tsdb.prometheus import _instant_vector
from oa_exporter.core.errors import QueryError

AT = 1_700_000_000.0
INSTANT = orjson.dumps({"status": "success", "data": {"resultType": "vector", "result": [
    {"metric": {"__name__": "up", "job": f"j{i}", "instance": "a\\u003cb" if i == 2 else f"h{i}"},
     "value": [AT, str(i + 0.5) if i != 1 else "NaN"]} for i in range(4)]}})
RANGE = orjson.dumps({"status": "success", "data": {"resultType": "matrix", "result": [
    {"metric": {"job": f"j{i}"}, "values": [[AT + 60 * t, f"{t * i}e-1" if t != 2 else "+Inf"] for t in range(5)]}
    for i in range(3)]}})
WEIRD = [b"", b"null", b"[]", b"{}", b'{"status":"success"}', b'{"status":"success","data":null}',
         b'{"status":"success","data":{"resultType":"vector","result":{}}}',
         b'{"status":"success","data":{"resultType":"vector","result":[{"metric":1,"value":2}]}}',
         b'{"status":"success","data":{"resultType":"matrix","result":[{"metric":{},"values":[[1]]}]}}',
         b'{"status":"success","data":{"resultType":"scalar","result":[1,"x"]}}',
         b'{"status":"success","data":{"resultType":"scalar","result":7}}', b"\xff\xfe", b"<html>502</html>",
         b'{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"1e999999"]}]}}']
TOKENS = [b'"', b"{", b"}", b"[", b"]", b",", b":", b"\\", b"null", b"1e999", b'"NaN"', b"-", b'{"metric":',
          b',"value":[', b',"values":[', b"]]", b"\x00", b"\xff", b'"histograms"']


@st.composite
def bodies(draw: st.DrawFn, seed: bytes) -> bytes:
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return draw(st.sampled_from(WEIRD))
    if kind == 1:  # truncated
        return seed[: draw(st.integers(0, len(seed)))]
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        if draw(st.booleans()):
            data[at:at] = draw(st.sampled_from(TOKENS))
        else:
            data[at:at + draw(st.integers(1, 8))] = draw(st.binary(max_size=4))
    return bytes(data)


FUZZ = settings(max_examples=1500, derandomize=True, database=None, deadline=None,
                suppress_health_check=list(HealthCheck))


@FUZZ
@given(bodies(INSTANT))
def test_instant_answers_parse_or_are_query_errors(body):
    try:
        vector = _instant_vector(body, AT)
    except QueryError:
        return
    assert len(vector.keys) == len(vector.values)


@FUZZ
@given(bodies(RANGE))
def test_range_answers_parse_or_are_query_errors(body):
    try:
        chunk = parse_chunk(body)
    except QueryError:
        return
    assert all(len(times) == len(values) for _, times, values in chunk)


def test_the_seeds_parse():
    assert len(_instant_vector(INSTANT, AT).keys) == 4
    assert len(parse_chunk(RANGE)) == 3
