"""The local artifact store: its layout, damaged files, its index (rebuilt from the files, never unpickled),
the temporary files a crash leaves. The contract every store keeps is in tests/integration/test_artifact_stores.py."""

from __future__ import annotations

import os
import pickle
import sqlite3
import time

import numpy as np
import pytest

from oa_exporter.adapters.stores import codec
from oa_exporter.adapters.stores.local import STALE_TEMP_S, LocalArtifactStore
from oa_exporter.core.domain import FitRecord, Fitted, Model
from oa_exporter.core.errors import ArtifactError, ArtifactRejected, RejectReason


def model(trained_at: float, rule: str = "requests", fingerprint: str = "abc") -> Model:
    return Model(rule=rule, fingerprint=fingerprint, engine="statsforecast", keys=[b'{"i":"a"}'],
                 labels=[{"i": "a"}], trained_at=trained_at, window_start=0.0, window_end=trained_at,
                 step=60.0, fitted=Fitted(None, np.ones(1, bool)))


@pytest.fixture
async def store(tmp_path):
    opened = LocalArtifactStore(tmp_path)
    yield opened
    await opened.close()


async def test_models_and_the_record_lie_in_the_rule_folder(store, tmp_path):
    artifact = await store.put(model(1000.0), b"x")
    await store.put_record(FitRecord("requests", "abc", 1000.0, True, artifact=artifact))
    assert artifact == "requests/abc-000000001000000.oamodel"
    assert sorted(p.name for p in (tmp_path / "requests").iterdir()) == ["abc-000000001000000.oamodel", "fit.json"]
    assert (tmp_path / artifact).stat().st_mode & 0o077 == 0  # models are for the daemon's eyes only


async def test_odd_rule_names_stay_inside_the_directory(tmp_path):
    store = LocalArtifactStore(tmp_path / "models")
    await store.put(model(1000.0, rule="../escape/rule"), b"x")
    await store.put_record(FitRecord("../escape/rule", "abc", 1000.0, True))
    files = [p for p in tmp_path.rglob("*") if p.is_file() and ".index" not in p.parts]
    assert files and all((tmp_path / "models") in p.parents for p in files)
    assert len(await store.list("../escape/rule")) == 1
    await store.close()


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage", "empty"])
async def test_a_damaged_file_is_an_artifact_error_naming_it(store, tmp_path, damage):
    artifact = await store.put(model(1000.0), b"payload" * 100)
    path = tmp_path / artifact
    blob = path.read_bytes()
    path.write_bytes({
        "flip": blob[:-40] + bytes([blob[-40] ^ 0xFF]) + blob[-39:],
        "truncate": blob[: len(blob) // 2],
        "garbage": b"not a model",
        "empty": b"",
    }[damage])
    with pytest.raises(ArtifactRejected, match=str(path)) as refused:
        await store.get(artifact)
    assert refused.value.reason is RejectReason.CORRUPT


async def test_a_model_file_of_the_first_format_is_refused_as_another_format(store, tmp_path):
    (tmp_path / "requests").mkdir()
    (tmp_path / "requests" / "abc-000000001000000.oamodel").write_bytes(b"OAMODEL1\0\0\0\2{}pickle")
    [old] = await store.list("requests")
    with pytest.raises(ArtifactRejected, match="format 1") as refused:
        await store.get(old.id)
    assert refused.value.reason is RejectReason.FORMAT


async def test_the_index_follows_the_files_across_restarts(tmp_path):
    store = LocalArtifactStore(tmp_path)
    kept = await store.put(model(1000.0), b"kept")
    gone = await store.put(model(2000.0), b"gone")
    await store.close()
    (tmp_path / gone).unlink()  # removed by hand while the daemon was down
    copied = tmp_path / "requests" / "abc-000000003000000.oamodel"
    copied.write_bytes(codec.encode(model(3000.0), b"copied in"))  # e.g. restored from a backup

    again = LocalArtifactStore(tmp_path)
    assert [a.id for a in await again.list("requests")] == ["requests/abc-000000003000000.oamodel", kept]
    assert (await again.get("requests/abc-000000003000000.oamodel"))[1] == b"copied in"
    await again.close()


async def test_a_damaged_index_is_rebuilt_from_the_files(tmp_path):
    store = LocalArtifactStore(tmp_path)
    artifact = await store.put(model(1000.0), b"x")
    await store.close()
    for path in (tmp_path / ".index").iterdir():
        path.write_bytes(b"this is not an SQLite database" * 100)
    again = LocalArtifactStore(tmp_path)
    assert [a.id for a in await again.list()] == [artifact]
    await again.close()


class _Boom:
    def __reduce__(self):
        return (os.mkdir, ("PWNED",))


@pytest.mark.parametrize("column", ["key", "value"])
async def test_a_pickle_planted_in_the_index_is_never_loaded(tmp_path, monkeypatch, column):
    """Whoever can write the index file must not get code run: the index holds only raw strings and sizes."""
    monkeypatch.chdir(tmp_path)
    store = LocalArtifactStore(tmp_path / "models")
    await store.put(model(1000.0), b"x")
    await store.close()
    with sqlite3.connect(tmp_path / "models" / ".index" / "cache.db") as db:
        evil = sqlite3.Binary(pickle.dumps(_Boom()))
        if column == "key":
            db.execute("UPDATE Cache SET key = ?, raw = 0", (evil,))
        else:
            db.execute("UPDATE Cache SET value = ?, mode = 4", (evil,))
    again = LocalArtifactStore(tmp_path / "models")
    try:
        await again.list()
        await again.get("requests/abc-000000001000000.oamodel")
    except ArtifactError:
        pass  # refusing is fine; running the pickle is not
    assert not (tmp_path / "PWNED").exists()
    await again.close()


async def test_a_write_torn_by_a_crash_is_never_listed_and_is_swept_later(tmp_path):
    (tmp_path / "requests").mkdir(parents=True)
    fresh = tmp_path / "requests" / ".tmp-fresh"
    stale = tmp_path / "requests" / ".tmp-stale"
    for torn in (fresh, stale):
        torn.write_bytes(codec.encode(model(1000.0), b"half")[:50])
    old = time.time() - STALE_TEMP_S - 1
    os.utime(stale, (old, old))
    store = LocalArtifactStore(tmp_path)
    assert await store.list() == []
    assert fresh.exists() and not stale.exists()  # a fresh one may belong to a writer still at work
    await store.close()


async def test_close_is_safe_twice_and_the_store_reopens(store):
    await store.put(model(1000.0), b"x")
    await store.close()
    await store.close()
    assert len(await store.list()) == 1


async def test_an_unwritable_directory_is_an_artifact_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    store = LocalArtifactStore(blocker / "models")
    with pytest.raises(ArtifactError, match=str(blocker)):
        await store.put(model(1000.0), b"x")
