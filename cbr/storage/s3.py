"""The S3 backend: vault storage in any S3-compatible store, through boto3.

An object ``a/b`` is the key ``<prefix>a/b`` in one bucket. Tested against
SeaweedFS; written for AWS S3, MinIO and Ceph RGW too. This module owns the
boto3 client configuration (endpoint, region, credentials, addressing style,
botocore's own bounded retries and timeouts), multipart uploads, and the one
place where botocore errors become typed storage errors (:func:`map_s3_error`).
It must not know what objects mean, and longer outage handling (minutes of
retrying) belongs to :mod:`cbr.storage.retry`, not here.

Atomicity: a single PUT and a completed multipart upload are atomic in S3, so
readers see all or nothing. ``put_if_absent`` sends ``If-None-Match: *``
(AWS since 2024, SeaweedFS, MinIO, recent Ceph): the server refuses the write
with 412 if the key exists, so two racing writers cannot both win. With
``conditional_writes="head"`` (or ``"auto"`` after the server rejected the
header as unsupported) it falls back to HEAD then PUT, which has a race:
two writers that both HEAD before either PUTs both "win", the later PUT
replacing the earlier. Callers that store only content-addressed or
identical bytes under a write-once name are unaffected; others must not
depend on the fallback.

Credentials come from the arguments, else boto3's default chain
(``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, profiles, instance roles).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
from collections.abc import Iterable, Iterator
from typing import Any, Literal

import boto3
import botocore.config
import botocore.exceptions
import urllib3.exceptions

from cbr.clock import utc_now
from cbr.storage.backend import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_PART_SIZE,
    Backend,
    ObjectInfo,
    ObjectNotFound,
    StorageError,
    StorageFull,
    StoragePermissionDenied,
    StorageUnavailable,
    check_range,
    validate_name,
    validate_prefix,
)

MIN_PART_SIZE = 5 * 1024 * 1024
"""S3's smallest multipart part (all but the last)."""
MAX_PARTS = 10_000
LIST_PAGE_SIZE = 1000

AddressingStyle = Literal["path", "virtual", "auto"]
ConditionalWrites = Literal["auto", "if-none-match", "head"]

_NOT_FOUND_CODES = {"NoSuchKey", "404", "NotFound"}
_DENIED_CODES = {
    "AccessDenied",
    "403",
    "Forbidden",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AllAccessDisabled",
    "ExpiredToken",
    "InvalidToken",
    "AccountProblem",
    "InvalidObjectState",
}
_FULL_CODES = {
    "QuotaExceeded",  # Ceph RGW
    "XMinioStorageFull",  # MinIO
    "XMinioAdminBucketQuotaExceeded",
    "InsufficientStorage",
    "507",
    "EntityTooLarge",
}
_TRANSIENT_CODES = {
    "SlowDown",
    "ServiceUnavailable",
    "InternalError",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "Throttling",
    "ThrottlingException",
    "TooManyRequests",
    "OperationAborted",
    "ConditionalRequestConflict",
    "500",
    "502",
    "503",
    "504",
}
_UNSUPPORTED_CONDITION_CODES = {"NotImplemented", "501", "InvalidArgument", "InvalidRequest"}

_TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    botocore.exceptions.ConnectionError,  # EndpointConnectionError, ConnectionClosedError, timeouts
    botocore.exceptions.HTTPClientError,
    botocore.exceptions.IncompleteReadError,
    botocore.exceptions.ResponseStreamingError,
    botocore.exceptions.ReadTimeoutError,
    urllib3.exceptions.HTTPError,
    ConnectionError,
    TimeoutError,
)


def _error_code(exc: botocore.exceptions.ClientError) -> tuple[str, int]:
    response: dict[str, Any] = exc.response or {}
    code = str(response.get("Error", {}).get("Code", ""))
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return code, status


def map_s3_error(exc: BaseException, name: str | None, action: str) -> StorageError:
    """The typed storage error for a botocore/urllib3 failure while ``action`` on ``name``."""
    where = f"{action} {name}" if name else action
    if isinstance(exc, botocore.exceptions.ClientError):
        code, status = _error_code(exc)
        detail = f"{where}: {code or status} {exc}"
        if code == "NoSuchBucket":
            return StorageError(f"bucket does not exist: {detail}", name)
        if code in _NOT_FOUND_CODES and name is not None:
            return ObjectNotFound(name)
        if code in _FULL_CODES or status == 507:
            return StorageFull(f"storage full or quota exceeded while {detail}", name)
        if code in _DENIED_CODES or status in (401, 403):
            return StoragePermissionDenied(f"access denied while {detail}", name)
        if code in _TRANSIENT_CODES or status >= 500 or status in (408, 429):
            return StorageUnavailable(f"S3 unavailable while {detail}", name)
        return StorageError(f"S3 error while {detail}", name)
    if isinstance(
        exc, botocore.exceptions.NoCredentialsError | botocore.exceptions.PartialCredentialsError
    ):
        return StoragePermissionDenied(f"no usable S3 credentials while {where}: {exc}", name)
    if isinstance(exc, _TRANSPORT_ERRORS):
        return StorageUnavailable(f"S3 unreachable while {where}: {exc}", name)
    return StorageError(f"S3 failure while {where}: {exc!r}", name)


def _utc(value: dt.datetime) -> dt.datetime:
    return value.astimezone(dt.UTC) if value.tzinfo else value.replace(tzinfo=dt.UTC)


class S3Backend(Backend):
    """Objects as keys ``<prefix><name>`` in ``bucket``.

    - ``endpoint_url``: e.g. ``http://127.0.0.1:8333`` for SeaweedFS; None for AWS.
    - ``access_key``/``secret_key``/``session_token``: None means boto3's default chain.
    - ``addressing_style``: ``path`` (SeaweedFS, MinIO, Ceph) or ``virtual``/``auto`` (AWS).
    - ``retry_mode``/``max_attempts``: botocore's own retries, bounded (attempts
      include the first try); ``connect_timeout``/``read_timeout`` in seconds.
    - ``create_bucket``: create the bucket when it does not exist.
    - ``part_size``: multipart part size for ``put_stream`` (>= 5 MiB); objects
      that fit in one part are sent with a single PUT.
    - ``conditional_writes``: how ``put_if_absent`` works, see the module docstring.
    - ``client``: a ready boto3 S3 client (the settings above are then ignored).
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        session_token: str | None = None,
        addressing_style: AddressingStyle = "path",
        retry_mode: Literal["standard", "adaptive", "legacy"] = "standard",
        max_attempts: int = 4,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        max_pool_connections: int = 16,
        verify: bool | str | None = None,
        create_bucket: bool = False,
        part_size: int = DEFAULT_PART_SIZE,
        conditional_writes: ConditionalWrites = "auto",
        list_page_size: int = LIST_PAGE_SIZE,
        client: Any = None,
    ) -> None:
        if not bucket:
            raise ValueError("S3 bucket name is empty")
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be >= {MIN_PART_SIZE} (S3's minimum part)")
        if not 1 <= list_page_size <= LIST_PAGE_SIZE:
            raise ValueError(f"list_page_size must be in 1..{LIST_PAGE_SIZE}")
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        prefix = prefix.strip("/")
        if prefix:
            validate_prefix(prefix + "/")
        self.bucket = bucket
        self.prefix = f"{prefix}/" if prefix else ""
        self.part_size = part_size
        self.list_page_size = list_page_size
        self.conditional_writes: ConditionalWrites = conditional_writes
        self._lock = threading.Lock()
        where = endpoint_url or "aws"
        self.location = f"s3://{bucket}/{self.prefix} ({where})"
        if client is None:
            config = botocore.config.Config(
                region_name=region,
                s3={"addressing_style": addressing_style},
                retries={"mode": retry_mode, "total_max_attempts": max_attempts},
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                max_pool_connections=max_pool_connections,
            )
            session = boto3.session.Session()
            client = session.client(
                "s3",
                endpoint_url=endpoint_url,
                region_name=region,
                aws_access_key_id=access_key,
                aws_secret_access_key=secret_key,
                aws_session_token=session_token,
                verify=verify,
                config=config,
            )
        self.client = client
        self._region = region
        if create_bucket:
            self.ensure_bucket()

    # -- helpers -------------------------------------------------------------------------

    def _key(self, name: str) -> str:
        return self.prefix + validate_name(name)

    def ensure_bucket(self) -> None:
        """Creates the bucket unless it exists (and is ours)."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
            return
        except botocore.exceptions.ClientError as exc:
            code, status = _error_code(exc)
            if code not in {"404", "NoSuchBucket", "NotFound"} and status != 404:
                raise map_s3_error(exc, None, f"checking bucket {self.bucket}") from exc
        except Exception as exc:
            raise map_s3_error(exc, None, f"checking bucket {self.bucket}") from exc
        kwargs: dict[str, Any] = {"Bucket": self.bucket}
        if self._region and self._region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self._region}
        try:
            self.client.create_bucket(**kwargs)
        except botocore.exceptions.ClientError as exc:
            code, _ = _error_code(exc)
            if code != "BucketAlreadyOwnedByYou":
                raise map_s3_error(exc, None, f"creating bucket {self.bucket}") from exc
        except Exception as exc:
            raise map_s3_error(exc, None, f"creating bucket {self.bucket}") from exc

    # -- writing -------------------------------------------------------------------------

    def put(self, name: str, data: bytes) -> None:
        key = self._key(name)
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data)
        except Exception as exc:
            raise map_s3_error(exc, name, "writing") from exc

    def put_if_absent(self, name: str, data: bytes) -> bool:
        key = self._key(name)
        if self.conditional_writes != "head":
            try:
                self.client.put_object(Bucket=self.bucket, Key=key, Body=data, IfNoneMatch="*")
                return True
            except botocore.exceptions.ClientError as exc:
                code, status = _error_code(exc)
                if code == "PreconditionFailed" or status == 412:
                    return False
                unsupported = code in _UNSUPPORTED_CONDITION_CODES or status == 501
                if not (unsupported and self.conditional_writes == "auto"):
                    raise map_s3_error(exc, name, "writing (if absent)") from exc
                with self._lock:
                    self.conditional_writes = "head"
            except Exception as exc:
                raise map_s3_error(exc, name, "writing (if absent)") from exc
        # Fallback, with the race described in the module docstring.
        if self.exists(name):
            return False
        self.put(name, data)
        return True

    def put_stream(self, name: str, chunks: Iterable[bytes | memoryview]) -> int:
        """One PUT when the stream fits in a part, else a multipart upload of
        ``part_size`` parts, aborted on any failure so nothing is left behind."""
        key = self._key(name)
        buffer = bytearray()
        iterator = iter(chunks)
        exhausted = False
        while len(buffer) < self.part_size:
            try:
                buffer += next(iterator)
            except StopIteration:
                exhausted = True
                break
        if exhausted:
            self.put(name, bytes(buffer))
            return len(buffer)
        try:
            upload = self.client.create_multipart_upload(Bucket=self.bucket, Key=key)
        except Exception as exc:
            raise map_s3_error(exc, name, "starting multipart upload of") from exc
        upload_id: str = upload["UploadId"]
        parts: list[dict[str, Any]] = []
        total = 0
        try:
            while True:
                while not exhausted and len(buffer) < self.part_size:
                    try:
                        buffer += next(iterator)
                    except StopIteration:
                        exhausted = True
                if exhausted and not buffer and parts:
                    break
                body = bytes(buffer[: self.part_size])
                del buffer[: self.part_size]
                number = len(parts) + 1
                if number > MAX_PARTS:
                    raise StorageError(f"{name}: over {MAX_PARTS} parts; raise part_size", name)
                try:
                    response = self.client.upload_part(
                        Bucket=self.bucket,
                        Key=key,
                        UploadId=upload_id,
                        PartNumber=number,
                        Body=body,
                    )
                except Exception as exc:
                    raise map_s3_error(exc, name, f"uploading part {number} of") from exc
                parts.append({"ETag": response["ETag"], "PartNumber": number})
                total += len(body)
                if exhausted and not buffer:
                    break
            try:
                self.client.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=key,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                )
            except Exception as exc:
                raise map_s3_error(exc, name, "completing multipart upload of") from exc
        except BaseException:
            self._abort(key, upload_id)
            raise
        return total

    def _abort(self, key: str, upload_id: str) -> None:
        # Best effort: a bucket lifecycle rule for stale uploads is the backstop.
        with contextlib.suppress(Exception):
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)

    # -- reading -------------------------------------------------------------------------

    def _get_object(self, name: str, offset: int, length: int | None) -> tuple[Any, bool]:
        """The GetObject response for the range, or (None, True) when the range
        starts at or past the end of an existing object."""
        key = self._key(name)
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if length is not None:
            kwargs["Range"] = f"bytes={offset}-{offset + length - 1}"
        elif offset:
            kwargs["Range"] = f"bytes={offset}-"
        try:
            return self.client.get_object(**kwargs), False
        except botocore.exceptions.ClientError as exc:
            code, status = _error_code(exc)
            if code == "InvalidRange" or status == 416:
                self.stat(name)  # ObjectNotFound if the object went away instead
                return None, True
            raise map_s3_error(exc, name, "reading") from exc
        except Exception as exc:
            raise map_s3_error(exc, name, "reading") from exc

    @staticmethod
    def _ranged(response: Any, offset: int) -> bool:
        """Whether the server honoured the Range (else it sent the whole object)."""
        return bool(response.get("ContentRange")) or offset == 0

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        check_range(offset, length)
        if length == 0:
            self.stat(name)
            return b""
        response, past_end = self._get_object(name, offset, length)
        if past_end:
            return b""
        body = response["Body"]
        try:
            data: bytes = body.read()
        except Exception as exc:
            raise map_s3_error(exc, name, "reading") from exc
        finally:
            body.close()
        if not self._ranged(response, offset):
            end = None if length is None else offset + length
            return data[offset:end]
        return data if length is None else data[:length]

    def iter_get(
        self,
        name: str,
        offset: int = 0,
        length: int | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> Iterator[bytes]:
        check_range(offset, length)
        if chunk_size <= 0:
            raise ValueError(f"chunk_size must be > 0, got {chunk_size}")
        if length == 0:
            self.stat(name)
            return iter(())
        response, past_end = self._get_object(name, offset, length)
        if past_end:
            return iter(())
        if not self._ranged(response, offset):
            response["Body"].close()
            return iter((self.get(name, offset, length),))
        return self._iter_body(response["Body"], name, length, chunk_size)

    @staticmethod
    def _iter_body(body: Any, name: str, length: int | None, chunk_size: int) -> Iterator[bytes]:
        remaining = length
        try:
            for chunk in body.iter_chunks(chunk_size):
                if remaining is not None:
                    chunk = chunk[:remaining]
                    remaining -= len(chunk)
                if chunk:
                    yield chunk
                if remaining == 0:
                    return
        except Exception as exc:
            raise map_s3_error(exc, name, "reading") from exc
        finally:
            body.close()

    def stat(self, name: str) -> ObjectInfo:
        key = self._key(name)
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            raise map_s3_error(exc, name, "stat of") from exc
        return ObjectInfo(name, int(head["ContentLength"]), _utc(head["LastModified"]))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """ListObjectsV2, paging with continuation tokens. Keys under the
        backend's prefix that are not valid names (e.g. folder markers made by
        other tools) are skipped."""
        validate_prefix(prefix)
        return self._list(prefix)

    def _list(self, prefix: str) -> Iterator[ObjectInfo]:
        kwargs: dict[str, Any] = {
            "Bucket": self.bucket,
            "Prefix": self.prefix + prefix,
            "MaxKeys": self.list_page_size,
        }
        strip = len(self.prefix)
        while True:
            try:
                page = self.client.list_objects_v2(**kwargs)
            except Exception as exc:
                raise map_s3_error(exc, None, f"listing {prefix!r} in") from exc
            for item in page.get("Contents", ()):
                name = item["Key"][strip:]
                try:
                    validate_name(name)
                except StorageError:
                    continue
                yield ObjectInfo(name, int(item["Size"]), _utc(item["LastModified"]))
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return
            kwargs["ContinuationToken"] = token

    def remove_abandoned_writes(self, older_than_s: float, *,
                                dry_run: bool = False) -> tuple[int, int]:
        """Aborts multipart uploads under this prefix that were started more
        than ``older_than_s`` ago and never completed (their parts are
        stored, and billed, until aborted)."""
        cutoff = utc_now() - dt.timedelta(seconds=older_than_s)
        removed = freed = 0
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.prefix}
        while True:
            try:
                page = self.client.list_multipart_uploads(**kwargs)
            except Exception as exc:
                raise map_s3_error(exc, None, "listing unfinished uploads in") from exc
            for upload in page.get("Uploads", ()):
                if _utc(upload["Initiated"]) >= cutoff:
                    continue
                freed += self._parts_size(upload["Key"], upload["UploadId"])
                removed += 1
                if dry_run:
                    continue
                try:
                    self.client.abort_multipart_upload(Bucket=self.bucket, Key=upload["Key"],
                                                       UploadId=upload["UploadId"])
                except Exception as exc:
                    raise map_s3_error(exc, None, "aborting an unfinished upload in") from exc
            if not page.get("IsTruncated"):
                return removed, freed
            kwargs["KeyMarker"] = page.get("NextKeyMarker", "")
            kwargs["UploadIdMarker"] = page.get("NextUploadIdMarker", "")

    def _parts_size(self, key: str, upload_id: str) -> int:
        with contextlib.suppress(Exception):
            parts = self.client.list_parts(Bucket=self.bucket, Key=key, UploadId=upload_id)
            return sum(int(p.get("Size", 0)) for p in parts.get("Parts", ()))
        return 0

    # -- deleting ------------------------------------------------------------------------

    def delete(self, name: str) -> None:
        key = self._key(name)
        try:
            self.client.delete_object(Bucket=self.bucket, Key=key)
        except botocore.exceptions.ClientError as exc:
            code, _ = _error_code(exc)
            if code in _NOT_FOUND_CODES:
                return
            raise map_s3_error(exc, name, "deleting") from exc
        except Exception as exc:
            raise map_s3_error(exc, name, "deleting") from exc

    def close(self) -> None:
        close = getattr(self.client, "close", None)
        if close is not None:
            close()
