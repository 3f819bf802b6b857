"""The local artifact store: models survive a restart, bad files are refused, old files are pruned."""

from __future__ import annotations

import numpy as np
import pytest

from oa_exporter.adapters.stores.local import LocalArtifactStore
from oa_exporter.core.domain import Fitted, Model
from oa_exporter.core.errors import ArtifactError


def model(trained_at: float, rule: str = "requests", fingerprint: str = "abc") -> Model:
    return Model(rule=rule, fingerprint=fingerprint, engine="statsforecast", keys=[b'{"i":"a"}'],
                 labels=[{"i": "a"}], trained_at=trained_at, window_start=0.0, window_end=trained_at,
                 step=60.0, fitted=Fitted(None, np.ones(1, bool)))


async def test_the_newest_model_of_a_fingerprint_comes_back(tmp_path):
    store = LocalArtifactStore(tmp_path)
    await store.save(model(1000.0), b"old")
    await store.save(model(2000.0), b"new")
    await store.save(model(3000.0, fingerprint="other"), b"other")
    found, payload = await store.load_latest("requests", "abc")
    assert payload == b"new"
    assert (found.trained_at, found.keys, found.labels) == (2000.0, [b'{"i":"a"}'], [{"i": "a"}])


async def test_nothing_stored_is_none(tmp_path):
    assert await LocalArtifactStore(tmp_path).load_latest("requests", "abc") is None


async def test_only_the_newest_few_files_are_kept(tmp_path):
    store = LocalArtifactStore(tmp_path, keep=2)
    for t in (1000.0, 2000.0, 3000.0, 4000.0):
        await store.save(model(t), b"x")
    assert len(list(tmp_path.rglob("*.oamodel"))) == 2
    found, _ = await store.load_latest("requests", "abc")
    assert found.trained_at == 4000.0


async def test_odd_rule_names_stay_inside_the_directory(tmp_path):
    store = LocalArtifactStore(tmp_path / "models")
    await store.save(model(1000.0, rule="../escape/rule"), b"x")
    assert all((tmp_path / "models") in p.parents for p in tmp_path.rglob("*.oamodel"))
    assert await store.load_latest("../escape/rule", "abc") is not None


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage"])
async def test_a_damaged_file_is_an_artifact_error(tmp_path, damage):
    store = LocalArtifactStore(tmp_path)
    await store.save(model(1000.0), b"payload" * 100)
    [path] = tmp_path.rglob("*.oamodel")
    blob = path.read_bytes()
    damaged = {
        "flip": blob[:-10] + bytes([blob[-10] ^ 0xFF]) + blob[-9:],
        "truncate": blob[: len(blob) // 2],
        "garbage": b"not a model",
    }[damage]
    path.write_bytes(damaged)
    with pytest.raises(ArtifactError, match=str(path)):
        await store.load_latest("requests", "abc")
