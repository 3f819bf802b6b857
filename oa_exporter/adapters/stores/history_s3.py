"""HistoryStore in an S3 bucket: the local store's layout under `<prefix>history/`, so that Celery workers
(and daemons) sharing the model bucket share each rule's history too, whichever worker fits the rule next.

Each block, table and meta object is one PUT (written whole or not at all); meta.json is written last. S3 has no
locks: the generations in meta.json and table.json detect a write by another process that came between a
state and its read (the reader starts again), and a write derived from a replaced state rewrites the whole
window; two writes of one rule at the same moment can still interleave their blocks (nothing to lock).
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import boto3
import numpy as np
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from ...core.errors import HistoryError
from .history_local import LocalHistoryStore, rule_folder

FAILURES = (ClientError, BotoCoreError, OSError)


class S3HistoryStore(LocalHistoryStore):
    """Each rule's training-window history under `s3://bucket/<prefix>history/`, within `max_bytes` in all."""

    def __init__(self, bucket: str, prefix: str, endpoint: str, region: str, max_bytes: int,
                 folder: str = "history"):
        super().__init__(".", max_bytes)
        self.bucket = bucket
        self.root = f"{prefix.strip('/')}/{folder}/" if prefix.strip("/") else f"{folder}/"
        self.endpoint, self.region = endpoint, region
        self._client: Any = None
        self._lock = threading.Lock()

    @contextmanager
    def _locked(self, rule: str, exclusive: bool) -> Iterator[None]:
        yield  # no lock in S3: the generations detect what came between

    def _get(self, rule: str, name: str) -> bytes | None:
        try:
            return self._s3().get_object(Bucket=self.bucket, Key=self._key(rule, name))["Body"].read()
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise self._failed(e, f"reading {name}") from e
        except FAILURES as e:
            raise self._failed(e, f"reading {name}") from e

    def _put(self, rule: str, name: str, data: bytes) -> None:
        try:
            self._s3().put_object(Bucket=self.bucket, Key=self._key(rule, name), Body=data)
        except FAILURES as e:
            raise self._failed(e, f"writing {name}") from e

    def _get_block(self, rule: str, name: str) -> np.ndarray | None:
        data = self._get(rule, name)
        return None if data is None else np.load(io.BytesIO(data))

    def _put_block(self, rule: str, name: str, block: np.ndarray) -> None:
        buffer = io.BytesIO()
        np.save(buffer, block)
        self._put(rule, name, buffer.getvalue())

    def _delete(self, rule: str, name: str) -> None:
        try:
            self._s3().delete_object(Bucket=self.bucket, Key=self._key(rule, name))
        except FAILURES as e:
            raise self._failed(e, f"deleting {name}") from e

    def _blocks(self, rule: str) -> dict[str, int]:
        prefix = self._key(rule, "block-")
        return {key.rsplit("/", 1)[1]: size for key, size in self._list(prefix).items()}

    def _folders(self) -> dict[str, int]:
        sizes: dict[str, int] = {}
        for key, size in self._list(self.root).items():
            folder, _, name = key.removeprefix(self.root).partition("/")
            if name.startswith("block-"):
                sizes[folder] = sizes.get(folder, 0) + size
        return sizes

    def _drop(self, rule: str) -> None:
        for name in [*self._blocks(rule), "table.json", "meta.json"]:
            self._delete(rule, name)
        self._forget(rule)

    def _list(self, prefix: str) -> dict[str, int]:
        try:
            pages = self._s3().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
            return {item["Key"]: item["Size"] for page in pages for item in page.get("Contents", [])}
        except FAILURES as e:
            raise self._failed(e, f"listing {prefix}") from e

    def _key(self, rule: str, name: str) -> str:
        return f"{self.root}{rule_folder(rule)}/{name}"

    def _failed(self, e: Exception, doing: str) -> HistoryError:
        at = f" at {self.endpoint}" if self.endpoint else ""
        return HistoryError(f"S3{at}, bucket {self.bucket!r}: history store failed {doing}: {e}")

    def _s3(self) -> Any:
        with self._lock:
            if self._client is None:
                config = Config(connect_timeout=5, read_timeout=60, retries={"max_attempts": 3, "mode": "standard"},
                                s3={"addressing_style": "path"} if self.endpoint else None,
                                request_checksum_calculation="when_required",
                                response_checksum_validation="when_required")
                self._client = boto3.session.Session().client(
                    "s3", endpoint_url=self.endpoint or None, region_name=self.region or None, config=config)
            return self._client
