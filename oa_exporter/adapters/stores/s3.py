"""S3 artifact store: AWS S3 or any S3-compatible server (MinIO, SeaweedFS, Ceph, R2, ...), through boto3.

Keys: `<prefix>/<rule>/<fingerprint>-<trained_at ms>.oamodel` (format in codec.py) and `<prefix>/<rule>/fit.json`.
Credentials come from the standard AWS chain (environment, profile, web identity, instance role). boto3 is
blocking: every call runs in a worker thread. An object appears whole or not at all (a PUT, or a multipart
upload once completed), so a crash never leaves a torn artifact; models above the multipart threshold are
uploaded in parts (an upload cut by a crash stays invisible: a lifecycle rule that aborts incomplete
multipart uploads reclaims its parts).
"""

from __future__ import annotations

import builtins
import io
import threading
from typing import Any

import boto3
from boto3.exceptions import Boto3Error
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    PartialCredentialsError,
)

from ... import __version__
from ...core.domain import ArtifactInfo, FitRecord, Model
from ...core.errors import ArtifactError
from . import codec
from .threaded import ThreadedStore

MIB = 1024 * 1024
PERMISSIONS = "s3:GetObject, s3:PutObject, s3:DeleteObject and s3:ListBucket"
FAILURES = (ClientError, BotoCoreError, Boto3Error, OSError)  # what a boto3 call raises when S3 fails


class S3ArtifactStore(ThreadedStore):
    """ArtifactStore in an S3 bucket, shared by every replica that points at it."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint: str = "",
        region: str = "",
        key: bytes | None = None,
        *,
        multipart_threshold: int = 8 * MIB,
        multipart_chunksize: int = 8 * MIB,
    ):
        self.bucket = bucket
        self.prefix = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        self.endpoint = endpoint
        self.region = region
        self.key = key
        self.transfer = TransferConfig(multipart_threshold=multipart_threshold,
                                       multipart_chunksize=multipart_chunksize, max_concurrency=4)
        self._client: Any = None
        self._lock = threading.Lock()

    async def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def _put(self, model: Model, payload: bytes) -> str:
        name = codec.artifact_id(model)
        blob = codec.encode(model, payload, self.key)
        try:
            self._s3().upload_fileobj(io.BytesIO(blob), self.bucket, self.prefix + name, Config=self.transfer)
        except FAILURES as e:
            raise self._explain(e, f"writing {self._where(name)}") from e
        return name

    def _get(self, artifact_id: str) -> tuple[Model, bytes]:
        codec.checked_id(artifact_id)
        blob = self._read(artifact_id)
        if blob is None:
            raise ArtifactError(f"{self._where(artifact_id)}: not found")
        return codec.decode(blob, self._where(artifact_id), self.key)

    def _list(self, rule: str | None) -> builtins.list[ArtifactInfo]:
        prefix = self.prefix + (f"{codec.folder(rule)}/" if rule is not None else "")
        names: builtins.list[str] = []
        try:
            for page in self._s3().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
                names.extend(item["Key"][len(self.prefix) :] for item in page.get("Contents", []))
        except FAILURES as e:
            raise self._explain(e, f"listing {self._where(prefix[len(self.prefix):])}") from e
        return codec.newest_first(info for name in names if (info := codec.parse_id(name)) is not None)

    def _delete(self, artifact_id: str) -> None:
        codec.checked_id(artifact_id)
        try:
            self._s3().delete_object(Bucket=self.bucket, Key=self.prefix + artifact_id)
        except FAILURES as e:
            raise self._explain(e, f"deleting {self._where(artifact_id)}") from e

    def _put_record(self, record: FitRecord) -> None:
        name = codec.record_id(record.rule)
        try:
            self._s3().put_object(Bucket=self.bucket, Key=self.prefix + name, Body=codec.encode_record(record),
                                  ContentType="application/json")
        except FAILURES as e:
            raise self._explain(e, f"writing {self._where(name)}") from e

    def _get_record(self, rule: str) -> FitRecord | None:
        name = codec.record_id(rule)
        data = self._read(name)
        return codec.decode_record(data, self._where(name)) if data is not None else None

    def _read(self, name: str) -> bytes | None:
        """An object's bytes, None if there is no such key."""
        try:
            return self._s3().get_object(Bucket=self.bucket, Key=self.prefix + name)["Body"].read()
        except ClientError as e:
            if _code(e) in ("NoSuchKey", "404", "NotFound"):
                return None
            raise self._explain(e, f"reading {self._where(name)}") from e
        except FAILURES as e:
            raise self._explain(e, f"reading {self._where(name)}") from e

    def _s3(self) -> Any:
        with self._lock:
            if self._client is None:
                config = Config(
                    connect_timeout=5, read_timeout=60, retries={"max_attempts": 3, "mode": "standard"},
                    user_agent_extra=f"oa-exporter/{__version__}",
                    s3={"addressing_style": "path"} if self.endpoint else None,
                    # the codec checksums every artifact: skip the newer default checksums that some
                    # S3-compatible servers refuse
                    request_checksum_calculation="when_required", response_checksum_validation="when_required",
                )
                self._client = boto3.session.Session().client(
                    "s3", endpoint_url=self.endpoint or None, region_name=self.region or None, config=config)
            return self._client

    def _where(self, name: str) -> str:
        return f"s3://{self.bucket}/{self.prefix}{name}"

    def _explain(self, e: Exception, doing: str) -> ArtifactError:
        """A boto3 failure as an ArtifactError that says what to fix."""
        at = f" at {self.endpoint}" if self.endpoint else ""
        if isinstance(e, Boto3Error) and isinstance(e.__cause__, FAILURES):
            e = e.__cause__  # e.g. S3UploadFailedError around the ClientError that says why
        if isinstance(e, ClientError):
            code, status = _code(e), e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code == "NoSuchBucket":
                return ArtifactError(f"S3 bucket {self.bucket!r} does not exist{at}: create it, or point "
                                     "--artifact.s3.bucket (OA_S3_BUCKET) at an existing bucket")
            if code == "InvalidAccessKeyId":
                return ArtifactError(f"S3{at} does not know the access key id in use: check the AWS credentials "
                                     "(AWS_ACCESS_KEY_ID, AWS_PROFILE or ~/.aws/credentials)")
            if code == "SignatureDoesNotMatch":
                return ArtifactError(f"S3{at} rejected the request signature: the secret access key is wrong; "
                                     "check AWS_SECRET_ACCESS_KEY, AWS_PROFILE or ~/.aws/credentials")
            if code in ("AccessDenied", "AllAccessDisabled", "403", "Forbidden") or status == 403:
                return ArtifactError(f"S3{at} denied access to bucket {self.bucket!r} while {doing}: wrong "
                                     f"credentials, or they lack {PERMISSIONS} on it")
            message = e.response.get("Error", {}).get("Message") or str(e)
            return ArtifactError(f"S3{at} failed while {doing}: {code}: {message}")
        if isinstance(e, NoCredentialsError | PartialCredentialsError):
            return ArtifactError("no AWS credentials found for the S3 artifact store: set AWS_ACCESS_KEY_ID and "
                                 "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or give the pod or instance a role")
        if isinstance(e, EndpointConnectionError | ConnectTimeoutError):
            return ArtifactError(f"cannot reach S3{at or ' (AWS)'} while {doing}: {e}")
        return ArtifactError(f"S3{at} failed while {doing}: {e}")


def _code(e: ClientError) -> str:
    return str(e.response.get("Error", {}).get("Code", ""))
