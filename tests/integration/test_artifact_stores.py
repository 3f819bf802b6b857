"""One contract for every ArtifactStore — local (a directory), s3 (a real SeaweedFS on loopback), noop (memory) —
then what only S3 has to say: wrong credentials, a missing bucket, multipart uploads."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pytest

from oa_exporter.adapters.stores.local import LocalArtifactStore
from oa_exporter.adapters.stores.noop import NoopArtifactStore
from oa_exporter.adapters.stores.s3 import S3ArtifactStore
from oa_exporter.core.domain import FitRecord, Fitted, Model
from oa_exporter.core.errors import ArtifactError, ArtifactRejected, RejectReason
from oa_exporter.core.ports import ArtifactStore

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PREFIX = "oa/test"
KEY = b"a signing key that only the daemon knows"
BIG = 20 * 1024 * 1024  # above the 8 MiB multipart threshold: S3 takes it in three parts
ROUNDS = 10  # writers killed at most: on a loaded machine a kill aimed inside a write can land just after it


def model(trained_at: float, rule: str = "requests", fingerprint: str = "abc123", series: int = 2) -> Model:
    labels = [{"instance": f"host-{i}", "job": "web"} for i in range(series)]
    return Model(rule=rule, fingerprint=fingerprint, engine="statsforecast",
                 keys=[json.dumps(x, sort_keys=True).encode() for x in labels], labels=labels,
                 trained_at=trained_at, window_start=trained_at - 86400, window_end=trained_at, step=60.0,
                 fitted=Fitted(None, np.ones(series, bool)), versions={"statsforecast": "2.1.1", "numpy": "2.4"})


def flip_last_byte(blob: bytes) -> bytes:
    return blob[:-1] + bytes([blob[-1] ^ 0x01])


@dataclass
class Subject:
    """A store under test, how to open another one on the same place, and how an attacker rewrites a stored
    artifact's bytes."""

    kind: str
    open: Callable[..., ArtifactStore]
    tamper: Callable[[str, Callable[[bytes], bytes]], None]
    writer_spec: dict = field(default_factory=dict)  # how a separate process opens the same place
    torn: Callable[[], int] = lambda: 0  # writes caught half-way, as an operator sees them (never the store)

    @property
    def durable(self) -> bool:
        return self.kind != "noop"


@pytest.fixture(params=["local", "s3", "noop"])
async def subject(request, tmp_path) -> AsyncIterator[Subject]:
    opened: list[ArtifactStore] = []

    def track(store: ArtifactStore) -> ArtifactStore:
        opened.append(store)
        return store

    if request.param == "local":
        root = tmp_path / "models"

        def tamper(artifact: str, change: Callable[[bytes], bytes]) -> None:
            (root / artifact).write_bytes(change((root / artifact).read_bytes()))

        yield Subject("local", lambda key=None: track(LocalArtifactStore(root, key)), tamper,
                      {"kind": "local", "dir": str(root)}, lambda: len(list(root.glob("*/.tmp-*"))))
    elif request.param == "s3":
        seaweed = request.getfixturevalue("seaweed")
        request.getfixturevalue("s3_env")
        bucket = request.getfixturevalue("s3_bucket")
        admin = seaweed.client()

        def tamper(artifact: str, change: Callable[[bytes], bytes]) -> None:
            body = admin.get_object(Bucket=bucket, Key=f"{PREFIX}/{artifact}")["Body"].read()
            admin.put_object(Bucket=bucket, Key=f"{PREFIX}/{artifact}", Body=change(body))

        yield Subject("s3", lambda key=None: track(S3ArtifactStore(bucket, PREFIX, seaweed.url, "us-east-1", key)),
                      tamper, {"kind": "s3", "bucket": bucket, "prefix": PREFIX, "endpoint": seaweed.url},
                      lambda: len(admin.list_multipart_uploads(Bucket=bucket).get("Uploads", [])))
    else:
        memory = NoopArtifactStore()

        def tamper(artifact: str, change: Callable[[bytes], bytes]) -> None:
            memory.blobs[artifact] = change(memory.blobs[artifact])

        yield Subject("noop", lambda key=None: memory, tamper)
    for store in opened:
        await store.close()


async def test_a_stored_model_comes_back_whole(subject):
    store = subject.open()
    stored = model(1_700_000_000.5)
    artifact = await store.put(stored, b"engine payload")
    found, payload = await subject.open().get(artifact)
    assert payload == b"engine payload"
    assert replace(found, fitted=stored.fitted) == stored
    assert found.fitted.payload is None  # the engine, not the store, loads payloads


async def test_listing_is_newest_first_per_rule_and_overall(subject):
    store = subject.open()
    ids = {t: await store.put(model(t), b"x") for t in (2000.0, 1000.0, 3000.0)}
    other = await store.put(model(2500.0, rule="errors", fingerprint="def456"), b"y")
    listed = await store.list("requests")
    assert [a.id for a in listed] == [ids[3000.0], ids[2000.0], ids[1000.0]]
    assert [(a.rule, a.fingerprint, a.trained_at) for a in listed][0] == ("requests", "abc123", 3000.0)
    assert [a.id for a in await store.list()] == [ids[3000.0], other, ids[2000.0], ids[1000.0]]
    assert await store.list("nothing-here") == []


async def test_delete_removes_and_deleting_again_is_fine(subject):
    store = subject.open()
    kept, dropped = await store.put(model(1000.0), b"a"), await store.put(model(2000.0), b"b")
    await store.delete(dropped)
    await store.delete(dropped)
    assert [a.id for a in await store.list("requests")] == [kept]
    with pytest.raises(ArtifactError, match="not found"):
        await store.get(dropped)


@pytest.mark.parametrize("bad", ["../../etc/passwd", "requests/fit.json", "requests/abc-12.oamodel/../x", ""])
async def test_an_id_that_is_not_an_artifact_is_refused(subject, bad):
    with pytest.raises(ArtifactError):
        await subject.open().get(bad)
    with pytest.raises(ArtifactError):
        await subject.open().delete(bad)


async def test_rule_names_are_kept_apart_and_inside_the_store(subject):
    store = subject.open()
    names = ["a/b", "a_b", "..", "../x", "node:cpu", "ünï", "a%2Fb"]
    for i, name in enumerate(names):
        await store.put(model(1000.0 + i, rule=name), name.encode())
    for name in names:
        [info] = await store.list(name)
        found, payload = await store.get(info.id)
        assert (info.rule, found.rule, payload) == (name, name, name.encode())
    assert len(await store.list()) == len(names)


async def test_fit_records_are_replaced_and_come_back(subject):
    store = subject.open()
    assert await store.get_record("requests") is None
    first = FitRecord("requests", "abc123", 1000.0, True, trained_at=990.0,
                      series={"ready": 9, "not-ready": 1, "failed": 0}, artifact="requests/abc123-x.oamodel")
    await store.put_record(first)
    await store.put_record(replace(first, finished_at=2000.0, ok=False, error="TSDB down"))
    again = await subject.open().get_record("requests")
    assert again == replace(first, finished_at=2000.0, ok=False, error="TSDB down")
    assert await store.list("requests") == []  # a record is not an artifact


async def test_a_20_mb_model_round_trips(subject):
    payload = np.random.default_rng(3).bytes(BIG)
    store = subject.open()
    artifact = await store.put(model(1000.0, series=5000), payload)
    found, loaded = await subject.open().get(artifact)
    assert loaded == payload
    assert len(found.keys) == 5000


async def test_readers_never_see_a_half_written_model(subject):
    """Rewriting one artifact again and again while reading it: every read is one whole version."""
    versions = [bytes([v]) * (4 * 1024 * 1024) for v in range(3)]
    store, reader = subject.open(), subject.open()
    artifact = await store.put(model(1000.0), versions[0])

    async def write() -> None:
        for i in range(1, 9):
            await store.put(model(1000.0), versions[i % 3])

    async def read() -> list[bytes]:
        seen = []
        for _ in range(12):
            seen.append((await reader.get(artifact))[1])
        return seen

    _, seen = await asyncio.gather(write(), read())
    assert all(payload in versions for payload in seen)


async def test_a_damaged_artifact_is_rejected_as_corrupt(subject):
    store = subject.open()
    artifact = await store.put(model(1000.0), b"payload" * 1000)
    subject.tamper(artifact, lambda blob: blob[: len(blob) // 2] + bytes([blob[len(blob) // 2] ^ 0xFF])
                   + blob[len(blob) // 2 + 1 :])
    with pytest.raises(ArtifactRejected) as refused:
        await subject.open().get(artifact)
    assert refused.value.reason is RejectReason.CORRUPT


async def test_with_a_key_a_tampered_artifact_is_refused_unread(subject):
    if not subject.durable:
        pytest.skip("noop keeps models in the process's memory: nobody else can write them, nothing to sign")
    artifact = await subject.open(KEY).put(model(1000.0), b"payload")
    assert (await subject.open(KEY).get(artifact))[1] == b"payload"
    subject.tamper(artifact, flip_last_byte)
    with pytest.raises(ArtifactRejected) as refused:
        await subject.open(KEY).get(artifact)
    assert refused.value.reason is RejectReason.SIGNATURE


async def test_with_a_key_unsigned_or_foreign_signed_artifacts_are_refused(subject):
    if not subject.durable:
        pytest.skip("noop keeps models in the process's memory: nothing to sign")
    unsigned = await subject.open().put(model(1000.0), b"unsigned")
    foreign = await subject.open(b"another key").put(model(2000.0), b"foreign")
    for artifact in (unsigned, foreign):
        with pytest.raises(ArtifactRejected) as refused:
            await subject.open(KEY).get(artifact)
        assert refused.value.reason is RejectReason.SIGNATURE
    assert (await subject.open().get(foreign))[1] == b"foreign"  # without a key: checksummed, not verified


WRITER = """
import asyncio, json, sys
import numpy as np
from oa_exporter.core.domain import Fitted, Model
spec = json.loads(sys.argv[1])
key = spec["key"].encode()
if spec["kind"] == "local":
    from oa_exporter.adapters.stores.local import LocalArtifactStore
    store = LocalArtifactStore(spec["dir"], key)
else:
    from oa_exporter.adapters.stores.s3 import S3ArtifactStore
    store = S3ArtifactStore(spec["bucket"], spec["prefix"], spec["endpoint"], "us-east-1", key)
payload = np.random.default_rng(7).bytes(spec["size"])

async def main():
    for i in range(spec["first"], spec["first"] + 1000):
        m = Model("writer", "abc123", "statsforecast", [b"k"], [{"i": "a"}], float(i), 0.0, 1.0, 60.0,
                  Fitted(None, np.ones(1, bool)))
        print("put", i, flush=True)
        await store.put(m, payload)
        print("done", i, flush=True)

asyncio.run(main())
"""


async def test_a_writer_killed_in_the_middle_of_a_put_leaves_only_whole_artifacts(subject):
    """SIGKILL a process while it writes a 20 MB model (its temporary file or multipart upload is seen in
    progress): what the store lists afterwards is exactly the finished puts, each whole."""
    if not subject.durable:
        pytest.skip("noop: a killed process takes its memory with it")
    done: set[float] = set()
    caught = 0
    for round_ in range(ROUNDS):
        if caught and round_ >= 3:  # three rounds at least, more while no kill landed inside a write
            break
        spec = {**subject.writer_spec, "key": KEY.decode(), "size": BIG, "first": 1000 * (round_ + 1)}
        writer = subprocess.Popen([sys.executable, "-c", WRITER, json.dumps(spec)], cwd=ROOT, env=os.environ.copy(),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            while True:
                line = await asyncio.to_thread(writer.stdout.readline)
                assert line, writer.stderr.read()
                word, number = line.split()
                if word == "done":
                    done.add(float(number))
                elif int(number) >= spec["first"] + 2:  # two whole puts, then kill the third inside its write
                    torn_before = subject.torn()
                    await asyncio.to_thread(_kill_when, writer, lambda before=torn_before: subject.torn() > before)
                    in_flight = float(number)
                    break
        finally:
            writer.kill()
            writer.wait()
        caught += subject.torn() > torn_before
        store = subject.open(KEY)
        listed = await store.list("writer")
        assert {a.trained_at for a in listed} <= done | {in_flight}
        assert done <= {a.trained_at for a in listed}
        done |= {a.trained_at for a in listed}  # a kill just after the rename leaves that put whole: it stays
        payload = np.random.default_rng(7).bytes(BIG)
        for info in listed:
            assert (await store.get(info.id))[1] == payload
    assert caught, "no kill landed inside a write"


def _kill_when(process: subprocess.Popen, writing: Callable[[], bool], timeout: float = 60.0) -> None:
    """SIGKILL the process as soon as `writing()` holds (or after the timeout)."""
    deadline = time.monotonic() + timeout
    while not writing() and time.monotonic() < deadline:
        time.sleep(0.0005)
    process.send_signal(signal.SIGKILL)


# --- S3 only ---------------------------------------------------------------------------------------------------


async def test_s3_a_big_model_goes_up_in_parts(seaweed, s3_env, s3_bucket):
    store = S3ArtifactStore(s3_bucket, PREFIX, seaweed.url, "us-east-1")
    try:
        artifact = await store.put(model(1000.0), b"\0" * BIG)
    finally:
        await store.close()
    etag = seaweed.client().head_object(Bucket=s3_bucket, Key=f"{PREFIX}/{artifact}")["ETag"]
    assert etag.strip('"').endswith("-3")  # a multipart ETag: md5-of-parts, dash, part count


async def test_s3_wrong_secret_key_says_so(seaweed, s3_env, s3_bucket, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    store = S3ArtifactStore(s3_bucket, PREFIX, seaweed.url)
    try:
        for call in (lambda: store.put(model(1000.0), b"x"), lambda: store.list("requests"),
                     lambda: store.get_record("requests")):
            with pytest.raises(ArtifactError, match="secret access key is wrong.*AWS_SECRET_ACCESS_KEY"):
                await call()
    finally:
        await store.close()


async def test_s3_unknown_access_key_says_so(seaweed, s3_env, s3_bucket, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "nobody")
    store = S3ArtifactStore(s3_bucket, PREFIX, seaweed.url)
    try:
        with pytest.raises(ArtifactError, match="does not know the access key id.*AWS_ACCESS_KEY_ID"):
            await store.list()
    finally:
        await store.close()


async def test_s3_a_missing_bucket_says_so(seaweed, s3_env):
    store = S3ArtifactStore("no-such-bucket", PREFIX, seaweed.url)
    try:
        for call in (lambda: store.put(model(1000.0), b"x"), lambda: store.list(), lambda: store.get_record("r")):
            with pytest.raises(ArtifactError, match="bucket 'no-such-bucket' does not exist at http.*create it"):
                await call()
    finally:
        await store.close()


async def test_s3_an_unreachable_endpoint_says_so(s3_env):
    from tests.servers import free_port

    store = S3ArtifactStore("models", PREFIX, f"http://127.0.0.1:{free_port()}")
    try:
        with pytest.raises(ArtifactError, match="cannot reach S3 at http://127.0.0.1"):
            await store.list()
    finally:
        await store.close()


async def test_s3_prefixes_keep_deployments_apart(seaweed, s3_env, s3_bucket):
    prod, staging = (S3ArtifactStore(s3_bucket, p, seaweed.url) for p in ("prod", "/staging/"))
    try:
        await prod.put(model(1000.0), b"prod")
        await staging.put(model(2000.0), b"staging")
        [only] = await prod.list()
        assert (await prod.get(only.id))[1] == b"prod"
        keys = {o["Key"] for o in seaweed.client().list_objects_v2(Bucket=s3_bucket)["Contents"]}
        assert keys == {"prod/requests/abc123-000000001000000.oamodel",
                        "staging/requests/abc123-000000002000000.oamodel"}
    finally:
        await prod.close()
        await staging.close()
