"""Which artifact store bootstrap() wires, and with which signing key."""

from __future__ import annotations

import pytest

from oa_exporter.adapters.stores.local import LocalArtifactStore
from oa_exporter.adapters.stores.noop import NoopArtifactStore
from oa_exporter.adapters.stores.s3 import S3ArtifactStore
from oa_exporter.bootstrap import artifact_key, artifact_store
from oa_exporter.settings import Settings


def test_the_local_store_is_the_default(tmp_path):
    store = artifact_store(Settings(artifact_dir=str(tmp_path)))
    assert isinstance(store, LocalArtifactStore) and store.directory == tmp_path and store.key is None


def test_s3_and_noop_are_chosen_by_name():
    s3 = artifact_store(Settings(artifact_store="s3", s3_bucket="models", s3_prefix="/oa/", s3_endpoint="http://x:1",
                                 artifact_key="k"))
    assert isinstance(s3, S3ArtifactStore)
    assert (s3.bucket, s3.prefix, s3.endpoint, s3.key) == ("models", "oa/", "http://x:1", b"k")
    assert isinstance(artifact_store(Settings(artifact_store="noop")), NoopArtifactStore)


def test_s3_without_a_bucket_says_which_flag_is_missing():
    with pytest.raises(ValueError, match="--artifact.s3.bucket"):
        artifact_store(Settings(artifact_store="s3"))


def test_the_key_file_wins_and_loses_its_trailing_newline(tmp_path):
    (tmp_path / "key").write_bytes(b"from the file\n")
    settings = Settings(artifact_key="from the variable", artifact_key_file=str(tmp_path / "key"))
    assert artifact_key(settings) == b"from the file"
    assert artifact_key(Settings(artifact_key="from the variable")) == b"from the variable"
    assert artifact_key(Settings()) is None


def test_an_empty_key_file_is_refused(tmp_path):
    (tmp_path / "key").write_bytes(b"\n")
    with pytest.raises(ValueError, match="empty"):
        artifact_key(Settings(artifact_key_file=str(tmp_path / "key")))
