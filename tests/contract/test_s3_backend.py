"""What only the S3 backend promises, beyond the shared contract, against a
real SeaweedFS: credentials and permissions, missing buckets, paging, prefix
isolation, the conditional-write fallback, multipart clean-up, and a server
that goes away and comes back.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import botocore.exceptions
import pytest

from cbr.storage import open_backend
from cbr.storage.backend import (
    ObjectNotFound,
    StorageError,
    StorageFull,
    StoragePermissionDenied,
    StorageUnavailable,
)
from cbr.storage.retry import RetryingBackend, RetryPolicy
from cbr.storage.s3 import S3Backend, map_s3_error
from tests.support.seaweed import S3Factory, SeaweedServer, make_s3_backend

MiB = 1024 * 1024


def test_wrong_secret_is_permission_denied(s3_backend_factory: S3Factory) -> None:
    good = s3_backend_factory()
    good.put("x", b"x")
    bad = s3_backend_factory(bucket=good.bucket, secret_key="not-the-secret", create_bucket=False)
    with pytest.raises(StoragePermissionDenied):
        bad.get("x")
    with pytest.raises(StoragePermissionDenied):
        bad.put("y", b"y")


def test_read_only_identity_can_read_but_not_write(
    seaweed: SeaweedServer, s3_backend_factory: S3Factory
) -> None:
    owner = s3_backend_factory()
    owner.put("kept", b"k")
    reader = s3_backend_factory(
        bucket=owner.bucket, create_bucket=False, **seaweed.credentials(reader=True)
    )
    assert reader.get("kept") == b"k"
    assert [info.name for info in reader.list()] == ["kept"]
    with pytest.raises(StoragePermissionDenied):
        reader.put("new", b"n")
    with pytest.raises(StoragePermissionDenied):
        reader.delete("kept")
    assert owner.get("kept") == b"k"


def test_missing_bucket_is_a_permanent_error_unless_created(
    seaweed: SeaweedServer, s3_backend_factory: S3Factory
) -> None:
    backend = s3_backend_factory(bucket=seaweed.bucket_name(), create_bucket=False)
    with pytest.raises(StorageError) as caught:
        backend.put("x", b"x")
    assert not caught.value.retryable
    assert not isinstance(caught.value, ObjectNotFound)
    backend.ensure_bucket()
    backend.ensure_bucket()  # idempotent
    backend.put("x", b"x")
    assert backend.get("x") == b"x"


def test_prefixes_isolate_vaults_in_one_bucket(s3_backend_factory: S3Factory) -> None:
    one = s3_backend_factory(prefix="vaults/one")
    two = s3_backend_factory(bucket=one.bucket, prefix="vaults/two")
    one.put("data/a", b"1")
    two.put("data/a", b"2")
    assert one.get("data/a") == b"1"
    assert [info.name for info in two.list()] == ["data/a"]
    raw = one.client.list_objects_v2(Bucket=one.bucket)["Contents"]
    assert sorted(item["Key"] for item in raw) == ["vaults/one/data/a", "vaults/two/data/a"]


def test_list_pages_with_a_small_page_size_and_skips_foreign_keys(
    s3_backend_factory: S3Factory,
) -> None:
    backend = s3_backend_factory(list_page_size=7)
    names = {f"p/{i:03d}" for i in range(30)}
    for name in names:
        backend.put(name, b".")
    backend.client.put_object(Bucket=backend.bucket, Key="vault/p/folder-marker/", Body=b"")
    backend.client.put_object(Bucket=backend.bucket, Key="vault/p/has space", Body=b"")
    assert {info.name for info in backend.list("p/")} == names


def test_head_then_put_fallback_still_refuses_the_second_write(
    s3_backend_factory: S3Factory,
) -> None:
    backend = s3_backend_factory(conditional_writes="head")
    assert backend.put_if_absent("manifests/m", b"first") is True
    assert backend.put_if_absent("manifests/m", b"second") is False
    assert backend.get("manifests/m") == b"first"


def test_put_stream_uses_multipart_and_aborts_it_on_failure(s3_backend_factory: S3Factory) -> None:
    backend = s3_backend_factory(part_size=5 * MiB)

    def broken() -> Iterator[bytes]:
        for _ in range(12):
            yield b"z" * MiB
        raise RuntimeError("source failed after two parts")

    with pytest.raises(RuntimeError):
        backend.put_stream("packs/broken", broken())
    uploads = backend.client.list_multipart_uploads(Bucket=backend.bucket).get("Uploads", [])
    assert uploads == []
    assert not backend.exists("packs/broken")
    assert backend.put_stream("packs/ok", (b"y" * MiB for _ in range(11))) == 11 * MiB
    assert backend.stat("packs/ok").size == 11 * MiB


def test_open_backend_builds_an_s3_backend_from_a_url(seaweed: SeaweedServer) -> None:
    bucket = seaweed.bucket_name()
    url = (
        f"s3://{bucket}/vaults/v1?endpoint={seaweed.endpoint}&region=us-east-1"
        "&addressing_style=path&create_bucket=1&max_attempts=2"
    )
    creds = seaweed.credentials()
    backend = open_backend(url, access_key=creds["access_key"], secret_key=creds["secret_key"])
    assert isinstance(backend, RetryingBackend)
    inner = backend.inner
    assert isinstance(inner, S3Backend)
    assert (inner.bucket, inner.prefix) == (bucket, "vaults/v1/")
    backend.put("x", b"x")
    assert backend.get("x") == b"x"
    backend.close()


def test_stopped_server_is_unavailable_and_retry_recovers_when_it_returns(
    tmp_path: Path,
) -> None:
    """A server of its own, killed and restarted: the bare backend reports
    StorageUnavailable (retryable) at once; the retry wrapper rides it out."""
    server = SeaweedServer(tmp_path / "seaweed")
    try:
        server.start()
        backend = make_s3_backend(server, connect_timeout=1.0, read_timeout=10.0)
        backend.put("data/before", b"kept across the outage")
        server.kill()

        for call in (
            lambda: backend.get("data/before"),
            lambda: backend.put("data/during", b"x"),
            lambda: list(backend.list()),
            lambda: backend.stat("data/before"),
        ):
            with pytest.raises(StorageUnavailable) as caught:
                call()
            assert caught.value.retryable

        retries: list[str] = []
        retrying = RetryingBackend(
            backend,
            RetryPolicy(max_attempts=200, max_elapsed_s=90, initial_delay_s=0.1, max_delay_s=0.5),
            on_retry=lambda op, attempt, exc, delay: retries.append(type(exc).__name__),
        )
        restarted = threading.Event()

        def restart() -> None:
            time.sleep(0.5)
            server.start()
            restarted.set()

        thread = threading.Thread(target=restart)
        thread.start()
        try:
            assert retrying.get("data/before") == b"kept across the outage"
            retrying.put("data/after", b"written after the restart")
        finally:
            thread.join(90)
        assert restarted.is_set()
        assert retries and set(retries) == {"StorageUnavailable"}
        assert backend.get("data/after") == b"written after the restart"
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("code", "status", "expected"),
    [
        ("NoSuchKey", 404, ObjectNotFound),
        ("SlowDown", 503, StorageUnavailable),
        ("InternalError", 500, StorageUnavailable),
        ("RequestTimeout", 400, StorageUnavailable),
        ("AccessDenied", 403, StoragePermissionDenied),
        ("QuotaExceeded", 403, StorageFull),
        ("XMinioStorageFull", 507, StorageFull),
        ("NoSuchBucket", 404, StorageError),
    ],
)
def test_s3_error_codes_map_to_the_typed_errors(
    code: str, status: int, expected: type[StorageError]
) -> None:
    """Codes other stores send that SeaweedFS cannot be made to (quota, SlowDown)."""
    exc = botocore.exceptions.ClientError(
        {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "PutObject",
    )
    error = map_s3_error(exc, "data/x", "writing")
    assert type(error) is expected
    assert error.retryable == (expected is StorageUnavailable)


def test_uploads_a_killed_writer_left_unfinished_are_aborted_when_old(
        s3_backend_factory: S3Factory) -> None:
    backend = s3_backend_factory(part_size=5 * MiB)
    key = backend.prefix + "data/ab/killed"
    upload = backend.client.create_multipart_upload(Bucket=backend.bucket, Key=key)
    backend.client.upload_part(Bucket=backend.bucket, Key=key, UploadId=upload["UploadId"],
                               PartNumber=1, Body=b"p" * (5 * MiB))
    assert backend.remove_abandoned_writes(older_than_s=3600) == (0, 0)  # may be in progress
    time.sleep(1.1)
    assert backend.remove_abandoned_writes(1, dry_run=True) == (1, 5 * MiB)  # counted only
    assert backend.remove_abandoned_writes(older_than_s=1) == (1, 5 * MiB)
    uploads = backend.client.list_multipart_uploads(
        Bucket=backend.bucket, Prefix=backend.prefix).get("Uploads", [])
    assert uploads == []
