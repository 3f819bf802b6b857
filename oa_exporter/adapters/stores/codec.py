"""The artifact format shared by every store: a signed, checksummed envelope around an engine's payload.

    OAMODEL2                  8 bytes: magic, with the format version
    header length             4 bytes, big-endian
    header                    JSON: format, rule, fingerprint, engine, versions, series (keys, labels),
                              training window, step, trained_at, payload size and sha256, signed
    payload                   the engine's serialised model (a pickle for statsforecast)
    SHA-256                   32 bytes: digest of magic, length and header (the header holds the payload's)
    HMAC-SHA256               32 bytes over magic, length, header and payload, only when written with a key

With a key, `decode` checks the HMAC over the raw bytes before it parses anything, so nothing an attacker
wrote reaches json or pickle; unsigned artifacts are refused. Without a key the two digests (header, then
payload: each byte hashed once) catch torn and damaged files, not forgeries: the store is then trusted like
the code itself, since the payload is unpickled.

Artifact ids name the rule, the fingerprint and the training time, so a listing needs no reads:
`<rule, percent-encoded>/<fingerprint>-<trained_at in ms, 15 digits>.oamodel`. Fit records live beside
them as `<rule>/fit.json` (plain JSON: nothing in them is executed).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import struct
from collections.abc import Iterable
from typing import Any

import numpy as np

from ...core.domain import ArtifactInfo, FitRecord, Fitted, Model
from ...core.errors import ArtifactError, ArtifactRejected, RejectReason

FORMAT = 2
MAGIC = b"OAMODEL2"
FAMILY = b"OAMODEL"  # every format version starts so; the digit after it is the version
SUFFIX = ".oamodel"
RECORD = "fit.json"
DIGEST_SIZE = SIGNATURE_SIZE = 32
_PREFIX = len(MAGIC) + 4
_ID = re.compile(r"^(?P<rule>[A-Za-z0-9_%-]+)/(?P<fingerprint>[A-Za-z0-9]+)-(?P<ms>[0-9]{1,18})\.oamodel$")
_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def encode(model: Model, payload: bytes, key: bytes | None = None) -> bytes:
    """The stored bytes of a model; signed when a key is given."""
    header = {
        "format": FORMAT, "rule": model.rule, "fingerprint": model.fingerprint, "engine": model.engine,
        "versions": dict(model.versions), "trained_at": model.trained_at, "window_start": model.window_start,
        "window_end": model.window_end, "step": model.step,
        "keys": [k.decode("utf-8", "surrogateescape") for k in model.keys], "labels": model.labels,
        "payload_size": len(payload), "payload_sha256": hashlib.sha256(payload).hexdigest(),
        "signed": key is not None,
    }
    raw = json.dumps(header, separators=(",", ":")).encode()
    head = MAGIC + struct.pack(">I", len(raw)) + raw
    signature = b""
    if key is not None:
        signer = hmac.new(key, head, hashlib.sha256)
        signer.update(payload)
        signature = signer.digest()
    return b"".join((head, payload, hashlib.sha256(head).digest(), signature))


def decode(blob: bytes, where: str, key: bytes | None = None) -> tuple[Model, bytes]:
    """The model and payload of stored bytes; ArtifactRejected saying why when they cannot be trusted.

    The returned model's `fitted` is a placeholder: the engine loads the payload.
    """
    _check_magic(blob, where)
    if key is not None:
        _verify_signature(blob, where, key)
    view = memoryview(blob)
    (size,) = struct.unpack(">I", view[len(MAGIC) : _PREFIX])
    if _PREFIX + size > len(blob):
        raise ArtifactRejected(RejectReason.CORRUPT, f"{where}: truncated header (torn or damaged file)")
    try:
        header = json.loads(bytes(view[_PREFIX : _PREFIX + size]))
        payload_size = int(header["payload_size"])
        signed = header["signed"] is True
    except (ValueError, KeyError, TypeError) as e:
        raise ArtifactRejected(RejectReason.CORRUPT, f"{where}: unreadable header: {e}") from e
    start, end = _PREFIX + size, _PREFIX + size + payload_size
    if len(blob) != end + DIGEST_SIZE + (SIGNATURE_SIZE if signed else 0):
        raise ArtifactRejected(RejectReason.CORRUPT, f"{where}: {len(blob)} bytes, not the {end} the header "
                               "announces and their digests: truncated or damaged")
    if not hmac.compare_digest(hashlib.sha256(view[:start]).digest(), blob[end : end + DIGEST_SIZE]):
        raise ArtifactRejected(RejectReason.CORRUPT, f"{where}: header checksum mismatch (torn or damaged file)")
    payload = bytes(view[start:end])
    if not hmac.compare_digest(hashlib.sha256(payload).hexdigest(), str(header.get("payload_sha256"))):
        raise ArtifactRejected(RejectReason.CORRUPT, f"{where}: payload checksum mismatch (damaged file)")
    return _model(header, where), payload


def artifact_id(model: Model) -> str:
    """Where a model is stored, relative to the store's root."""
    return f"{quote(model.rule)}/{model.fingerprint}-{round(model.trained_at * 1000):015d}{SUFFIX}"


def parse_id(name: str) -> ArtifactInfo | None:
    """What an artifact id says (None for anything else, e.g. a fit record or a temporary file)."""
    found = _ID.match(name)
    if found is None:
        return None
    rule = unquote(found["rule"])
    return ArtifactInfo(name, rule, found["fingerprint"], int(found["ms"]) / 1000) if rule is not None else None


def checked_id(name: str) -> ArtifactInfo:
    """`parse_id` for ids from callers: ArtifactError when it is not one (no path escapes a store)."""
    info = parse_id(name)
    if info is None:
        raise ArtifactError(f"{name!r} is not an artifact id")
    return info


def newest_first(infos: Iterable[ArtifactInfo]) -> list[ArtifactInfo]:
    """Listings are ordered by training time, newest first (ties by id, for a stable order)."""
    return sorted(infos, key=lambda a: (a.trained_at, a.id), reverse=True)


def folder(rule: str) -> str:
    """The folder (key prefix) of a rule's artifacts and record."""
    return quote(rule)


def record_id(rule: str) -> str:
    """Where a rule's fit record is stored."""
    return f"{quote(rule)}/{RECORD}"


def encode_record(record: FitRecord) -> bytes:
    """A fit record as JSON."""
    return json.dumps({
        "rule": record.rule, "fingerprint": record.fingerprint, "finished_at": record.finished_at,
        "ok": record.ok, "error": record.error, "trained_at": record.trained_at, "series": dict(record.series),
        "artifact": record.artifact,
    }, separators=(",", ":")).encode()


def decode_record(data: bytes, where: str) -> FitRecord:
    """Inverse of `encode_record`; ArtifactError when it is not one."""
    try:
        raw = json.loads(data)
        trained_at = raw["trained_at"]
        return FitRecord(
            rule=str(raw["rule"]), fingerprint=str(raw["fingerprint"]), finished_at=float(raw["finished_at"]),
            ok=bool(raw["ok"]), error=str(raw["error"]), trained_at=None if trained_at is None else float(trained_at),
            series={str(k): int(v) for k, v in raw["series"].items()}, artifact=str(raw["artifact"]),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ArtifactError(f"{where}: unreadable fit record: {e}") from e


def quote(name: str) -> str:
    """A rule name as one safe path segment or key part: [A-Za-z0-9_-] kept, any other byte as %XX."""
    return "".join(c if c in _SAFE else "".join(f"%{b:02X}" for b in c.encode()) for c in name)


def unquote(text: str) -> str | None:
    """Inverse of `quote`; None if `text` is not something `quote` writes."""
    try:
        name = re.sub(r"%([0-9A-F]{2})", lambda m: chr(int(m[1], 16)), text).encode("latin-1").decode()
    except (UnicodeEncodeError, UnicodeDecodeError):
        return None
    return name if quote(name) == text else None


def _check_magic(blob: bytes, where: str) -> None:
    if blob.startswith(MAGIC) and len(blob) >= _PREFIX:
        return
    if blob.startswith(FAMILY) and blob[len(FAMILY) : len(MAGIC)] != MAGIC[len(FAMILY) :]:
        version = blob[len(FAMILY) : len(MAGIC)].decode("ascii", "replace")
        raise ArtifactRejected(RejectReason.FORMAT, f"{where}: artifact format {version}, this oa-exporter reads "
                               f"format {FORMAT}")
    raise ArtifactRejected(RejectReason.CORRUPT, f"{where}: not an OpenAnomaly model (torn or damaged file)")


def _verify_signature(blob: bytes, where: str, key: bytes) -> None:
    body = memoryview(blob)[: max(len(blob) - DIGEST_SIZE - SIGNATURE_SIZE, 0)]
    expected = hmac.new(key, body, hashlib.sha256).digest()
    if len(body) < _PREFIX or not hmac.compare_digest(expected, blob[-SIGNATURE_SIZE:]):
        raise ArtifactRejected(RejectReason.SIGNATURE, f"{where}: signature does not match OA_ARTIFACT_KEY "
                               "(tampered, signed with another key, or not signed); refused unread")


def _model(header: dict[str, Any], where: str) -> Model:
    try:
        if header["format"] != FORMAT:
            raise ArtifactRejected(RejectReason.FORMAT, f"{where}: artifact format {header['format']}, this "
                                   f"oa-exporter reads format {FORMAT}")
        return Model(
            rule=str(header["rule"]), fingerprint=str(header["fingerprint"]), engine=str(header["engine"]),
            keys=[str(k).encode("utf-8", "surrogateescape") for k in header["keys"]],
            labels=[{str(n): str(v) for n, v in labels.items()} for labels in header["labels"]],
            trained_at=float(header["trained_at"]), window_start=float(header["window_start"]),
            window_end=float(header["window_end"]), step=float(header["step"]),
            fitted=Fitted(None, np.zeros(0, bool)),
            versions={str(n): str(v) for n, v in header["versions"].items()},
        )
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ArtifactRejected(RejectReason.CORRUPT, f"{where}: incomplete header: {e!r}") from e
