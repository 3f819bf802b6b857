"""The artifact format: every field survives, damage is caught, and with a key nothing unsigned is even parsed."""

from __future__ import annotations

import json
import struct
from dataclasses import replace

import numpy as np
import pytest

from oa_exporter.adapters.stores import codec
from oa_exporter.core.domain import FitRecord, Fitted, Model
from oa_exporter.core.errors import ArtifactRejected, RejectReason

KEY = b"k3y"


def model(**changes) -> Model:
    fields = dict(rule="node:cpu", fingerprint="0123abcd", engine="statsforecast",
                  keys=[b'{"instance":"a"}', b"\xff\xfe not utf-8"], labels=[{"instance": "a"}, {"instance": "b"}],
                  trained_at=1_700_000_000.123, window_start=1_699_000_000.0, window_end=1_700_000_000.0, step=60.0,
                  fitted=Fitted(None, np.zeros(0, bool)), versions={"statsforecast": "2.1.1", "numpy": "2.4.6"})
    return Model(**{**fields, **changes})


def header_of(blob: bytes) -> dict:
    (size,) = struct.unpack(">I", blob[8:12])
    return json.loads(blob[12 : 12 + size])


@pytest.mark.parametrize("key", [None, KEY])
def test_every_field_and_the_payload_round_trip(key):
    blob = codec.encode(model(), b"payload", key)
    found, payload = codec.decode(blob, "test", key)
    expected = model()
    assert (replace(found, fitted=expected.fitted), payload) == (expected, b"payload")


def test_the_header_says_what_the_issue_asks_for():
    header = header_of(codec.encode(model(), b"payload", KEY))
    assert header["format"] == codec.FORMAT
    assert header["engine"] == "statsforecast" and header["versions"]["statsforecast"] == "2.1.1"
    assert header["fingerprint"] == "0123abcd" and header["rule"] == "node:cpu"
    assert (header["window_start"], header["window_end"], header["trained_at"]) == (1_699_000_000.0, 1_700_000_000.0,
                                                                                    1_700_000_000.123)
    assert header["labels"] == [{"instance": "a"}, {"instance": "b"}]
    assert header["payload_sha256"] == "239f59ed55e737c77147cf55ad0c1b030b6d7ee748a7426952f9b852d5a935e5"
    assert header["signed"] is True


def test_with_a_key_the_signature_is_checked_before_anything_is_parsed():
    blob = codec.encode(model(), b"payload", KEY)
    garbled = blob[:12] + b"{not json" + blob[21:]  # a header json would choke on
    with pytest.raises(ArtifactRejected) as refused:
        codec.decode(garbled, "test", KEY)
    assert refused.value.reason is RejectReason.SIGNATURE


@pytest.mark.parametrize("change", [
    lambda b: b.replace(b'"fingerprint":"0123abcd"', b'"fingerprint":"ffffffff"'),  # header, same length
    lambda b: b.replace(b"payload", b"PAYLOAD"),
    lambda b: b[:-1] + bytes([b[-1] ^ 1]),  # the signature itself
])
def test_with_a_key_any_change_is_a_signature_rejection(change):
    blob = codec.encode(model(), b"payload", KEY)
    assert change(blob) != blob
    with pytest.raises(ArtifactRejected, match="signature does not match") as refused:
        codec.decode(change(blob), "test", KEY)
    assert refused.value.reason is RejectReason.SIGNATURE


def test_without_a_key_a_changed_header_is_still_caught_as_damage():
    blob = codec.encode(model(), b"payload")
    changed = blob.replace(b'"trained_at":1700000000.123', b'"trained_at":1700000009.123')
    with pytest.raises(ArtifactRejected) as refused:
        codec.decode(changed, "test")
    assert refused.value.reason is RejectReason.CORRUPT


def test_a_signed_artifact_reads_without_a_key_and_an_unsigned_one_not_with_one():
    assert codec.decode(codec.encode(model(), b"p", KEY), "test")[1] == b"p"
    with pytest.raises(ArtifactRejected) as refused:
        codec.decode(codec.encode(model(), b"p"), "test", KEY)
    assert refused.value.reason is RejectReason.SIGNATURE


@pytest.mark.parametrize("cut", [1, 32, 33, 100])
def test_every_truncation_is_corrupt(cut):
    blob = codec.encode(model(), b"payload" * 50)
    with pytest.raises(ArtifactRejected) as refused:
        codec.decode(blob[:-cut], "where")
    assert refused.value.reason is RejectReason.CORRUPT


def test_another_format_version_is_a_format_rejection():
    blob = codec.encode(model(), b"p")
    with pytest.raises(ArtifactRejected, match="format 3") as refused:
        codec.decode(b"OAMODEL3" + blob[8:], "test")
    assert refused.value.reason is RejectReason.FORMAT


@pytest.mark.parametrize("name", ["requests", "node:cpu", "a/b", "..", "ünï", "a%2Fb", "a b"])
def test_ids_name_rule_fingerprint_and_time_and_nothing_escapes(name):
    artifact = codec.artifact_id(model(rule=name))
    info = codec.parse_id(artifact)
    assert (info.rule, info.fingerprint, info.trained_at) == (name, "0123abcd", 1_700_000_000.123)
    assert artifact.count("/") == 1 and ".." not in artifact


@pytest.mark.parametrize("name", ["x/fit.json", "x/.tmp-abc", "../x/a-1.oamodel", "x/a-1.oamodel/..",
                                  "%zz/a-1.oamodel"])
def test_anything_else_is_not_an_id(name):
    assert codec.parse_id(name) is None


def test_a_fit_record_round_trips():
    record = FitRecord("r", "fp", 10.0, False, "boom", 5.0, {"ready": 1, "not-ready": 2, "failed": 0}, "r/fp-1.oamodel")
    assert codec.decode_record(codec.encode_record(record), "test") == record
