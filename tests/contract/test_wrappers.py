"""The backend wrappers on a real local backend: fault injection (faulty),
retrying transient errors (retry), sharded layout (sharded), and opening a
backend from a URL. Time is injected into the retry wrapper, so no test sleeps.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from cbr.storage import open_backend
from cbr.storage.backend import (
    InvalidName,
    ObjectNotFound,
    StorageFull,
    StoragePermissionDenied,
    StorageUnavailable,
)
from cbr.storage.local import LocalBackend
from cbr.storage.retry import RetryingBackend, RetryPolicy
from cbr.storage.s3 import S3Backend
from cbr.storage.sharded import ShardedBackend, shard_name, unshard_name
from tests.support.faulty import Fault, FaultyBackend

HEX = "ab" + "0123456789abcdef" * 3 + "cdef"


class FakeTime:
    """A monotonic clock that only moves when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def local(tmp_path: Path) -> LocalBackend:
    return LocalBackend(tmp_path / "vault")


@pytest.fixture
def faulty(local: LocalBackend) -> FaultyBackend:
    return FaultyBackend(local)


def _retrying(inner: FaultyBackend, clock: FakeTime, **policy: float) -> RetryingBackend:
    return RetryingBackend(
        inner,
        RetryPolicy(**policy),  # type: ignore[arg-type]
        sleep=clock.sleep,
        monotonic=clock.monotonic,
        rng=random.Random(7),
    )


# -- faulty ---------------------------------------------------------------------------------


def test_faulty_fails_exactly_the_nth_put(faulty: FaultyBackend) -> None:
    faulty.fail_nth("put", 3)
    faulty.put("a", b"1")
    faulty.put("b", b"2")
    with pytest.raises(StorageUnavailable):
        faulty.put("c", b"3")
    faulty.put("d", b"4")
    assert sorted(i.name for i in faulty.list()) == ["a", "b", "d"]
    assert faulty.calls["put"] == 4


def test_faulty_can_fill_the_disk_for_some_names(faulty: FaultyBackend) -> None:
    faulty.add(
        "*", Fault(error=StorageFull("injected: disk full"), times=None, name_prefix="data/")
    )
    with pytest.raises(StorageFull):
        faulty.put("data/x", b"x")
    with pytest.raises(StorageFull):
        faulty.put_stream("data/y", iter([b"y"]))
    faulty.put("index/i", b"i")
    assert faulty.get("index/i") == b"i"


def test_faulty_after_lands_the_write_but_reports_failure(faulty: FaultyBackend) -> None:
    faulty.add("put", Fault(after=True))
    with pytest.raises(StorageUnavailable):
        faulty.put("landed", b"yes")
    assert faulty.get("landed") == b"yes"


def test_faulty_truncates_and_corrupts_reads(faulty: FaultyBackend) -> None:
    faulty.put("obj", b"0123456789")
    faulty.add("get", Fault(truncate_to=4))
    assert faulty.get("obj") == b"0123"
    faulty.add("get", Fault(corrupt=True, corrupt_at=2))
    damaged = faulty.get("obj")
    assert len(damaged) == 10 and damaged != b"0123456789"
    assert damaged[:2] + damaged[3:] == b"01" + b"3456789"
    faulty.add("iter_get", Fault(truncate_to=5, corrupt=True, corrupt_at=4))
    streamed = b"".join(faulty.iter_get("obj", chunk_size=3))
    assert len(streamed) == 5 and streamed[:4] == b"0123" and streamed[4:] != b"4"
    assert faulty.get("obj") == b"0123456789"  # faults were one-shot


def test_faulty_breaks_a_stream_midway(faulty: FaultyBackend) -> None:
    faulty.put("obj", b"x" * 100)
    faulty.add("iter_get")
    stream = faulty.iter_get("obj", chunk_size=10)
    assert next(stream) == b"x" * 10
    with pytest.raises(StorageUnavailable):
        next(stream)


def test_faulty_callback_fires_with_the_fault(faulty: FaultyBackend) -> None:
    seen: list[tuple[str, str]] = []
    faulty.add("stat", Fault(skip=1, callback=lambda m, n: seen.append((m, n))))
    faulty.put("a", b"a")
    faulty.stat("a")
    with pytest.raises(StorageUnavailable):
        faulty.stat("a")
    assert seen == [("stat", "a")]


def test_faulty_refuses_unknown_methods(faulty: FaultyBackend) -> None:
    with pytest.raises(ValueError):
        faulty.add("upload")


# -- retry ----------------------------------------------------------------------------------


def test_retry_rides_out_transient_failures(faulty: FaultyBackend) -> None:
    clock = FakeTime()
    backend = _retrying(faulty, clock)
    faulty.add("put", Fault(times=3))
    faulty.add("get", Fault(times=2))
    backend.put("a", b"a")
    assert backend.get("a") == b"a"
    assert faulty.calls["put"] == 4 and faulty.calls["get"] == 3
    assert len(clock.sleeps) == 5


def test_retry_never_retries_permanent_errors(faulty: FaultyBackend) -> None:
    backend = _retrying(faulty, FakeTime())
    faulty.add("put", Fault(error=StorageFull("full"), times=None))
    faulty.add("delete", Fault(error=StoragePermissionDenied("no"), times=None))
    with pytest.raises(StorageFull):
        backend.put("a", b"a")
    with pytest.raises(StoragePermissionDenied):
        backend.delete("a")
    with pytest.raises(ObjectNotFound):
        backend.get("missing")
    with pytest.raises(InvalidName):
        backend.get("../x")
    # Each call reached the backend once: nothing was retried.
    assert (faulty.calls["put"], faulty.calls["delete"], faulty.calls["get"]) == (1, 1, 2)


def test_retry_gives_up_after_max_attempts(faulty: FaultyBackend) -> None:
    backend = _retrying(faulty, FakeTime(), max_attempts=4)
    faulty.add("stat", Fault(times=None))
    with pytest.raises(StorageUnavailable):
        backend.stat("x")
    assert faulty.calls["stat"] == 4


def test_retry_gives_up_when_time_runs_out(faulty: FaultyBackend) -> None:
    clock = FakeTime()
    backend = _retrying(
        faulty, clock, max_attempts=1000, max_elapsed_s=30, initial_delay_s=1, max_delay_s=8
    )
    faulty.add("stat", Fault(times=None))
    with pytest.raises(StorageUnavailable):
        backend.stat("x")
    assert clock.now <= 30
    assert all(delay <= 8 for delay in clock.sleeps)
    assert 3 < faulty.calls["stat"] < 1000


def test_backoff_grows_exponentially_with_jitter() -> None:
    policy = RetryPolicy(initial_delay_s=0.5, max_delay_s=4, multiplier=2)
    rng = random.Random(1)
    caps = [0.5, 1, 2, 4, 4, 4]
    for retry, cap in enumerate(caps, start=1):
        delays = [policy.delay(retry, rng) for _ in range(200)]
        assert max(delays) <= cap
        assert max(delays) > cap * 0.8  # spread over the whole window
        assert min(delays) < cap * 0.2


def test_retried_put_if_absent_recognises_its_own_landed_write(faulty: FaultyBackend) -> None:
    backend = _retrying(faulty, FakeTime())
    faulty.add("put_if_absent", Fault(after=True))  # written, but the reply is lost
    assert backend.put_if_absent("manifests/m", b"mine") is True
    assert backend.put_if_absent("manifests/m", b"mine") is False  # a fresh call: exists


def test_retry_replays_a_reiterable_stream_but_not_a_one_shot_iterator(
    faulty: FaultyBackend,
) -> None:
    backend = _retrying(faulty, FakeTime())
    faulty.add("put_stream", Fault())
    assert backend.put_stream("list", [b"a", b"b"]) == 2
    faulty.add("put_stream", Fault())
    with pytest.raises(StorageUnavailable):
        backend.put_stream("gen", iter([b"a", b"b"]))
    assert backend.get("list") == b"ab"


def test_retry_resumes_a_broken_read_stream_where_it_stopped(faulty: FaultyBackend) -> None:
    data = bytes(range(256)) * 40
    faulty.put("obj", data)
    backend = _retrying(faulty, FakeTime())
    faulty.add("iter_get", Fault(times=3))  # each of three streams breaks after one chunk
    pieces = list(backend.iter_get("obj", 100, 5000, chunk_size=1000))
    assert b"".join(pieces) == data[100:5100]
    assert faulty.calls["iter_get"] == 4


def test_retry_retries_a_listing_that_fails_before_its_first_item(
    faulty: FaultyBackend,
) -> None:
    faulty.put("a", b"a")
    backend = _retrying(faulty, FakeTime())
    faulty.add("list", Fault(times=2))
    assert [info.name for info in backend.list()] == ["a"]


# -- sharded --------------------------------------------------------------------------------


def test_sharded_names_round_trip_and_reject_what_cannot() -> None:
    assert shard_name(f"data/{HEX}", ("data/",)) == f"data/ab/{HEX}"
    assert unshard_name(f"data/ab/{HEX}", ("data/",)) == f"data/{HEX}"
    assert shard_name("index/i1", ("data/",)) == "index/i1"
    assert unshard_name("data/zz/abcd", ("data/",)) is None  # shard does not match the leaf
    for bad in ("data/ab", "data/x/y"):
        with pytest.raises(InvalidName):
            shard_name(bad, ("data/",))


def test_sharded_backend_fans_out_on_disk_and_hides_it(tmp_path: Path) -> None:
    local = LocalBackend(tmp_path)
    backend = ShardedBackend(local)
    other = "cd" + HEX[2:]
    backend.put(f"data/{HEX}", b"1")
    backend.put_if_absent(f"data/{other}", b"2")
    backend.put("index/i1", b"3")
    assert (tmp_path / "data" / "ab" / HEX).read_bytes() == b"1"
    assert (tmp_path / "data" / "cd" / other).read_bytes() == b"2"
    assert {i.name for i in backend.list()} == {f"data/{HEX}", f"data/{other}", "index/i1"}
    assert {i.name for i in backend.list("data/a")} == {f"data/{HEX}"}
    assert {i.name for i in backend.list(f"data/{HEX[:5]}")} == {f"data/{HEX}"}
    assert {i.name for i in backend.list("da")} == {f"data/{HEX}", f"data/{other}"}
    assert backend.stat(f"data/{other}").name == f"data/{other}"
    assert backend.get(f"data/{HEX}") == b"1"
    backend.delete(f"data/{HEX}")
    assert not backend.exists(f"data/{HEX}")


# -- open_backend ---------------------------------------------------------------------------


def test_open_backend_opens_local_paths_and_file_urls(tmp_path: Path) -> None:
    plain = open_backend(str(tmp_path / "a"), retry=False)
    assert isinstance(plain, LocalBackend) and plain.root == tmp_path / "a"
    wrapped = open_backend(f"file://{tmp_path}/b")
    assert isinstance(wrapped, RetryingBackend)
    assert isinstance(wrapped.inner, LocalBackend) and wrapped.inner.root == tmp_path / "b"
    wrapped.put("x", b"x")
    assert (tmp_path / "b" / "x").read_bytes() == b"x"


@pytest.mark.parametrize(
    "url",
    [
        "relative/path",
        "file://host/path",
        "s3://key:secret@bucket/prefix",
        "s3:///prefix",
        "gs://bucket",
    ],
)
def test_open_backend_refuses_unsupported_or_unsafe_urls(url: str) -> None:
    with pytest.raises(ValueError):
        open_backend(url)


def test_open_backend_parses_s3_urls_without_contacting_the_server() -> None:
    backend = open_backend(
        "s3://bucket/some/prefix?endpoint=http://127.0.0.1:1&region=eu-west-1"
        "&addressing_style=path&max_attempts=2&part_size=8388608",
        retry=False,
        access_key="ak",
        secret_key="sk",
    )
    assert isinstance(backend, S3Backend)
    assert (backend.bucket, backend.prefix, backend.part_size) == (
        "bucket",
        "some/prefix/",
        8 * 1024 * 1024,
    )
    assert backend.client.meta.region_name == "eu-west-1"
    assert backend.client.meta.endpoint_url == "http://127.0.0.1:1"
